"""`make bench`: WE step cost and training throughput for every zoo model on the current device.

For each model: the time of one WE step (paper and official variants, vectorised), of one pass
that reads every weight once (the floor any step must pay), and of the straightforward per-filter
loop implementation; and training images/s at the recipe's batch size on synthetic inputs of the
model's size (throughput does not depend on pixel values). Then every training method through the
real trainer on digits: its extra time per CIFAR-size epoch relative to the baseline. Prints
markdown tables and writes them, with device, versions and date, to `results/bench/<device>.md`
and `.json`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

import models
from we.checkpoint import REPO_ROOT, provenance
from we.evolution import WeightEvolution, evolve
from we.reference import evolve_reference


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], Any], device: torch.device, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of `fn` over `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timeit_after(setup: Callable[[], Any], fns: dict[str, Callable[[], Any]], device: torch.device,
                 repeat: int = 15, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each of `fns`, each call right after `setup()` (not timed).

    The functions take turns, so that slow phases of a shared machine hit them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeat):
        for name, fn in fns.items():
            setup()
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def spread_units(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every conv filter and BN scalar a scale of 10 ** U(-2, 0) (BN values drawn from N(0, 1)).

    At initialisation no unit is inferior (BN weights are all 1), so a WE step would do no work;
    after this, W_tbd is almost all inferior and each pool evolves about its floor(rate * P)
    units: the most work a step does at that rate.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
                continue
            for p in (module.weight, module.bias):
                if p is None:
                    continue
                if isinstance(module, torch.nn.BatchNorm2d):
                    p.copy_(torch.randn(p.shape, generator=g))
                scale = 10 ** (-2 * torch.rand(p.shape[0], generator=g))
                p.mul_(scale.view(-1, *[1] * (p.dim() - 1)).to(p.device, p.dtype))


def read_all_weights(model: torch.nn.Module) -> torch.Tensor:
    """One pass reading every parameter once (sum of |w|): the lower bound for any WE step."""
    return torch.stack([p.detach().abs().sum() for p in model.parameters()]).sum()


def sgd_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             amp: bool = False) -> None:
    """One training step: cross-entropy forward (bf16 autocast if `amp`), backward, optimizer step."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return "cpu"


def bench_model(name: str, device: torch.device, batch: int, iters: int, loop: bool) -> dict[str, Any]:
    """WE step times and training throughput of one zoo model."""
    info = models.model_info(name)
    num_classes = 1000 if info.family == "imagenet" else 10
    torch.manual_seed(0)
    model = models.create(name, num_classes=num_classes)
    spread_units(model)
    model.to(device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    restore = lambda: model.load_state_dict(state)  # noqa: E731 - each step sees the same weights

    row: dict[str, Any] = {"model": name, "params": sum(p.numel() for p in model.parameters())}
    official = WeightEvolution(model, variant="official")
    # Every timed call starts from the same weights, restored untimed just before it.
    steps = {"read_ms": lambda: read_all_weights(model), "we_paper_ms": lambda: evolve(model, 0.05, gamma=0.05),
             "we_official_ms": lambda: official.step(100)}
    row.update({k: 1e3 * v for k, v in timeit_after(restore, steps, device).items()})
    if loop:  # seconds per call: fewer calls
        loop_step = {"we_loop_ms": lambda: evolve_reference(model, 0.05, gamma=0.05, matching="forward",
                                                            conv=True, bn=True)}
        row.update({k: 1e3 * v for k, v in timeit_after(restore, loop_step, device, repeat=2, warmup=0).items()})
    restore()
    row["evolved"] = sum(evolve(model, 0.05, gamma=0.05).values())
    row["we_over_read"] = row["we_paper_ms"] / row["read_ms"] if row["read_ms"] > 0 else float("nan")
    row["official_over_read"] = row["we_official_ms"] / row["read_ms"] if row["read_ms"] > 0 else float("nan")

    size = info.input_size
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()

    step_s = timeit(lambda: sgd_step(model, opt, x, y), device, repeat=iters)
    row["batch"] = batch
    row["train_img_s"] = batch / step_s
    epoch_images = 1_281_167 if info.family == "imagenet" else 50_000  # ImageNet / CIFAR training set
    row["we_epoch_overhead_pct"] = 100.0 * (row["we_paper_ms"] / 1e3) / (epoch_images / row["train_img_s"])
    return row


METHOD_RUNS: dict[str, list[str]] = {  # settings that make each method act within a short run
    "baseline": [], "we": [], "fg1": ["method=fg", "fg_n=1"], "oni": [], "svb": [],
    "repr": ["repr_s1=1", "repr_s2=1"], "rl": ["rl_warmup=0", "rl_update=1"],
    "baseline (repeat)": ["method=baseline"],  # the same run again: the timing noise of this table
}


def train_quietly(overrides: list[str]) -> None:
    """One run of the real trainer with these config overrides, its progress output dropped."""
    import contextlib
    import io

    from we.config import load_config
    from we.train import main as train_main

    with contextlib.redirect_stdout(io.StringIO()):
        train_main(load_config(None, overrides))


def bench_methods(model: str, device: torch.device, epochs: int = 4, limit_train: int = 1024,
                  epoch_images: int = 50_000) -> list[dict[str, Any]]:
    """Each method through the real trainer on digits: its extra cost per CIFAR-size epoch vs the baseline.

    Step cost: the fastest epoch's training time per image (after the first epoch, which pays
    one-off costs); epoch-end cost: the epoch-end hook's mean time (`method_seconds`); both are
    scaled to an epoch of `epoch_images` images.
    """
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, extra) in enumerate(METHOD_RUNS.items()):
            method = [] if any(e.startswith("method=") for e in extra) else [f"method={label}"]
            train_quietly(["dataset=digits", f"model={model}", f"epochs={epochs}", f"device={device}",
                           f"limit_train={limit_train}", "progress=plain", "workers=0", f"out={tmp}/{i}",
                           *method, *extra])
            history = [json.loads(line) for line in Path(tmp, str(i), "metrics.jsonl").read_text().splitlines()]
            timed = history[1:] or history
            per_image = min(1.0 / r["images_per_s"] for r in timed)
            hook = statistics.mean(r.get("method_seconds", 0.0) for r in timed[:-1] or timed)  # none after the last
            rows.append({"method": label, "s_per_image": per_image, "epoch_end_s": hook})
    base_step = rows[0]["s_per_image"] * epoch_images
    for r in rows:
        r["step_pct"] = 100.0 * (r["s_per_image"] * epoch_images - base_step) / base_step
        r["hook_pct"] = 100.0 * r["epoch_end_s"] / base_step
        r["overhead_pct"] = r["step_pct"] + r["hook_pct"]
    return rows


ACCURACY_PATHS: dict[str, list[str]] = {  # the trainer's overrides of each input path
    "loader, fp32, NCHW": ["data_path=loader", "channels_last=false", "amp=false"],
    "device, bf16, channels_last": ["data_path=device", "channels_last=true", "amp=true"],
}


def bench_accuracy(model: str, device: torch.device, dataset: str, data_dir: str, epochs: int,
                   seeds: int) -> dict[str, Any]:
    """Final top-1 of a short schedule through the trainer on the loader path in fp32 and on the
    fast path, `seeds` seeds each (learning rate x0.1 at half and three quarters of the epochs;
    on digits the demo's batch 64 and lr 0.05, as the recipe's 128 and 0.1 are unstable on its
    1,437 images)."""
    import tempfile

    from we.report import welch_p

    top1: dict[str, list[float]] = {label: [] for label in ACCURACY_PATHS}
    milestones = ",".join(str(m) for m in dict.fromkeys((epochs // 2, 3 * epochs // 4)) if m > 0)
    small = ["batch_size=64", "lr=0.05"] if dataset == "digits" else []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for i, (label, extra) in enumerate(ACCURACY_PATHS.items()):
                train_quietly([f"dataset={dataset}", f"data_dir={data_dir}", f"model={model}",
                               f"epochs={epochs}", f"device={device}", f"seed={seed}", "schedule=multistep",
                               f"lr_milestones=[{milestones}]", "progress=plain", f"out={tmp}/{seed}-{i}",
                               *small, *extra])
                top1[label].append(json.loads(Path(tmp, f"{seed}-{i}", "result.json").read_text())["final_top1"])
    reference, fast = top1.values()
    return {"model": model, "dataset": dataset, "epochs": epochs, "top1": top1,
            "difference": statistics.mean(fast) - statistics.mean(reference), "welch_p": welch_p(fast, reference)}


def accuracy_markdown(acc: dict[str, Any]) -> str:
    lines = [f"## Final top-1 by input path ({acc['model']}, {acc['dataset']}, {acc['epochs']} epochs, "
             f"{len(next(iter(acc['top1'].values())))} seeds)", "",
             "| path | top-1 mean ± std | per seed |", "|---|---|---|"]
    for label, values in acc["top1"].items():
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        lines.append(f"| {label} | {statistics.mean(values):.2f} ± {std:.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in values)} |")
    lines += ["", f"Fast minus loader: {acc['difference']:+.2f} points (Welch p = {acc['welch_p']:.2f})."]
    return "\n".join(lines) + "\n"


def methods_markdown(rows: list[dict[str, Any]], model: str, epoch_images: int) -> str:
    noise = abs(rows[-1]["step_pct"]) if rows and rows[-1]["method"].endswith("(repeat)") else float("nan")
    lines = [f"## Method overhead per epoch ({model}, {epoch_images:,}-image epoch, vs baseline)", "",
             "| method | train ms/image | per-step cost | epoch-end hook (s) | epoch-end hook | total |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {1e3 * r['s_per_image']:.3f} | {r['step_pct']:+.1f}% | "
                     f"{r['epoch_end_s']:.4f} | {r['hook_pct']:+.3f}% | {r['overhead_pct']:+.1f}% |")
    lines += ["", f"Per-step costs within about ±{noise:.1f}% are timing noise here (the baseline run twice)."]
    return "\n".join(lines) + "\n"


def reference_loader(dataset: str, data_dir: str, batch: int) -> torch.utils.data.DataLoader:
    """The authors' input pipeline: the torchvision dataset, PIL transforms, 2 DataLoader workers."""
    from torchvision import transforms

    from we.data import DigitsDataset, _load_cifar, dataset_info

    info = dataset_info(dataset)
    ds = DigitsDataset(train=True) if dataset == "digits" else _load_cifar(dataset, data_dir, True, False)
    ds.transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2, drop_last=True,
                                       persistent_workers=True)


def _peak_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def bench_paths(name: str, device: torch.device, dataset: str, data_dir: str, batch: int, steps: int,
                compile_model: bool, rounds: int = 3) -> dict[str, Any]:
    """Training images/s of one CIFAR model through (a) the reference pipeline (torchvision dataset,
    PIL, 2 workers, fp32, NCHW), (b) the suite's default path on this device, (c) the fast path
    (device-resident data, channels_last, bf16 autocast [, torch.compile])."""
    from we.data import build_data

    num_classes = 100 if dataset == "cifar100" else 10
    default_path = "device" if device.type == "cuda" else "loader"
    paths = {
        "reference": dict(data=None, channels_last=False, amp=False, compile=False),
        "default": dict(data=default_path, channels_last=False, amp=False, compile=False),
        "fast": dict(data="device", channels_last=True, amp=True, compile=compile_model),
    }
    row: dict[str, Any] = {"model": name, "dataset": dataset, "batch": batch}
    pipes: dict[str, dict[str, Any]] = {}
    for label, p in paths.items():
        torch.manual_seed(0)
        model = models.create(name, num_classes=num_classes).to(device)
        if p["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        if p["data"] is None:
            batches = reference_loader(dataset, data_dir, batch)
        else:
            batches = build_data(dataset, data_dir, batch_size=batch, data_path=p["data"], device=device,
                                 workers=2, download=False, drop_last=True).train
        model.train()
        pipes[label] = {"model": torch.compile(model) if p["compile"] else model, "batches": batches,
                        "iter": iter(batches), "amp": p["amp"], "channels_last": p["channels_last"],
                        "opt": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)}

    def train_step(pipe: dict[str, Any]) -> None:
        try:
            x, y = next(pipe["iter"])
        except StopIteration:
            pipe["iter"] = iter(pipe["batches"])
            x, y = next(pipe["iter"])
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if pipe["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        sgd_step(pipe["model"], pipe["opt"], x, y, amp=pipe["amp"])

    # The paths take turns: each round gives every path two untimed steps (workers start or drain
    # what they prefetched, cuDNN and compile tune), then `steps` timed ones; the median round counts.
    rates: dict[str, list[float]] = {label: [] for label in pipes}
    for _ in range(rounds):
        for label, pipe in pipes.items():
            for _ in range(2):
                train_step(pipe)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                train_step(pipe)
            _sync(device)
            rates[label].append(steps * batch / (time.perf_counter() - t0))
    for label in paths:
        row[f"{label}_img_s"] = statistics.median(rates[label])
    del pipes["reference"], pipes["default"]  # the fast path's peak memory, alone on the device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        train_step(pipes["fast"])
    row["fast_peak_mb"] = _peak_memory_mb(device)
    del pipes
    row["fast_over_reference"] = row["fast_img_s"] / row["reference_img_s"]
    row["default_over_reference"] = row["default_img_s"] / row["reference_img_s"]
    return row


def paths_markdown(rows: list[dict[str, Any]], compile_model: bool) -> str:
    fast = "device data + channels_last + bf16" + (" + compile" if compile_model else "")
    lines = [f"## Training images/s by input path ({rows[0]['dataset']}, batch {rows[0]['batch']})", "",
             f"reference: torchvision dataset + PIL + 2 workers, fp32, NCHW; default: the suite's default "
             f"path here; fast: {fast}.", "",
             "| model | reference | default | fast | default / reference | fast / reference | peak MB (fast) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = "-" if r["fast_peak_mb"] is None else f"{r['fast_peak_mb']:,.0f}"
        lines.append(f"| {r['model']} | {r['reference_img_s']:,.0f} | {r['default_img_s']:,.0f} | "
                     f"{r['fast_img_s']:,.0f} | {r['default_over_reference']:.2f}x | {r['fast_over_reference']:.2f}x | "
                     f"{peak} |")
    return "\n".join(lines) + "\n"


def grid_costs(rows: list[dict[str, Any]], path_rows: list[dict[str, Any]], device_label: str) -> list[dict[str, Any]]:
    """Estimated device-hours of every grid in experiments/ from the images/s measured here (the fast
    path where measured, else the model-only throughput), as `python -m we.grid plan` computes them."""
    from we.grid import GRID_DIR, Throughput, gpu_hours, load_grid, resolve_cells

    measured = {(r["model"], ""): r["train_img_s"] for r in rows}
    measured.update({(r["model"], ""): r["fast_img_s"] for r in path_rows})
    throughput = Throughput(measured, f"make bench on {device_label}")
    out = []
    for path in sorted(GRID_DIR.glob("*.yaml")):
        grid = load_grid(path)
        cells = resolve_cells(grid) if grid.train else []
        out.append({"grid": grid.name, "cells": len(cells),
                    "hours": sum(gpu_hours(c, throughput) for c in cells)})
    return out


def costs_markdown(costs: list[dict[str, Any]], device_label: str) -> str:
    lines = [f"## Estimated cost of every grid on {device_label} (cells x epochs x measured time per epoch)", "",
             "| grid | cells | device-hours |", "|---|---|---|"]
    lines += [f"| {c['grid']} | {c['cells']} | {c['hours']:,.1f} |" for c in costs]
    lines += [f"| all | {sum(c['cells'] for c in costs)} | {sum(c['hours'] for c in costs):,.1f} |", "",
              "Cells that several grids share (Table 2's runs in Tables 5-8 and the figures) are counted "
              "in each grid here; `python -m we.grid submit` trains them once."]
    return "\n".join(lines) + "\n"


def to_markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    cols = [("model", "model"), ("params", "params"), ("read_ms", "read all weights (ms)"),
            ("evolved", "units evolved"), ("we_paper_ms", "WE paper step (ms)"),
            ("we_official_ms", "WE official step (ms)"),
            ("we_loop_ms", "per-filter loop (ms)"), ("we_over_read", "paper step / read"),
            ("official_over_read", "official step / read"),
            ("batch", "batch"), ("train_img_s", "train images/s"),
            ("we_epoch_overhead_pct", "WE step per epoch (%)")]
    lines = [f"# Bench on {header['device']} ({header['date']})", "",
             f"torch {header['versions']['torch']}, torchvision {header['versions']['torchvision']}, "
             f"{header['hardware']['cpu_count']} CPUs, {header['hardware']['torch_threads']} torch threads, "
             f"commit {header['git_commit']}", "",
             "| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            cells.append("-" if v is None else f"{v:,.3g}" if isinstance(v, float) and v < 1 else f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                         else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m we.bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--models", nargs="*", default=None, help="zoo models (default: all)")
    p.add_argument("--batch", type=int, default=128, help="CIFAR batch size")
    p.add_argument("--imagenet-batch", type=int, default=None, help="default 256 on GPU, 16 on CPU")
    p.add_argument("--iters", type=int, default=3, help="timed training steps per model")
    p.add_argument("--no-loop", action="store_true", help="skip the per-filter loop implementation")
    p.add_argument("--methods-model", default=None, help="model for the method-overhead table "
                   "(default resnet20 on CPU, mobilenetv1 on GPU, as the paper's overhead figures)")
    p.add_argument("--no-methods", action="store_true", help="skip the method-overhead table")
    p.add_argument("--no-paths", action="store_true", help="skip the input-path throughput table")
    p.add_argument("--paths-dataset", default=None, help="cifar10 when present in --data-dir, else digits")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--steps", type=int, default=None, help="timed steps per input path (default 20 GPU, 3 CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile on the fast path")
    p.add_argument("--accuracy-epochs", type=int, default=0, help="also train --accuracy-model this many "
                   "epochs on the loader path (fp32) and on the fast path, to compare final top-1 (0: skip)")
    p.add_argument("--accuracy-seeds", type=int, default=3)
    p.add_argument("--accuracy-model", default="resnet56")
    p.add_argument("--accuracy-only", action="store_true", help="only the accuracy check, written to "
                   "results/bench/<device>-accuracy.md and .json")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "bench"))
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.accuracy_only and args.accuracy_epochs < 1:
        p.error("--accuracy-only needs --accuracy-epochs >= 1")
    imagenet_batch = args.imagenet_batch or (256 if device.type == "cuda" else 16)
    names = args.models or models.list_models()
    header = {"device": device_name(device), "date": datetime.now(timezone.utc).date().isoformat(),
              **provenance(device)}
    dataset = args.paths_dataset or ("cifar10" if (Path(args.data_dir) / "cifar-10-batches-py").is_dir()
                                     else "digits")
    if args.accuracy_only:
        accuracy_report(args, device, dataset, header)
        return 0
    rows = []
    for name in names:
        batch = imagenet_batch if models.model_info(name).family == "imagenet" else args.batch
        row = bench_model(name, device, batch, args.iters, loop=not args.no_loop)
        rows.append(row)
        print(f"{name}: WE paper {row['we_paper_ms']:.2f} ms, official {row['we_official_ms']:.2f} ms, "
              f"read {row['read_ms']:.2f} ms, train {row['train_img_s']:.0f} img/s", flush=True)
    md = to_markdown(rows, header)
    path_rows: list[dict[str, Any]] = []
    if not args.no_paths:
        steps = args.steps or (20 if device.type == "cuda" else 3)
        for name in names:
            if models.model_info(name).family == "cifar":
                path_rows.append(bench_paths(name, device, dataset, args.data_dir, args.batch, steps, args.compile))
                r = path_rows[-1]
                print(f"{name}: reference {r['reference_img_s']:.0f}, default {r['default_img_s']:.0f}, "
                      f"fast {r['fast_img_s']:.0f} img/s", flush=True)
        if path_rows:
            md += "\n" + paths_markdown(path_rows, args.compile)
    costs = grid_costs(rows, path_rows, header["device"])
    md += "\n" + costs_markdown(costs, header["device"])
    method_rows: list[dict[str, Any]] = []
    if not args.no_methods:
        mmodel = args.methods_model or ("mobilenetv1" if device.type == "cuda" else "resnet20")
        method_rows = bench_methods(mmodel, device)
        md += "\n" + methods_markdown(method_rows, mmodel, 50_000)
    print(md)
    write_report(Path(args.out), header["device"], md, {"header": header, "rows": rows, "paths": path_rows,
                                                        "grid_costs": costs, "methods": method_rows})
    if args.accuracy_epochs:
        accuracy_report(args, device, dataset, header)
    return 0


def write_report(out: Path, name: str, md: str, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(md)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out / (name + '.md')}")


def accuracy_report(args: argparse.Namespace, device: torch.device, dataset: str, header: dict[str, Any]) -> None:
    """The accuracy check, in its own report: `<device>-accuracy.md` and `.json`."""
    acc = bench_accuracy(args.accuracy_model, device, dataset, args.data_dir, args.accuracy_epochs,
                         args.accuracy_seeds)
    md = (f"# Accuracy by input path on {header['device']} ({header['date']})\n\n"
          f"torch {header['versions']['torch']}, commit {header['git_commit']}\n\n" + accuracy_markdown(acc))
    print(md)
    write_report(Path(args.out), f"{header['device']}-accuracy", md, {"header": header, "accuracy": acc})


if __name__ == "__main__":
    raise SystemExit(main())

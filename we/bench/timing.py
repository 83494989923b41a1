"""Timing helpers and the per-model bench: WE step vs one weights pass, training images/s."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

import models
from we.core.hook import WeightEvolution
from we.core.paper_step import evolve
from we.core.reference import evolve_reference


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], Any], device: torch.device, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of `fn` over `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync_device(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync_device(device)
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
            sync_device(device)
            t0 = time.perf_counter()
            fn()
            sync_device(device)
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

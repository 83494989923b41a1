"""Every method through the real trainer: its overhead per epoch; and the fast path's accuracy check."""
from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from we.methods import METHODS, method_presets
from we.report.stats import mean_std, mean_std_n, welch_p
from we.rundir import read_metrics, read_result
from we.train.config import load_config
from we.train.trainer import main as train_main


def method_runs() -> dict[str, list[str]]:
    """Trainer overrides per registered method that make it act within a short run (its plug-in's
    `bench_overrides`), labelled by the preset they equal; then the baseline again (the timing noise)."""
    presets = method_presets()
    runs = {}
    for name, cls in METHODS.items():
        overrides = {"method": name, **cls.bench_overrides}
        label = next((label for label, preset in presets.items() if preset == overrides), name)
        runs[label] = [f"{k}={v}" for k, v in overrides.items()]
    runs["baseline (repeat)"] = ["method=baseline"]  # the same run again: the timing noise of this table
    return runs


def train_quietly(overrides: list[str]) -> None:
    """One run of the real trainer with these config overrides, its progress output dropped."""
    with contextlib.redirect_stdout(io.StringIO()):
        train_main(load_config(None, overrides))


def bench_methods(model: str, device: torch.device, epochs: int = 4, limit_train: int = 1024,
                  epoch_images: int = 50_000) -> list[dict[str, Any]]:
    """Each method through the real trainer on digits: its extra cost per CIFAR-size epoch vs the baseline.

    Step cost: the fastest epoch's training time per image (after the first epoch, which pays
    one-off costs); epoch-end cost: the epoch-end hook's mean time (`method_seconds`); both are
    scaled to an epoch of `epoch_images` images.
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, extra) in enumerate(method_runs().items()):
            train_quietly(["dataset=digits", f"model={model}", f"epochs={epochs}", f"device={device}",
                           f"limit_train={limit_train}", "progress=plain", "workers=0", f"out={tmp}/{i}", *extra])
            history = read_metrics(Path(tmp, str(i)))
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
                top1[label].append((read_result(Path(tmp, f"{seed}-{i}")) or {}).get("final_top1"))
    reference, fast = top1.values()
    return {"model": model, "dataset": dataset, "epochs": epochs, "top1": top1,
            "difference": mean_std_n(fast)[0] - mean_std_n(reference)[0], "welch_p": welch_p(fast, reference)}


def accuracy_markdown(acc: dict[str, Any]) -> str:
    lines = [f"## Final top-1 by input path ({acc['model']}, {acc['dataset']}, {acc['epochs']} epochs, "
             f"{len(next(iter(acc['top1'].values())))} seeds)", "",
             "| path | top-1 mean ± std | per seed |", "|---|---|---|"]
    for label, values in acc["top1"].items():
        lines.append(f"| {label} | {mean_std(values)} | "
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

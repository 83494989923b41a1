"""Training images/s of one CIFAR model through the reference loop, the default and the fast input paths."""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch

import models
from we.bench.timing import sync_device, sgd_step
from we.train.datasets import DigitsDataset, load_cifar, dataset_info
from we.train.fashion_mnist import FashionMNISTDataset
from we.train.pipeline import build_data


def reference_loader(dataset: str, data_dir: str, batch: int) -> torch.utils.data.DataLoader:
    """The authors' input pipeline: the torchvision dataset, PIL transforms, 2 DataLoader workers."""
    from torchvision import transforms


    info = dataset_info(dataset)
    if dataset == "digits":
        ds = DigitsDataset(train=True)
    elif dataset == "fashion_mnist":
        ds = FashionMNISTDataset(data_dir, train=True, download=False)
    else:
        ds = load_cifar(dataset, data_dir, True, False)
    ds.transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2, drop_last=True,
                                       persistent_workers=True)


def _peak_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


PATHS = {  # the three input paths: where the data comes from, and the speed switches
    "reference": dict(data=None, channels_last=False, amp=False, compile=False),
    "default": dict(data="default", channels_last=False, amp=False, compile=False),
    "fast": dict(data="device", channels_last=True, amp=True, compile=None),  # compile: the --compile option
}


def _pipe(name: str, path: dict[str, Any], device: torch.device, dataset: str, data_dir: str, batch: int,
          compile_model: bool) -> dict[str, Any]:
    """One input path's model, optimizer and batches, ready to train."""
    num_classes = 100 if dataset == "cifar100" else 10
    torch.manual_seed(0)
    model = models.create(name, num_classes=num_classes).to(device)
    if path["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    data = ("device" if device.type == "cuda" else "loader") if path["data"] == "default" else path["data"]
    if data is None:
        batches = reference_loader(dataset, data_dir, batch)
    else:
        batches = build_data(dataset, data_dir, batch_size=batch, data_path=data, device=device,
                             workers=2, download=False, drop_last=True).train
    model.train()
    compiled = compile_model if path["compile"] is None else path["compile"]
    return {"model": torch.compile(model) if compiled else model, "batches": batches,
            "iter": iter(batches), "amp": path["amp"], "channels_last": path["channels_last"],
            "opt": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)}


def _train_step(pipe: dict[str, Any], device: torch.device) -> None:
    """One training step of a path on its next batch (its batches start again when they run out)."""
    try:
        x, y = next(pipe["iter"])
    except StopIteration:
        pipe["iter"] = iter(pipe["batches"])
        x, y = next(pipe["iter"])
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if pipe["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    sgd_step(pipe["model"], pipe["opt"], x, y, amp=pipe["amp"])


def _rounds(pipes: dict[str, dict[str, Any]], device: torch.device, batch: int, steps: int,
            rounds: int) -> dict[str, float]:
    """Median images/s of each path over `rounds` rounds. The paths take turns: each round gives every path two
    untimed steps (workers start or drain what they prefetched, cuDNN and compile tune), then `steps` timed ones."""
    rates: dict[str, list[float]] = {label: [] for label in pipes}
    for _ in range(rounds):
        for label, pipe in pipes.items():
            for _ in range(2):
                _train_step(pipe, device)
            sync_device(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                _train_step(pipe, device)
            sync_device(device)
            rates[label].append(steps * batch / (time.perf_counter() - t0))
    return {label: statistics.median(r) for label, r in rates.items()}


def bench_paths(name: str, device: torch.device, dataset: str, data_dir: str, batch: int, steps: int,
                compile_model: bool, rounds: int = 3) -> dict[str, Any]:
    """Training images/s of one CIFAR model through (a) the reference pipeline (torchvision dataset,
    PIL, 2 workers, fp32, NCHW), (b) the suite's default path on this device, (c) the fast path
    (device-resident data, channels_last, bf16 autocast [, torch.compile])."""
    pipes = {label: _pipe(name, path, device, dataset, data_dir, batch, compile_model) for label, path in PATHS.items()}
    row: dict[str, Any] = {"model": name, "dataset": dataset, "batch": batch}
    row.update({f"{label}_img_s": rate for label, rate in _rounds(pipes, device, batch, steps, rounds).items()})
    del pipes["reference"], pipes["default"]  # the fast path's peak memory, alone on the device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        _train_step(pipes["fast"], device)
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

"""Seed arrays against solo runs: training images/s per seed for K seeds in one fused array and K solo runs
one after another, with the peak memory of each (`make bench`'s seed-array table).

The array trains with the engine's own pieces (`we.train.array_run.fused_training`: a `SeedArray` and its
fused optimizer; `SeedArray.train_step` is the step, on the members' batches stacked as the trainer stacks
them); a solo run trains with the recipe's optimizer and the trainer's solo step (`sgd_step`). Inputs are
synthetic CIFAR-size batches, one per seed (throughput does not depend on pixel values). Per-seed images/s
= the images one seed trains / the wall time the K seeds take (the array's, or the K solo runs' together):
the rate at which each cell of a grid advances (array / solo > 1: the array is faster).
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

import models
from we.bench.timing import sgd_step, sync_device
from we.errors import InputError
from we.grid.cost import ARRAY_RATE_KEY, SOLO_RATE_KEY
from we.train.array_run import fused_training, stack_batches
from we.train.config import Config, load_config
from we.train.optim import build_optimizer

DEFAULT_KS = (1, 2, 5, 10)
DEFAULT_MODELS = ("resnet20", "resnet56", "mobilenetv2")
ARRAYS_HEADING = "## Seed arrays"  # the table's heading in <device>.md (`--arrays-only` replaces the section)
ARRAY_STEPS = {"cuda": 20, "cpu": 2}  # timed steps per array and per solo run (fewer on a CPU: a short bench)
ARRAY_WARMUP = {"cuda": 3, "cpu": 1}  # untimed steps before them (cuDNN tuning, first-call costs)
MEMORY_MARGIN = 1.5  # CPU: an array of K starts when K x one solo run's peak x this fits in the available memory
CPU_MEMORY = "resident-set growth (Linux /proc/self/statm sampled every 5 ms, freed heap trimmed first)"
CUDA_MEMORY = "torch.cuda.max_memory_allocated above what was allocated before"


@dataclass(frozen=True)
class ArrayPlan:
    """What the table measures: models, seed counts, timed and untimed steps per run, batch."""

    models: tuple[str, ...]
    ks: tuple[int, ...]
    steps: int
    warmup: int
    batch: int


def _kind(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "cpu"


def _whole(option: str, value: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(option, option.lstrip("-").replace("-", "_"), f"{what} must be a whole number >= 1, got {value!r}")
    return n


def parse_plan(ks: list[str] | None, names: list[str] | None, steps: str | None, batch: int,
               device: torch.device) -> ArrayPlan:
    """The table's plan from the command line's strings (None: the default); a bad value is an InputError
    naming the option."""
    counts = tuple(_whole("--arrays-k", k, "seeds per array") for k in ks) if ks else DEFAULT_KS
    if len(set(counts)) != len(counts):
        raise InputError("--arrays-k", "arrays_k", f"each K once, got {' '.join(map(str, counts))}")
    cifar = models.list_models("cifar")
    for name in names or ():
        if name not in cifar:
            raise InputError("--arrays-models", "arrays_models", f"{name!r} is not a CIFAR zoo model; "
                             f"one of {', '.join(cifar)}")
    if batch < 1:
        raise InputError("--batch", "batch", f"must be >= 1, got {batch}")
    timed = _whole("--arrays-steps", steps, "timed steps") if steps is not None else ARRAY_STEPS[_kind(device)]
    return ArrayPlan(tuple(names or DEFAULT_MODELS), tuple(sorted(counts)), timed, ARRAY_WARMUP[_kind(device)], batch)


def memory_method(device: torch.device) -> str:
    """How the table measures peak memory on `device`."""
    if device.type == "cuda":
        return CUDA_MEMORY
    return CPU_MEMORY if os.path.exists("/proc/self/statm") else "n/a (no /proc/self/statm here)"


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _trim_heap() -> None:
    """Give freed heap back to the system (glibc), so that a run's resident-set growth is its own."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """The peak memory (MB) the block adds on `device` (`memory_method`); `mb` is None where not measured."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mb, self._peak = device, None, 0.0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        elif os.path.exists("/proc/self/statm"):
            _trim_heap()
            self._start = self._peak = _resident_mb()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _resident_mb())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._start
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.mb = max(self._peak, _resident_mb()) - self._start


def available_mb() -> float | None:
    """MemAvailable of /proc/meminfo in MB (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            line = next(line for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def _seed_models(name: str, seeds: range, device: torch.device) -> list[nn.Module]:
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(models.create(name, num_classes=10).to(device).train())
    return out


def _batches(k: int, batch: int, name: str, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One synthetic batch per seed, of the model's input size."""
    size = models.model_info(name).input_size
    g = torch.Generator().manual_seed(k)
    return [(torch.randn(batch, 3, size, size, generator=g).to(device),
             torch.randint(0, 10, (batch,), generator=g).to(device)) for _ in range(k)]


def solo_steps(cfg: Config, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
               first_seed: int = 0) -> tuple[list[Callable[[], int]], float | None]:
    """One solo run per seed (its model and the recipe's optimizer): a training step of each (the trainer's solo
    step, returning the images it trained), and the first run's peak memory over its build and one step."""
    steps = []
    peak = None
    for seed, (x, y) in enumerate(batches, start=first_seed):
        with PeakMemory(device) as mem:
            (model,) = _seed_models(cfg.model, range(seed, seed + 1), device)
            opt = build_optimizer(cfg, model)
            steps.append(functools.partial(_solo_step, model, opt, x, y))
            steps[-1]()
        peak = mem.mb if peak is None else peak
    return steps, peak


def _solo_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> int:
    sgd_step(model, opt, x, y)
    return y.shape[0]


def array_step(cfg: Config, batches: list[tuple[torch.Tensor, torch.Tensor]],
               device: torch.device) -> tuple[Callable[[], int], float | None]:
    """One array of the K seeds (the engine's `fused_training`): its fused step (the members' batches stacked as
    the trainer stacks them, `SeedArray.train_step`; returns the images all seeds trained), and its peak memory
    over its build and one step."""
    with PeakMemory(device) as mem:
        array, fused = fused_training(cfg, _seed_models(cfg.model, range(len(batches)), device))

        def step() -> int:
            x, y = stack_batches(batches, 0)
            array.train_step(fused, x, y)
            return y.numel()

        step()
    return step, mem.mb


def timed(step: Callable[[], int], device: torch.device) -> tuple[float, int]:
    """Wall seconds of one call of `step` (the device synchronised on both sides) and the images it trained."""
    sync_device(device)
    t0 = time.perf_counter()
    images = step()
    sync_device(device)
    return time.perf_counter() - t0, images


def race(array: Callable[[], int], solos: list[Callable[[], int]], plan: ArrayPlan,
         device: torch.device) -> tuple[tuple[float, int], tuple[float, int]]:
    """`plan.warmup` untimed then `plan.steps` timed steps of the array and of every solo run, taking turns step
    by step (a shared machine's slow phases hit both alike): (seconds, images) of the array, and of the K solo
    runs summed: the time they take one after another."""
    for _ in range(plan.warmup - 1):  # the builds took one step each
        for step in (array, *solos):
            step()
    totals = [[0.0, 0], [0.0, 0]]
    for _ in range(plan.steps):
        for which, step in ((0, array), *((1, s) for s in solos)):
            seconds, images = timed(step, device)
            totals[which][0] += seconds
            totals[which][1] += images
    return (totals[0][0], totals[0][1]), (totals[1][0], totals[1][1])


def array_row(name: str, k: int, plan: ArrayPlan, array: tuple[float, int], solo: tuple[float, int],
              peaks: tuple[float | None, float | None]) -> dict[str, Any]:
    """One (model, K) row: per-seed images/s of the array and of the K solo runs, their ratio, peak memory."""
    (array_s, array_images), (solo_s, solo_images) = array, solo
    per_seed = array_images / k  # each seed trains as many images in the array as in its solo run
    row = {"model": name, "k": k, "batch": plan.batch, "steps": plan.steps, "images_per_seed": per_seed,
           "array_s": array_s, "solo_s": solo_s, ARRAY_RATE_KEY: per_seed / array_s,
           SOLO_RATE_KEY: (solo_images / k) / solo_s, "array_peak_mb": peaks[0], "solo_peak_mb": peaks[1]}
    row["array_over_solo"] = row[ARRAY_RATE_KEY] / row[SOLO_RATE_KEY]
    return row


def skipped_row(name: str, k: int, plan: ArrayPlan, why: str) -> dict[str, Any]:
    return {"model": name, "k": k, "batch": plan.batch, "steps": plan.steps, "skipped": why}


def memory_refusal(k: int, solo_mb: float | None, device: torch.device) -> str | None:
    """On a CPU, why an array of K would not fit in the available memory (None: it fits, or unknown)."""
    free = available_mb() if device.type == "cpu" else None
    if solo_mb is None or free is None or k * solo_mb * MEMORY_MARGIN <= free:
        return None
    return f"needs about {k * solo_mb * MEMORY_MARGIN / 1024:.1f} GB, {free / 1024:.1f} GB available"


def bench_k(cfg: Config, k: int, plan: ArrayPlan, device: torch.device) -> dict[str, Any]:
    """The row of one K: K solo runs and one array of K seeds, built, then raced."""
    batches = _batches(k, plan.batch, cfg.model, device)
    first, solo_mb = solo_steps(cfg, batches[:1], device)
    why = memory_refusal(k, solo_mb, device)
    if why:
        return skipped_row(cfg.model, k, plan, why)
    rest, _ = solo_steps(cfg, batches[1:], device, first_seed=1)
    array, array_mb = array_step(cfg, batches, device)
    return array_row(cfg.model, k, plan, *race(array, first + rest, plan, device), (array_mb, solo_mb))


def bench_arrays(name: str, device: torch.device, plan: ArrayPlan,
                 done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """The rows of one model, one per K of `plan`, each printed (and handed to `done`) when measured."""
    cfg = load_config(None, [f"model={name}", f"batch_size={plan.batch}"])
    rows = []
    for k in plan.ks:
        try:
            rows.append(bench_k(cfg, k, plan, device))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append(skipped_row(name, k, plan, "out of memory"))
        _progress(rows[-1])
        if done is not None:
            done(rows[-1])
    return rows


def arrays_table(plan: ArrayPlan, device: torch.device,
                 write: Callable[[str, dict[str, Any]], None] | None = None) -> tuple[str, dict[str, Any]]:
    """Every model's rows: the markdown table and the bench JSON's section; `write(markdown, section)` after each
    row (until the last, the table says how many rows it still lacks: a stopped run keeps what it measured)."""
    before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    total = len(plan.models) * len(plan.ks)

    def table() -> tuple[str, dict[str, Any]]:
        load = (before, os.getloadavg()[0])
        section = {"batch": plan.batch, "steps": plan.steps, "warmup": plan.warmup,
                   "memory": memory_method(device), "load_average": list(load), "rows": list(rows)}
        if len(rows) < total:
            section["partial"] = f"{len(rows)} of {total} rows measured"
        return arrays_markdown(rows, plan, device, load, section.get("partial")), section

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        if write is not None and len(rows) < total:
            write(*table())

    for name in plan.models:
        bench_arrays(name, device, plan, done)
    return table()


def _progress(row: dict[str, Any]) -> None:
    if row.get("skipped"):
        print(f"{row['model']} x{row['k']}: skipped ({row['skipped']})", flush=True)
    else:
        print(f"{row['model']} x{row['k']}: {row[ARRAY_RATE_KEY]:.1f} img/s per seed in the array, "
              f"{row[SOLO_RATE_KEY]:.1f} in {row['k']} solo runs ({row['array_over_solo']:.2f}x)", flush=True)


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def arrays_markdown(rows: list[dict[str, Any]], plan: ArrayPlan, device: torch.device,
                    load: tuple[float, float] | None = None, partial: str | None = None) -> str:
    """The seed-array table: per (model, K) the per-seed images/s of the array and of K solo runs, their
    ratio, the array's images/s over all seeds, and peak memory."""
    lines = [f"{ARRAYS_HEADING}: training images/s per seed, K seeds in one array vs K solo runs (batch {plan.batch})",
             "", f"{plan.steps} timed step(s) after {plan.warmup} untimed per run (array or solo"
             + ("; fewer than a GPU's to keep the bench short" if plan.steps < ARRAY_STEPS["cuda"] else "")
             + "), the array's and the solo runs' steps taking turns; per seed = the images one seed trains / the "
             "wall time of the K seeds (the K solo runs' times summed: one after another); peak memory over a run's "
             "build and first step: " + memory_method(device) + ".",
             "", "| model | K | per seed, array | per seed, K solo runs | array / solo | all seeds, array "
             "| peak MB, array | peak MB, one solo run |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {r['k']} | skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['k']} | {r[ARRAY_RATE_KEY]:,.1f} | {r[SOLO_RATE_KEY]:,.1f} | "
                     f"{r['array_over_solo']:.2f}x | {r['k'] * r[ARRAY_RATE_KEY]:,.0f} | {_mb(r['array_peak_mb'])} | "
                     f"{_mb(r['solo_peak_mb'])} |")
    lines += ["", verdict(rows)]
    if partial:
        lines.append(f"Partial table: {partial} (the run was stopped, or is still running).")
    if load is not None:
        lines.append(f"Load average of this machine before / after the table: {load[0]:.1f} / {load[1]:.1f}.")
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict[str, Any]]) -> str:
    """One line: whether arrays of 2 or more seeds were faster per seed than their solo runs here."""
    ratios = [r["array_over_solo"] for r in rows if not r.get("skipped") and r["k"] > 1]
    if not ratios:
        return "No array of 2 or more seeds was measured."
    word = ("faster than" if min(ratios) > 1 else "slower than" if max(ratios) < 1 else "as fast as, or either side of")
    return (f"Arrays of 2 or more seeds were {word} their solo runs here: array / solo "
            f"{min(ratios):.2f}x to {max(ratios):.2f}x.")

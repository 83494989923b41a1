"""The GPU-hour estimate of a grid's cells (`python -m we.grid plan`), and the size of a grid for
the local executor's CPU guard.

Training images/s per model come from the newest GPU bench in the checkout's results/bench/
(`make bench`), else from the zoo's registered defaults (`register_model(images_per_s=...)`, not
measurements); a cell's GPU-hours = its training images over the run x the method's cost factor
(the method plug-in's `cost`: FG-n trains n networks, RL one extra forward, ONI a heavier conv) /
one GPU's images per second.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import models
from we.files import REPO_ROOT
from we.grid.identity import Cell
from we.grid.schema import display_path
from we.methods import METHODS, cost_factor
from we.train.datasets import DATASET_SPECS

FALLBACK_IMAGES_PER_S = 5_000.0  # a model that neither results/bench/ nor the zoo gives a throughput for
BENCH_DIR = REPO_ROOT / "results" / "bench"  # where `make bench` writes <device>.json and the estimate reads it
CPU_BENCH = "cpu.json"  # `make bench` on a machine without a GPU: its training images/s on that CPU
ACCURACY_SUFFIX = "-accuracy.json"  # `make bench --accuracy-only`'s report beside it: no throughput in it
ARRAY_SECTION = "arrays"  # the bench JSON's seed-array table (we/bench/arrays.py): {"rows": [{"model", "k", ...}]}
ARRAY_RATE_KEY = "array_seed_img_s"  # a row's training images/s per seed in one array of `k` seeds
SOLO_RATE_KEY = "solo_seed_img_s"  # the same row's images/s per seed of `k` solo runs one after another
# Where no bench measured a model's seed arrays on a device kind: an array of K seeds is taken to train as
# fast as its K solo runs one after another (no speed-up: none is claimed without a measurement).
DEFAULT_ARRAY_SPEEDUP = 1.0
DEVICE_KINDS = ("cpu", "cuda")
# A cell's wall time besides its training images at the bench's images/s: the process start, the data
# set-up, the evaluations and checkpoints, smaller batches than the bench's 128. On the idle 2-core CPU of
# results/bench/cpu.json a demo cell (ResNet-20, 5 digits epochs of 1437 images, batch 64) takes about 29 s:
# 4.4 s of training and 0.4 s of evaluation an epoch, 5 s to start; 15 s of it at the bench's images/s.
CELL_OVERHEAD_S = 14.0
DEFAULT_SOURCE = "the zoo's default throughputs (register_model in models/; not a measurement)"
# The local executor refuses, on a machine without a GPU and without --allow-cpu-marathon, to start
# cells that together train on more than this many 32x32-image passes (epochs x training images x
# method cost factor, an ImageNet image counting (image_size/32)^2): 40 epochs of full CIFAR, hours
# on a CPU. `make demo` (digits, 5 epochs, 8 cells) is about 57,000.
CPU_MARATHON_IMAGES = 2_000_000


def default_images_per_s(model: str) -> float:
    """The training throughput (images/s) the estimate assumes for a model no bench measured: its
    registered default (`register_model(images_per_s=...)`), else FALLBACK_IMAGES_PER_S."""
    info = models.model_info(model) if model in models.list_models() else None
    return info.images_per_s if info is not None and info.images_per_s is not None else FALLBACK_IMAGES_PER_S


@dataclass
class Throughput:
    """One device kind's training images/s per (model, dataset), where they come from, and the bench folder
    whose seed-array table (if any) gives that kind's array rates (`array_cost`)."""
    images_per_s: dict[tuple[str, str], float]
    source: str
    device_kind: str = "cuda"
    bench_dir: Path | None = None

    def lookup(self, model: str, dataset: str) -> tuple[float, str]:
        for key in ((model, dataset), (model, "")):
            if key in self.images_per_s:
                return self.images_per_s[key], self.source
        return default_images_per_s(model), DEFAULT_SOURCE


def _bench_entries(obj: Any) -> Iterable[dict[str, Any]]:
    if isinstance(obj, dict):
        if isinstance(obj.get("model"), str):
            yield obj
        for value in obj.values():
            yield from _bench_entries(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _bench_entries(value)


def bench_file(device_kind: str, bench_dir: Path | None = None) -> Path | None:
    """The bench JSON the estimates read for a device kind (None: there is none): 'cpu': results/bench/cpu.json;
    'cuda': the newest other results/bench/*.json (`make bench` names it after the GPU; accuracy reports left out)."""
    if device_kind not in DEVICE_KINDS:
        raise ValueError(f"device kind must be one of {', '.join(DEVICE_KINDS)}, got {device_kind!r}")
    bench_dir = Path(BENCH_DIR if bench_dir is None else bench_dir)
    if device_kind == "cpu":
        return bench_dir / CPU_BENCH if (bench_dir / CPU_BENCH).is_file() else None
    files = sorted((p for p in bench_dir.glob("*.json") if p.name != CPU_BENCH and not p.name.endswith(ACCURACY_SUFFIX)),
                   key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def load_throughput(bench_dir: Path | None = None) -> Throughput:
    """Training images/s per model from the newest GPU results/bench/*.json (`make bench`: entries with
    `model` and `train_img_s` or `images_per_s`, optionally `dataset`; baseline entries win over
    others); models it lacks fall back to `default_images_per_s`."""
    # GPU-hours: a CPU measurement (results/bench/cpu.json) says nothing about a GPU's throughput
    newest = bench_file("cuda", bench_dir)
    if newest is None:
        return Throughput({}, DEFAULT_SOURCE, "cuda", bench_dir)
    try:
        data = json.loads(newest.read_text())
    except (OSError, json.JSONDecodeError):
        return Throughput({}, f"{DEFAULT_SOURCE}; {display_path(newest)} unreadable", "cuda", bench_dir)
    table: dict[tuple[str, str], float] = {}
    ranked = sorted(_bench_entries(data), key=lambda e: e.get("method", "baseline") == "baseline")
    for entry in ranked:  # baseline entries come last and win
        ips = next((entry[k] for k in ("train_img_s", "images_per_s", "train_images_per_s") if
                    isinstance(entry.get(k), (int, float)) and entry[k] > 0), None)
        if ips is None:
            continue
        table[(entry["model"], str(entry.get("dataset", "")))] = float(ips)
        table.setdefault((entry["model"], ""), float(ips))
    device = data.get("header", {}).get("device") if isinstance(data, dict) else None
    return Throughput(table, display_path(newest) + (f" ({device})" if device else ""), "cuda", bench_dir)


def load_cpu_throughput(bench_dir: Path | None = None) -> Throughput | None:
    """Training images/s per model on the CPU of results/bench/cpu.json (`make bench` without a GPU), with
    its core count in the source; None when there is no readable CPU bench."""
    path = Path(BENCH_DIR if bench_dir is None else bench_dir) / CPU_BENCH
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    table = {(e["model"], ""): float(e["train_img_s"]) for e in _bench_entries(data)
             if isinstance(e.get("train_img_s"), (int, float)) and e["train_img_s"] > 0}
    header = data.get("header", {}) if isinstance(data, dict) else {}
    cores = (header.get("hardware") or {}).get("cpu_count")
    where = ", ".join(str(v) for v in (f"{cores} cores" if cores else None, header.get("date")) if v)
    source = display_path(path) + (f" ({where})" if where else "")
    return Throughput(table, source, "cpu", bench_dir) if table else None


def wall_seconds(cell: Cell, throughput: Throughput) -> float:
    """Estimated wall time of one cell on one device of `throughput`: its training images over the run, times
    the method's cost factor, / the device's images per second, plus CELL_OVERHEAD_S."""
    cfg = cell.config
    ips, _ = throughput.lookup(cfg["model"], cfg["dataset"])
    return cfg["epochs"] * train_images(cell) * cost_factor(cfg) / ips + CELL_OVERHEAD_S


def train_images(cell: Cell) -> int:
    """Training images per epoch of a cell (limit_train, else the dataset's training set)."""
    cfg = cell.config
    spec = DATASET_SPECS[cfg["dataset"]]
    images = cfg["limit_train"] or spec.train_images
    if not spec.sized_on_disk:  # limit_train never exceeds the set; an ImageNet copy may be larger
        images = min(images, spec.train_images)
    return int(images)


def gpu_hours(cell: Cell, throughput: Throughput) -> float:
    """Estimated GPU-hours of one cell: training images over the run, times the method's cost factor,
    / one GPU's images per second (a run spread over several GPUs is taken to scale linearly, so its
    GPU-hours stay the same)."""
    cfg = cell.config
    ips, _ = throughput.lookup(cfg["model"], cfg["dataset"])
    return cfg["epochs"] * train_images(cell) * cost_factor(cfg) / ips / 3600.0


def image_passes(cell: Cell) -> float:
    """A cell's work in 32x32-image passes (see CPU_MARATHON_IMAGES)."""
    cfg = cell.config
    pixels = (cfg.get("image_size") or 32) ** 2 / 32 ** 2 if cfg["dataset"] == "imagenet" else 1.0
    return cfg["epochs"] * train_images(cell) * cost_factor(cfg) * pixels


def cost_source(method: str) -> str:
    """Where a method's cost factor comes from: its plug-in's `cost`."""
    cls = METHODS.get(method)
    if cls is None:
        return "baseline cost"
    owner = next((k for k in type.mro(cls) if "cost" in vars(k)), cls)
    return f"{owner.__name__}.cost ({owner.__module__})"


def array_cost(cells: list[Cell], throughput: Throughput) -> tuple[float, float, str]:
    """(wall seconds, GPU-hours, where its per-seed images/s come from) of one job training `cells` (one
    config's seeds) as one seed array on one device of `throughput`; one cell: its solo run. Where that device
    kind's bench measured the model's seed arrays, `cell_array_seconds` (the measured per-seed images/s at
    K = len(cells)); else each seed at its solo images/s (DEFAULT_ARRAY_SPEEDUP), so an array saves only
    CELL_OVERHEAD_S per seed but the first. The GPU-hours are the device's time, shared by the seeds."""
    model, k = cells[0].config["model"], len(cells)
    path = bench_file(throughput.device_kind, throughput.bench_dir) if k > 1 else None
    if path is not None and measured_array_rates(model, path)[0]:
        seconds, source = cell_array_seconds(cells[0], k, throughput.device_kind, throughput.bench_dir)
        return seconds, (seconds - CELL_OVERHEAD_S) / 3600.0, source
    training = sum(wall_seconds(c, throughput) - CELL_OVERHEAD_S for c in cells) / DEFAULT_ARRAY_SPEEDUP
    return (training + CELL_OVERHEAD_S, training / 3600.0,
            f"each seed at its solo images/s: no {throughput.device_kind} bench measured {model}'s seed arrays")


# ---- seed arrays: a cell's time when K seeds of it train as one array (we.train.array_run) ----------------

def measured_array_rates(model: str, path: Path) -> tuple[dict[int, float], str | None]:
    """{K: training images/s per seed} of `model` in the seed-array table of the bench JSON at `path` (K = 1:
    one solo run's images/s, as the trainer trains a lone seed solo; K >= 2: the array's), and why the table
    could not be read (None: it could, or the file has none). Rows the bench skipped (memory) are left out."""
    try:
        data = json.loads(path.read_text())
        rows = data.get(ARRAY_SECTION, {}).get("rows", []) if isinstance(data, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"'{ARRAY_SECTION}.rows' is not a list of rows")
        rates, solo = {}, []
        for i, row in enumerate(r for r in rows if r.get("model") == model and not r.get("skipped")):
            k, array_rate, solo_rate = row.get("k"), row.get(ARRAY_RATE_KEY), row.get(SOLO_RATE_KEY)
            if not (isinstance(k, int) and k >= 1 and all(isinstance(v, (int, float)) and 0 < v < float("inf")
                                                           for v in (array_rate, solo_rate))):
                raise ValueError(f"{model} row {i + 1}: needs k >= 1, {ARRAY_RATE_KEY} and {SOLO_RATE_KEY} > 0")
            rates[k] = float(array_rate)
            solo.append(k * float(solo_rate))  # one solo run's images/s
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:  # JSONDecodeError is a ValueError
        return {}, f"{display_path(path)} unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if solo:
        rates[1] = sum(solo) / len(solo)
    return rates, None


def seed_seconds_per_image(rates: dict[int, float], k: int) -> float:
    """Seconds per image of each seed in an array of `k`, from measured per-seed images/s {K: rate}: linear in K
    between the measured K on either side (an array's step time grows about linearly with K); beyond them, the
    nearest measured K's images/s over all its seeds held (k seeds share it)."""
    seconds = {n: 1.0 / r for n, r in rates.items()}
    below, above = [n for n in seconds if n <= k], [n for n in seconds if n >= k]
    if below and above:
        lo, hi = max(below), min(above)
        if lo == hi:
            return seconds[lo]
        return seconds[lo] + (seconds[hi] - seconds[lo]) * (k - lo) / (hi - lo)
    nearest = max(below) if below else min(above)
    return seconds[nearest] * k / nearest


def array_images_per_s(model: str, k: int, device_kind: str, bench_dir: Path | None = None) -> tuple[float, str]:
    """Training images/s of each seed of `model` in an array of `k` seeds on one device of `device_kind`
    ('cpu' or 'cuda'), and where it came from: the seed-array table of that kind's bench JSON (`bench_file`),
    else one solo run's images/s (that bench's, else the zoo's default) x DEFAULT_ARRAY_SPEEDUP / k.
    A bench JSON that cannot be read is named in the source, and the fallback used."""
    path = bench_file(device_kind, bench_dir)
    rates, why = measured_array_rates(model, path) if path is not None else ({}, None)
    if rates:
        measured = ", ".join(str(n) for n in sorted(rates))
        return 1.0 / seed_seconds_per_image(rates, k), f"{display_path(path)} seed-array table (K = {measured})"
    solo = load_cpu_throughput(bench_dir) if device_kind == "cpu" else load_throughput(bench_dir)
    solo_ips, source = (solo or Throughput({}, DEFAULT_SOURCE)).lookup(model, "")
    assumed = "" if k == 1 else f"; no seed array measured: x{DEFAULT_ARRAY_SPEEDUP:g} / {k} (DEFAULT_ARRAY_SPEEDUP)"
    return solo_ips * (1.0 if k == 1 else DEFAULT_ARRAY_SPEEDUP) / k, source + assumed + (f"; {why}" if why else "")


def array_seconds(model: str, k: int, device_kind: str, images: float,
                  bench_dir: Path | None = None) -> tuple[float, str]:
    """Estimated wall seconds of an array of `k` seeds of `model` on one device of `device_kind`, each seed
    training `images` images (epochs x training images x cost factor): images / each seed's images/s in the
    array (`array_images_per_s`) + CELL_OVERHEAD_S once (one process); and the images/s source. The k cells
    share that time: each holds the device for seconds / k."""
    rate, source = array_images_per_s(model, k, device_kind, bench_dir)
    return images / rate + CELL_OVERHEAD_S, source


def cell_array_seconds(cell: Cell, k: int, device_kind: str, bench_dir: Path | None = None) -> tuple[float, str]:
    """`array_seconds` of an array of `k` seeds of `cell` (its config's model, epochs, training images and
    method cost factor)."""
    cfg = cell.config
    return array_seconds(cfg["model"], k, device_kind, cfg["epochs"] * train_images(cell) * cost_factor(cfg),
                         bench_dir)

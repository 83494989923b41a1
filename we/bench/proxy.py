"""The proxy study within a time limit: a grid's cells several at once on this machine, then its report.

    python -m we.bench.proxy [--grid proxy] [--set KEY=VALUE ...] [--seeds N] [--concurrency 8] [--deadline-s 300]
                             [--bench-json results/bench/<device>.json] [--out results/proxy/<device>.md]

Submits the todo cells to the local executor (`concurrency` cells at once, all on GPU 0 when there is
one: packed as a SLURM `pack` task would be), waits until they end or `deadline_s` passes (then stops
the runner and its cells; the table counts the finished runs only), and writes a markdown table:
final top-1 mean ± std per method, Welch p against the baseline, the trainer's images/s, wall time
per run, and the projected time of a 200-epoch ResNet-56 CIFAR run from the input-path bench's
ResNet-56 fast-path images/s (`--bench-json`, written by `python -m we.bench`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from we.bench.timing import device_name
from we.files import REPO_ROOT
from we.grid.cli import submit
from we.grid.identity import DEFAULT_RUNS_ROOT, Cell, parse_sets, resolve_cells
from we.grid.local import LocalExecutor
from we.grid.schema import Grid, load_grid
from we.report.stats import BASELINE, finite_values, mean_std, welch_p
from we.report.text import markdown
from we.rundir import read_result, tolerant
from we.train.datasets import TRAIN_IMAGES
from we.train.provenance import provenance

CIFAR_EPOCHS, CIFAR_IMAGES = 200, TRAIN_IMAGES["cifar10"]  # the paper's CIFAR run (section 4.1.2)


def run_cells(grid: Grid, cells: Sequence[Cell], runs_root: Path, concurrency: int, deadline_s: float) -> bool:
    """Train `cells` of `grid` on this machine, `concurrency` at once; stop them after `deadline_s`
    seconds. Returns whether all ended in time."""
    executor = LocalExecutor(concurrency=concurrency, gpus=1 if torch.cuda.is_available() else 0)
    submit(grid, cells, executor, runs_root)
    runner = executor.process
    if runner is None:  # nothing to run: every cell was already done
        return True
    try:
        runner.wait(timeout=max(1.0, deadline_s))
        return True
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: stop the runner and its cells
        os.killpg(runner.pid, signal.SIGTERM)  # the runner's own session: its cells stop with it
        runner.wait()
        print(f"proxy: deadline of {deadline_s:.0f} s reached; unfinished cells stopped", flush=True)
        return False


def _results(cells: Sequence[Cell]) -> dict[str, list[dict[str, Any]]]:
    """result.json of each cell by method ({} for one not written; one that cannot be read says so)."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        result, why = tolerant(read_result, Path(cell.run_dir), {})
        if why:
            print(f"proxy: {why}", file=sys.stderr)
        by_method.setdefault(cell.labels["method"], []).append(result)
    return by_method


def projected_cifar_seconds(bench: dict[str, Any] | None) -> float | None:
    """Seconds of training a 200-epoch ResNet-56 CIFAR run takes at the bench's ResNet-56 fast-path
    images/s (training steps only: no evaluation, no start-up)."""
    for row in (bench or {}).get("paths", []):
        if row["model"] == "resnet56" and row.get("fast_img_s"):
            return CIFAR_EPOCHS * CIFAR_IMAGES / row["fast_img_s"]
    return None


def proxy_markdown(cells: Sequence[Cell], header: dict[str, Any], bench: dict[str, Any] | None,
                   in_time: bool, title: str) -> str:
    by_method = _results(cells)
    config = cells[0].config
    lines = [f"# {title}", "",
             f"{header['device']}, {header['date']}, torch {header['versions']['torch']}, commit "
             f"{header['git_commit']}{' (dirty)' if header.get('git_dirty') else ''}", "",
             f"Grid {cells[0].grid}: {config['model']} on {config['dataset']}, {config['epochs']} epochs "
             f"(lr {config['lr']}, x{config['lr_gamma']} at {config['lr_milestones']}), batch {config['batch_size']}, "
             f"limit_train {config['limit_train'] or 'none'}, data path {config['data_path']}, amp {config['amp']}, "
             f"channels_last {config['channels_last']}; {len(cells)} cells."
             + ("" if in_time else " The deadline stopped some cells: only finished runs are counted."), "",
             "| method | runs done | final top-1 mean ± std | per seed | Welch p vs baseline | images/s per run "
             "| wall s per run |", "|---|---|---|---|---|---|---|"]
    base = [r.get("final_top1") for r in by_method.get(BASELINE, []) if r.get("status") == "complete"]
    for method, results in by_method.items():
        done = [r for r in results if r.get("status") == "complete"]
        top1 = finite_values(r.get("final_top1") for r in done)
        p = welch_p(top1, base) if method != BASELINE else float("nan")
        lines.append(f"| {markdown(method)} | {len(done)}/{len(results)} | {mean_std(top1)} | "
                     f"{', '.join(f'{v:.2f}' for v in top1) or '–'} | {'–' if p != p else f'{p:.3f}'} | "
                     f"{mean_std([r.get('images_per_s') for r in done], 0)} | "
                     f"{mean_std([r.get('wall_seconds') for r in done], 1)} |")
    projected = projected_cifar_seconds(bench)
    lines += ["", "Images/s per run: the trainer's training images/s of each run while the others ran beside it.",
              "", "Projected 200-epoch ResNet-56 CIFAR-10 run (50,000 images x 200 epochs at the input-path bench's "
              "ResNet-56 fast-path images/s, training steps only): "
              + (f"{projected / 60:.1f} min ({1e3 * projected / (CIFAR_EPOCHS * (CIFAR_IMAGES // 128)):.2f} ms "
                 f"per iteration of batch 128)." if projected else "not measured (no ResNet-56 row in the bench).")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m we.bench.proxy", description=__doc__.splitlines()[0])
    p.add_argument("--grid", default="proxy")
    p.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config keys for every cell (change run identity), e.g. epochs=10")
    p.add_argument("--seeds", type=int, default=None, help="only the grid's first N seeds")
    p.add_argument("--concurrency", type=int, default=8, help="cells at once (on one GPU when there is one)")
    p.add_argument("--deadline-s", type=float, default=300.0)
    p.add_argument("--runs-root", default=str(DEFAULT_RUNS_ROOT))
    p.add_argument("--neutral", nargs="*", default=[], metavar="KEY=VALUE",
                   help="result-neutral keys for every cell (data_dir, device, workers)")
    p.add_argument("--bench-json", default=None, help="python -m we.bench's json, for the projected CIFAR time")
    p.add_argument("--out", default=None, help="default results/proxy/<device>.md")
    p.add_argument("--title", default="Proxy study: Fashion-MNIST")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    header = {"device": device_name(device), "date": datetime.now(timezone.utc).date().isoformat(),
              **provenance(device)}
    runs_root = Path(args.runs_root)
    grid = load_grid(args.grid)
    seeds = grid.seeds[:args.seeds] if args.seeds else grid.seeds
    cells = [c for c in resolve_cells(grid, runs_root, parse_sets(args.sets), parse_sets(args.neutral))
             if c.config["seed"] in seeds]
    started = time.perf_counter()
    in_time = run_cells(grid, cells, runs_root, args.concurrency, args.deadline_s)
    print(f"proxy: {len(cells)} cells in {time.perf_counter() - started:.0f} s", flush=True)
    bench_path = Path(args.bench_json) if args.bench_json else None
    bench = json.loads(bench_path.read_text()) if bench_path and bench_path.is_file() else None
    md = proxy_markdown(cells, header, bench, in_time, args.title)
    out = Path(args.out) if args.out else REPO_ROOT / "results" / "proxy" / f"{header['device']}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    (out.with_suffix(".json")).write_text(json.dumps({"header": header, "in_time": in_time, "cells": {
        c.key: _results([c])[c.labels["method"]][0] for c in cells}}, indent=2, default=str) + "\n")
    print(md)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

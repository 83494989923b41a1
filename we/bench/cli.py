"""`python -m we.bench` (`make bench`): the tables, written to results/bench/<device>.md and .json."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import models
from we.bench.arrays import (ARRAY_STEPS, ARRAY_WARMUP, ARRAYS_HEADING, DEFAULT_KS, DEFAULT_MODELS, ArrayPlan, arrays_table,
                             parse_plan)
from we.bench.methods import accuracy_markdown, bench_accuracy, bench_methods, methods_markdown
from we.bench.paths import bench_paths, paths_markdown
from we.bench.timing import bench_model, device_name, to_markdown
from we.errors import InputError
from we.grid.cost import ARRAY_SECTION, BENCH_DIR, Throughput, gpu_hours
from we.grid.identity import resolve_cells
from we.grid.schema import GRID_DIR, load_grid
from we.train.provenance import provenance


def grid_costs(rows: list[dict[str, Any]], path_rows: list[dict[str, Any]], device_label: str) -> list[dict[str, Any]]:
    """Estimated device-hours of every grid in experiments/ from the images/s measured here (the fast
    path where measured, else the model-only throughput), as `python -m we.grid plan` computes them."""
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


def parser() -> argparse.ArgumentParser:
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
    p.add_argument("--paths-dataset", default=None, help="cifar10 when present in --data-dir, else digits (or: fashion_mnist)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--steps", type=int, default=None, help="timed steps per input path (default 20 GPU, 3 CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile on the fast path")
    p.add_argument("--no-arrays", action="store_true", help="skip the seed-array table")
    p.add_argument("--arrays-only", action="store_true", help="only the seed-array table, put in place of "
                   "the one in results/bench/<device>.md and .json (the other tables kept)")
    p.add_argument("--arrays-k", nargs="+", default=None, metavar="K",
                   help=f"seeds per array in the seed-array table (default {' '.join(map(str, DEFAULT_KS))})")
    p.add_argument("--arrays-models", nargs="+", default=None, metavar="MODEL",
                   help=f"CIFAR models of the seed-array table (default {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--arrays-steps", default=None, metavar="N", help="timed steps per array and per solo run "
                   f"(default {ARRAY_STEPS['cuda']} on GPU, {ARRAY_STEPS['cpu']} on CPU, after "
                   f"{ARRAY_WARMUP['cuda']} / {ARRAY_WARMUP['cpu']} untimed)")
    p.add_argument("--accuracy-epochs", type=int, default=0, help="also train --accuracy-model this many "
                   "epochs on the loader path (fp32) and on the fast path, to compare final top-1 (0: skip)")
    p.add_argument("--accuracy-seeds", type=int, default=3)
    p.add_argument("--accuracy-model", default="resnet56")
    p.add_argument("--accuracy-only", action="store_true", help="only the accuracy check, written to "
                   "results/bench/<device>-accuracy.md and .json")
    p.add_argument("--out", default=str(BENCH_DIR))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    try:
        if args.accuracy_only and args.accuracy_epochs < 1:
            raise InputError("--accuracy-only", "accuracy_epochs", "needs --accuracy-epochs >= 1")
        if args.arrays_only and (args.no_arrays or args.accuracy_only):
            raise InputError("--arrays-only", "arrays_only", "runs the seed-array table: drop --no-arrays and --accuracy-only")
        array_plan = None if args.no_arrays or args.accuracy_only else parse_plan(args.arrays_k, args.arrays_models, args.arrays_steps,
                                                                         args.batch, device)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    header = {"device": device_name(device), "date": datetime.now(timezone.utc).date().isoformat(),
              **provenance(device)}
    dataset = args.paths_dataset or ("cifar10" if (Path(args.data_dir) / "cifar-10-batches-py").is_dir()
                                     else "digits")
    if args.arrays_only and array_plan is not None:
        arrays_report(Path(args.out), header, array_plan, device)
    elif not args.accuracy_only:
        md, data = bench_tables(args, device, dataset, header, array_plan)
        print(md)
        write_report(Path(args.out), header["device"], md, data)
    if args.accuracy_epochs:
        accuracy_report(args, device, dataset, header)
    return 0


def bench_tables(args: argparse.Namespace, device: torch.device, dataset: str, header: dict[str, Any],
                 array_plan: ArrayPlan | None) -> tuple[str, dict[str, Any]]:
    """Every table of the report, in order: its markdown and its JSON."""
    names = args.models or models.list_models()
    rows = model_rows(names, device, args)
    md = to_markdown(rows, header)
    path_rows = [] if args.no_paths else paths_rows(names, device, dataset, args)
    if path_rows:
        md += "\n" + paths_markdown(path_rows, args.compile)
    costs = grid_costs(rows, path_rows, header["device"])
    md += "\n" + costs_markdown(costs, header["device"])
    method_rows: list[dict[str, Any]] = []
    if not args.no_methods:
        mmodel = args.methods_model or ("mobilenetv1" if device.type == "cuda" else "resnet20")
        method_rows = bench_methods(mmodel, device)
        md += "\n" + methods_markdown(method_rows, mmodel, 50_000)
    data = {"header": header, "rows": rows, "paths": path_rows, "grid_costs": costs, "methods": method_rows}
    if array_plan is not None:
        arrays_md, data[ARRAY_SECTION] = arrays_table(array_plan, device)
        md += "\n" + arrays_md
    return md, data


def model_rows(names: list[str], device: torch.device, args: argparse.Namespace) -> list[dict[str, Any]]:
    """WE step vs one weights pass, and training images/s, of every model."""
    imagenet_batch = args.imagenet_batch or (256 if device.type == "cuda" else 16)
    rows = []
    for name in names:
        batch = imagenet_batch if models.model_info(name).family == "imagenet" else args.batch
        row = bench_model(name, device, batch, args.iters, loop=not args.no_loop)
        rows.append(row)
        print(f"{name}: WE paper {row['we_paper_ms']:.2f} ms, official {row['we_official_ms']:.2f} ms, "
              f"read {row['read_ms']:.2f} ms, train {row['train_img_s']:.0f} img/s", flush=True)
    return rows


def paths_rows(names: list[str], device: torch.device, dataset: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Training images/s by input path of every CIFAR model."""
    steps = args.steps or (20 if device.type == "cuda" else 3)
    out = []
    for name in names:
        if models.model_info(name).family == "cifar":
            out.append(bench_paths(name, device, dataset, args.data_dir, args.batch, steps, args.compile))
            r = out[-1]
            print(f"{name}: reference {r['reference_img_s']:.0f}, default {r['default_img_s']:.0f}, "
                  f"fast {r['fast_img_s']:.0f} img/s", flush=True)
    return out


def arrays_report(out: Path, header: dict[str, Any], plan: ArrayPlan, device: torch.device) -> None:
    """The seed-array table alone, in place of the one in `<device>.md` and `.json` (with its own header),
    rewritten after every row."""
    md_path, json_path = out / f"{header['device']}.md", out / f"{header['device']}.json"
    data = json.loads(json_path.read_text()) if json_path.is_file() else {"header": header}
    md = md_path.read_text() if md_path.is_file() else f"# Bench on {header['device']} ({header['date']})\n"
    kept = md.split(ARRAYS_HEADING)[0].rstrip("\n") if ARRAYS_HEADING in md else md.rstrip("\n")
    stamp = f"Seed arrays alone on {header['date']}, commit {header['git_commit']}.\n\n"

    def write(table: str, section: dict[str, Any]) -> None:
        data[ARRAY_SECTION] = {"header": header, **section}
        write_report(out, header["device"], kept + "\n\n" + table.replace("\n\n", "\n\n" + stamp, 1), data)

    table, section = arrays_table(plan, device, write)
    print(table)
    write(table, section)


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

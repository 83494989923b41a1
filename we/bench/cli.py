"""`python -m we.bench` (`make bench`): the tables, written to results/bench/<device>.md and .json."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import models
from we.bench.methods import accuracy_markdown, bench_accuracy, bench_methods, methods_markdown
from we.bench.paths import bench_paths, paths_markdown
from we.bench.timing import bench_model, device_name, to_markdown
from we.files import REPO_ROOT
from we.grid.cost import Throughput, gpu_hours
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
    p.add_argument("--paths-dataset", default=None, help="cifar10 when present in --data-dir, else digits (or: fashion_mnist)")
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

"""The processes the executors start (nothing imports this module):

    python -m we.grid.worker run-local QUEUE    # the local runner (we.grid.local.run_local)
    python -m we.grid.worker run-cell RUN_DIR   # one cell from its cell.json (local runner, packed SLURM task)
    python -m we.grid.worker run-cells RUN_DIR...   # a config's seeds, one cell.json each, as one seed array
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from we.errors import ConfigError, SuiteError
from we.grid.local import run_local
from we.grid.records import cancel_requested
from we.rundir import CELL_FILE, RunFileError, read_cell
from we.train.array_run import train_array
from we.train.config import Config, make_config, resolve
from we.train.interrupt import Interrupted, interrupts_raise
from we.train.trainer import EXIT_CODES
from we.train.trainer import main as train_main


def cell_config(run_dir: Path) -> Config:
    """The resolved config of the cell in `run_dir` (its cell.json), refused when it names another folder."""
    data = read_cell(run_dir)
    if data is None or not isinstance(data.get("config"), dict):
        raise RunFileError(run_dir / CELL_FILE, "no such file" if data is None else "holds no 'config'")
    out = Path(str(data["config"].get("out", "")))
    if not out.is_absolute() or out.resolve() != run_dir.resolve():  # a copied cell.json names the original
        raise ConfigError(f"{run_dir / CELL_FILE}: its config's out {str(out)!r} is not the folder it "
                          f"sits in ({run_dir.resolve()}); refused (a copied cell never acts on the original)")
    return resolve(make_config(data["config"], source=str(run_dir / CELL_FILE)))


def run_cell(run_dir: str | Path) -> int:
    """Train one cell from its cell.json (the local runner's child process, or one of a packed SLURM task's);
    returns an exit code."""
    return run_cells([run_dir])


def run_cells(run_dirs: list[str | Path]) -> int:
    """Train cells from their cell.json: one solo, several (the seeds of one config) as one seed array
    (`we.train.array_run`); returns the worst member's exit code."""
    dirs = [Path(d) for d in run_dirs]
    # SIGINT/SIGTERM (a local cancel; in a packed SLURM task, only a grid's cancel): result.json says interrupted
    with interrupts_raise(when=lambda: any(cancel_requested(d) for d in dirs)):
        try:
            cfgs = [cell_config(d) for d in dirs]
            results = [train_main(cfgs[0])] if len(cfgs) == 1 else train_array(cfgs)
        except SuiteError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except Interrupted as stop:
            print(f"{stop} {stop.where()}; `python -m we.grid submit` resumes it", file=sys.stderr, flush=True)
            return stop.exit_code
    return max(EXIT_CODES.get(r.get("status"), 1) for r in results)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m we.grid.worker", description="Local runner entry points.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run-local", help="work through a queue file (started by `we.grid submit`)").add_argument("queue")
    sub.add_parser("run-cell", help=f"train one cell from its {CELL_FILE}").add_argument("run_dir")
    sub.add_parser("run-cells", help=f"train the seeds of one config, each from its {CELL_FILE}, as one seed "
                   "array").add_argument("run_dirs", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "run-local":
        return run_local(args.queue)
    if args.command == "run-cells":
        return run_cells(args.run_dirs)
    return run_cell(args.run_dir)


if __name__ == "__main__":
    sys.exit(cli())

"""The processes the executors start (nothing imports this module):

    python -m we.grid.worker run-local QUEUE    # the local runner (we.grid.local.run_local)
    python -m we.grid.worker run-cell RUN_DIR   # one cell from its cell.json (local runner, packed SLURM task)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from we.errors import ConfigError, SuiteError
from we.grid.local import run_local
from we.grid.records import cancel_requested
from we.rundir import CELL_FILE, RunFileError, read_cell
from we.train.config import make_config, resolve
from we.train.interrupt import Interrupted, interrupts_raise
from we.train.trainer import EXIT_CODES
from we.train.trainer import main as train_main


def run_cell(run_dir: str | Path) -> int:
    """Train one cell from its cell.json (the local runner's child process, or one of a packed SLURM task's);
    returns an exit code."""
    run_dir = Path(run_dir)
    # SIGINT/SIGTERM (a local cancel; in a packed SLURM task, only a grid's cancel): result.json says interrupted
    with interrupts_raise(when=lambda: cancel_requested(run_dir)):
        try:
            data = read_cell(run_dir)
            if data is None or not isinstance(data.get("config"), dict):
                raise RunFileError(run_dir / CELL_FILE, "no such file" if data is None else "holds no 'config'")
            out = Path(str(data["config"].get("out", "")))
            if not out.is_absolute() or out.resolve() != run_dir.resolve():  # a copied cell.json names the original
                raise ConfigError(f"{run_dir / CELL_FILE}: its config's out {str(out)!r} is not the folder it "
                                  f"sits in ({run_dir.resolve()}); refused (a copied cell never acts on the original)")
            result = train_main(resolve(make_config(data["config"], source=str(run_dir / CELL_FILE))))
        except SuiteError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except Interrupted as stop:
            print(f"{stop} {stop.where()}; `python -m we.grid submit` resumes it", file=sys.stderr, flush=True)
            return stop.exit_code
    return EXIT_CODES.get(result.get("status"), 1)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m we.grid.worker", description="Local runner entry points.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run-local", help="work through a queue file (started by `we.grid submit`)").add_argument("queue")
    sub.add_parser("run-cell", help=f"train one cell from its {CELL_FILE}").add_argument("run_dir")
    args = parser.parse_args(argv)
    if args.command == "run-local":
        return run_local(args.queue)
    return run_cell(args.run_dir)


if __name__ == "__main__":
    sys.exit(cli())

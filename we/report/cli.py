"""Tables and figures from run folders on disk (pandas, matplotlib; never the trainer).

Usage::

    python -m we.report collect table2
    python -m we.report figures
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from we.errors import SuiteError
from we.files import REPO_ROOT
from we.report.figures import make_figures
from we.report.tables import REPORTED_CSV, collect
from we.rundir import runs_root


def cli(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m we.report", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_collect = sub.add_parser("collect", help="tabulate one grid into results/<grid>.md|.csv|.tex")
    p_collect.add_argument("grid", help="grid name (a folder under --runs-root)")
    p_collect.add_argument("--paper-csv", dest="reported_csv", type=Path, default=REPORTED_CSV,
                           help="the numbers the paper reports (default: %(default)s)")
    p_collect.add_argument("--no-figures", action="store_true", help="skip the grid's figures")
    p_fig = sub.add_parser("figures", help="draw every figure there is data for under results/figures")
    for p in (p_collect, p_fig):
        p.add_argument("--runs-root", type=Path, default=None,
                       help="default $WE_RUNS_ROOT, else the checkout's results/runs (as python -m we.grid)")
        p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    args.runs_root = runs_root(args.runs_root)[0]
    if args.command == "collect":
        try:
            out = collect(args.grid, args.runs_root, args.out_dir, args.reported_csv, figures=not args.no_figures)
        except (FileNotFoundError, SuiteError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print("wrote " + ", ".join(str(out[k]) for k in ("markdown", "csv", "tex", "paper_markdown", "paper_tex")
                                   if k in out)
              + "".join(f", {p}" for p in out["figures"]))
        return 0
    paths = make_figures(args.runs_root, args.out_dir)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0

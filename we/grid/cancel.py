"""`python -m we.grid cancel GRID`: stop a grid's queued and running cells.

Each live job is first marked `cancelled` in its cell's cell.json, then stopped:

- local: SIGTERM to its runner's process group (the runner, its cells and their loader workers; the
  cell's own group when its runner is gone). The runner starts no further cell (those stay todo) and
  records how each running one ended: interrupted, with last.pt holding its last finished epoch.
- SLURM: `scancel` of its array tasks. A queued task leaves the queue (the cell stays todo); a running
  one gets SIGTERM in every process of its step, then SIGKILL after the cluster's KillWait. A trainer
  whose job is marked cancelled stops on that SIGTERM and records interrupted (we.grid.slurm.TrainTask);
  the cell says `cancelled` with the State sacct gives (e.g. `CANCELLED by 1000`).

Then it waits (at most `wait_s`) until no cancelled cell lives, and prints how each ended. The next
`submit` starts the todo cells and resumes the interrupted ones from their last.pt.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Sequence

from we.grid.identity import Cell
from we.grid.local import stop_local
from we.grid.plan import counts
from we.grid.records import now_iso, update_record
from we.grid.schema import Grid
from we.grid.slurm import scancel
from we.grid.state import LIVE, CellState, assess

CANCEL_WAIT_S = 120.0  # how long `cancel` waits for the stopped cells to record how they ended
POLL_S = 0.5


def cancel(grid: Grid, cells: Sequence[Cell], runs_root: Any, out: Any = None, wait_s: float = CANCEL_WAIT_S,
           poll_s: float = POLL_S) -> int:
    """Stop the grid's queued and running cells; prints what it signalled and how each cell ended. Returns 0,
    or 1 when a job could not be stopped or a cell still lives after `wait_s`."""
    out = out or sys.stdout
    states = assess(cells, runs_root, reuse=False)  # a twin run of another grid is that grid's to cancel
    live = [s for s in states if s.state in LIVE and s.last_record is not None]
    if not live:
        print(f"{grid.name}: nothing to cancel ({counts(states)})", file=out)
        return 0
    print(f"{grid.name}: cancelling {len(live)} cell(s): {counts(live)}", file=out, flush=True)
    stamp = now_iso()
    for st in live:
        assert st.last_record is not None
        update_record(st.cell.run_dir, st.last_record["job_id"], cancelled=stamp)
    lines, failed = stop_jobs(live)
    for line in lines:
        print(line, file=out, flush=True)
    ended = settle([s.cell for s in live], runs_root, wait_s, poll_s)
    for st in ended:
        print(f"  {st.state:11s} {st.cell.key}: {st.note}", file=out)
    still = [s for s in ended if s.state in LIVE]
    if still:
        print(f"{grid.name}: {len(still)} cell(s) still stopping after {wait_s:.0f} s; `python -m we.grid status "
              f"{grid.name}` shows them", file=out)
    print(f"{grid.name}: {counts(assess(cells, runs_root, reuse=False))}; `python -m we.grid submit {grid.name}` "
          "starts the todo cells and resumes the interrupted ones", file=out)
    return 1 if failed or still else 0


def stop_jobs(live: Sequence[CellState]) -> tuple[list[str], bool]:
    """Signal every live job (each local process group once, every SLURM task in one scancel); returns a
    line per cell and whether a job could not be stopped."""
    lines: list[str] = []
    signalled: set[int] = set()
    failed = False
    slurm = [s for s in live if (s.last_record or {}).get("executor") == "slurm"]
    error = scancel(sorted(str((s.last_record or {})["job_id"]) for s in slurm))
    for st in live:
        rec = st.last_record or {}
        job = f"{rec.get('executor')} {rec.get('job_id')}"
        if rec.get("executor") == "local":
            what = stop_local(rec, signalled) or "no process of it runs any more"
        elif rec.get("executor") == "slurm":
            what = f"scancel failed: {error}" if error else "scancel"
            failed |= bool(error)
        else:
            what, failed = "unknown executor: not stopped", True
        lines.append(f"  {st.state:11s} {st.cell.key}: {job}: {what}")
    return lines, failed


def settle(cells: Sequence[Cell], runs_root: Any, wait_s: float, poll_s: float) -> list[CellState]:
    """The cells' states once none is queued or running any more, or when `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        states = assess(cells, runs_root, reuse=False)
        if not any(s.state in LIVE for s in states) or time.monotonic() >= deadline:
            return states
        time.sleep(poll_s)

"""Seed arrays in a grid: which of the cells to run train together as one job (`array_jobs`), and why a cell
runs solo.

Cells join one job when their configs are equal but for `seed` and the result-neutral keys and
`we.train.array_config.check_array` accepts them (a method whose plug-in declares an `array_reason` runs
solo, and so does a model with dropout or a config with amp, channels_last or compile). The job runs
`python -m we.grid.worker run-cells RUN_DIR...`, which trains them as `we.train.array_run.train_array`
does: a finished member is never retrained, and the others are grouped by the epoch their last.pt holds.
The jobs are split the same way (members that stand at different epochs go to different jobs, a member
alone trains solo), so each job is one array, and jobs of one config may run side by side. Each member
keeps its own run folder and its own submission record: `status`, `collect` and `cancel` see seeds as ever.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from we.errors import ConfigError, InputError, SuiteError
from we.grid.identity import Cell
from we.grid.profiles import PROFILE_KEYS
from we.keys import BadValue, checked, excerpt
from we.methods import METHODS
from we.rundir import LAST_CHECKPOINT, STAGED_LAST_FORMAT, read_metrics, staged_epochs, tolerant
from we.train.array_commit import checkpoint_epoch, resume_epochs
from we.train.array_config import check_array
from we.train.config import RESULT_NEUTRAL_KEYS, make_config, resolve

ALL_SEEDS = None  # an array size without a bound: every pending seed of a config in one job


@dataclass
class ArrayJobs:
    """The jobs of a submission, each a list of cells (several: one seed array); `solo`: why cells of a method
    run solo (method label -> one line), for the methods whose cells could otherwise have joined."""

    jobs: list[list[Cell]]
    solo: dict[str, str] = field(default_factory=dict)

    @property
    def arrays(self) -> list[int]:
        """The sizes of the arrays (jobs of two or more cells)."""
        return [len(job) for job in self.jobs if len(job) > 1]


def parse_array_option(raw: str | None) -> int | None:
    """`--array K`, checked against the profile key `array` (an int >= 1); None when not given."""
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InputError("--array", "array", f"expected a number of seeds per job (>= 1), got {excerpt(raw)}") \
            from None
    try:
        return checked(PROFILE_KEYS["array"], value)
    except BadValue as err:
        raise InputError("--array", "array", str(err)) from None


NO_GPU = ("no GPU for the job: on a CPU a seed array is slower than its solo runs (the same arithmetic, plus "
          "stacking; results/bench/cpu.md's seed-array table)")


def array_size(option: int | None, profile_value: int | None, gpus: int) -> tuple[int | None, str]:
    """(the seeds per job, why): `--array`, else the profile's `array`, else a config's pending seeds
    (ALL_SEEDS) on a GPU (a CIFAR model leaves most of one idle), 1 without one (NO_GPU)."""
    if option is not None:
        return option, f"--array {option}"
    if profile_value is not None:
        return profile_value, f"the profile's array: {profile_value}"
    if gpus > 0:
        return ALL_SEEDS, "the default on a GPU"
    return 1, f"the default without a GPU; {NO_GPU}"


def size_words(size: int | None) -> str:
    if size is ALL_SEEDS:
        return "a config's pending seeds"
    return "one run" if size == 1 else f"up to {size} seeds"


def array_key(cell: Cell) -> str:
    """What the cells of one array share: the config without seed and the result-neutral keys."""
    rest = {k: v for k, v in cell.config.items() if k not in RESULT_NEUTRAL_KEYS and k != "seed"}
    return json.dumps(rest, sort_keys=True, default=str)


def method_label(cell: Cell) -> str:
    return str(cell.labels.get("method", cell.config["method"]))


def solo_reason(cells: Sequence[Cell]) -> str | None:
    """Why these cells (one config's seeds) cannot train as one array (one line), or None when they can."""
    reason = METHODS[cells[0].config["method"]].array_reason
    if reason is not None:
        return reason
    try:
        check_array([resolve(make_config(c.config, source=str(c.run_dir))) for c in cells])
    except ConfigError as err:
        return str(err)
    return None


def start_epoch(cell: Cell) -> int:
    """The epoch a cell resumes after: its last.pt's, read from its metrics rows (written with last.pt)."""
    if not (cell.run_dir / LAST_CHECKPOINT).exists():
        return 0
    rows, _ = tolerant(read_metrics, Path(cell.run_dir), [])
    return len(rows)


def start_epochs(members: Sequence[Cell]) -> list[int]:
    """The epochs a config's seeds resume after, as train_array settles them: their metrics rows, unless an
    array's epoch was cut short (a staged last.pt): then their last.pt's epochs and the array's rule
    (`we.train.array_commit.resume_epochs`), so that its members go out in one job again."""
    staged = [staged_epochs(c.run_dir, STAGED_LAST_FORMAT) for c in members]
    if not any(staged):
        return [start_epoch(c) for c in members]
    committed = []
    for cell in members:
        try:
            committed.append(checkpoint_epoch(cell.run_dir))
        except SuiteError:  # the job itself says what is wrong with it
            committed.append(start_epoch(cell))
    return resume_epochs(committed, staged)


def array_jobs(cells: Sequence[Cell], size: int | None) -> ArrayJobs:
    """The jobs of `cells` (those to run) with up to `size` seeds each (ALL_SEEDS: no bound), in their order."""
    by_config: dict[str, list[Cell]] = {}
    for cell in cells:
        by_config.setdefault(array_key(cell), []).append(cell)
    found = ArrayJobs([])
    for members in by_config.values():
        reason = solo_reason(members) if len(members) > 1 and size != 1 else None
        if reason is not None:
            found.solo.setdefault(method_label(members[0]), reason)
        if reason is not None or size == 1:
            found.jobs += [[c] for c in members]
            continue
        found.jobs += epoch_groups(members, size)
    order = {id(c): i for i, c in enumerate(cells)}
    found.jobs.sort(key=lambda job: order[id(job[0])])
    return found


def epoch_groups(members: Sequence[Cell], size: int | None) -> list[list[Cell]]:
    """One config's seeds as train_array groups them (by the epoch they resume after), cut into `size` at most."""
    by_epoch: dict[int, list[Cell]] = {}
    for cell, epoch in zip(members, start_epochs(members)):
        by_epoch.setdefault(epoch, []).append(cell)
    jobs: list[list[Cell]] = []
    for same in by_epoch.values():
        step = len(same) if size is ALL_SEEDS else size
        jobs += [list(same[i:i + step]) for i in range(0, len(same), step)]
    return jobs


def describe(found: ArrayJobs) -> str:
    """`12 jobs: 2 arrays (1 of 5 seeds, 1 of 3), 10 solo`"""
    sizes = Counter(found.arrays)
    shown = ", ".join(f"{n} of {k}" + (" seeds" if i == 0 else "") for i, (k, n) in
                      enumerate(sorted(sizes.items(), reverse=True)))
    return (f"{plural(len(found.jobs), 'job')}: {plural(len(found.arrays), 'array')}" + (f" ({shown})" if shown else "")
            + f", {len(found.jobs) - len(found.arrays)} solo")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def solo_lines(found: ArrayJobs) -> list[str]:
    """One line per method whose cells run solo, with its reason."""
    return [f"  {label} runs solo: {reason}" for label, reason in found.solo.items()]


def record_fields(job: Sequence[Any], cell: Any) -> dict[str, Any]:
    """What a member's submission record says of its array: the other members' keys."""
    return {"array_with": [c.key for c in job if c is not cell]} if len(job) > 1 else {}

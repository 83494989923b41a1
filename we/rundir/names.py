"""The run folder's files, bounds and errors, the runs-root rule, and the summary of a run from its rows."""
from __future__ import annotations

import errno
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from we.errors import InputError, SuiteError
from we.files import REPO_ROOT

# ---- the files -------------------------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
CELL_FILE = "cell.json"
GRID_FILE = "grid.json"
LOGS_DIR = "logs"
STAGED_BEST_FORMAT = ".best-epoch{epoch}.pt"  # a new best epoch's weights before they become best.pt
STAGED_LAST_FORMAT = ".last-epoch{epoch}.pt"  # a seed array member's last.pt of an epoch before every member has one
BROKEN_SUFFIX = ".broken"  # a best.pt that does not load is set aside as best.pt.broken
TRAINER_FILES = (CONFIG_FILE, RESULT_FILE, METRICS_FILE, METRICS_CSV, LAST_CHECKPOINT, BEST_CHECKPOINT)
RUN_MARKERS = (CELL_FILE, RESULT_FILE, METRICS_FILE)  # a folder holding one of these is a run folder
TERMINAL = ("complete", "diverged")  # a run in any other status (failed, interrupted, running) resumes


def staged_pattern(fmt: str) -> str:
    """The regular expression of a staged file's name format (STAGED_BEST_FORMAT, STAGED_LAST_FORMAT), the epoch
    its one group."""
    return re.escape(fmt).replace(re.escape("{epoch}"), r"(\d+)")


# ---- bounds on what a reader reads -------------------------------------------------------------------------
JSON_LIMIT = 16 << 20  # result.json, cell.json, grid.json
METRICS_LIMIT = 64 << 20  # metrics.jsonl (a 200-epoch run writes well under 1 MiB)
CONFIG_LIMIT = 1 << 20  # config.yaml
LOG_TAIL_BYTES = 64 << 10  # the most of a log `log_tail` reads (from its end)

# ---- where run folders go: --runs-root, else $WE_RUNS_ROOT, else the checkout's results/runs ----------------
DEFAULT_RUNS_ROOT = REPO_ROOT / "results" / "runs"
RUNS_ROOT_ENV = "WE_RUNS_ROOT"


class RunFileError(SuiteError):
    """A run-folder file that cannot be read (or written): one line naming the file and its run."""

    def __init__(self, path: Path, why: str) -> None:
        self.path, self.why = Path(path), why
        super().__init__(f"{self.path}: unreadable: {why} (run {self.path.parent.name})")


class DiskFullError(OSError):
    """A write that ran out of space or quota: one line with the errno's name and the file; the file
    written before (the last good checkpoint, say) is left as it was."""

    def __init__(self, path: Path, err: OSError) -> None:
        super().__init__(err.errno, err.strerror, str(path))
        self.line = (f"{path}: {errno.errorcode.get(err.errno, err.errno)} ({err.strerror}) while writing it; "
                     f"the previous {Path(path).name}, if any, is kept")

    def __str__(self) -> str:
        return self.line


def runs_root(option: str | Path | None = None) -> tuple[Path, str]:
    """(absolute runs root, which rule chose it): `option` (--runs-root), else $WE_RUNS_ROOT, else the
    checkout's results/runs. A relative path is taken from the current directory."""
    if option:
        return Path(option).absolute(), "--runs-root"
    env = os.environ.get(RUNS_ROOT_ENV)
    if env:
        return Path(env).absolute(), f"${RUNS_ROOT_ENV}"
    return DEFAULT_RUNS_ROOT, "default: the checkout's results/runs; --runs-root or $WE_RUNS_ROOT change it"


def check_writable(folder: Path, what: str = "runs_root") -> None:
    """`folder` (or its nearest existing parent) must be a writable folder (InputError naming it)."""
    path = Path(folder).absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(folder, what, f"{probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(folder, what, f"{probe} is not writable")


def inside(folder: Path, name: str | Path, what: str = "name") -> Path:
    """`folder / name`, refused (InputError) when it would resolve outside `folder` (``..``, an absolute
    name, a link leading out)."""
    base = Path(folder).resolve()
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise InputError(name, what, f"resolves to {target}, outside {base}")
    return base / name


def is_run_folder(path: Path) -> bool:
    return any((Path(path) / name).exists() or (Path(path) / name).is_symlink() for name in RUN_MARKERS)


def run_folders(grid_dir: Path) -> list[Path]:
    """Every folder under `grid_dir` holding a run marker (cell.json, result.json or metrics.jsonl)."""
    found: set[Path] = set()
    for name in RUN_MARKERS:
        found.update(p.parent for p in Path(grid_dir).rglob(name))
    return sorted(found)


# ---- the summary of a run -------------------------------------------------------------------------------------
def finite(x: Any) -> bool:
    """A real number that is not NaN or infinite (bools are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def best_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first epoch with the highest finite test top-1 (the tables' best epoch, and best.pt's); the last
    row when none is finite."""
    scored = [r for r in rows if finite(r.get("test_top1"))]
    return max(scored, key=lambda r: r["test_top1"]) if scored else rows[-1]


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Final and best-epoch accuracies of a run's epoch rows (the authors' script reports the best epoch),
    its training seconds and images/s: what result.json holds, and what a reader rebuilds from
    metrics.jsonl when result.json lacks it."""
    if not rows:
        return {}
    last, best = rows[-1], best_row(rows)
    train_s = sum(r.get("train_seconds", 0.0) for r in rows)
    images = sum(r.get("images_per_s", 0.0) * r.get("train_seconds", 0.0) for r in rows)
    return {"epochs_done": len(rows), "final_top1": last.get("test_top1"), "final_top5": last.get("test_top5"),
            "final_test_loss": last.get("test_loss"), "best_top1": best.get("test_top1"),
            "best_top5": best.get("test_top5"), "best_epoch": best.get("epoch"), "train_seconds": train_s,
            "images_per_s": images / train_s if train_s > 0 else None}



def epoch_seconds(row: dict[str, Any]) -> float | None:
    """The measured wall seconds of one epoch row: its `seconds` (train, evaluation and the method's hook),
    else its `train_seconds`; None when neither is a finite number."""
    for key in ("seconds", "train_seconds"):
        if finite(row.get(key)) and row[key] >= 0:
            return float(row[key])
    return None


def progress(rows: Sequence[dict[str, Any]], epochs: Any) -> dict[str, Any]:
    """How far an unfinished run got from its epoch rows: `epochs_done` of `epochs`, the last row's test top-1,
    the mean measured epoch seconds and `eta_seconds` = remaining epochs x that mean (None when unmeasured)."""
    measured = [s for s in map(epoch_seconds, rows) if s is not None]
    mean = sum(measured) / len(measured) if measured else None
    total = epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None
    done = len(rows)
    eta = mean * max(0, total - done) if mean is not None and total is not None else None
    return {"epochs_done": done, "epochs": total, "last_top1": rows[-1].get("test_top1") if rows else None,
            "epoch_seconds": mean, "eta_seconds": eta}

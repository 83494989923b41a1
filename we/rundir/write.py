"""Writing a run folder: atomic files (temp file, then one rename), strict JSON, stale temps removed."""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from we.files import current_umask
from we.rundir.names import (CELL_FILE, CONFIG_FILE, METRICS_CSV, METRICS_FILE, RESULT_FILE, STAGED_BEST_FORMAT,
                             STAGED_LAST_FORMAT, TRAINER_FILES, DiskFullError, staged_pattern)

# ---- writing -------------------------------------------------------------------------------------------------
_fdopen = os.fdopen  # the temp file's opener (tests put a full disk behind it)


def _space_error(err: BaseException) -> Optional[OSError]:
    """The ENOSPC / EDQUOT OSError behind `err` (torch wraps it in a RuntimeError), if any."""
    seen = 0
    while err is not None and seen < 16:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through `write(fileobj)` into `.<name>.<random>.tmp` beside `path`, then rename it over `path`:
    a reader sees the old file or the new one, never half of one. The file gets the mode a plain open()
    would give it (0o666 less the umask). A full disk or quota is a DiskFullError (the temp file removed,
    the old file kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with _fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        full = _space_error(err)
        if full is not None:
            raise DiskFullError(path, full) from None
        raise


def _plain(obj: Any) -> Any:
    """`obj` with every non-finite float as the string JSON readers agree on ("NaN", "Infinity", "-Infinity")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON (no bare NaN / Infinity; see `_plain`); objects JSON lacks are written as str()."""
    return json.dumps(_plain(obj), allow_nan=False, default=str, **kw)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, dumps(obj, indent=2, sort_keys=False) + "\n")


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    write_json(Path(run_dir) / RESULT_FILE, result)


def write_cell(run_dir: Path, data: dict[str, Any]) -> None:
    write_json(Path(run_dir) / CELL_FILE, data)


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_text(Path(run_dir) / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def write_metrics(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """metrics.jsonl (one strict JSON object a line) and metrics.csv, both from the full history."""
    write_text(Path(run_dir) / METRICS_FILE, "".join(dumps(row) + "\n" for row in rows))
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(Path(run_dir) / METRICS_CSV, buf.getvalue())


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file, then rename: a reader never sees half a checkpoint."""
    import torch

    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def remove_stale_temps(run_dir: Path, names: Sequence[str] = TRAINER_FILES) -> list[Path]:
    """Remove the temp files a killed writer of `names` (and of a staged best or last.pt) left in `run_dir`;
    returns what was removed. Only this module's own pattern is touched: `.<name>.<random>.tmp`."""
    run_dir = Path(run_dir)
    staged = [staged_pattern(fmt) for fmt in (STAGED_BEST_FORMAT, STAGED_LAST_FORMAT)]
    stems = "|".join([re.escape(n) for n in names] + staged)
    pattern = re.compile(rf"^\.(?:{stems})\.[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        entries = list(os.scandir(run_dir))
    except OSError:
        return []
    for entry in entries:
        if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return sorted(removed)



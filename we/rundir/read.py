"""Reading a run folder: regular files only, links not followed, bounded sizes; a broken file is one line."""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import stat
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from we.errors import CheckpointError, InputError
from we.rundir.names import (CELL_FILE, CONFIG_FILE, CONFIG_LIMIT, GRID_FILE, JSON_LIMIT, LOG_TAIL_BYTES, LOGS_DIR,
                             METRICS_FILE, METRICS_LIMIT, RESULT_FILE, RunFileError, inside, staged_pattern)

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _revive(obj: Any) -> Any:
    """The inverse of `_plain`: "NaN", "Infinity", "-Infinity" back to floats."""
    if isinstance(obj, str):
        return _NON_FINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _revive(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_revive(v) for v in obj]
    return obj




# ---- reading ---------------------------------------------------------------------------------------------------
def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path) -> Optional[int]:
    """A read-only descriptor of `path` if it is a regular file (None when there is no such file); a symbolic
    link (not followed), FIFO, device or folder is a RunFileError. Never blocks."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RunFileError(path, f"unreadable ({err.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise RunFileError(path, "a symbolic link (no writer of the suite makes one here; not followed)")
    if not stat.S_ISREG(st.st_mode):
        raise RunFileError(path, f"{_kind(st.st_mode)}, not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise RunFileError(path, f"unreadable ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the two looks
        os.close(fd)
        raise RunFileError(path, "not a regular file")
    return fd


def read_bytes(path: Path, limit: int) -> Optional[bytes]:
    """The bytes of a regular file of at most `limit` bytes (None: no such file); else RunFileError."""
    fd = open_regular(path)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise RunFileError(path, f"{size} bytes, more than the {limit} a {Path(path).name} may hold")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise RunFileError(path, f"unreadable ({err.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise RunFileError(path, f"more than the {limit} bytes a {Path(path).name} may hold")
    return data


def read_text(path: Path, limit: int) -> Optional[str]:
    data = read_bytes(path, limit)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RunFileError(path, f"not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})") from None


def _parse_json(path: Path, text: str, line: int | None = None) -> Any:
    where = f"line {line}: " if line is not None else ""
    try:
        return _revive(json.loads(text))
    except json.JSONDecodeError as err:
        raise RunFileError(path, f"{where}not JSON ({err.msg} at line {err.lineno} column {err.colno}; "
                                 "truncated?)") from None
    except RecursionError:
        raise RunFileError(path, f"{where}JSON nested too deeply") from None


def _object(path: Path, obj: Any, where: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise RunFileError(path, f"{where}holds a JSON {_json_type(obj)}, not an object")
    return obj


def _json_type(obj: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(obj), "number")


def read_json(path: Path, limit: int = JSON_LIMIT) -> Optional[dict[str, Any]]:
    """A JSON object file (None: no such file); empty, truncated, non-UTF-8, not an object, too big or not
    a regular file: RunFileError."""
    text = read_text(path, limit)
    if text is None:
        return None
    if not text.strip():
        raise RunFileError(path, "empty")
    return _object(path, _parse_json(path, text))


def read_result(run_dir: Path) -> Optional[dict[str, Any]]:
    """result.json of a run (None: not written yet)."""
    return read_json(Path(run_dir) / RESULT_FILE)


def read_cell(run_dir: Path) -> Optional[dict[str, Any]]:
    """cell.json of a grid's run (None: none); its `config`, `labels` and `submitted` have the right types."""
    path = Path(run_dir) / CELL_FILE
    data = read_json(path)
    if data is None:
        return None
    for key, kind in (("config", dict), ("labels", dict), ("submitted", list)):
        if key in data and not isinstance(data[key], kind):
            raise RunFileError(path, f"'{key}' holds a JSON {_json_type(data[key])}, not "
                                     f"{'an array' if kind is list else 'an object'}")
    if any(not isinstance(r, dict) for r in data.get("submitted", [])):
        raise RunFileError(path, "'submitted' holds an entry that is not an object")
    return data


def read_grid_file(grid_dir: Path) -> Optional[dict[str, Any]]:
    """`<grid>/grid.json` (None: none); its `cells` maps cell keys to folder names."""
    path = Path(grid_dir) / GRID_FILE
    data = read_json(path)
    if data is not None:
        cells = data.get("cells")
        if not isinstance(cells, dict) or not all(isinstance(v, str) for v in cells.values()):
            raise RunFileError(path, "'cells' is not an object of folder names")
    return data


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch rows of metrics.jsonl ([] when there is none). A last line without its newline (still being
    written, or cut by a copy) is left out; any other line that is not a JSON object with an `epoch` makes
    the file a RunFileError naming the line."""
    path = Path(run_dir) / METRICS_FILE
    text = read_text(path, METRICS_LIMIT) or ""
    lines = text.split("\n")
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines[:-1], start=1):  # the part after the last newline is not a line yet
        if not line.strip():
            continue
        row = _object(path, _parse_json(path, line, i), f"line {i}: ")
        if "epoch" not in row:
            raise RunFileError(path, f"line {i}: a row without 'epoch'")
        rows.append(row)
    return rows


def read_config(run_dir: Path) -> Optional[dict[str, Any]]:
    """config.yaml of a run (None: none; an empty file reads as {}), parsed with the safe loader."""
    path = Path(run_dir) / CONFIG_FILE
    text = read_text(path, CONFIG_LIMIT)
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RunFileError(path, f"malformed YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RunFileError(path, f"holds a YAML {type(data).__name__}, not a mapping")
    return data


def tolerant(reader: Callable[[Path], Any], run_dir: Path, default: Any = None) -> tuple[Any, str]:
    """(what `reader(run_dir)` read, "") or (`default`, the one line saying why it could not)."""
    try:
        value = reader(run_dir)
    except RunFileError as err:
        return default, str(err)
    return (default if value is None else value), ""


def log_tail(run_dir: Path, name: str, lines: int = 8) -> list[str]:
    """The last `lines` lines of the log `name` in the run's own logs folder ([] when there is none or it
    cannot be read). Only the name is used, never a path a (copied) cell.json gives; a link there (the
    SLURM executor links submitit's logs) is followed only to a regular file inside the grid's folder."""
    path = Path(run_dir) / LOGS_DIR / Path(str(name)).name
    try:
        if path.is_symlink():
            inside(Path(run_dir).parent, path.resolve(), "log")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (InputError, OSError):
        return []
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return []
        os.lseek(fd, max(0, st.st_size - LOG_TAIL_BYTES), os.SEEK_SET)
        data = os.read(fd, LOG_TAIL_BYTES)
    except OSError:
        return []
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace").rstrip().splitlines()[-lines:]


def staged_epochs(run_dir: Path, fmt: str) -> list[int]:
    """The epochs of the staged files of name format `fmt` (STAGED_BEST_FORMAT, STAGED_LAST_FORMAT) in `run_dir`,
    ascending; links and other non-regular files are not staged files of the suite and are left out."""
    pattern = re.compile(rf"^{staged_pattern(fmt)}$")
    try:
        entries = list(os.scandir(run_dir))
    except OSError:
        return []
    return sorted(int(m.group(1)) for e in entries
                  if (m := pattern.match(e.name)) and e.is_file(follow_symlinks=False))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint read on the CPU with torch's restricted unpickler (weights_only=True), never anything else;
    a regular file only. Anything else is a CheckpointError naming the file (`needs_unpickling` set when the
    file would load with full unpickling only)."""
    import torch  # only here: reading a folder's JSON needs no torch

    try:
        fd = open_regular(Path(path))
    except RunFileError as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err.why})") from None
    if fd is None:
        raise CheckpointError(f"{path}: no such checkpoint")
    with os.fdopen(fd, "rb") as f:
        if not zipfile.is_zipfile(f):  # torch.save's format; anything else would go to torch's legacy reader
            raise CheckpointError(f"{path}: unreadable checkpoint (not a torch.save zip archive)")
        f.seek(0)
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            refused = CheckpointError(f"{path}: refused, loading it would need full unpickling, which can run "
                                      f"code ({first_line(err)})")
            refused.needs_unpickling = True  # type: ignore[attr-defined]
            raise refused from None
        except Exception as err:  # noqa: BLE001 - a truncated or foreign file means the same thing here
            raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {first_line(err)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def first_line(err: BaseException) -> str:
    text = str(err)
    marker = "WeightsUnpickler error: "  # torch's restricted unpickler names the refused global or opcode here
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__



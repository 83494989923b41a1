"""The run folder's readers and writers against broken and hostile files (each test fails without its guard).

Every reader of we.rundir gets each kind of bad file a copied or damaged folder may hold; each must give one
line naming the file and its run (RunFileError), never block, never read without bound, never follow a link.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
from pathlib import Path
from typing import Callable, Iterator

import pytest

from we import rundir
from we.errors import InputError
from we.rundir import RunFileError

RUN = "cifar10-resnet20-we-s0-0123abcd"  # a run folder's name, as a grid writes it

# ---- the bad files ------------------------------------------------------------------------------------------
# name -> what to write at the file's path (text kinds take the reader's own variant, below)
TEXT_KINDS = ("non_utf8", "wrong_type", "truncated", "empty")
TEXT = {  # reader file -> kind -> content
    rundir.RESULT_FILE: {"non_utf8": b'{"status": "\xff"}', "wrong_type": b"[1]", "truncated": b'{"status": "compl',
                         "empty": b""},
    rundir.CELL_FILE: {"non_utf8": b'{"key": "\xfe\xff"}', "wrong_type": b'"a string"', "truncated": b'{"labels": {',
                       "empty": b"  \n"},
    rundir.GRID_FILE: {"non_utf8": b"\xff\xfe", "wrong_type": b"123", "truncated": b'{"cells": {"a": ',
                       "empty": b""},
    rundir.METRICS_FILE: {"non_utf8": b'{"epoch": 1, "x": "\xff"}\n', "wrong_type": b"[1]\n",
                          "truncated": b'{"epoch": 1}\n{"epoch": 2, "test_t\n', "empty": None},
    rundir.CONFIG_FILE: {"non_utf8": b"lr: \xff\n", "wrong_type": b"- 1\n- 2\n", "truncated": b"lr: [0.1,\n",
                         "empty": None},
}
LIMITS = {rundir.RESULT_FILE: rundir.JSON_LIMIT, rundir.CELL_FILE: rundir.JSON_LIMIT, rundir.GRID_FILE: rundir.JSON_LIMIT,
          rundir.METRICS_FILE: rundir.METRICS_LIMIT, rundir.CONFIG_FILE: rundir.CONFIG_LIMIT}
READERS: dict[str, Callable[[Path], object]] = {
    rundir.RESULT_FILE: rundir.read_result, rundir.CELL_FILE: rundir.read_cell, rundir.GRID_FILE: rundir.read_grid_file,
    rundir.METRICS_FILE: rundir.read_metrics, rundir.CONFIG_FILE: rundir.read_config}
OTHER_KINDS = ("huge", "link_to_dev_zero", "link_to_a_good_file", "fifo", "char_device", "folder")


def plant(path: Path, kind: str, tmp: Path) -> None:
    """Put a file of `kind` at `path` (a good copy of it lies in `tmp` for the link kind)."""
    if kind in TEXT_KINDS:
        path.write_bytes(TEXT[path.name][kind])
    elif kind == "huge":  # sparse: one byte more than the reader may read, no disk used
        with open(path, "wb") as f:
            f.truncate(LIMITS[path.name] + 1)
    elif kind == "link_to_dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "link_to_a_good_file":
        good = tmp / f"elsewhere-{path.name}"
        good.write_text('{"epoch": 1}\n' if path.name == rundir.METRICS_FILE else '{"cells": {}}')
        path.symlink_to(good)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "char_device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # what /dev/zero is
        except PermissionError:
            pytest.skip("making a device file needs root")
    elif kind == "folder":
        path.mkdir()


@contextlib.contextmanager
def must_not_block(seconds: int = 20) -> Iterator[None]:
    """A reader that blocks (a FIFO) or reads without bound (/dev/zero) fails here instead of hanging."""
    def fail(*_):
        raise AssertionError(f"the reader did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


CASES = [(name, kind) for name in READERS for kind in (*TEXT_KINDS, *OTHER_KINDS)
         if not (kind in TEXT_KINDS and TEXT[name][kind] is None)]


@pytest.mark.parametrize("name,kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_every_reader_refuses_every_bad_file_in_one_line(tmp_path: Path, name: str, kind: str):
    run_dir = tmp_path / RUN
    run_dir.mkdir()
    plant(run_dir / name, kind, tmp_path)
    with must_not_block(), pytest.raises(RunFileError) as caught:
        READERS[name](run_dir)
    line = str(caught.value)
    assert "\n" not in line and str(run_dir / name) in line and f"(run {RUN})" in line, line


def test_an_empty_metrics_or_config_file_reads_as_nothing(tmp_path: Path):
    """The two bad-file kinds with a defined reading: no epoch rows yet; a config of no keys (which the
    trainer's resume check then compares through last.pt's own config, below)."""
    (tmp_path / rundir.METRICS_FILE).write_text("")
    (tmp_path / rundir.CONFIG_FILE).write_text("")
    assert rundir.read_metrics(tmp_path) == [] and rundir.read_config(tmp_path) == {}


def test_a_metrics_line_still_being_written_is_left_out(tmp_path: Path):
    (tmp_path / rundir.METRICS_FILE).write_text('{"epoch": 1, "test_top1": 50.0}\n{"epoch": 2, "te')
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path)] == [1]


def test_json_is_strict_and_non_finite_values_read_back(tmp_path: Path):
    row = {"epoch": 1, "loss": float("nan"), "top1": float("inf"), "low": float("-inf"), "ok": 1.5}
    rundir.write_metrics(tmp_path, [row])
    rundir.write_result(tmp_path, {"status": "diverged", "final_top1": float("nan"), "rows": [row]})
    for name in (rundir.METRICS_FILE, rundir.RESULT_FILE):
        text = (tmp_path / name).read_text()
        json.loads(text.splitlines()[0] if name == rundir.METRICS_FILE else text,
                   parse_constant=lambda c: pytest.fail(f"{name} holds a bare {c}"))
    (back,) = rundir.read_metrics(tmp_path)
    assert back["ok"] == 1.5 and back["top1"] == float("inf") and back["low"] == float("-inf") and back["loss"] != back["loss"]
    assert rundir.read_result(tmp_path)["final_top1"] != rundir.read_result(tmp_path)["final_top1"]  # NaN


# ---- logs: only from inside the run's own folder ----------------------------------------------------------------
def test_a_log_is_read_only_from_the_runs_own_logs_folder(tmp_path: Path):
    grid = tmp_path / "runs" / "g"
    run_dir = grid / RUN
    (run_dir / "logs").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("root-only line\n")
    (run_dir / "logs" / "own.log").write_text("line 1\nline 2\n")
    (run_dir / "logs" / "leak.log").symlink_to(secret)
    assert rundir.log_tail(run_dir, "own.log") == ["line 1", "line 2"]
    assert rundir.log_tail(run_dir, str(secret)) == []  # a path cell.json names: only its name is used
    assert rundir.log_tail(run_dir, "../../../secret.txt") == []
    assert rundir.log_tail(run_dir, "leak.log") == []  # a link leading out of the grid's folder
    os.mkfifo(run_dir / "logs" / "fifo.log")
    with must_not_block():
        assert rundir.log_tail(run_dir, "fifo.log") == []


def test_a_log_tail_reads_a_bounded_end_of_a_huge_log(tmp_path: Path):
    (tmp_path / "logs").mkdir()
    with open(tmp_path / "logs" / "big.log", "wb") as f:
        f.seek(1 << 30)  # 1 GiB of zeros before the end, sparse
        f.write(b"\nthe last line\n")
    with must_not_block():
        assert rundir.log_tail(tmp_path, "big.log", lines=1) == ["the last line"]


# ---- writers ---------------------------------------------------------------------------------------------------
def test_stale_temps_of_the_folders_own_writers_are_removed_and_nothing_else(tmp_path: Path):
    ours = [  # `.<name>.<random>.tmp`: a staged best (.best-epoch12.pt) or last.pt (.last-epoch3.pt) gets two dots
        ".last.pt.k2j3h4_x.tmp", ".result.json.abc123.tmp", "..best-epoch12.pt.Zz9.tmp", ".metrics.csv.q.tmp",
        "..last-epoch3.pt.a1_B.tmp"]
    theirs = [".notes.txt.abc.tmp", "last.pt.abc.tmp", ".last.pt.tmp", ".last.pt.a b.tmp", "keep.tmp",
              ".last-epoch3.pt", "..last-epochX.pt.ab.tmp", "..best-epoch.pt.ab.tmp"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".config.yaml.link.tmp").symlink_to(tmp_path / "keep.tmp")  # a link is not a writer's temp
    removed = rundir.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs + [".config.yaml.link.tmp"])


def test_staged_epochs_are_the_regular_files_of_the_format(tmp_path: Path):
    for name in (".last-epoch3.pt", ".last-epoch12.pt", ".best-epoch4.pt", ".last-epoch.pt", "last-epoch5.pt",
                 ".last-epoch6.pt.tmp", ".last-epoch7.ptx"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".last-epoch8.pt").symlink_to(tmp_path / ".last-epoch3.pt")  # no writer makes a link
    (tmp_path / ".last-epoch9.pt").mkdir()
    assert rundir.staged_epochs(tmp_path, rundir.STAGED_LAST_FORMAT) == [3, 12]
    assert rundir.staged_epochs(tmp_path, rundir.STAGED_BEST_FORMAT) == [4]
    assert rundir.staged_epochs(tmp_path / "absent", rundir.STAGED_LAST_FORMAT) == []


class FullDisk:
    """A file object whose writes fail as a full disk does, after `room` bytes."""

    def __init__(self, f, room: int = 100) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_is_one_line_with_enospc_and_the_file_and_keeps_the_old_file(tmp_path: Path, monkeypatch):
    import torch

    good = {"epoch": 1, "w": torch.ones(3)}
    rundir.write_checkpoint(tmp_path / rundir.LAST_CHECKPOINT, good)
    opener = rundir.write._fdopen
    monkeypatch.setattr(rundir.write, "_fdopen", lambda fd, mode: FullDisk(opener(fd, mode)))
    with pytest.raises(rundir.DiskFullError) as caught:
        rundir.write_checkpoint(tmp_path / rundir.LAST_CHECKPOINT, {"epoch": 2, "w": torch.zeros(1 << 16)})
    line = str(caught.value)
    assert "\n" not in line and "ENOSPC" in line and str(tmp_path / rundir.LAST_CHECKPOINT) in line, line
    assert caught.value.errno == errno.ENOSPC
    assert rundir.read_checkpoint(tmp_path / rundir.LAST_CHECKPOINT)["epoch"] == 1  # the last good one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.LAST_CHECKPOINT]  # no temp file left


def test_write_text_on_a_full_disk_keeps_the_old_text(tmp_path: Path, monkeypatch):
    rundir.write_result(tmp_path, {"status": "running", "epochs_done": 3})
    opener = rundir.write._fdopen
    monkeypatch.setattr(rundir.write, "_fdopen", lambda fd, mode: FullDisk(opener(fd, mode), room=10))
    with pytest.raises(rundir.DiskFullError, match="ENOSPC"):
        rundir.write_result(tmp_path, {"status": "complete", "epochs_done": 4, "pad": "x" * 1000})
    assert rundir.read_result(tmp_path) == {"status": "running", "epochs_done": 3}


# ---- paths that stay inside -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../out.md", "/etc/x.md", "a/../../b.md"])
def test_inside_refuses_a_path_leading_out(tmp_path: Path, name: str):
    with pytest.raises(InputError, match="outside"):
        rundir.inside(tmp_path, name)


def test_inside_refuses_a_link_leading_out(tmp_path: Path):
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "exit").symlink_to(tmp_path)
    with pytest.raises(InputError, match="outside"):
        rundir.inside(tmp_path / "box", "exit/table.md")
    assert rundir.inside(tmp_path / "box", "sub/table.md") == tmp_path / "box" / "sub" / "table.md"


def test_config_yaml_is_read_with_the_safe_loader(tmp_path: Path):
    (tmp_path / rundir.CONFIG_FILE).write_text("lr: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(RunFileError, match="malformed YAML"):
        rundir.read_config(tmp_path)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()

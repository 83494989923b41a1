"""Ctrl-C and SIGTERM on `python -m we.train`: one line, status `interrupted`, exit 130 / 143, and the
same command resumes to the same result as an uninterrupted run; the grid shows such a cell as interrupted (submit resumes it)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from we.grid.state import cell_state
from we.train.interrupt import Interrupted, held, interrupts_raise
from we.train.trainer import TIMING_KEYS

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("SUBMITIT_EXECUTOR", None)


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "we.train", "dataset=digits", "model=resnet20", "limit_train=256",
            "batch_size=32", "workers=0", "progress=plain", "epochs=4", "lr=0.05", "lr_milestones=[2]",
            "method=we", "we_r_hat=0.3", "we_gamma=0.5", f"out={out}"]


def final_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(command(out), cwd=REPO, env=ENV, check=True, capture_output=True)
    return out


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_and_the_same_command_resumes(tmp_path: Path, reference: Path, sig: int, code: int):
    out = tmp_path / "run"
    log_out, log_err = tmp_path / "stdout", tmp_path / "stderr"
    with open(log_out, "wb") as so, open(log_err, "wb") as se:
        proc = subprocess.Popen(command(out), cwd=REPO, env=ENV, stdout=so, stderr=se)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.exists() and metrics.read_text().strip():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(sig)
        assert proc.wait(timeout=300) == code
    err = log_err.read_text()
    assert "Traceback" not in err and "Traceback" not in log_out.read_text()
    assert len(err.strip().splitlines()) == 1, err
    result = json.loads((out / "result.json").read_text())
    done = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert result["status"] == "interrupted" and result["signal"] == signal.Signals(sig).name
    assert 1 <= done < 4 and result["epochs_done"] == done == len(final_rows(out))
    assert f"interrupted by {signal.Signals(sig).name} during epoch {done + 1}/4" in err
    assert "resume with: python -m we.train dataset=digits" in err and f"out={out}" in err
    state, note, _ = cell_state(out, {})  # a plain run folder: no job record
    assert state == "interrupted" and f"interrupted at epoch {done}/4" in note and "resumes it" in note

    again = subprocess.run(command(out), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resuming after epoch {done}" in again.stdout
    assert json.loads((out / "result.json").read_text())["status"] == "complete"
    assert final_rows(out) == final_rows(reference)


def test_a_signal_inside_a_held_section_waits_for_its_end():
    with interrupts_raise() as installed:
        assert installed
        reached = False
        with pytest.raises(Interrupted) as caught:
            with held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                reached = True  # the checkpoint's writing goes on
        assert reached and caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_nothing_installed_inside_a_submitit_job(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    before = signal.getsignal(signal.SIGINT)
    with interrupts_raise() as installed:
        assert not installed and signal.getsignal(signal.SIGINT) is before


def wait_for_line(path: Path, proc: subprocess.Popen, text: str, timeout: float = 600) -> None:
    """Block until the run's own log holds `text` (the trainer's event, not a guessed sleep)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended (or timed out) before printing {text!r}: {path.read_text()}")


def group_alive(pgid: int) -> list[int]:
    """Pids still alive (not zombies) in a process group."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.parametrize("target, sig, code", [("group", signal.SIGINT, 130), ("group", signal.SIGTERM, 143),
                                               ("main", signal.SIGINT, 130)])
def test_a_signal_to_a_run_with_loader_workers_stops_it_in_at_most_two_lines(tmp_path: Path, target: str, sig: int,
                                                                             code: int):
    """As a terminal's Ctrl-C: the whole process group (main process and its 2 DataLoader workers) gets
    the signal, timed from the trainer's own `epoch 1/` line while epoch 2's batches load."""
    out = tmp_path / "run"
    argv = [a if not a.startswith("workers=") else "workers=2" for a in command(out)]
    argv = [a if not a.startswith("epochs=") else "epochs=6" for a in argv]
    log_out, log_err = tmp_path / "stdout", tmp_path / "stderr"
    with open(log_out, "wb") as so, open(log_err, "wb") as se:
        proc = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=so, stderr=se, start_new_session=True)
        try:
            wait_for_line(log_out, proc, "epoch 1/6 ")
            os.killpg(proc.pid, sig) if target == "group" else proc.send_signal(sig)
            assert proc.wait(timeout=300) == code
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    err, std = log_err.read_text(), log_out.read_text()
    assert "Traceback" not in err and "Traceback" not in std and "Error" not in err, err
    assert 1 <= len(err.strip().splitlines()) <= 2, err
    assert f"interrupted by {signal.Signals(sig).name}" in err and "resume with: python -m we.train" in err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "interrupted" and result["epochs_done"] >= 1
    deadline = time.time() + 30  # the workers end with the main process, none left behind
    while group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not group_alive(proc.pid)

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
    assert state == "interrupted" and "resumes it" in note

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

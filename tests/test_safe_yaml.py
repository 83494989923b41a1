"""Every YAML the suite reads (a config, a grid, a cluster profile, a run's config.yaml) goes through the safe
loader: a planted Python tag is refused with one line naming the file, and its code never runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def planted(tmp_path: Path, body: str) -> tuple[Path, Path]:
    """A YAML file whose `payload` value would create `marker` if it were loaded with full construction."""
    marker = tmp_path / "code-ran"
    tag = f"!!python/object/apply:os.system [\"touch {marker}\"]"
    path = tmp_path / "planted.yaml"
    path.write_text(body.format(tag=tag))
    return path, marker


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command, body", [
    (["-m", "we.train", "--config"], "model: resnet20\nlr: {tag}\n"),
    (["-m", "we.grid", "plan"], "name: planted\ndescription: {tag}\ncells: []\n"),
])
def test_a_python_tag_is_refused_with_one_line_and_never_runs(tmp_path, command, body):
    path, marker = planted(tmp_path, body)
    proc = run(*command, str(path))
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists(), "the planted tag ran"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_a_profile_with_a_python_tag_is_refused_before_any_job(tmp_path):
    path, marker = planted(tmp_path, "partition: {tag}\n")
    proc = run("-m", "we.grid", "plan", "demo", "--executor", "slurm", "--profile", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not marker.exists(), "the planted tag ran"
    assert str(path) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

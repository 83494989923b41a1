"""Packaging: pyproject.toml's entry points, installed packages and dependency ranges; what the
suite does when it runs from an installed package instead of a checkout."""
import fnmatch
import importlib
import re
import tomllib
from pathlib import Path

import pytest

from we.errors import InputError
from we.grid import schema
from we.train import provenance

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.mark.parametrize("command", ["we-train", "we-grid", "we-report", "we-bench"])
def test_console_commands_point_at_callables(command):
    module, _, attr = PROJECT["project"]["scripts"][command].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_only_we_and_models_are_installed():
    include = PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]  # setuptools' fnmatch patterns
    packages = [".".join(p.parent.relative_to(REPO).parts) for p in REPO.rglob("__init__.py")
                if ".venv" not in p.parts]
    found = {p for p in packages if any(fnmatch.fnmatchcase(p, pattern) for pattern in include)}
    assert {p.split(".")[0] for p in found} == {"we", "models"}
    assert {"we.core", "we.train", "models"} <= set(found)


def version_tuple(text):
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", text).groups())


def test_core_needs_only_torch_and_the_range_holds_the_tested_pairs():
    deps = PROJECT["project"]["dependencies"]
    assert [re.split(r"[<>=!~ ]", d)[0] for d in deps] == ["torch"]
    low = version_tuple(deps[0].split(">=")[1])
    pinned = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split() if "==" in line)
    assert low <= (2, 11) <= version_tuple(pinned["torch"])
    suite = {re.split(r"[<>=!~ ]", d)[0]: d for d in PROJECT["project"]["optional-dependencies"]["suite"]}
    assert version_tuple(suite["torchvision"].split(">=")[1]) <= (0, 26) <= version_tuple(pinned["torchvision"])
    extras = {re.split(r"[<>=!~ ]", d)[0] for name in ("suite", "tracking", "lightning", "test")
              for d in PROJECT["project"]["optional-dependencies"][name]}
    required = {line.split("==")[0].split(">=")[0] for line in (REPO / "requirements.txt").read_text().split()}
    assert required - {"torch"} <= extras


def test_grid_names_outside_a_checkout_say_to_give_a_path(monkeypatch):
    assert schema.find_grid_file("demo").name == "demo.yaml"
    monkeypatch.setattr(schema, "IN_CHECKOUT", False)
    with pytest.raises(InputError, match="installed package: give the grid as a path"):
        schema.find_grid_file("demo-nosuch")


def test_provenance_outside_a_checkout_records_the_package_version(monkeypatch):
    import torch

    assert provenance.provenance(torch.device("cpu"))["git_commit"]  # this checkout
    monkeypatch.setattr(provenance, "IN_CHECKOUT", False)
    monkeypatch.setattr(provenance, "package_version", lambda: "9.9.9")
    prov = provenance.provenance(torch.device("cpu"))
    assert prov["git_commit"] is None and prov["versions"]["we-repro"] == "9.9.9"


# The import names of the `suite` extra's packages: a core-only install has none of them.
SUITE_MODULES = ("torchvision", "timm", "pandas", "matplotlib", "submitit", "yaml", "sklearn", "scipy", "tqdm",
                 "filelock")
CORE_ONLY = f"""
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SUITE_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Absent())
"""


@pytest.mark.parametrize("command", ["we-train", "we-grid", "we-report", "we-bench"])
def test_every_console_command_on_a_core_only_install_names_the_extra_in_one_line(command):
    import subprocess
    import sys

    module, _, attr = PROJECT["project"]["scripts"][command].partition(":")
    script = CORE_ONLY + f"import {module} as m\nsys.argv = [{command!r}, '--help']\nsys.exit(m.{attr}())\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"{command}: needs the 'suite' extra" in done.stderr and "pip install 'we-repro[suite]'" in done.stderr


def test_a_missing_project_module_is_not_taken_for_a_missing_extra():
    from we.commands import needs_extra

    with pytest.raises(ModuleNotFoundError):
        needs_extra("we-train", ModuleNotFoundError("No module named 'we.nosuch'", name="we.nosuch"))
    assert needs_extra("we-train", ModuleNotFoundError("x", name="yaml"))() == 1


def test_make_install_installs_the_package_editable():
    import subprocess

    dry = subprocess.run(["make", "-n", "-B", "install", "VENV=/nonexistent-venv"], cwd=REPO, capture_output=True,
                         text=True, timeout=60).stdout
    assert "/nonexistent-venv/bin/python -m pip install" in dry and "-e ." in dry, dry


def test_collect_of_a_grid_outside_the_checkout_writes_beside_its_runs_root(tmp_path, capsys):
    import yaml

    from we.grid.__main__ import main as grid_main
    from we.grid.cli import default_out_dir

    grid = tmp_path / "project" / "mine.yaml"
    grid.parent.mkdir()
    grid.write_text(yaml.safe_dump({"name": "mine-outside", "base": {"dataset": "digits", "epochs": 1},
                                    "axes": {"method": ["baseline"]}, "seeds": [0]}))
    runs = tmp_path / "project" / "runs"
    assert grid_main(["collect", str(grid), "--runs-root", str(runs)]) == 0
    assert (tmp_path / "project" / "mine-outside.md").exists()
    assert not list((REPO / "results").glob("mine-outside*"))
    assert default_out_dir(schema.load_grid("demo"), runs) == REPO / "results"  # a grid of the checkout

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

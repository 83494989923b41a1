"""Malformed grids, profiles and options fail before anything is written, with one line naming file and key."""
from pathlib import Path

import pytest
import yaml

from we.grid.cli import main

VALID = {
    "name": "bad",
    "base": {"dataset": "digits", "model": "resnet20", "epochs": 1, "limit_train": 64, "workers": 0},
    "axes": {"method": ["baseline", "we"]},
    "seeds": [0, 1],
}
PROFILE = {"partition": "debug", "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": None, "timeout_min": 10,
           "max_num_timeout": 3, "array_parallelism": 2, "account": None, "qos": None, "setup": []}


def grid_with(**changes):
    """VALID with top-level keys replaced (None removes the key)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VALID.items()}
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return yaml.safe_dump(data, sort_keys=False)


def base_with(**changes):
    return grid_with(base={**VALID["base"], **changes})


def axes_with(**axes):
    return grid_with(axes=axes)


def method_axis(*entries):
    return axes_with(method=list(entries))


# (id, grid file text, expected key in the message, expected words in the message)
GRID_CASES = [
    ("yaml-syntax", "name: bad\naxes: {method: [baseline\n", "line", "malformed YAML"),
    ("yaml-duplicate-key", "name: bad\nname: again\naxes: {method: [baseline]}\nseeds: [0]\n", "line", "given twice"),
    ("top-level-list", "- name: bad\n", "(top level)", "expected a mapping"),
    ("unknown-top-level-key", grid_with(axis={"method": ["we"]}), "axis", "unknown grid key"),
    ("missing-name", grid_with(name=None), "name", "missing"),
    ("name-with-slash", grid_with(name="a/b"), "name", "folder-safe"),
    ("base-not-mapping", grid_with(base=["lr", 0.1]), "base", "mapping"),
    ("base-unknown-key", base_with(lrr=0.1), "base.lrr", "unknown config key"),
    ("base-wrong-type", base_with(lr="fast"), "base.lr", "expected float"),
    ("base-negative-lr", base_with(lr=-0.1), "base.lr", "must be > 0"),
    ("base-zero-epochs", base_with(epochs=0), "base.epochs", "must be > 0"),
    ("base-bad-choice", base_with(schedule="linear"), "base.schedule", "not one of"),
    ("base-sets-out", base_with(out="/tmp/x"), "base.out", "set by the grid"),
    ("base-sets-seed", base_with(seed=3), "base.seed", "set by the grid"),
    ("base-sets-method", base_with(method="we"), "base.method", "method"),
    ("unknown-model", grid_with(base={"dataset": "digits"}, axes={"model": ["resnet57"], "method": ["we"]}),
     "axes.model", "unknown model"),
    ("unknown-dataset", grid_with(base={"model": "resnet20"}, axes={"dataset": ["mnist"], "method": ["we"]}),
     "axes.dataset", "not one of"),
    ("model-family-mismatch", grid_with(base={"dataset": "cifar10"}, axes={"model": ["resnet34"], "method": ["we"]}),
     "axes.model", "imagenet model"),
    ("unknown-method-label", method_axis("baseline", "we_turbo"), "axes.method[1]", "unknown method label"),
    ("method-entry-unknown-key", method_axis({"label": "x", "method": "we"}), "axes.method[0].method", "unknown key"),
    ("method-entry-bad-label", method_axis({"label": "a b", "overrides": {"method": "we"}}), "axes.method[0].label",
     "folder-safe"),
    ("method-override-unknown-key", method_axis({"label": "we", "overrides": {"we_gama": 0.1}}),
     "axes.method[0].overrides.we_gama", "unknown config key"),
    ("method-override-wrong-type", method_axis({"label": "we", "overrides": {"we_bn": "no"}}),
     "axes.method[0].overrides.we_bn", "expected bool"),
    ("method-override-out-of-range", method_axis({"label": "a", "overrides": {"method": "we", "we_alpha": 1.5}}),
     "axes.method[0]", "must be >= 0 and <= 1"),
    ("method-entry-without-method", method_axis({"label": "mine", "overrides": {"we_alpha": 0.5}}),
     "axes.method[0].overrides.method", "not a preset"),
    ("method-not-implemented", method_axis("baseline", {"label": "nsx", "overrides": {"method": "nosuch"}}),
     "axes.method[1]", "is not implemented yet"),
    ("official-variant-switch", grid_with(base={**VALID["base"], "we_variant": "official"},
                                          axes={"method": ["we_reverse_matching"]}),
     "axes.method[0]", "no effect with we_variant official"),
    ("missing-axes", grid_with(axes=None), "axes", "missing"),
    ("axes-not-mapping", grid_with(axes=["method"]), "axes", "non-empty mapping"),
    ("empty-axis", axes_with(method=["we"], lr=[]), "axes.lr", "empty axis"),
    ("axis-not-list", axes_with(method="we"), "axes.method", "expected a list"),
    ("axis-unknown-config-key", axes_with(method=["we"], optimiser=["sgd"]), "axes.optimiser[0]", "unknown config key"),
    ("axis-value-not-scalar", axes_with(method=["we"], lr=[[0.1]]), "axes.lr[0]", "single value"),
    ("axis-also-in-base", axes_with(method=["we"], model=["resnet20"]), "axes.model", "also set in base"),
    ("no-method-axis", axes_with(lr=[0.1, 0.05]), "axes.method", "missing"),
    ("duplicate-axis-value", axes_with(method=["we"], lr=[0.1, 0.1]), "axes.lr", "duplicate cells"),
    ("duplicate-method-label", method_axis("we", "we"), "axes.method", "duplicate cells"),
    ("duplicate-config", method_axis("we", {"label": "we2", "overrides": {"method": "we"}}), "axes.method[1]",
     "same config"),
    ("seeds-not-ints", grid_with(seeds=[0, "one"]), "seeds[1]", "expected an int"),
    ("seeds-float", grid_with(seeds=[0.5]), "seeds[0]", "expected an int"),
    ("seeds-negative", grid_with(seeds=[-1]), "seeds[0]", "expected an int >= 0"),
    ("seeds-missing", grid_with(seeds=None), "seeds", "missing"),
    ("seeds-empty", grid_with(seeds=[]), "seeds", "non-empty list"),
    ("seeds-duplicate", grid_with(seeds=[1, 1]), "seeds", "given twice"),
    ("exclude-not-list", grid_with(exclude={"method": "we"}), "exclude", "list of partial cells"),
    ("exclude-unknown-axis", grid_with(exclude=[{"optimizer": "sgd"}]), "exclude[0].optimizer", "unknown axis"),
    ("exclude-unknown-value", grid_with(exclude=[{"method": "fg1"}]), "exclude[0].method", "not a value"),
    ("exclude-empty-entry", grid_with(exclude=[{}]), "exclude[0]", "non-empty mapping"),
    ("train-not-bool", grid_with(train="no"), "train", "expected bool (true or false)"),
    ("plot-only-with-axes", grid_with(train=False), "axes", "no cells"),
    ("resources-unknown-key", grid_with(resources={"partition": "gpu"}), "resources.partition", "unknown key"),
    ("resources-wrong-type", grid_with(resources={"timeout_min": "1h"}), "resources.timeout_min", "expected int"),
    ("resources-out-of-range", grid_with(resources={"cpus_per_task": 0}), "resources.cpus_per_task", "must be >= 1"),
]

# (id, profile text, expected key, expected words)
PROFILE_CASES = [
    ("profile-missing-key", yaml.safe_dump({k: v for k, v in PROFILE.items() if k != "partition"}), "partition",
     "missing"),
    ("profile-wrong-type", yaml.safe_dump({**PROFILE, "timeout_min": "10"}), "timeout_min", "expected int"),
    ("profile-bool-for-int", yaml.safe_dump({**PROFILE, "gpus_per_node": True}), "gpus_per_node", "expected int"),
    ("profile-unknown-key", yaml.safe_dump({**PROFILE, "gpus": 1}), "gpus", "unknown key"),
    ("profile-out-of-range", yaml.safe_dump({**PROFILE, "array_parallelism": 0}), "array_parallelism", ">= 1"),
    ("profile-setup-not-strings", yaml.safe_dump({**PROFILE, "setup": [1]}), "setup", "list of strings"),
    ("profile-config-not-neutral", yaml.safe_dump({**PROFILE, "config": {"lr": 0.1}}), "config", "result-neutral"),
    ("profile-pack-zero", yaml.safe_dump({**PROFILE, "pack": 0}), "pack", "must be >= 1"),
    ("profile-pack-not-int", yaml.safe_dump({**PROFILE, "pack": 2.5}), "pack", "expected int"),
    ("profile-bad-yaml", "partition: [debug\n", "line", "malformed YAML"),
    ("profile-not-mapping", "- debug\n", "(top level)", "mapping"),
]


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, file: str, key: str, words: str) -> None:
    assert code == 2, err
    line = err.strip()
    assert "\n" not in line, err
    assert line.startswith("error: "), line
    assert f"{file}: {key}: " in line or f"{file}: {key}" in line, line
    assert words in line, line


@pytest.mark.parametrize("case", GRID_CASES, ids=[c[0] for c in GRID_CASES])
def test_bad_grid(case, tmp_path: Path, capsys, monkeypatch):
    name, text, key, words = case
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    runs = tmp_path / "runs"
    code, err = run_cli(["submit", str(path), "--runs-root", str(runs)], capsys)
    assert_one_line_error(code, err, "bad.yaml", key, words)
    assert not runs.exists()


@pytest.mark.parametrize("case", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_bad_profile(case, tmp_path: Path, capsys, monkeypatch):
    name, text, key, words = case
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text(grid_with())
    (tmp_path / "prof.yaml").write_text(text)
    runs = tmp_path / "runs"
    code, err = run_cli(["submit", "grid.yaml", "--executor", "slurm", "--profile", "prof.yaml",
                         "--runs-root", str(runs)], capsys)
    assert_one_line_error(code, err, "prof.yaml", key, words)
    assert not runs.exists()


OPTION_CASES = [
    ("set-unknown-key", ["--set", "lrr=0.1"], "--set", "lrr", "unknown config key"),
    ("set-wrong-type", ["--set", "epochs=two"], "--set", "epochs", "expected int"),
    ("set-out-of-range", ["--set", "epochs=-1"], "--set", "epochs", "must be > 0"),
    ("set-not-key-value", ["--set", "epochs"], "--set", "(option)", "key=value"),
    ("set-seed", ["--set", "seed=1"], "--set", "seed", "set by the grid"),
    ("missing-profile", ["--executor", "slurm", "--profile", "nope.yaml"], "nope.yaml", "profile", "no such file"),
    ("missing-grid", None, "nosuchgrid", "grid", "no such grid"),
    ("concurrency-zero", ["--concurrency", "0"], "--concurrency", "concurrency", ">= 1"),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option(case, tmp_path: Path, capsys, monkeypatch):
    name, extra, file, key, words = case
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text(grid_with())
    runs = tmp_path / "runs"
    grid = "nosuchgrid" if extra is None else "grid.yaml"
    code, err = run_cli(["submit", grid, "--runs-root", str(runs), *(extra or [])], capsys)
    assert_one_line_error(code, err, file, key, words)
    assert not runs.exists()


def test_unwritable_runs_root(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text(grid_with())
    (tmp_path / "afile").write_text("not a folder")
    code, err = run_cli(["submit", "grid.yaml", "--runs-root", str(tmp_path / "afile" / "runs")], capsys)
    assert_one_line_error(code, err, str(tmp_path / "afile" / "runs"), "runs_root", "not a folder")

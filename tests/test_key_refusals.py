"""Every key is checked by its declaration (we.keys.Key) before anything runs or is submitted: NaN and infinity,
values out of range, bad model specs and environment variables are one line naming the key, exit 2, nothing
written; the YAML reader refuses alias bombs; messages show a bounded excerpt of a value."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from we.core.hparams import HPARAMS
from we.errors import ConfigError, InputError
from we.files import MAX_YAML_VALUES, read_yaml
from we.grid.cli import POLL_ENV
from we.grid.cli import main as grid_main
from we.grid.local import LocalExecutor
from we.grid.profiles import check_profile_values
from we.keys import EXCERPT_CHARS, BadValue, Key, checked, excerpt
from we.train.cli import cli as train_cli
from we.train.config import config_keys, load_config

REPO = Path(__file__).resolve().parent.parent
TINY = ["dataset=digits", "model=resnet20", "epochs=1", "limit_train=64", "workers=0", "batch_size=32"]

# (given keys, the key the one line names): each of these once trained (or failed with exit 1) instead
TRAIN_CASES = [
    (["momentum=.nan"], "momentum"),
    (["weight_decay=.nan"], "weight_decay"),
    (["method=we", "we_r_hat=.nan"], "we_r_hat"),
    (["method=we", "we_gamma=.nan"], "we_gamma"),
    (["method=we", "we_beta=.nan"], "we_beta"),
    (["method=we", "we_beta=1"], "we_beta"),  # "beta is larger than one" (Sec. 3.1.1)
    (["method=rl", "rl_kappa=.nan"], "rl_kappa"),
    (["method=svb", "svb_eps=.nan"], "svb_eps"),
    (["lr=.inf"], "lr"),
    (["lr=-.inf"], "lr"),
    (["lr_step=0", "schedule=step", "method=we"], "lr_step"),
    (["seed=1e20"], "seed"),
    (["seed=100000000000000000000"], "seed"),
    (["seed=4294967296"], "seed"),
    (["image_size=20000"], "image_size"),
    (["image_size=64"], "image_size"),  # the 32x32 sets take 32 only
    (["lr_gamma=.nan"], "lr_gamma"),
    (["lr_gamma=1.5"], "lr_gamma"),
    (["model=.x:y"], "model"),
    (["model=x..y:z"], "model"),
]


@pytest.mark.parametrize("given, key", TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_the_trainer_refuses_a_bad_value_with_one_line_naming_the_key(given, key, tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = train_cli([*TINY, f"out={out}", *given])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0] and lines[0].startswith("error: "), err
    assert not out.exists(), "a refused run wrote its folder"


def numeric_keys() -> list[str]:
    """Every config key whose type admits a float (alone, in a union or in a list)."""
    def admits_float(tp: typing.Any) -> bool:
        return tp is float or any(admits_float(a) for a in typing.get_args(tp))
    return [key for key, spec in config_keys().items() if admits_float(spec.type)]


@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", numeric_keys())
def test_nan_and_infinity_are_refused_for_every_numeric_key(key, bad):
    spec = config_keys()[key]
    assert spec.finite, f"{key} allows non-finite values"
    is_list = typing.get_origin(spec.type) is list or any(typing.get_origin(a) is list
                                                         for a in typing.get_args(spec.type))
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}=[{bad}]" if is_list else f"{key}={bad}"])
    assert f"config key '{key}'" in str(err.value) and "finite" in str(err.value), err.value


def test_the_key_spec_declares_finiteness_bounds_and_a_check():
    assert math.isinf(checked(Key(float, finite=False), float("inf")))
    with pytest.raises(BadValue, match="finite"):
        checked(Key(float), float("nan"))
    with pytest.raises(BadValue, match=r"must be >= 0 and <= 1, got 1\.5"):
        checked(Key(float, minimum=0, maximum=1), 1.5)
    with pytest.raises(BadValue, match=r"must be > 0, got 0"):
        checked(Key(int, minimum=0, strict=True), 0)
    with pytest.raises(BadValue, match="odd"):
        checked(Key(int, check=lambda v: None if v % 2 else "must be odd"), 4)
    with pytest.raises(BadValue, match="finite"):
        checked(Key(list[float]), [1.0, float("nan")])
    assert checked(Key(float, minimum=0), 1) == 1.0


def test_a_profile_refuses_nan_memory_and_bad_config_values():
    with pytest.raises(InputError, match="mem_gb: must be a finite number"):
        check_profile_values({"mem_gb": float("nan")}, "prof.yaml", required=False)
    with pytest.raises(InputError, match=r"prof\.yaml: config: config key 'workers': must be >= 0, got -1"):
        check_profile_values({"config": {"workers": -1}}, "prof.yaml", required=False)
    with pytest.raises(InputError, match="config key 'download': expected bool"):
        check_profile_values({"config": {"download": "yes"}}, "prof.yaml", required=False)


GRID = {"name": "bad", "base": {"dataset": "digits", "model": "resnet20", "epochs": 1, "limit_train": 64,
                                "workers": 0}, "axes": {"method": ["baseline"]}, "seeds": [0]}


def write_grid(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**GRID, **changes}, sort_keys=False))
    return path


def run_grid(args: list[str], capsys) -> tuple[int, list[str]]:
    code = grid_main(args)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def submitted(monkeypatch) -> list:
    """The cells handed to the local executor (which is kept from starting anything)."""
    calls: list = []
    monkeypatch.setattr(LocalExecutor, "submit", lambda self, cells, grid_dir: calls.extend(cells) or [])
    return calls


@pytest.mark.parametrize("where, changes, words", [
    ("base.lr", {"base": {**GRID["base"], "lr": float("nan")}}, "finite"),
    ("axes.method[1]", {"axes": {"method": ["baseline", {"label": "svb", "overrides": {"method": "svb",
                                                                                       "svb_eps": float("inf")}}]}},
     "config key 'svb_eps': must be a finite number"),
    ("axes.lr_step", {"base": {**GRID["base"], "schedule": "step"}, "axes": {"method": ["we"], "lr_step": [0]}},
     "must be > 0"),
])
def test_a_grid_refuses_a_bad_value_before_submitting(where, changes, words, tmp_path: Path, capsys, monkeypatch,
                                                      submitted):
    monkeypatch.chdir(tmp_path)
    path = write_grid(tmp_path, **changes)
    runs = tmp_path / "runs"
    code, lines = run_grid(["submit", str(path), "--runs-root", str(runs)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"grid.yaml: {where}: " in lines[0] and words in lines[0], lines
    assert not runs.exists() and not submitted


@pytest.mark.parametrize("value, words", [("abc", "expected a number"), ("nan", "finite"), ("inf", "finite"),
                                          ("0", "must be > 0"), ("-1", "must be > 0")])
def test_a_bad_poll_interval_is_refused_before_any_job_is_submitted(value, words, tmp_path: Path, capsys,
                                                                     monkeypatch, submitted):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(POLL_ENV, value)
    path = write_grid(tmp_path)
    runs = tmp_path / "runs"
    code, lines = run_grid(["submit", str(path), "--wait", "--runs-root", str(runs)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert POLL_ENV in lines[0] and words in lines[0], lines
    assert not submitted and not runs.exists(), "jobs were submitted before the environment was checked"


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": each level a list of nine aliases of the level below (9**levels strings)."""
    lines = ['  - &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"  - &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "name: bomb\ndescription:\n" + "\n".join(lines) + "\naxes: {method: [baseline]}\nseeds: [0]\n"


def test_the_yaml_reader_refuses_an_alias_bomb(tmp_path: Path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert len(path.read_bytes()) < 600
    with pytest.raises(InputError, match=f"aliases expand to more than {MAX_YAML_VALUES} values"):
        read_yaml(path, "grid")


def test_grid_plan_refuses_an_alias_bomb_with_one_line(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    code, lines = run_grid(["plan", str(path), "--runs-root", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(lines) == 1 and "bomb.yaml" in lines[0] and "aliases expand" in lines[0], lines


# `python -m we.grid ARGV` in this interpreter; prints the exit code and whether torch was imported when it exited
RUN_GRID_MODULE = """import runpy, sys
sys.argv = ["we.grid", *sys.argv[1:]]
try:
    runpy.run_module("we.grid", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    print(stop.code, "torch" in sys.modules)
"""


def test_python_m_we_grid_refuses_an_alias_bomb_before_importing_torch(tmp_path: Path):
    """The bomb is refused by the command's first step (we.grid.yaml_first), before the CLI's modules load torch;
    a good grid file passes that step and is planned by the CLI, which does import torch."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    good = tmp_path / "good.yaml"
    good.write_text("name: good\nbase: {dataset: digits, model: resnet20, epochs: 1}\n"
                    "axes: {method: [baseline]}\nseeds: [0]\n")
    stderr = {}
    for path, code, torch_loaded in ((bomb, "2", "False"), (good, "0", "True")):
        proc = subprocess.run([sys.executable, "-c", RUN_GRID_MODULE, "plan", str(path), "--runs-root",
                               str(tmp_path / "runs")], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout.split()[-2:] == [code, torch_loaded], (path.name, proc.stdout, proc.stderr)
        stderr[path.name] = proc.stderr.strip().splitlines()
    lines = stderr["bomb.yaml"]
    assert len(lines) == 1 and "bomb.yaml" in lines[0] and "aliases expand" in lines[0], lines


def test_the_trainer_refuses_an_alias_bomb_config_with_one_line(tmp_path: Path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb().replace("description:", "lr_milestones:"))
    out = tmp_path / "run"
    code = train_cli(["--config", str(path), f"out={out}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "bomb.yaml" in lines[0] and "aliases expand" in lines[0], lines
    assert not out.exists()


def test_a_recursive_alias_is_refused_and_small_aliases_still_load(tmp_path: Path):
    path = tmp_path / "loop.yaml"
    path.write_text("a: &a [1, *a]\n")
    with pytest.raises(InputError, match="recursive alias"):
        read_yaml(path, "config")
    path.write_text("a: &a [1, 2]\nb: *a\n")
    assert read_yaml(path, "config") == {"a": [1, 2], "b": [1, 2]}


def test_messages_show_a_bounded_excerpt_of_a_value(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    big = ["lol"] * (MAX_YAML_VALUES // 2)
    assert len(excerpt(big)) <= EXCERPT_CHARS and len(excerpt("x" * 10_000)) <= EXCERPT_CHARS
    assert excerpt(0.5) == "0.5" and excerpt("we") == "'we'"
    path = write_grid(tmp_path, description=big)
    code, lines = run_grid(["plan", str(path), "--runs-root", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(lines) == 1 and "grid.yaml: description: " in lines[0], lines
    assert len(lines[0]) < 200, lines[0]


def outside_bounds(h) -> list:
    """Values just outside a WE hyper-parameter's bounds (we.core.hparams), as its config key takes them."""
    values = []
    if h.minimum is not None:
        values.append(h.minimum if h.strict else h.minimum - 1)
    if h.maximum is not None:
        values.append(h.maximum + 1)
    return [[v] if typing.get_origin(h.type) is list else v for v in values]


BOUND_CASES = [(h.config_key, v, h.spec.range_text()) for h in HPARAMS.values() for v in outside_bounds(h)]


@pytest.mark.parametrize("key, value, bound", BOUND_CASES, ids=[f"{k}={v}" for k, v, _ in BOUND_CASES])
def test_every_bound_of_the_we_table_is_refused_through_the_config(key, value, bound, tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = train_cli([*TINY, f"out={out}", "method=we", f"{key}={value}"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"config key '{key}'" in lines[0] and bound in lines[0], err
    assert not out.exists()

"""Seed arrays (we.train.array_run) against the members' solo runs, in float64 on the CPU.

A tiny conv/BN network on 64 digits images, two steps an epoch, three epochs: an array of three seeds
must end where the three solo runs end (every weight, buffer, momentum, method state, RNG stream and
metric row), resume bitwise, leave a diverged member to stop alone and refuse what it cannot fuse.
"""
from __future__ import annotations

import math
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import models
from models import registry
import we.train.array_run as array_run
import we.train.pipeline as pipeline
from we.errors import ConfigError
from we.grid.arrays import epoch_groups
from we.grid.worker import run_cells
from we.rundir import STAGED_LAST_FORMAT, read_checkpoint, read_metrics, read_result, staged_epochs, write_cell
from we.train.array_run import train_array
from we.train.cli import cli
from we.train.config import load_config, to_dict
from we.train.interrupt import Interrupted
from we.train.trainer import TIMING_KEYS, main

MODEL = "array_test_cnn"
NORMALIZE = pipeline._normalize_uint8  # the pipeline's own (float32)
TINY = ["dataset=digits", f"model={MODEL}", "limit_train=64", "batch_size=32", "workers=0", "progress=plain",
        "data_path=device", "epochs=3", "lr=0.05", "lr_milestones=[2]"]
SEEDS = (0, 1, 2)
CASES = {"baseline": ["method=baseline"],
         "we_paper": ["method=we", "we_r_hat=0.3"],
         "we_official": ["method=we", "we_variant=official"],
         "we_every_iteration": ["method=we", "we_interval_unit=iter", "we_interval=1", "we_r_hat=0.3"],
         "we_switches": ["method=we", "we_selection=global", "we_matching=reverse", "we_level=filter",
                         "we_alpha=0.5", "we_bn=false", "we_r_hat=0.3"],
         "svb": ["method=svb", "svb_eps=0.05", "svb_bn=true", "svb_bn_eps=0.05"]}
KINDS = ("conv_weight", "conv_bias", "bn_weight", "bn_bias", "clipped")  # units WE evolved, per kind; SVB's
TOLERANCE = 1e-10  # weights, buffers, optimizer, method and RNG states
METRIC_TOLERANCE = 1e-6  # metric rows, relative: a few float32 roundings


def _tiny_cnn(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    return nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def _tiny_cnn_with_dropout(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    return nn.Sequential(_tiny_cnn(num_classes), nn.Dropout(0.5))


@pytest.fixture(scope="module", autouse=True)
def tiny_models():
    """The tiny models, registered for this module only (the registry is restored afterwards)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
        mp.setattr(registry, "_INFO", dict(registry._INFO))
        models.register_model("cifar", name=MODEL)(_tiny_cnn)
        models.register_model("cifar", name=f"{MODEL}_dropout")(_tiny_cnn_with_dropout)
        yield


@pytest.fixture(autouse=True)
def float64(monkeypatch):
    """Models built in float64, and the device pipeline's images handed over in float64."""
    monkeypatch.setattr(pipeline, "_normalize_uint8", lambda x, mean, std: x.to(torch.float64).div_(255).sub_(mean)
                        .div_(std))
    previous, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits
    yield
    torch.set_default_dtype(previous)
    torch.set_num_threads(threads)


def configs(root: Path, case: str, seeds=SEEDS, extra=()):
    return [load_config(None, TINY + CASES[case] + [f"seed={s}", f"out={root}/s{s}", *extra]) for s in seeds]


_SOLO: dict[str, Path] = {}


@pytest.fixture
def solo_runs(tmp_path_factory, float64):
    """The solo runs of a case, trained once per test session."""
    def get(case: str) -> Path:
        if case not in _SOLO:
            root = tmp_path_factory.mktemp(f"solo-{case}")
            for cfg in configs(root, case):
                assert main(cfg)["status"] == "complete"
            _SOLO[case] = root
        return _SOLO[case]
    return get


def largest_difference(a, b, where: str = "") -> float:
    """The largest absolute difference between two checkpoint-like trees (inf where they differ otherwise)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        if a.is_floating_point():
            return (a - b).abs().max().item() if a.numel() else 0.0
        return 0.0 if torch.equal(a, b) else math.inf
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: {set(a) ^ set(b)}"
        return max([largest_difference(a[k], b[k], f"{where}/{k}") for k in a], default=0.0)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        return max([largest_difference(x, y, where) for x, y in zip(a, b)], default=0.0)
    if isinstance(a, float) and isinstance(b, float):
        return 0.0 if (math.isnan(a) and math.isnan(b)) or a == b else abs(a - b)
    assert a == b, f"{where}: {a!r} != {b!r}"
    return 0.0


def run_state(out: Path) -> dict:
    """What a finished run folder holds that a result depends on, but for the metric rows: last.pt (its config
    without `out`, its history aside) and best.pt's weights."""
    last = read_checkpoint(out / "last.pt")
    last["config"].pop("out")
    last.pop("history")
    best = read_checkpoint(out / "best.pt")
    return {"last": last, "best": {"epoch": best["epoch"], "model": best["model"]}}


def metric_rows(out: Path) -> list[dict]:
    """metrics.jsonl and last.pt's history, without their timings."""
    rows = read_metrics(out) + read_checkpoint(out / "last.pt")["history"]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def metric_difference(a: list[dict], b: list[dict]) -> float:
    """The largest difference of two runs' metric rows, relative to the value (the trainer sums its metrics
    in float32, so float64 weights equal to 1e-16 may round a sum to the neighbouring float32)."""
    assert len(a) == len(b) and all(set(x) == set(y) for x, y in zip(a, b))
    return max(largest_difference(x[k], y[k], k) / max(1.0, abs(x[k])) if isinstance(x[k], float)
               else largest_difference(x[k], y[k], k) for x, y in zip(a, b) for k in x)


def assert_same_run(a: Path, b: Path, tolerance: float = TOLERANCE, metric_tolerance: float = METRIC_TOLERANCE):
    assert largest_difference(run_state(a), run_state(b)) <= tolerance
    assert metric_difference(metric_rows(a), metric_rows(b)) <= metric_tolerance


@pytest.mark.parametrize("case", list(CASES))
def test_an_array_ends_where_its_solo_runs_end(case, tmp_path, solo_runs):
    solo = solo_runs(case)
    results = train_array(configs(tmp_path, case))
    for k, seed in enumerate(SEEDS):
        assert results[k]["status"] == "complete"
        assert results[k]["array"] == {"size": 3, "members": [str(tmp_path / f"s{s}") for s in SEEDS], "position": k}
        assert "array" not in read_checkpoint(tmp_path / f"s{seed}" / "last.pt")
        assert_same_run(solo / f"s{seed}", tmp_path / f"s{seed}")
    if case != "baseline":  # the method's steps changed weights
        rows = read_metrics(tmp_path / "s0")
        counts = [v for row in rows for k, v in row.items() if k.endswith(KINDS)]
        assert sum(counts) > 0


def stop_after_first_epoch(monkeypatch):
    def log(msg: str) -> None:
        if "epoch 1/" in msg:
            raise Interrupted(signal.SIGTERM)
    monkeypatch.setattr(array_run, "log", log)


def test_an_interrupted_array_resumes_bitwise(tmp_path, monkeypatch):
    whole = train_array(configs(tmp_path / "whole", "we_paper"))
    stop_after_first_epoch(monkeypatch)
    cut = configs(tmp_path / "cut", "we_paper")
    with pytest.raises(Interrupted):
        train_array(cut)
    for cfg in cut:
        assert read_result(Path(cfg.out))["status"] == "interrupted"
        assert read_checkpoint(Path(cfg.out) / "last.pt")["epoch"] == 1
    monkeypatch.undo()
    float64_again(monkeypatch)
    resumed = train_array(cut)
    assert [r["status"] for r in resumed] == [r["status"] for r in whole] == ["complete"] * 3
    for seed in SEEDS:
        assert_same_run(tmp_path / "whole" / f"s{seed}", tmp_path / "cut" / f"s{seed}", 0.0, 0.0)


class Killed(BaseException):
    """A kill: nothing of the run's own handling (result.json, the loggers' last words) sees it."""


KILL_POINTS = {  # (the write cut short in epoch 2, the member it cuts): the epoch the members then resume after
    ("stage_last", 0): 1, ("stage_last", 2): 1,  # staging: the array goes back to epoch 1
    ("commit_last", 0): 2, ("write_metrics", 1): 2, ("commit_last", 2): 2}  # committing: forward to epoch 2


def kill_at(monkeypatch, name: str, member: int, epoch: int = 2, members: int = len(SEEDS)) -> None:
    """The array's `name` write of member `member` in epoch `epoch` kills the process instead."""
    real, calls = getattr(array_run, name), []

    def write(*args, **kwargs):
        calls.append(None)
        if len(calls) == members * (epoch - 1) + member + 1:
            raise Killed()
        return real(*args, **kwargs)
    monkeypatch.setattr(array_run, name, write)


_WHOLE: dict[str, Path] = {}


@pytest.fixture
def whole_array(tmp_path_factory, float64):
    """The uninterrupted we_paper array, trained once per test session."""
    if "we_paper" not in _WHOLE:
        root = tmp_path_factory.mktemp("whole")
        assert [r["status"] for r in train_array(configs(root, "we_paper"))] == ["complete"] * 3
        _WHOLE["we_paper"] = root
    return _WHOLE["we_paper"]


@pytest.mark.parametrize("name, member", list(KILL_POINTS))
def test_an_array_killed_while_writing_an_epoch_resumes_as_one_array(name, member, tmp_path, monkeypatch, capsys,
                                                                    whole_array):
    """A kill between two members' files (SIGKILL, a requeue's kill after its grace time) leaves the members at
    one epoch: the grid sends them out as one job, they resume as one array and end bitwise as the whole run."""
    cut = configs(tmp_path, "we_paper")
    kill_at(monkeypatch, name, member)
    with pytest.raises(Killed):
        train_array(cut)
    monkeypatch.undo()
    float64_again(monkeypatch)
    cells = [SimpleNamespace(run_dir=Path(cfg.out)) for cfg in cut]
    assert len(epoch_groups(cells, None)) == 1  # as train_array will settle them
    capsys.readouterr()
    assert [r["status"] for r in train_array(cut)] == ["complete"] * 3
    out = capsys.readouterr().out
    epoch = KILL_POINTS[name, member]
    for cfg in cut:
        assert f"{cfg.out}: resuming after epoch {epoch} of 3 (seed array)" in out, out
        assert [r["epoch"] for r in read_metrics(Path(cfg.out))] == [1, 2, 3]
        assert staged_epochs(Path(cfg.out), STAGED_LAST_FORMAT) == []
    for seed in SEEDS:
        assert_same_run(whole_array / f"s{seed}", tmp_path / f"s{seed}", 0.0, 0.0)


def test_a_member_resumed_solo_takes_its_staged_epoch(tmp_path, monkeypatch, capsys, solo_runs):
    """Cut while staging: the one member whose epoch 2 was staged resumes solo after epoch 2 (its file is a whole
    checkpoint of its run); the other two resume as an array after epoch 1. Each ends as its solo run."""
    solo = solo_runs("we_paper")
    cfgs = configs(tmp_path, "we_paper")
    kill_at(monkeypatch, "stage_last", 1)
    with pytest.raises(Killed):
        train_array(cfgs)
    monkeypatch.undo()
    float64_again(monkeypatch)
    capsys.readouterr()
    assert main(cfgs[0])["status"] == "complete"
    out = capsys.readouterr().out
    assert f"{cfgs[0].out}: last.pt of epoch 2 taken from .last-epoch2.pt" in out
    assert f"{cfgs[0].out}: resuming after epoch 2 of 3\n" in out, out
    results = train_array(cfgs)
    assert "array" not in results[0] and results[1]["array"]["size"] == 2
    assert f"{cfgs[1].out}: resuming after epoch 1 of 3 (seed array)" in capsys.readouterr().out
    for seed in SEEDS:
        assert_same_run(solo / f"s{seed}", tmp_path / f"s{seed}")


def float64_again(monkeypatch):
    monkeypatch.setattr(pipeline, "_normalize_uint8", lambda x, mean, std: x.to(torch.float64).div_(255).sub_(mean)
                        .div_(std))


def test_members_at_different_epochs_each_end_as_their_solo_run(tmp_path, monkeypatch, solo_runs):
    """A member resumed solo to the end is returned as it is; the others resume as an array (here of two)."""
    solo = solo_runs("we_paper")
    stop_after_first_epoch(monkeypatch)
    cfgs = configs(tmp_path, "we_paper")
    with pytest.raises(Interrupted):
        train_array(cfgs)
    monkeypatch.undo()
    float64_again(monkeypatch)
    assert main(cfgs[0])["status"] == "complete"  # a member's last.pt resumes solo
    finished = (tmp_path / "s0" / "last.pt").stat().st_mtime_ns
    results = train_array(cfgs)
    assert (tmp_path / "s0" / "last.pt").stat().st_mtime_ns == finished  # never retrained
    assert "array" not in results[0] and results[1]["array"]["size"] == 2
    for seed in SEEDS:
        assert_same_run(solo / f"s{seed}", tmp_path / f"s{seed}")


def test_a_diverged_member_stops_alone(tmp_path, monkeypatch, solo_runs):
    solo = solo_runs("baseline")
    stack = array_run.stack_batches

    def poisoned(batches, epoch):
        x, y = stack(batches, epoch)
        if epoch == 1:
            x[1] = float("nan")
        return x, y
    monkeypatch.setattr(array_run, "stack_batches", poisoned)
    results = train_array(configs(tmp_path, "baseline"))
    assert [r["status"] for r in results] == ["complete", "diverged", "complete"]
    assert results[1]["diverged_epoch"] == 2
    assert len(read_metrics(tmp_path / "s1")) == 2 and read_checkpoint(tmp_path / "s1" / "last.pt")["epoch"] == 1
    for seed in (0, 2):
        assert_same_run(solo / f"s{seed}", tmp_path / f"s{seed}")


@pytest.mark.parametrize("change, key", [({1: ["lr=0.1"]}, "'lr'"), ({0: ["amp=true"], 1: ["amp=true"],
                                                                        2: ["amp=true"]}, "'amp'")])
def test_runs_that_cannot_fuse_are_refused_with_the_key(tmp_path, change, key):
    cfgs = [load_config(None, TINY + CASES["baseline"] + [f"seed={s}", f"out={tmp_path}/s{s}", *change.get(s, [])])
            for s in SEEDS]
    with pytest.raises(ConfigError, match=key):
        train_array(cfgs)
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_model_with_dropout_is_refused_before_anything_is_written(tmp_path):
    cfgs = configs(tmp_path, "baseline", extra=[f"model={MODEL}_dropout"])
    with pytest.raises(ConfigError, match="'model'.*dropout"):
        train_array(cfgs)
    assert not any(tmp_path.iterdir())


def test_a_method_that_cannot_join_says_why(tmp_path):
    cfgs = [load_config(None, TINY + ["method=rl", f"seed={s}", f"out={tmp_path}/s{s}"]) for s in SEEDS]
    with pytest.raises(ConfigError, match="cannot train in a seed array"):
        train_array(cfgs)


def test_the_command_line_trains_seeds_as_one_array(tmp_path, capsys):
    args = TINY + CASES["we_paper"] + ["epochs=1", "seeds=[3,4]"]
    assert cli(args + [f"out={tmp_path}/r"]) == 2
    assert "put {seed} in it" in capsys.readouterr().err and not any(tmp_path.iterdir())
    assert cli(args + [f"out={tmp_path}/r-s{{seed}}"]) == 0
    results = [read_result(tmp_path / f"r-s{s}") for s in (3, 4)]
    assert [(r["status"], r["seed"], r["array"]["position"]) for r in results] == [("complete", 3, 0), ("complete", 4, 1)]


def test_in_float32_the_first_epoch_agrees_to_float_tolerance(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "_normalize_uint8", NORMALIZE)
    torch.set_default_dtype(torch.float32)  # the fixture restores float64's predecessor afterwards
    solo = [main(cfg) for cfg in configs(tmp_path / "solo", "we_paper", extra=["epochs=1"])]
    array = train_array(configs(tmp_path / "array", "we_paper", extra=["epochs=1"]))
    assert read_checkpoint(tmp_path / "array" / "s0" / "last.pt")["model"]["1.weight"].dtype == torch.float32
    for seed, a, b in zip(SEEDS, solo, array):
        assert a["status"] == b["status"] == "complete"
        assert metric_difference(metric_rows(tmp_path / "solo" / f"s{seed}"),
                                 metric_rows(tmp_path / "array" / f"s{seed}")) <= 1e-4


def test_a_worker_trains_a_configs_cells_as_one_array(tmp_path):
    cfgs = configs(tmp_path, "baseline", seeds=(5, 6), extra=["epochs=1"])
    for cfg in cfgs:
        write_cell(Path(cfg.out), {"config": to_dict(cfg)})
    assert run_cells([cfg.out for cfg in cfgs]) == 0
    assert [read_result(Path(cfg.out))["array"]["position"] for cfg in cfgs] == [0, 1]

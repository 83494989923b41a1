"""`make bench` pieces: the weights it times WE on, its timing helper, and one model's row."""

from __future__ import annotations

import json
import math

import pytest
import torch

import models
from we.bench import bench_model, spread_units, timeit_after, to_markdown
from we.core.paper_step import evolve
from we.core.units import gather_units


def test_spread_units_gives_every_pool_its_full_w_tbd_to_evolve():
    model = models.create("resnet20", num_classes=10)
    assert sum(evolve(model, 0.05).values()) == 0  # at initialisation a step has nothing to do
    spread_units(model)
    sizes = {kind: pool.importance.numel() for kind, pool in gather_units(model).items()}
    counts = evolve(model, 0.05)
    for kind, size in sizes.items():
        assert counts[kind] >= 0.9 * math.floor(0.05 * size), kind


def test_spread_units_is_seeded():
    a, b = (models.create("resnet20", num_classes=10) for _ in range(2))
    b.load_state_dict(a.state_dict())
    spread_units(a, seed=3)
    spread_units(b, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_timeit_after_runs_setup_untimed_before_every_call(monkeypatch):
    """On a fake clock that each call advances by a known amount: the median of the timed calls, the warmup
    call and every setup left out (no wall time decides the result)."""
    from we.bench import timing

    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    durations = {"a": iter([50.0, 1.0, 5.0, 3.0]), "b": iter([70.0, 2.0, 2.0, 9.0])}  # the first: warmup
    calls: list[str] = []

    def setup():
        calls.append("setup")
        now[0] += 1000.0  # never counted

    def run(name):
        def fn():
            calls.append(name)
            now[0] += next(durations[name])
        return fn

    times = timeit_after(setup, {"a": run("a"), "b": run("b")}, torch.device("cpu"), repeat=3, warmup=1)
    assert calls == ["setup", "a", "setup", "b"] * 4
    assert times == {"a": 3.0, "b": 2.0}  # medians of [1, 5, 3] and [2, 2, 9]


def test_bench_model_row_times_a_step_that_does_work():
    row = bench_model("resnet20", torch.device("cpu"), batch=4, iters=1, loop=False)
    assert row["evolved"] > 0
    assert row["read_ms"] > 0 and row["we_paper_ms"] > 0 and row["we_official_ms"] > 0
    assert row["we_over_read"] == row["we_paper_ms"] / row["read_ms"]
    assert "we_loop_ms" not in row and row["train_img_s"] > 0
    header = {"device": "cpu", "date": "2026-01-01", "versions": {"torch": "x", "torchvision": "y"},
              "hardware": {"cpu_count": 2, "torch_threads": 2}, "git_commit": "abc"}
    table = to_markdown([row], header)
    assert "| resnet20 | 269,722 |" in table and "units evolved" in table


def test_bench_paths_times_all_three_input_paths_in_rounds(tmp_path):
    from we.bench import bench_paths

    row = bench_paths("resnet20", torch.device("cpu"), "digits", str(tmp_path), batch=8, steps=1,
                      compile_model=False, rounds=2)
    for label in ("reference", "default", "fast"):
        assert row[f"{label}_img_s"] > 0
    assert row["fast_over_reference"] == row["fast_img_s"] / row["reference_img_s"]
    assert row["fast_peak_mb"] is None  # peak memory is read on CUDA only


@pytest.mark.slow
def test_accuracy_check_trains_both_paths_per_seed_and_writes_its_own_report(tmp_path):
    from we.bench import main

    assert main(["--device", "cpu", "--accuracy-only", "--accuracy-epochs", "1", "--accuracy-seeds", "2",
                 "--accuracy-model", "resnet20", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu-accuracy.json", "cpu-accuracy.md"]
    acc = json.loads((tmp_path / "cpu-accuracy.json").read_text())["accuracy"]
    assert list(acc["top1"]) == ["loader, fp32, NCHW", "device, bf16, channels_last"]
    assert all(len(v) == 2 and all(0 <= t <= 100 for t in v) for v in acc["top1"].values())
    fast, loader = acc["top1"]["device, bf16, channels_last"], acc["top1"]["loader, fp32, NCHW"]
    assert acc["difference"] == pytest.approx(sum(fast) / 2 - sum(loader) / 2)
    assert "Fast minus loader" in (tmp_path / "cpu-accuracy.md").read_text()

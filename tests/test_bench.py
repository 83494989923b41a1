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


# ---- the seed-array table (we/bench/arrays.py) and the planner's use of it (we/grid/cost.py) -------------

TINY = "bench_tiny_cnn"


def _tiny_cnn(num_classes: int = 10) -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(nn.AvgPool2d(8), nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


@pytest.fixture
def tiny_model(monkeypatch):
    """A tiny CIFAR model, registered in a copy of the registry for one test."""
    from models import registry

    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_INFO", dict(registry._INFO))
    models.register_model("cifar", name=TINY)(_tiny_cnn)
    return TINY


def test_seed_array_table_has_a_row_per_model_and_k_and_replaces_its_section(tiny_model, tmp_path, capsys):
    from we.bench import main

    (tmp_path / "cpu.md").write_text("# Bench on cpu (earlier)\n\n## Training images/s by input path\n\nkept\n")
    (tmp_path / "cpu.json").write_text(json.dumps({"header": {"device": "cpu"}, "rows": [{"model": "m"}]}))
    args = ["--device", "cpu", "--arrays-only", "--arrays-models", TINY, "--arrays-k", "3", "1", "2",
            "--arrays-steps", "1", "--batch", "4", "--out", str(tmp_path)]
    assert main(args) == 0 and main(args) == 0  # twice: the section is replaced, not added again
    md = (tmp_path / "cpu.md").read_text()
    assert md.startswith("# Bench on cpu (earlier)") and "kept" in md and md.count("## Seed arrays") == 1
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0] == ("| model | K | per seed, array | per seed, K solo runs | array / solo | all seeds, array "
                        "| peak MB, array | peak MB, one solo run |")
    assert [line.split(" | ")[:2] for line in lines[1:]] == [[f"| {TINY}", k] for k in ("1", "2", "3")]
    assert all(len(line.split("|")) == 10 for line in lines)
    data = json.loads((tmp_path / "cpu.json").read_text())
    assert data["rows"] == [{"model": "m"}]  # the other tables kept
    rows = data["arrays"]["rows"]
    assert [(r["model"], r["k"]) for r in rows] == [(TINY, 1), (TINY, 2), (TINY, 3)]
    assert all(r["array_seed_img_s"] > 0 and r["solo_seed_img_s"] > 0 and r["images_per_seed"] == 4 for r in rows)
    assert data["arrays"]["header"]["git_commit"] and data["arrays"]["steps"] == 1


@pytest.mark.parametrize("option, value", [("--arrays-k", "0"), ("--arrays-k", "two"), ("--arrays-k", "2 2"),
                                           ("--arrays-models", "resnet34"), ("--arrays-models", "nope"),
                                           ("--arrays-steps", "0")])
def test_bad_seed_array_options_are_one_line_errors(option, value, tmp_path, capsys):
    from we.bench import main

    assert main(["--arrays-only", option, *value.split(), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {option}:"), err
    assert list(tmp_path.iterdir()) == []  # nothing measured, nothing written


def test_per_seed_images_per_s_come_from_the_counted_images_and_the_timed_steps(tiny_model, monkeypatch):
    """On a fake clock: an array step of K=2 takes 1.0 s, a solo step 0.2 s; batch 4, 3 timed steps after 2
    untimed. Array: each seed trains 3 x 4 = 12 images in 3 x 1.0 s: 4 images/s per seed. Solo: 2 runs of
    3 x 0.2 s = 1.2 s for 12 images each: 10 images/s per seed. Array / solo: 0.4."""
    from we.bench import arrays
    from we.train.seed_array import SeedArray

    now = [0.0]
    monkeypatch.setattr(arrays.time, "perf_counter", lambda: now[0])
    calls = {"array": 0, "solo": 0}
    real_array_step, real_solo_step = SeedArray.train_step, arrays.sgd_step

    def array_step(self, *a):
        calls["array"] += 1
        now[0] += 1.0
        return real_array_step(self, *a)

    def solo_step(*a, **kw):
        calls["solo"] += 1
        now[0] += 0.2
        return real_solo_step(*a, **kw)

    monkeypatch.setattr(SeedArray, "train_step", array_step)
    monkeypatch.setattr(arrays, "sgd_step", solo_step)
    plan = arrays.ArrayPlan((tiny_model,), (2,), steps=3, warmup=2, batch=4)
    (row,) = arrays.bench_arrays(tiny_model, torch.device("cpu"), plan)
    assert calls == {"array": 5, "solo": 10}  # 2 untimed + 3 timed, the solo runs each
    assert row["images_per_seed"] == 12
    assert row["array_s"] == pytest.approx(3.0) and row["solo_s"] == pytest.approx(1.2)
    assert row["array_seed_img_s"] == pytest.approx(4.0)
    assert row["solo_seed_img_s"] == pytest.approx(10.0)
    assert row["array_over_solo"] == pytest.approx(0.4)


ARRAY_ROWS = [  # per-seed images/s; one solo run: 1 x 100 = 2 x 50 = 5 x 20 = 100 images/s
    {"model": "resnet20", "k": 1, "array_seed_img_s": 90.0, "solo_seed_img_s": 100.0},
    {"model": "resnet20", "k": 2, "array_seed_img_s": 60.0, "solo_seed_img_s": 50.0},
    {"model": "resnet20", "k": 5, "array_seed_img_s": 30.0, "solo_seed_img_s": 20.0},
    {"model": "resnet20", "k": 10, "skipped": "needs about 30 GB"},
    {"model": "resnet56", "k": 2, "array_seed_img_s": 1.0, "solo_seed_img_s": 1.0},
]


def test_planner_uses_the_measured_seed_array_rates(tmp_path):
    """Seconds per image per seed: 1/60 at K=2, 1/30 at K=5; K=3 lies a third of the way: 1/60 + (1/30 - 1/60)/3
    = 1/45; K=10, beyond the last measured K=5: K=5's 5 x 30 = 150 images/s over 10 seeds, 15 each; K=1: the
    solo run's 100 (a lone seed trains solo)."""
    from we.grid.cost import CELL_OVERHEAD_S, array_images_per_s, array_seconds

    (tmp_path / "cpu.json").write_text(json.dumps({"rows": [{"model": "resnet20", "train_img_s": 7.0}],
                                                   "arrays": {"rows": ARRAY_ROWS}}))
    for k, expected in ((1, 100.0), (2, 60.0), (3, 45.0), (5, 30.0), (10, 15.0)):
        rate, source = array_images_per_s("resnet20", k, "cpu", tmp_path)
        assert rate == pytest.approx(expected), k
        assert "cpu.json seed-array table (K = 1, 2, 5)" in source
    seconds, _ = array_seconds("resnet20", 3, "cpu", 4500.0, tmp_path)
    assert seconds == pytest.approx(4500 / 45 + CELL_OVERHEAD_S)
    # the CPU's table says nothing about a GPU: there, the defaults
    rate, source = array_images_per_s("resnet20", 2, "cuda", tmp_path)
    assert rate == pytest.approx(models.model_info("resnet20").images_per_s / 2) and "DEFAULT_ARRAY_SPEEDUP" in source


def test_plan_costs_an_array_job_at_the_measured_rates_of_its_device_kind(tmp_path):
    """Three ResNet-20 digits seeds, 2 epochs of 1437 images (2874 per seed): as one array on the CPU whose
    table measured 45 images/s per seed at K = 3 (see above), 2874 / 45 s + one CELL_OVERHEAD_S, and
    2874 / 45 / 3600 device-hours; on a GPU no bench measured: three solo runs' training at the zoo's
    default images/s, plus one overhead. A solo job is its solo run either way."""
    import yaml

    from we.grid.cost import CELL_OVERHEAD_S, array_cost, load_cpu_throughput, load_throughput, wall_seconds
    from we.grid.identity import resolve_cells
    from we.grid.plan import jobs_cost
    from we.grid.schema import load_grid

    (tmp_path / "cpu.json").write_text(json.dumps({"rows": [{"model": "resnet20", "train_img_s": 7.0}],
                                                   "arrays": {"rows": ARRAY_ROWS}}))
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(yaml.safe_dump({"name": "g", "seeds": [0, 1, 2], "axes": {"method": ["baseline"]},
                                         "base": {"dataset": "digits", "model": "resnet20", "epochs": 2}}))
    cells = resolve_cells(load_grid(grid_path), tmp_path / "runs")
    cpu, gpu = load_cpu_throughput(tmp_path), load_throughput(tmp_path)
    seconds, hours, source = array_cost(cells, cpu)
    assert seconds == pytest.approx(2874 / 45 + CELL_OVERHEAD_S) and hours == pytest.approx(2874 / 45 / 3600)
    assert "cpu.json seed-array table (K = 1, 2, 5)" in source
    assert jobs_cost([cells], cpu) == ((seconds, hours), source)
    default = models.model_info("resnet20").images_per_s
    seconds, hours, source = array_cost(cells, gpu)
    assert seconds == pytest.approx(3 * 2874 / default + CELL_OVERHEAD_S) and hours == pytest.approx(3 * 2874 / default / 3600)
    assert "no cuda bench measured resnet20's seed arrays" in source
    assert array_cost(cells[:1], cpu)[0] == pytest.approx(wall_seconds(cells[0], cpu)) == 2874 / 7.0 + CELL_OVERHEAD_S


def test_planner_reads_the_newest_gpu_bench_but_not_an_accuracy_report(tmp_path):
    import os

    from we.grid.cost import array_images_per_s

    (tmp_path / "GPU-A.json").write_text(json.dumps({"arrays": {"rows": ARRAY_ROWS}}))
    (tmp_path / "GPU-A-accuracy.json").write_text(json.dumps({"accuracy": {"model": "resnet56"}}))
    os.utime(tmp_path / "GPU-A.json", (1, 1))  # the accuracy report is newer
    rate, source = array_images_per_s("resnet20", 2, "cuda", tmp_path)
    assert rate == pytest.approx(60.0) and "GPU-A.json" in source


def test_planner_falls_back_to_the_solo_rate_where_nothing_is_measured(tmp_path):
    """No bench: the zoo's default over K; a CPU bench without a seed-array table: its solo images/s over K."""
    from we.grid.cost import DEFAULT_SOURCE, array_images_per_s

    rate, source = array_images_per_s("resnet20", 4, "cpu", tmp_path)
    assert rate == pytest.approx(models.model_info("resnet20").images_per_s / 4)
    assert DEFAULT_SOURCE in source and "no seed array measured" in source
    (tmp_path / "cpu.json").write_text(json.dumps({"rows": [{"model": "resnet20", "train_img_s": 80.0}]}))
    rate, source = array_images_per_s("resnet20", 4, "cpu", tmp_path)
    assert rate == pytest.approx(20.0) and "cpu.json" in source and DEFAULT_SOURCE not in source
    rate, _ = array_images_per_s("resnet20", 1, "cpu", tmp_path)
    assert rate == pytest.approx(80.0)


@pytest.mark.parametrize("text, why", [
    ("{not json", "cpu.json unreadable (Expecting property name"),
    (json.dumps({"arrays": {"rows": {"model": "resnet20"}}}), "cpu.json unreadable ('arrays.rows' is not a list"),
    (json.dumps({"arrays": {"rows": [{"model": "resnet20", "k": "two", "array_seed_img_s": 5.0,
                                      "solo_seed_img_s": 5.0}]}}), "cpu.json unreadable (resnet20 row 1: needs k"),
    (json.dumps({"arrays": {"rows": [{"model": "resnet20", "k": 2, "array_seed_img_s": -1.0,
                                      "solo_seed_img_s": 5.0}]}}), "cpu.json unreadable (resnet20 row 1: needs k"),
])
def test_a_malformed_bench_json_is_named_and_the_default_used(tmp_path, text, why):
    from we.grid.cost import DEFAULT_SOURCE, array_images_per_s

    (tmp_path / "cpu.json").write_text(text)
    rate, source = array_images_per_s("resnet20", 2, "cpu", tmp_path)
    assert why in source and "\n" not in source
    if text.startswith("{not"):  # nothing in the file can be read: the zoo's default
        assert DEFAULT_SOURCE in source and rate == pytest.approx(models.model_info("resnet20").images_per_s / 2)

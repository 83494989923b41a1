"""The GPU check's proxy report (we/bench/proxy.py) from run folders written here: no training."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from we.bench.proxy import projected_cifar_seconds, proxy_markdown
from we.grid.identity import parse_sets, resolve_cells
from we.grid.schema import load_grid

HEADER = {"device": "TestGPU", "date": "2026-01-01", "versions": {"torch": "x"}, "git_commit": "abc", "git_dirty": False}
TOP1 = {"baseline": [90.0, 91.0, 90.5], "we": [91.5, 92.0, 91.0], "we_official": [90.2, 90.9]}


def cells_with_results(tmp_path: Path):
    cells = [c for c in resolve_cells(load_grid("proxy"), tmp_path, parse_sets(["epochs=2"])) if c.config["seed"] < 3]
    for cell in cells:
        values = TOP1[cell.labels["method"]]
        seed = cell.config["seed"]
        if seed < len(values):  # we_official's third run unfinished (stopped at the deadline)
            cell.run_dir.mkdir(parents=True)
            (cell.run_dir / "result.json").write_text(json.dumps(
                {"status": "complete", "final_top1": values[seed], "images_per_s": 1000.0 + seed,
                 "wall_seconds": 60.0 + seed}))
    return cells


def test_table_counts_mean_std_and_welch_p(tmp_path):
    cells = cells_with_results(tmp_path)
    md = proxy_markdown(cells, HEADER, None, in_time=False, title="T")
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 3/3 |" in rows["baseline"] and "| 2/3 |" in rows["we_official"]
    we = TOP1["we"]
    assert f"{statistics.mean(we):.2f} ± {statistics.stdev(we):.2f}" in rows["we"]
    # Welch by hand: means 91.5 and 90.5, both variances 0.25 over 3 runs, so t = 1 / sqrt(0.25/3 + 0.25/3)
    # = sqrt(6) on 4 degrees of freedom; Student's t with 4 dof has P(|T| > t) = 1 - sin(th) (1 + cos(th)^2 / 2)
    # with th = atan(t / 2): p = 0.0705
    th = math.atan(math.sqrt(6) / 2)
    assert f"| {1 - math.sin(th) * (1 + math.cos(th) ** 2 / 2):.3f} |" == "| 0.070 |"
    assert "| 0.070 |" in rows["we"]
    assert "1001 ± 1" in rows["we"] and "61.0 ± 1.0" in rows["we"]
    assert "only finished runs are counted" in md and "2 epochs" in md
    assert "not measured" in md


def test_projected_cifar_time_from_the_bench():
    bench = {"paths": [{"model": "resnet20", "fast_img_s": 1e5}, {"model": "resnet56", "fast_img_s": 40_000.0}]}
    assert projected_cifar_seconds(bench) == 200 * 50_000 / 40_000
    assert projected_cifar_seconds({"paths": [{"model": "resnet20", "fast_img_s": 1e5}]}) is None
    assert projected_cifar_seconds(None) is None

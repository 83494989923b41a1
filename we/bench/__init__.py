"""`make bench`: WE step cost and training throughput for every zoo model on the current device.

For each model: the time of one WE step (paper and official variants, vectorised), of one pass
that reads every weight once (the floor any step must pay), and of the straightforward per-filter
loop implementation; and training images/s at the recipe's batch size on synthetic inputs of the
model's size (throughput does not depend on pixel values). Then every training method through the
real trainer on digits: its extra time per CIFAR-size epoch relative to the baseline. Prints
markdown tables and writes them, with device, versions and date, to `results/bench/<device>.md`
and `.json`.
"""
from we.bench.cli import main
from we.bench.paths import bench_paths
from we.bench.timing import bench_model, spread_units, timeit_after, to_markdown

__all__ = ["bench_model", "bench_paths", "main", "spread_units", "timeit_after", "to_markdown"]

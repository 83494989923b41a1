"""Experiment grids: a YAML file -> cells (one resolved config each) -> run folders, states, jobs.

    python -m we.grid plan|prepare|submit|status|cancel|collect GRID ...   (we/grid/__main__.py, we/grid/cli.py)

schema (grid files), identity (cells, run folders and hashes, the runs-root rule), state (THE cell
state, twin runs, cell.json and grid.json), cost (GPU-hour estimate, the CPU guard's size), plan (the
plan summary), prepare (data before jobs), profiles (cluster profiles), records (cell.json records,
the grid lock), jobs (whether jobs are queued or running), slurm and local (the executors), worker (the
processes they start), cancel (stopping a grid's jobs), cli.
"""
from we.grid.cli import main, plan, status, submit, wait
from we.grid.cost import Throughput, default_images_per_s, gpu_hours, load_throughput
from we.grid.identity import Cell, CellSpec, config_hash, expand, identity, parse_sets, resolve_cells
from we.grid.host_data import prepare_data
from we.grid.local import LocalExecutor
from we.grid.profiles import Profile, load_profile
from we.grid.records import read_cell_file
from we.rundir import DEFAULT_RUNS_ROOT, runs_root
from we.grid.schema import GRID_DIR, Grid, MethodEntry, display_path, find_grid_file, load_grid
from we.grid.slurm import SlurmExecutor, pack_cells
from we.grid.state import CellState, adopt_twin, assess, cell_state, run_states, write_cell, write_grid_file
from we.rundir import check_writable

__all__ = [
    "main", "plan", "status", "submit", "wait", "default_images_per_s", "Throughput", "gpu_hours", "load_throughput",
    "DEFAULT_RUNS_ROOT", "Cell", "CellSpec", "config_hash", "expand", "identity", "parse_sets", "resolve_cells",
    "LocalExecutor", "Profile", "load_profile", "read_cell_file", "GRID_DIR", "Grid",
    "MethodEntry", "display_path", "find_grid_file", "load_grid", "SlurmExecutor", "pack_cells", "CellState",
    "adopt_twin", "assess", "check_writable", "write_cell", "write_grid_file", "runs_root", "prepare_data",
    "cell_state", "run_states",
]

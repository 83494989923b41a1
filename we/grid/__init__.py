"""Experiment grids: a YAML file -> cells (one resolved config each) -> run folders, states, jobs.

    python -m we.grid plan|prepare|submit|status|cancel|collect GRID ...   (we/grid/__main__.py, we/grid/cli.py)

schema (grid files), identity (cells, run folders and hashes, the runs-root rule), state (THE cell
state, twin runs, cell.json and grid.json), cost (GPU-hour estimate, the CPU guard's size), plan (the
plan summary), host_data (a grid's datasets made ready on the submitting host), profiles (cluster
profiles), records (cell.json records, the grid lock), jobs (whether jobs are queued or running), slurm
and local (the executors), worker (the processes they start), cancel (stopping a grid's jobs), yaml_first
(the grid command's first read of its YAML files), cli.

This package imports none of them (import each by its own path, e.g. `from we.grid.schema import load_grid`):
`python -m we.grid` runs this file first, and the grid command reads its YAML files before torch is imported.
"""

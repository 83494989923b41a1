"""The run folder: the one module that knows its files, writes them and reads them back.

A run folder (`<runs-root>/<grid>/<cell>/`, or any `out` of `python -m we.train`) holds

- ``config.yaml``   the resolved config (the trainer);
- ``result.json``   status, summary, provenance (the trainer);
- ``metrics.jsonl`` / ``metrics.csv``  one row per finished epoch (the trainer, with ``last.pt``);
- ``last.pt`` / ``best.pt``  the checkpoints (the trainer; a new best is staged as ``.best-epoch<N>.pt``, a seed
  array member's epoch as ``.last-epoch<N>.pt`` until every member has written it);
- ``cell.json``     a grid cell's labels, config and submission records (the grid);
- ``logs/``         the executors' job logs;

and a grid folder holds ``grid.json``. Every file is written atomically (a temp file ``.<name>.<random>.tmp``
beside it, then one rename), JSON without bare NaN or Infinity (they are written as the strings "NaN",
"Infinity", "-Infinity" and read back as floats). The readers open regular files only, without following a
symbolic link (no writer makes one), read at most a bounded size and turn any broken file into a
`RunFileError`: one line naming the file and the run. A copied folder is data, never code: nothing here
imports anything a folder names, and checkpoints are read with torch's restricted unpickler.
"""
from __future__ import annotations

from we.rundir.names import (BEST_CHECKPOINT, BROKEN_SUFFIX, CELL_FILE, CONFIG_FILE, CONFIG_LIMIT, DEFAULT_RUNS_ROOT,
                             GRID_FILE, JSON_LIMIT, LAST_CHECKPOINT, LOG_TAIL_BYTES, LOGS_DIR, METRICS_CSV,
                             METRICS_FILE, METRICS_LIMIT, RESULT_FILE, RUN_MARKERS, RUNS_ROOT_ENV, STAGED_BEST_FORMAT,
                             STAGED_LAST_FORMAT, TERMINAL, TRAINER_FILES, DiskFullError, RunFileError, best_row,
                             check_writable, epoch_seconds, finite, inside, is_run_folder, progress, run_folders,
                             runs_root, summarize)
from we.rundir.read import (first_line, log_tail, open_regular, read_bytes, read_cell, read_checkpoint, read_config,
                            read_grid_file, read_json, read_metrics, read_result, read_text, staged_epochs, tolerant)
from we.rundir.write import (atomic_write, dumps, remove_stale_temps, write_cell, write_checkpoint, write_config,
                             write_json, write_metrics, write_result, write_text)

__all__ = [
    "BEST_CHECKPOINT", "BROKEN_SUFFIX", "CELL_FILE", "CONFIG_FILE", "CONFIG_LIMIT", "DEFAULT_RUNS_ROOT", "GRID_FILE",
    "JSON_LIMIT", "LAST_CHECKPOINT", "LOG_TAIL_BYTES", "LOGS_DIR", "METRICS_CSV", "METRICS_FILE", "METRICS_LIMIT",
    "RESULT_FILE", "RUN_MARKERS", "RUNS_ROOT_ENV", "STAGED_BEST_FORMAT", "STAGED_LAST_FORMAT", "TERMINAL",
    "TRAINER_FILES", "DiskFullError", "RunFileError", "best_row", "check_writable", "epoch_seconds", "finite",
    "inside", "is_run_folder", "progress", "run_folders", "runs_root", "summarize", "first_line", "log_tail",
    "open_regular", "read_bytes", "read_cell", "read_checkpoint", "read_config", "read_grid_file", "read_json",
    "read_metrics", "read_result", "read_text", "staged_epochs", "tolerant", "atomic_write", "dumps",
    "remove_stale_temps", "write_cell", "write_checkpoint", "write_config", "write_json", "write_metrics",
    "write_result", "write_text",
]

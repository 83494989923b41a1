"""Data before jobs: every dataset a grid's cells need is made ready on the submitting host
(`python -m we.grid prepare GRID`, and `submit` before it writes a run folder or starts a job).

The cells then run with `download: false` and an absolute `data_dir` (both result-neutral: run
folders keep their hash), so no job ever fetches data and every job reads the folder that was checked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from we.grid.identity import Cell
from we.train.dataset_fetch import prepare_dataset


def data_needs(cells: Sequence[Cell]) -> dict[tuple[str, str], bool]:
    """(dataset, absolute data_dir) -> whether a download may be tried (any cell allowing it)."""
    needs: dict[tuple[str, str], bool] = {}
    for cell in cells:
        key = (cell.config["dataset"], str(Path(cell.config["data_dir"]).absolute()))
        needs[key] = needs.get(key, False) or bool(cell.config.get("download", True))
    return needs


def prepare_data(cells: Sequence[Cell], out: Any = None) -> list[str]:
    """Make every dataset of `cells` ready (see we.train.dataset_fetch); one line each is printed to `out`.

    Raises DatasetNotFoundError (one line naming the dataset and its folder) when one is missing and
    cannot be fetched."""
    lines = []
    for (dataset, data_dir), download in sorted(data_needs(cells).items()):
        line = prepare_dataset(dataset, data_dir, download)
        lines.append(line)
        if out is not None:
            print(f"data: {line}", file=out, flush=True)
    return lines


def offline_config(cell: Cell) -> None:
    """The executed config of a prepared cell: absolute data_dir, no download (result-neutral keys)."""
    cell.config["data_dir"] = str(Path(cell.config["data_dir"]).absolute())
    cell.config["download"] = False

"""The grid command's first step: its YAML files read before anything imports torch.

`python -m we.grid` (we/grid/__main__.py) reads every YAML file named on its command line (the grid,
a --profile) with the suite's one YAML reader (we.files.read_yaml: duplicate keys, recursive aliases and
alias "bombs" refused) before it imports the CLI, whose modules import torch: a file no YAML reader can
take is refused with one line in a fraction of a second, even on a loaded machine. Everything else
(a grid given by name, a missing file, every key and value) is the CLI's to check (we.grid.schema).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from we.errors import InputError
from we.files import read_yaml

YAML_SUFFIXES = (".yaml", ".yml")


def unreadable_yaml(argv: Sequence[str]) -> InputError | None:
    """The error of the first YAML file on the command line that does not parse, else None."""
    for token in argv:
        path = Path(token)
        if path.suffix in YAML_SUFFIXES and path.is_file():
            try:
                read_yaml(path, "YAML file")  # the grid or a --profile: named by its path
            except InputError as err:
                return err
    return None

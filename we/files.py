"""The checkout's root, the process's umask and the one YAML reader (run-folder files: we.rundir)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from we.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout (experiments/, slurm/, results/)
# False when `we` runs from an installed package (site-packages holds `we` and `models` only)
IN_CHECKOUT = (REPO_ROOT / "experiments").is_dir() and (REPO_ROOT / "we" / "files.py").is_file()


def current_umask() -> int:
    """The process's umask, read without changing it (Linux /proc); elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The most values a YAML document may hold with its aliases expanded: a grid or config is a few hundred; an alias
# "bomb" (a few hundred bytes whose aliases expand to a billion values) is refused before anything walks it.
MAX_YAML_VALUES = 100_000


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping naming one key twice (YAML would keep the last silently), a
    recursive alias, and aliases that expand to more than MAX_YAML_VALUES values."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _count_expanded(node, {}, set())
        return node


def _count_expanded(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """The values under `node` with every alias expanded (each shared node counted once, by its id)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise yaml.composer.ComposerError(None, None, "a recursive alias (a value that contains itself)",
                                          node.start_mark)
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_count_expanded(child, sizes, open_nodes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_count_expanded(k, sizes, open_nodes) + _count_expanded(v, sizes, open_nodes)
                    for k, v in node.value)
    if size > MAX_YAML_VALUES:
        raise yaml.composer.ComposerError(None, None, f"aliases expand to more than {MAX_YAML_VALUES} values",
                                          node.start_mark)
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file with the safe loader, refusing duplicate keys; a missing file or malformed
    YAML is an InputError naming the file (`what` says what the file is, e.g. "grid", "config")."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(path, what, "no such file") from None
    except OSError as err:
        raise InputError(path, what, f"unreadable ({err.strerror})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except RecursionError:
        raise InputError(path, "(file)", "malformed YAML: nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(path, where, f"malformed YAML: {problem}") from None

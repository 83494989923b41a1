"""Cluster profiles: `slurm/<name>.yaml`, the settings of a grid's SLURM jobs (see `PROFILE_KEYS`).

A grid's `resources:` may override the keys in `RESOURCE_KEYS` for its own jobs; a profile's
`config:` sets result-neutral config keys (device, data_dir, ...) for the jobs it runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from we.errors import InputError
from we.files import read_yaml

# Result-neutral config keys a cluster profile may set for its jobs (`config:` in a profile).
PROFILE_CONFIG_KEYS = ("device", "data_dir", "download", "workers", "progress", "loggers")


@dataclass(frozen=True)
class ProfileKey:
    """One profile key: accepted types, whether a profile must give it, its default and a check."""

    types: tuple[type, ...]
    required: bool
    default: Any = None
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns a complaint or None
    doc: str = ""


def _at_least(n: int) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v is None or v >= n else f"must be >= {n}, got {v!r}"


def _str_list(v: Any) -> Optional[str]:
    return None if all(isinstance(x, str) for x in v) else "expected a list of strings (shell lines)"


def _config_map(v: Any) -> Optional[str]:
    bad = [k for k in v if k not in PROFILE_CONFIG_KEYS]
    return f"only result-neutral config keys ({', '.join(PROFILE_CONFIG_KEYS)}), not {bad[0]!r}" if bad else None


def _sbatch_map(v: Any) -> Optional[str]:
    bad = [k for k in v if not isinstance(k, str)]
    return "keys must be sbatch option names (strings)" if bad else None


NoneType = type(None)
PROFILE_KEYS: dict[str, ProfileKey] = {
    "partition": ProfileKey((str,), True, doc="SLURM partition"),
    "gpus_per_node": ProfileKey((int,), True, check=_at_least(0), doc="GPUs per job (0: none requested)"),
    "cpus_per_task": ProfileKey((int,), True, check=_at_least(1), doc="CPUs per job (data loading)"),
    "mem_gb": ProfileKey((int, float, NoneType), True, check=lambda v: None if v is None or v > 0 else
                         f"must be > 0 or null, got {v!r}", doc="memory per job in GB (null: not requested)"),
    "timeout_min": ProfileKey((int,), True, check=_at_least(1), doc="wall-clock limit of one allocation"),
    "max_num_timeout": ProfileKey((int,), True, check=_at_least(0),
                                  doc="requeues after a timeout before the job counts as failed"),
    "array_parallelism": ProfileKey((int,), True, check=_at_least(1), doc="array tasks running at once"),
    "account": ProfileKey((str, NoneType), True, doc="SLURM account (null: the user's default)"),
    "qos": ProfileKey((str, NoneType), True, doc="quality of service (null: the default)"),
    "setup": ProfileKey((list,), True, check=_str_list, doc="shell lines run before each task"),
    # optional
    "tasks_per_node": ProfileKey((int,), False, 1, _at_least(1),
                                 doc="processes per job; > 1 trains one run with DistributedDataParallel, "
                                     "one process per GPU"),
    "constraint": ProfileKey((str, NoneType), False, None, doc="node feature constraint"),
    "signal_delay_s": ProfileKey((int,), False, 120, _at_least(0),
                                 doc="seconds before the limit at which the job is told to checkpoint"),
    "job_name": ProfileKey((str,), False, "we-repro", doc="prefix of the job names (the grid name follows)"),
    "python": ProfileKey((str, NoneType), False, None, doc="python on the nodes (null: this interpreter)"),
    "use_srun": ProfileKey((bool,), False, True, doc="run the task through srun inside the allocation"),
    "additional_parameters": ProfileKey((dict,), False, {}, _sbatch_map, doc="extra sbatch options"),
    "config": ProfileKey((dict,), False, {}, _config_map,
                         doc="result-neutral config keys for the jobs (device, data_dir, workers, ...)"),
    "pack": ProfileKey((int,), False, 1, _at_least(1),
                       doc="cells per job: up to this many single-GPU CIFAR/digits cells train at once, "
                           "one process each, sharing the job's GPU, CPUs and memory (ImageNet and "
                           "tasks_per_node > 1 cells are never packed)"),
}
# Keys a grid's `resources:` may override for its own jobs.
RESOURCE_KEYS = ("gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "max_num_timeout",
                 "array_parallelism", "constraint", "signal_delay_s", "additional_parameters", "pack")


def _type_label(types: tuple[type, ...]) -> str:
    names = {int: "int", float: "number", str: "string", list: "list", dict: "mapping", bool: "bool",
             NoneType: "null"}
    return " or ".join(names[t] for t in types)


def check_profile_values(values: Any, file: str | Path, required: bool, prefix: str = "",
                         allowed: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate a mapping of profile keys (all of them when `required`); returns it with defaults filled."""
    if not isinstance(values, dict):
        raise InputError(file, prefix.rstrip(".") or "(top level)",
                         f"expected a mapping of profile keys, got {type(values).__name__}")
    known = tuple(allowed) if allowed is not None else tuple(PROFILE_KEYS)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise InputError(file, f"{prefix}{key}", f"unknown key (known: {', '.join(known)})")
        spec = PROFILE_KEYS[key]
        ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
        if not ok:
            raise InputError(file, f"{prefix}{key}", f"expected {_type_label(spec.types)}, got {value!r}")
        complaint = spec.check(value) if spec.check else None
        if complaint:
            raise InputError(file, f"{prefix}{key}", complaint)
        out[key] = value
    if required:
        for key, spec in PROFILE_KEYS.items():
            if key in out:
                continue
            if spec.required:
                raise InputError(file, f"{prefix}{key}", "missing (every profile names it; see slurm/default.yaml)")
            out[key] = spec.default
    return out


@dataclass(frozen=True)
class Profile:
    """A validated cluster profile (see PROFILE_KEYS)."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def with_resources(self, resources: dict[str, Any]) -> "Profile":
        """This profile with a grid's `resources:` overrides applied."""
        return Profile(self.path, {**self.values, **resources})


def load_profile(path: str | Path) -> Profile:
    """Read and validate a cluster profile (one-line InputError naming the file and key)."""
    path = Path(path)
    data = read_yaml(path, "profile")
    if data is None:
        data = {}
    return Profile(str(path), check_profile_values(data, path, required=True))


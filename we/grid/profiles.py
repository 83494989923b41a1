"""Cluster profiles: `slurm/<name>.yaml`, the settings of a grid's SLURM jobs (see `PROFILE_KEYS`).

A grid's `resources:` may override the keys in `RESOURCE_KEYS` for its own jobs; a profile's
`config:` sets result-neutral config keys (device, data_dir, ...) for the jobs it runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from we.errors import InputError
from we.files import read_yaml
from we.keys import BadValue, Key, checked, excerpt
from we.train.config import config_keys

# Result-neutral config keys a cluster profile may set for its jobs (`config:` in a profile).
PROFILE_CONFIG_KEYS = ("device", "data_dir", "download", "workers", "progress", "loggers")


def _str_list(v: Any) -> Optional[str]:
    return None if all(isinstance(x, str) for x in v) else "expected a list of strings (shell lines)"


def _config_map(v: Any) -> Optional[str]:
    bad = [k for k in v if k not in PROFILE_CONFIG_KEYS]
    if bad:
        return f"only result-neutral config keys ({', '.join(PROFILE_CONFIG_KEYS)}), not {excerpt(bad[0])}"
    for key, value in v.items():  # each value by its config key's spec
        try:
            checked(config_keys()[key], value)
        except BadValue as err:
            return f"config key '{key}': {err}"
    return None


def _sbatch_map(v: Any) -> Optional[str]:
    bad = [k for k in v if not isinstance(k, str)]
    return "keys must be sbatch option names (strings)" if bad else None


PROFILE_KEYS: dict[str, Key] = {
    "partition": Key(str, required=True, doc="SLURM partition"),
    "gpus_per_node": Key(int, required=True, minimum=0, doc="GPUs per job (0: none requested)"),
    "cpus_per_task": Key(int, required=True, minimum=1, doc="CPUs per job (data loading)"),
    "mem_gb": Key(Optional[Union[int, float]], required=True, minimum=0, strict=True,
                  doc="memory per job in GB (null: not requested)"),
    "timeout_min": Key(int, required=True, minimum=1, doc="wall-clock limit of one allocation"),
    "max_num_timeout": Key(int, required=True, minimum=0,
                           doc="requeues after a timeout before the job counts as failed"),
    "array_parallelism": Key(int, required=True, minimum=1, doc="array tasks running at once"),
    "account": Key(Optional[str], required=True, doc="SLURM account (null: the user's default)"),
    "qos": Key(Optional[str], required=True, doc="quality of service (null: the default)"),
    "setup": Key(list, required=True, check=_str_list, doc="shell lines run before each task"),
    # optional
    "tasks_per_node": Key(int, 1, minimum=1, doc="processes per job; > 1 trains one run with DistributedDataParallel, "
                                                 "one process per GPU"),
    "constraint": Key(Optional[str], None, doc="node feature constraint"),
    "signal_delay_s": Key(int, 120, minimum=0, doc="seconds before the limit at which the job is told to checkpoint"),
    "job_name": Key(str, "we-repro", doc="prefix of the job names (the grid name follows)"),
    "python": Key(Optional[str], None, doc="python on the nodes (null: this interpreter)"),
    "use_srun": Key(bool, True, doc="run the task through srun inside the allocation"),
    "additional_parameters": Key(dict, {}, check=_sbatch_map, doc="extra sbatch options"),
    "config": Key(dict, {}, check=_config_map,
                  doc="result-neutral config keys for the jobs (device, data_dir, workers, ...)"),
    "pack": Key(int, 1, minimum=1, doc="cells per job: up to this many single-GPU CIFAR/digits cells train at once, "
                                       "one process each, sharing the job's GPU, CPUs and memory (ImageNet and "
                                       "tasks_per_node > 1 cells are never packed)"),
    "array": Key(Optional[int], None, minimum=1,
                 doc="seeds per job: up to this many seeds of one config train in one process as one seed array "
                     "(1: one run per job; null: every pending seed of a config when the job asks for a GPU, else 1; "
                     "`submit --array K` overrides it)"),
}
# Keys a grid's `resources:` may override for its own jobs.
RESOURCE_KEYS = ("gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "max_num_timeout",
                 "array_parallelism", "constraint", "signal_delay_s", "additional_parameters", "pack")


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
        try:
            out[key] = checked(PROFILE_KEYS[key], value)
        except BadValue as err:
            raise InputError(file, f"{prefix}{key}", str(err)) from None
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


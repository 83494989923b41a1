"""Multi-process training (DistributedDataParallel): launch environment, process group, rank-0 sync.

A run is distributed when the launcher says so: torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) with WORLD_SIZE > 1, or a SLURM step with SLURM_NTASKS > 1 (the torchrun
variables are then exported from SLURM's, through submitit's `TorchDistributedEnvironment` inside a
submitit job). Anything else is the single-process run, untouched by this module.

Every rank holds the same model and takes the same steps: DDP averages the gradients, and rank 0's
parameters, buffers and method state are broadcast after every weight edit outside the optimizer
(see `we.train`). Only rank 0 writes to the run folder.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from we.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run: rank, world size, local rank, backend (None: one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """More than one process trains the model."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.enabled:
            dist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` in DistributedDataParallel with its defaults: rank 0's buffers (BatchNorm running
        statistics) are broadcast at the start of every training forward."""
        if not self.enabled:
            return module
        param = next(module.parameters())
        ids = [param.device.index] if param.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def training_module(self, module: nn.Module, fmodule: nn.Module, compile: bool) -> nn.Module:
        """What runs the training forward: `fmodule` (the model, or its compiled form) in a single
        process; DDP around `module`, then compiled when `compile`, under DDP."""
        if not self.enabled:
            return fmodule
        wrapped = self.wrap(module)
        return torch.compile(wrapped) if compile else wrapped

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module) -> None:
        """Overwrite every parameter and buffer of `module` with rank 0's."""
        if not self.enabled:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (tensors travel through the CPU)."""
        if not self.enabled:
            return obj
        box = [to_cpu(obj) if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum of `tensor` over the ranks; returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


SINGLE = DistEnv()


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor inside (dicts, lists, tuples) moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def export_slurm_env() -> None:
    """In a SLURM step of several tasks, set torchrun's variables from SLURM's (if RANK is not set).

    Inside a submitit job this is `submitit.helpers.TorchDistributedEnvironment().export()`; under a
    plain `srun` the same values are read from SLURM's variables directly (master: the first node of
    the job, port: MASTER_PORT or one derived from the job id).
    """
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return
    from submitit.slurm.slurm import SlurmJobEnvironment

    job = SlurmJobEnvironment()
    port = os.environ.get("MASTER_PORT") or str(random.Random(job.job_id).randint(20000, 60000))
    os.environ.update({
        "MASTER_ADDR": job.hostnames[0], "MASTER_PORT": port, "RANK": str(job.global_rank),
        "WORLD_SIZE": str(job.num_tasks), "LOCAL_RANK": str(job.local_rank),
        "LOCAL_WORLD_SIZE": str(job.num_tasks // job.num_nodes)})


def launch_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the environment; (0, 1, 0) when not launched distributed."""
    export_slurm_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    return rank, world, local


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of this rank: `cuda:LOCAL_RANK` for CUDA (or `cuda:0` when a task sees one GPU only)."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank < count:
        return torch.device("cuda", local_rank)
    if count == 1:
        return torch.device("cuda", 0)
    raise RuntimeError(f"local rank {local_rank} has no GPU: {count} visible; launch one process per GPU")


def resolve_backend(name: str, device: torch.device) -> str:
    """`auto`: nccl on CUDA, gloo on the CPU."""
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise ConfigError("config key 'dist_backend': nccl needs CUDA devices; use gloo (or auto) on the CPU")
    return name


def setup(device: torch.device, backend: str = "auto") -> tuple[DistEnv, torch.device, bool]:
    """Join the process group the launcher describes; returns (env, this rank's device, whether this
    call created the group, so that the caller destroys it)."""
    rank, world, local = launch_env()
    if world <= 1:
        return SINGLE, device, False
    device = rank_device(device, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise RuntimeError(f"process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not "
                               f"match the environment (rank {rank} of {world})")
        name = dist.get_backend()
    else:
        name = resolve_backend(backend, device)
        dist.init_process_group(backend=name, init_method="env://", rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
        created = True
    return DistEnv(rank=rank, world_size=world, local_rank=local, backend=str(name)), device, created


def shutdown() -> None:
    """Leave the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()

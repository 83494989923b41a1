"""The pieces of one run, built in the one order its results depend on: the global seed, the data, the model,
the method (which may change the model), the optimizer and scheduler, and the context the method's hooks see.
The solo trainer (we.train.trainer) and each member of a seed array (we.train.array_run) build them here,
and restore them here from a last.pt."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch

import models
from we.methods import Method, TrainContext, create_method
from we.train.checkpoint import seed_everything, set_rng_state
from we.train.config import Config, model_options
from we.train.distributed import SINGLE, DistEnv
from we.train.optim import build_optimizer, build_scheduler, evaluate
from we.train.pipeline import build_data


@dataclass
class RunParts:
    data: Any
    model: torch.nn.Module
    fmodel: torch.nn.Module  # the model the steps call: `model`, or its torch.compile
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ctx: TrainContext
    data_path: str


def data_path_for(cfg: Config, device: torch.device) -> str:
    """The data path a run takes: the config's, else on the device for the in-memory sets on a GPU."""
    if cfg.data_path != "auto":
        return cfg.data_path
    return "device" if device.type == "cuda" and cfg.dataset != "imagenet" else "loader"


def build_parts(cfg: Config, device: torch.device, dist_env: DistEnv = SINGLE) -> RunParts:
    """Seed, data, model, method, optimizer, scheduler and hook context of the run `cfg`, in this order."""
    seed_everything(cfg.seed)
    data_path = data_path_for(cfg, device)
    data_for_seed: Callable[..., Any] = functools.partial(
        build_data, cfg.dataset, cfg.data_dir, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
        normalization=cfg.normalization, image_size=cfg.image_size, data_path=data_path, device=device,
        workers=cfg.workers, download=cfg.download, limit_train=cfg.limit_train or None, rank=dist_env.rank,
        world_size=dist_env.world_size)
    data = data_for_seed(seed=cfg.seed)
    build_model = functools.partial(models.create, cfg.model, num_classes=data.info.num_classes,
                                    image_size=cfg.image_size, **model_options(cfg))
    model = build_model().to(device)
    method = create_method(cfg)
    method.prepare_model(model, cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fmodel = torch.compile(model) if cfg.compile else model
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    ctx = TrainContext(model=model, optimizer=optimizer, cfg=cfg, device=device, steps_per_epoch=len(data.train),
                       data=data, dist=dist_env, build_model=build_model,
                       build_optimizer=lambda net, lr: build_optimizer(cfg, net, lr),
                       build_scheduler=lambda opt: build_scheduler(cfg, opt),
                       evaluate=lambda net, fnet: evaluate(cfg, net, data, fnet, device),
                       build_train_data=lambda seed: data_for_seed(seed=seed).train)
    return RunParts(data, model, fmodel, method, optimizer, scheduler, ctx, data_path)


def restore(parts: RunParts, state: dict[str, Any]) -> tuple[int, int, list[dict[str, Any]]]:
    """Load a last.pt's model, optimizer, scheduler, method and RNG states into `parts`; returns its
    (epoch, iteration, metrics history)."""
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.method.load_state_dict(state["method"])
    set_rng_state(state["rng"])
    return state["epoch"], state["iteration"], state["history"]

"""The single-run trainer: `main(cfg)` (command line: `python -m we.train [--config FILE] [key=value ...]`).

`main(cfg)` trains one model with one method into the run folder `cfg.out` and is idempotent:
a complete (or diverged) run is returned as it is, an interrupted one resumes from `last.pt`
and ends bitwise identical (on the CPU) to an uninterrupted run. `best.pt` holds the weights of the
epoch with the best test top-1, as they were evaluated (result.json: `best_checkpoint_epoch`); the
`loggers` (TensorBoard, wandb: `we.train.loggers`) get every epoch's metrics row.

Launched as several processes (torchrun, or a SLURM step of several tasks), the run trains with
DistributedDataParallel (see `we.distributed`): `batch_size` is the global batch, split over the
ranks; after every weight edit outside the optimizer (a method's epoch-end hook, or a step hook that
reports statistics) rank 0's parameters, buffers and method state are broadcast, so every rank ends
every epoch with identical weights; only rank 0 writes the run folder.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from we.errors import ConfigError
from we.methods import Method, TrainContext, method_version
from we.rundir import (LAST_CHECKPOINT, best_row, remove_stale_temps, summarize, write_config, write_metrics,
                       write_result)
from we.train.checkpoint import promote_best, rng_state, save_checkpoint, settle_best, stage_best
from we.train.config import Config, to_dict
from we.train.distributed import SINGLE, DistEnv, setup as setup_distributed, shutdown as shutdown_distributed
from we.train.interrupt import Interrupted, held
from we.train.loggers import RunLoggers
from we.train.optim import evaluate
from we.train.provenance import provenance
from we.train.run_folder import log, open_run_folders, saved_history
from we.train.run_parts import RunParts, build_parts, restore

TIMING_KEYS = ("seconds", "train_seconds", "images_per_s", "method_seconds")  # per-epoch columns that vary run to run
EXIT_CODES = {"complete": 0, "failed": 1, "diverged": 3}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {name!r} requested but CUDA is not available")
    return device


def _progress(iterable, cfg: Config, desc: str):
    use_bar = cfg.progress == "bar" or (cfg.progress == "auto" and sys.stderr.isatty())
    if not use_bar:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def train_one_epoch(ctx: TrainContext, method, data, epoch: int, iteration: int, fmodel) -> dict[str, Any]:
    """One pass over the training set; sums stay on the device until the end of the epoch."""
    cfg, model, opt = ctx.cfg, ctx.model, ctx.optimizer
    model.train()
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    seen = 0
    method_totals: dict[str, float | torch.Tensor] = {}  # device tensors until the epoch ends
    t0 = time.perf_counter()
    for x, y in _progress(data.train, cfg, f"epoch {epoch + 1}/{cfg.epochs}"):
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            out = fmodel(x)
            loss = F.cross_entropy(out, y)
            extra = method.extra_loss(ctx, x, out, y)
            if extra is not None:
                loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats = method.after_optimizer_step(ctx, iteration, epoch)
        if stats:  # a step hook that reports statistics edited the weights (WE every N iterations)
            ctx.dist.broadcast_module(ctx.model)
        for k, v in (stats or {}).items():
            method_totals[k] = method_totals.get(k, 0) + v
        method.after_batch(ctx, x, y, iteration, epoch)
        iteration += 1
        n = y.shape[0]
        loss_sum += loss.detach().float() * n
        correct += (out.detach().argmax(1) == y).sum()
        seen += n
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    seconds = time.perf_counter() - t0
    if ctx.dist.enabled:  # over every rank's share of the epoch: the global batch's loss and accuracy
        totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=ctx.device,
                                                                                dtype=torch.float64)])
        loss_total, correct_total, seen_total = ctx.dist.all_reduce_sum(totals).tolist()
        seen = int(seen_total)
    else:
        loss_total, correct_total = loss_sum.item(), correct.item()
    return {"train_loss": loss_total / max(seen, 1), "train_top1": 100.0 * correct_total / max(seen, 1),
            "train_seconds": seconds, "images_per_s": seen / seconds if seconds > 0 else float("nan"),
            "iteration": iteration, "method": method_totals}


def main(cfg: Config, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Train (or resume, or return) the run described by a resolved config; returns result.json's content.

    Under a distributed launch every rank calls this; it joins (and at the end leaves) the process
    group, and every rank returns rank 0's result.

    `last.pt` is read without executing code; one that does not load so is refused (CheckpointError)
    before anything in the folder is written. `trust_checkpoint` (the CLI's --trust-checkpoint, typed
    knowingly) first rewrites such a file, loaded once with full unpickling, in the safe format.
    """
    dist_env, device, created = setup_distributed(resolve_device(cfg.device), cfg.dist_backend)
    try:
        return _main(cfg, device, dist_env, trust_checkpoint)
    finally:
        if created:
            shutdown_distributed()


def _main(cfg: Config, device: torch.device, dist_env: DistEnv, trust_checkpoint: bool = False) -> dict[str, Any]:
    out = Path(cfg.out)
    ((previous, resume),) = open_run_folders([cfg], dist_env, trust_checkpoint)
    if previous is not None:
        return previous
    if cfg.batch_size % dist_env.world_size:
        raise ConfigError(f"config key 'batch_size': the global batch {cfg.batch_size} must be a multiple of "
                          f"the {dist_env.world_size} processes")
    if dist_env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_temps(out):  # a killed write's temp file (a whole checkpoint, maybe)
            log(f"{path}: removed (a write that never finished)")
        write_config(out, to_dict(cfg))

    started = time.perf_counter()
    result: dict[str, Any] = {"status": "running", "config": to_dict(cfg),
                              "method_version": method_version(cfg.method),
                              "provenance": provenance(device) if dist_env.is_main else {}}
    if dist_env.enabled:
        result["distributed"] = {"world_size": dist_env.world_size, "backend": dist_env.backend}
    try:
        with contextlib.ExitStack() as cleanup:  # the loggers, closed however the run ends
            result.update(_train(cfg, out, device, dist_env, cleanup, resume))
    except Interrupted as stop:  # SIGINT/SIGTERM under `python -m we.train`: last.pt keeps the finished epochs
        saved = saved_history(out)
        stop.done, stop.epochs = len(saved), cfg.epochs
        if dist_env.is_main:
            result.update(status="interrupted", signal=stop.name, error=f"{stop} {stop.where()} (resumable)",
                          **summarize(saved), wall_seconds=time.perf_counter() - started)
            write_result(out, result)
        raise
    except Exception as err:
        if dist_env.is_main:
            result.update(status="failed", error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc(limit=8))
            write_result(out, result)
        raise
    result["wall_seconds"] = time.perf_counter() - started
    if dist_env.is_main:
        write_result(out, result)
    return dist_env.broadcast_object(result)


def _sync_from_rank0(dist_env: DistEnv, model: torch.nn.Module, method: Method) -> None:
    """Rank 0's parameters, buffers and method state on every rank (after a weight edit outside the optimizer)."""
    if not dist_env.enabled:
        return
    dist_env.broadcast_module(model)
    state = dist_env.broadcast_object(method.state_dict() if dist_env.is_main else None)
    if not dist_env.is_main:
        method.load_state_dict(state)


@dataclass
class _Progress:
    """What a run carries from epoch to epoch (restored from last.pt on a resume)."""
    start_epoch: int = 0
    iteration: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_saved: int | None = None  # the epoch best.pt holds (None: no best.pt)


def _train(cfg: Config, out: Path, device: torch.device, dist_env: DistEnv = SINGLE,
           cleanup: contextlib.ExitStack | None = None, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build, resume, then train, evaluate and save every epoch left (as torchvision's reference `main`)."""
    if cfg.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    parts = build_parts(cfg, device, dist_env)
    say = log if dist_env.is_main else (lambda msg: None)
    progress = _resume(parts, out, dist_env, resume, say)
    trackers = RunLoggers(cfg.loggers if dist_env.is_main else [], out, to_dict(cfg), progress.start_epoch)
    if cleanup is not None:
        cleanup.callback(trackers.close)
    train_model = dist_env.training_module(parts.model, parts.fmodel, cfg.compile)  # fmodel itself in one process
    parts.method.on_train_start(parts.ctx)
    where = f"device {device}" + (f", {dist_env.world_size} processes ({dist_env.backend})"
                                  if dist_env.enabled else "")
    say(f"{out}: {cfg.model} on {cfg.dataset} ({parts.data.num_train} train / {parts.data.num_test} test), method "
        f"{cfg.method}, {cfg.epochs} epochs, data path {parts.data_path}, {where}")

    status = "complete"
    for epoch in range(progress.start_epoch, cfg.epochs):
        row, stats, best = _epoch(parts, progress, epoch, train_model, dist_env, say)
        progress.history.append(dist_env.broadcast_object(row))  # rank 0's timings and method statistics everywhere
        trackers.log_epoch(row)  # before last.pt: a resumed run purges what it logged after it
        if not math.isfinite(row["train_loss"]):  # the global loss under DDP: every rank stops here
            status = "diverged"
            break
        if dist_env.is_main:
            _save_epoch(parts, out, progress, best)
        dist_env.barrier()
        say(_epoch_line(cfg, row, stats))
    return _finish(parts, out, dist_env, progress, status)


def _resume(parts: RunParts, out: Path, dist_env: DistEnv, resume: dict[str, Any] | None, say) -> _Progress:
    """A fresh run's progress, or the one last.pt holds (best.pt settled to the epochs it kept)."""
    progress = _Progress()
    if resume is None:
        return progress
    progress.start_epoch, progress.iteration, progress.history = restore(parts, resume)
    say(f"{out}: resuming after epoch {progress.start_epoch} of {parts.ctx.cfg.epochs}")
    if dist_env.is_main:
        progress.best_saved = settle_best(out, progress.start_epoch)
    return progress


def _epoch(parts: RunParts, progress: _Progress, epoch: int, train_model: torch.nn.Module, dist_env: DistEnv,
           say) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """One epoch: (its metrics row, the method's statistics, best.pt's content when it is a new best epoch).

    Trains, evaluates, runs the method's epoch-end hook and the scheduler's step; after a non-finite training
    loss only the training part, with nan test metrics."""
    cfg, data = parts.ctx.cfg, parts.data
    data.train.set_epoch(epoch)
    lr = parts.optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    tr = train_one_epoch(parts.ctx, parts.method, data, epoch, progress.iteration, train_model)
    progress.iteration = tr.pop("iteration")
    method_totals = tr.pop("method")
    if not math.isfinite(tr["train_loss"]):
        say(f"epoch {epoch + 1}: non-finite training loss; stopping (diverged)")
        return ({"epoch": epoch + 1, "lr": lr, **tr, "test_loss": float("nan"), "test_top1": float("nan"),
                 "test_top5": float("nan"), "seconds": time.perf_counter() - t0}, {}, None)
    dist_env.broadcast_module(parts.model)  # rank 0's BatchNorm running statistics: the same evaluation everywhere
    ev = evaluate(cfg, parts.model, data, parts.fmodel, parts.ctx.device)
    best = None  # a new best epoch: its weights as evaluated, before the epoch-end hook edits them
    if dist_env.is_main and (not progress.history or ev["test_top1"] > best_row(progress.history)["test_top1"]):
        best = {"config": to_dict(cfg), "epoch": epoch + 1, "test_top1": ev["test_top1"],
                "model": {k: v.detach().to("cpu", copy=True) for k, v in parts.model.state_dict().items()}}
    stats = _epoch_end(parts, epoch, method_totals, dist_env)
    parts.scheduler.step()
    return {"epoch": epoch + 1, "lr": lr, **tr, **ev, **stats, "seconds": time.perf_counter() - t0}, stats, best


def _epoch_end(parts: RunParts, epoch: int, stats: dict[str, Any], dist_env: DistEnv) -> dict[str, Any]:
    """The method's epoch-end hook, timed (method_seconds); its statistics as numbers; rank 0's weights everywhere."""
    device = parts.ctx.device
    t_method = time.perf_counter()
    stats.update(parts.method.on_epoch_end(parts.ctx, epoch, last=epoch == parts.ctx.cfg.epochs - 1))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats["method_seconds"] = time.perf_counter() - t_method  # the epoch-end hook's cost
    stats = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in stats.items()}
    _sync_from_rank0(dist_env, parts.model, parts.method)
    return stats


def _save_epoch(parts: RunParts, out: Path, progress: _Progress, best: dict[str, Any] | None) -> None:
    """Rank 0: best.pt (a new best epoch), last.pt and the metrics, all holding the epoch just appended."""
    cfg, epoch = parts.ctx.cfg, progress.history[-1]["epoch"]
    with held():  # a signal waits until best.pt, last.pt and the metrics all hold this epoch
        if best is not None:  # staged, then best.pt once last.pt of this epoch is on disk
            stage_best(out, epoch, best)
        save_checkpoint(out / LAST_CHECKPOINT, {
            "config": to_dict(cfg), "method_version": method_version(cfg.method), "epoch": epoch,
            "iteration": progress.iteration, "history": progress.history,
            "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(), "method": parts.method.state_dict(), "rng": rng_state()})
        if best is not None:
            progress.best_saved = promote_best(out, epoch)
        write_metrics(out, progress.history)


def _epoch_line(cfg: Config, row: dict[str, Any], stats: dict[str, Any]) -> str:
    return (f"epoch {row['epoch']}/{cfg.epochs} lr {row['lr']:.4g} train loss {row['train_loss']:.4f} top1 "
            f"{row['train_top1']:.2f} | test loss {row['test_loss']:.4f} top1 {row['test_top1']:.2f} top5 "
            f"{row['test_top5']:.2f} | {row['seconds']:.1f}s {row['images_per_s']:.0f} img/s"
            + "".join(f" {k} {v:g}" for k, v in stats.items()))


def _finish(parts: RunParts, out: Path, dist_env: DistEnv, progress: _Progress, status: str) -> dict[str, Any]:
    """result.json's summary of the run: metrics written once more, best and diverged epochs, speed switches."""
    cfg, history = parts.ctx.cfg, progress.history
    if dist_env.is_main:
        write_metrics(out, history)
    summary = {**summarize(history), **parts.method.summarize(history)}
    if status == "diverged":
        summary["diverged_epoch"] = history[-1]["epoch"]
    summary["best_checkpoint_epoch"] = progress.best_saved  # the epoch best.pt holds (None: no best.pt)
    return {"status": status, **summary, "speed": {k: getattr(cfg, k) for k in
                                                    ("amp", "channels_last", "compile", "cudnn_benchmark")},
            "data_path": parts.data_path, "seed": cfg.seed}

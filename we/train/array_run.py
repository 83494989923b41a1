"""Seed arrays: the runs of one cell that differ only in `seed` trained together in one process (`train_array`).

K configs equal but for `seed` (and the result-neutral keys, `out` among them) train as one fused model
(`we.train.seed_array.SeedArray`): forward, loss, backward, the SGD step and the evaluation are one
vmapped computation over the stacked weights. Each member keeps what its solo run (`we.train.trainer`)
has, built the same way and in the same order: its initial weights (its seed), its data order and
augmentation (its own train iterable; the data pipelines draw from their own generators), its momentum,
BatchNorm statistics, method state and global RNG streams (swapped in around its own hooks). The
learning rate is one schedule for all (every member's scheduler steps and agrees). In float64 on the CPU
a member ends equal to its solo run to float rounding (tests/test_seed_array.py).

Methods: a plug-in joins an array when its `array_reason` is None; its hooks then run per member, on the
member's module, whose parameters and buffers are views of the member's slice of the stacked tensors (an
in-place edit there, as Weight Evolution's step makes, edits the array). Others are refused (their cells
run solo).

Run folders are the solo run's, written after every epoch through `we.rundir`: config.yaml, metrics,
result.json, last.pt (the solo format: a member resumes solo or in an array), best.pt. result.json alone
adds `array` (size, the members' folders, this seed's position). A finished member (complete or
diverged) is never retrained. On start the unfinished members are grouped by the epoch their last.pt
holds; each group of two or more trains as its own array, a member alone trains solo. An epoch's files are
written in one signal-held section and in two phases (every member's last.pt staged, then each renamed:
`we.train.array_commit`), so an array stopped anywhere, by a signal or a kill, resumes as one array.
A member whose training loss turns non-finite stops alone with status `diverged` (its slice is then
ignored); the others go on.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from we.methods import TrainContext, method_version
from we.rundir import best_row, remove_stale_temps, summarize, write_config, write_metrics, write_result
from we.train.array_commit import commit_last, stage_last
from we.train.array_config import check_array
from we.train.checkpoint import promote_best, rng_state, set_rng_state, settle_best, stage_best
from we.train.config import Config, to_dict
from we.train.distributed import SINGLE
from we.train.interrupt import Interrupted, held
from we.train.loggers import RunLoggers
from we.train.optim import build_optimizer
from we.train.provenance import provenance
from we.train.run_folder import log, open_run_folders, saved_history
from we.train.run_parts import build_parts, data_path_for, restore
from we.train.seed_array import SeedArray
from we.train.trainer import main as train_solo, resolve_device

def train_array(cfgs: list[Config], trust_checkpoint: bool = False) -> list[dict[str, Any]]:
    """Train (or resume, or return) every run of `cfgs` as seed arrays; the members' result.json contents, in order.

    Every folder is checked before anything is written (as `we.train.trainer.main` does for one run)."""
    check_array(cfgs)
    device = resolve_device(cfgs[0].device)
    results: list[dict[str, Any] | None] = [None] * len(cfgs)
    groups: dict[int, list[tuple[int, dict[str, Any] | None]]] = {}
    for i, (previous, resume) in enumerate(open_run_folders(cfgs, SINGLE, trust_checkpoint)):
        if previous is not None:
            results[i] = previous
        else:
            groups.setdefault(resume["epoch"] if resume else 0, []).append((i, resume))
    for epoch in sorted(groups):
        members = groups[epoch]
        if len(members) == 1:
            i, _ = members[0]
            results[i] = train_solo(cfgs[i])
            continue
        for (i, _), result in zip(members, _run_array([cfgs[i] for i, _ in members], [r for _, r in members],
                                                       device)):
            results[i] = result
    return results  # type: ignore[return-value]


@dataclass
class Member:
    """One seed of an array: its own run, as `we.train.trainer._train` builds it."""

    cfg: Config
    out: Path
    data: Any
    model: torch.nn.Module
    method: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ctx: TrainContext
    rng: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    iteration: int = 0
    best_saved: int | None = None
    status: str = "running"
    result: dict[str, Any] = field(default_factory=dict)
    trackers: Any = None
    started: float = 0.0

    @contextlib.contextmanager
    def own_rng(self):
        """The member's global RNG streams around its own hooks (a solo run's streams, untouched by the others)."""
        set_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = rng_state()


def _build_member(cfg: Config, device: torch.device, resume: dict[str, Any] | None) -> Member:
    """The member's data, model, method, optimizer and scheduler, built as its solo run builds them."""
    parts = build_parts(cfg, device)
    member = Member(cfg, Path(cfg.out), parts.data, parts.model, parts.method, parts.optimizer, parts.scheduler,
                    parts.ctx)
    if resume is not None:
        member.start_epoch, member.iteration, member.history = restore(parts, resume)
        log(f"{member.out}: resuming after epoch {member.start_epoch} of {cfg.epochs} (seed array)")
        member.best_saved = settle_best(member.out, member.start_epoch)
    member.rng = rng_state()  # the member's streams as its solo run holds them here
    return member


def _start_member(member: Member, cleanup: contextlib.ExitStack, device: torch.device) -> None:
    cfg = member.cfg
    member.trackers = RunLoggers(cfg.loggers, member.out, to_dict(cfg), member.start_epoch)
    cleanup.callback(member.trackers.close)
    with member.own_rng():
        member.method.on_train_start(member.ctx)


def _open_folders(cfgs: list[Config], device: torch.device) -> list[dict[str, Any]]:
    outs = [str(c.out) for c in cfgs]
    results = []
    for k, cfg in enumerate(cfgs):
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_temps(out):
            log(f"{path}: removed (a write that never finished)")
        write_config(out, to_dict(cfg))
        results.append({"status": "running", "config": to_dict(cfg), "method_version": method_version(cfg.method),
                        "provenance": provenance(device),
                        "array": {"size": len(cfgs), "members": outs, "position": k}})
    return results


def _run_array(cfgs: list[Config], resumes: list[dict[str, Any] | None], device: torch.device) -> list[dict[str, Any]]:
    """One array of members that all stand at the same epoch; returns their result.json contents."""
    started = time.perf_counter()
    results = _open_folders(cfgs, device)
    if cfgs[0].cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    members: list[Member] = []
    try:
        with contextlib.ExitStack() as cleanup:
            for cfg, resume in zip(cfgs, resumes):
                members.append(_build_member(cfg, device, resume))
            for member, result in zip(members, results):
                member.result, member.started = result, started
                _start_member(member, cleanup, device)
            _train_members(members, device)
    except Interrupted as stop:  # every unfinished member: interrupted, resumable from its last.pt
        done = []
        for cfg, result in zip(cfgs, results):
            if result["status"] == "running":
                saved = saved_history(Path(cfg.out))
                done.append(len(saved))
                result.update(status="interrupted", signal=stop.name,
                              error=f"{stop} during epoch {len(saved) + 1}/{cfg.epochs} (resumable)",
                              **summarize(saved), wall_seconds=time.perf_counter() - started)
                write_result(Path(cfg.out), result)
        stop.done, stop.epochs = min(done, default=0), cfgs[0].epochs
        raise
    except Exception as err:
        for cfg, result in zip(cfgs, results):
            if result["status"] == "running":
                result.update(status="failed", error=f"{type(err).__name__}: {err}",
                              traceback=traceback.format_exc(limit=8))
                write_result(Path(cfg.out), result)
        raise
    for member in members:
        if member.status == "running":
            _finish(member, "complete", time.perf_counter() - started)
    return [m.result for m in members]


def _train_members(members: list[Member], device: torch.device) -> None:
    cfg = members[0].cfg
    array, fused = fused_training(cfg, [m.model for m in members])
    array.load_member_optimizer_states(fused, [m.optimizer for m in members])
    iteration = members[0].iteration
    for epoch in range(members[0].start_epoch, cfg.epochs):
        active = [k for k, m in enumerate(members) if m.status == "running"]
        if not active:
            return
        lrs = {members[k].optimizer.param_groups[0]["lr"] for k in active}
        assert len(lrs) == 1, f"the members' schedules disagree: {lrs}"
        fused.param_groups[0]["lr"] = lr = lrs.pop()
        t0 = time.perf_counter()
        trains, iteration = _train_epoch(array, fused, members, epoch, iteration)
        evals = array.evaluate(members[0].data, device)
        saves = [_end_epoch(members[k], array, fused, k, epoch, lr, iteration, trains[k], evals[k], t0)
                 for k in active]
        with held():  # a signal waits until every member's files hold this epoch: the array resumes as one
            for stage, _ in filter(None, saves):  # every member's checkpoint written beside its last.pt, then each
                stage()                            # renamed over it: a kill anywhere leaves the array one epoch
            for _, commit in filter(None, saves):  # (we.train.array_commit)
                commit()
        for k in active:
            if members[k].status == "running":
                _log_epoch(members[k], epoch)


def fused_training(cfg: Config, models: list[torch.nn.Module]) -> tuple[SeedArray, torch.optim.Optimizer]:
    """`models` (one per seed) as one SeedArray and its fused optimizer, built by the run's own builder: what an
    array trains with (`SeedArray.train_step(optimizer, x, y)` is its step; `make bench` times the same)."""
    array = SeedArray(models)
    return array, array.build_optimizer(lambda net: build_optimizer(cfg, net))


def stack_batches(batches: list[tuple[torch.Tensor, torch.Tensor]], epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The members' batches of one step as (K, B, ...) inputs and (K, B) labels."""
    return torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])


def _train_epoch(array: SeedArray, fused: torch.optim.Optimizer, members: list[Member], epoch: int,
                 iteration: int) -> tuple[list[dict[str, Any]], int]:
    """One fused pass over every member's own training batches; each member's epoch row (train part)."""
    k = len(members)
    device = members[0].ctx.device
    for m in members:
        m.data.train.set_epoch(epoch)
        m.model.train()
    loss_sum = torch.zeros(k, device=device)
    correct = torch.zeros(k, device=device, dtype=torch.long)
    totals: list[dict[str, Any]] = [{} for _ in members]
    seen = 0
    t0 = time.perf_counter()
    for batches in zip(*(m.data.train for m in members)):
        x, y = stack_batches(list(batches), epoch)
        losses, out = array.train_step(fused, x, y)
        for i, m in enumerate(members):
            if m.status != "running":
                continue
            stats = m.method.after_optimizer_step(m.ctx, iteration, epoch)
            for key, v in (stats or {}).items():
                totals[i][key] = totals[i].get(key, 0) + v
        iteration += 1
        n = y.shape[1]
        loss_sum += losses.float() * n
        correct += (out.argmax(-1) == y).sum(-1)
        seen += n
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    rows = [{"train_loss": loss_sum[i].item() / max(seen, 1), "train_top1": 100.0 * correct[i].item() / max(seen, 1),
             "train_seconds": seconds, "images_per_s": seen / seconds if seconds > 0 else float("nan"),
             "method": totals[i]} for i in range(k)]
    return rows, iteration


def _end_epoch(member: Member, array: SeedArray, fused: torch.optim.Optimizer, k: int, epoch: int, lr: float,
               iteration: int, tr: dict[str, Any], ev: dict[str, float], t0: float):
    """Member k's end of epoch, as the solo trainer's: divergence, best weights, epoch-end hook, schedule; returns
    the writing of its files (None: it diverged and is finished)."""
    cfg, history, device = member.cfg, member.history, member.ctx.device
    method_stats = tr.pop("method")
    if not math.isfinite(tr["train_loss"]):
        log(f"{member.out}: epoch {epoch + 1}: non-finite training loss; stopping (diverged)")
        history.append({"epoch": epoch + 1, "lr": lr, **tr, "test_loss": float("nan"), "test_top1": float("nan"),
                        "test_top5": float("nan"), "seconds": time.perf_counter() - t0})
        member.trackers.log_epoch(history[-1])
        _finish(member, "diverged", time.perf_counter() - member.started)
        return None
    best_weights = None
    if not history or ev["test_top1"] > best_row(history)["test_top1"]:
        best_weights = {n: v.detach().to("cpu", copy=True) for n, v in member.model.state_dict().items()}
    t_method = time.perf_counter()
    with member.own_rng():
        method_stats.update(member.method.on_epoch_end(member.ctx, epoch, last=epoch == cfg.epochs - 1))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    method_stats["method_seconds"] = time.perf_counter() - t_method
    method_stats = {n: v.item() if isinstance(v, torch.Tensor) else v for n, v in method_stats.items()}
    with warnings.catch_warnings():  # the member's own optimizer never steps: the fused one does
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",  category=UserWarning)
        member.scheduler.step()
    member.iteration = iteration
    row = {"epoch": epoch + 1, "lr": lr, **tr, **ev, **method_stats, "seconds": time.perf_counter() - t0}
    history.append(row)
    member.trackers.log_epoch(row)
    array.member_optimizer_state(fused, k, member.optimizer)
    return (functools.partial(_stage_epoch, member, epoch, ev, best_weights),
            functools.partial(_commit_epoch, member, epoch, best_weights is not None))


def _log_epoch(member: Member, epoch: int) -> None:
    row = member.history[-1]
    log(f"{member.out}: epoch {epoch + 1}/{member.cfg.epochs} lr {row['lr']:.4g} train loss {row['train_loss']:.4f} "
        f"top1 {row['train_top1']:.2f} | test loss {row['test_loss']:.4f} top1 {row['test_top1']:.2f} (seed array)")


def _stage_epoch(member: Member, epoch: int, ev: dict[str, float], best_weights: dict[str, Any] | None) -> None:
    """Phase one of the array's epoch: the member's best.pt (when a new best) and last.pt of the epoch, staged."""
    cfg, out = member.cfg, member.out
    if best_weights is not None:
        stage_best(out, epoch + 1, {"config": to_dict(cfg), "epoch": epoch + 1, "test_top1": ev["test_top1"],
                                    "model": best_weights})
    stage_last(out, epoch + 1, {
        "config": to_dict(cfg), "method_version": method_version(cfg.method), "epoch": epoch + 1,
        "iteration": member.iteration, "history": member.history,
        "model": {n: v.detach().clone() for n, v in member.model.state_dict().items()},  # not the stacked storage
        "optimizer": member.optimizer.state_dict(), "scheduler": member.scheduler.state_dict(),
        "method": member.method.state_dict(), "rng": member.rng})


def _commit_epoch(member: Member, epoch: int, new_best: bool) -> None:
    """Phase two: the staged last.pt becomes last.pt, then best.pt and the metrics follow (a solo run's order)."""
    commit_last(member.out, epoch + 1)
    if new_best:
        member.best_saved = promote_best(member.out, epoch + 1)
    write_metrics(member.out, member.history)


def _finish(member: Member, status: str, wall_seconds: float | None) -> None:
    """The member's result.json, as the solo trainer writes it at the end of its run."""
    cfg, history = member.cfg, member.history
    write_metrics(member.out, history)
    summary = {**summarize(history), **member.method.summarize(history)}
    if status == "diverged":
        summary["diverged_epoch"] = history[-1]["epoch"]
    summary["best_checkpoint_epoch"] = member.best_saved
    member.status = status
    member.result.update({"status": status, **summary, "speed": {k: getattr(cfg, k) for k in
                                                                 ("amp", "channels_last", "compile", "cudnn_benchmark")},
                          "data_path": data_path_for(cfg, member.ctx.device), "seed": cfg.seed})
    if wall_seconds is not None:
        member.result["wall_seconds"] = wall_seconds
    write_result(member.out, member.result)

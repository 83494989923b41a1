"""Weight Evolution as a PyTorch Lightning callback (optional extra: `pip install lightning`).

    from we.lightning import WeightEvolutionCallback
    trainer = lightning.Trainer(max_epochs=200, callbacks=[WeightEvolutionCallback(milestones=(60, 120))])
    trainer.fit(model, train_loader, val_loader)

The callback evolves the LightningModule's weights (`we.WeightEvolution`, variant "paper" or "official", the
same keyword arguments) at the end of every training epoch, after that epoch's validation, and not after
the last epoch (`max_epochs`), like the suite's trainer; or, with `every_n_steps=N`, after every N-th
optimizer step. Its state (variant, hparams, step and unit counters) is saved in Lightning's
checkpoints and restored by `trainer.fit(..., ckpt_path=...)`, so a resumed run evolves exactly as an
uninterrupted one, provided the training order is a function of the seed and the epoch: a seeded sampler
that Lightning calls `set_epoch` on (e.g. `DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True,
seed=0)`); a plain `shuffle=True` loader draws a new order from the global RNG, and Lightning's resume
does not replay it, with or without this callback. A fit resumed with a larger `max_epochs` than the
first fit's takes the step the first fit skipped after its last epoch (at the start of the resumed fit,
on the weights that epoch ended with), so it steps exactly as an uninterrupted fit to the new
`max_epochs`. The units evolved per kind in each epoch, and the selection rate of the paper
variant, are logged through the module's loggers (`we/conv_weight`, ..., `we/rate`).
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from we.core import SCHEDULE_KEYS, WeightEvolution, authors_step_hparams, paper_step_hparams
from we.core.checks import VARIANTS, check_choice, check_positive_int


class WeightEvolutionCallback(pl.Callback):
    """Applies Weight Evolution to the trained LightningModule (see the module docstring).

    `variant`, `**hparams`: as `we.WeightEvolution` (the paper's defaults: we.core.hparams.HPARAMS; pass
    your own schedule's lr-decay epochs as `milestones`).
    `every_n_steps`: evolve after every N optimizer steps instead of at epoch ends.
    """

    def __init__(self, variant: str = "paper", every_n_steps: int | None = None, **hparams: Any) -> None:
        check_choice("variant", variant, VARIANTS)
        if every_n_steps is not None:
            if set(hparams) & set(SCHEDULE_KEYS):
                raise ValueError("every_n_steps sets interval and interval_unit; give one or the other")
            hparams = {**hparams, "interval": check_positive_int("every_n_steps", every_n_steps),
                       "interval_unit": "iter"}
        schedule = {k: v for k, v in hparams.items() if k in SCHEDULE_KEYS}
        if variant == "paper":
            paper_step_hparams(hparams)  # a bad key or value fails here, before any training
        else:
            authors_step_hparams({k: v for k, v in hparams.items() if k not in SCHEDULE_KEYS})
            paper_step_hparams(schedule)
        self.variant, self.hparams = variant, hparams
        self.evolution: WeightEvolution | None = None
        self._restored: dict[str, Any] | None = None  # from a checkpoint, applied once the model is set up
        self._seen_step = -1
        self._skipped_last: int | None = None  # the epoch whose step was skipped as the fit's last
        self.epoch_counts: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []  # one row per epoch: epoch and units evolved per kind

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning restored a checkpoint and moved the module to its device
        self.evolution = WeightEvolution(pl_module, variant=self.variant, **self.hparams)
        if self._restored:  # its variant and hparams replace the given ones, as in WeightEvolution
            self.evolution.load_state_dict(self._restored)
            self._restored = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # resumed with a larger max_epochs: the first fit's last epoch is no longer the last, so its step is due
        skipped, self._skipped_last = self._skipped_last, None
        if self.evolution is None or skipped is None or skipped != trainer.current_epoch - 1 or self._is_last(
                trainer, skipped):
            return
        self.epoch_counts = {}
        self._add(self.evolution.step(skipped))
        self._record(pl_module, skipped)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_counts = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step - 1  # the optimizer step just taken (0-based)
        if self.evolution is None or step == self._seen_step:  # no new step (gradient accumulation)
            return
        self._seen_step = step
        self._add(self.evolution.step_iteration(step, trainer.current_epoch))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.evolution is None:
            return
        if not self._is_last(trainer, epoch):
            self._add(self.evolution.step(epoch))
        elif self.evolution.hparams["interval_unit"] == "epoch":
            self._skipped_last = epoch
        self._record(pl_module, epoch)

    @staticmethod
    def _is_last(trainer: pl.Trainer, epoch: int) -> bool:
        return trainer.max_epochs is not None and trainer.max_epochs >= 0 and epoch >= trainer.max_epochs - 1

    def _record(self, pl_module: pl.LightningModule, epoch: int) -> None:
        if self.epoch_counts and self.variant == "paper":
            self.epoch_counts["rate"] = self.evolution.rate(epoch)
        self.history.append({"epoch": epoch, **self.epoch_counts})
        for kind, n in self.epoch_counts.items():
            pl_module.log(f"we/{kind}", float(n), on_step=False, on_epoch=True)

    def _add(self, counts: dict[str, int] | None) -> None:
        for kind, n in (counts or {}).items():
            self.epoch_counts[kind] = self.epoch_counts.get(kind, 0) + int(n)

    def state_dict(self) -> dict[str, Any]:
        state = self.evolution.state_dict() if self.evolution is not None else dict(self._restored or {})
        return {**state, "skipped_last_epoch": self._skipped_last}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self._skipped_last = state.pop("skipped_last_epoch", None)
        if self.evolution is not None:
            self.evolution.load_state_dict(state)
        else:
            self._restored = state

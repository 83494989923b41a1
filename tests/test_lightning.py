"""The Lightning callback: a real Lightning Trainer on the offline digits set; WE acts, and a run stopped after
its first epoch and resumed from Lightning's checkpoint ends with bitwise the same weights as an uninterrupted one."""
import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from we.lightning import WeightEvolutionCallback

EPOCHS = 3
WE = dict(r_hat=0.3, gamma=0.5, milestones=(2,))  # strong enough to act within a few epochs


class DigitsNet(pl.LightningModule):
    """A tiny conv net with BatchNorm for the 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_top1", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        return [opt], [torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2], gamma=0.1)]


def loaders() -> tuple[DataLoader, DataLoader]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    train, test = TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])
    # the shuffle depends on seed and epoch only (Lightning calls set_epoch), so a resumed run sees the same order
    order = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=0)
    return DataLoader(train, batch_size=64, sampler=order), DataLoader(test, batch_size=256)


def fit(root: Path, callback: WeightEvolutionCallback | None, stop_after: int | None = None,
        ckpt_path: str | None = None, max_epochs: int = EPOCHS) -> DigitsNet:
    torch.manual_seed(0)
    model = DigitsNet()
    callbacks: list[pl.Callback] = [ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=-1)]
    if callback is not None:
        callbacks.insert(0, callback)
    if stop_after is not None:
        callbacks.append(StopAfter(stop_after))
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, deterministic=True, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                         callbacks=callbacks)
    train, test = loaders()
    trainer.fit(model, train, test, ckpt_path=ckpt_path)
    return model


class StopAfter(pl.Callback):
    """Stops training at the end of the given (0-based) epoch, as an interruption would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for name, tensor in sa.items():
        assert torch.equal(tensor, sb[name]), name


@pytest.mark.parametrize("mode", ["epoch", "steps"])
def test_callback_evolves_and_resumes_bitwise(tmp_path: Path, mode: str):
    make = (lambda: WeightEvolutionCallback(**WE)) if mode == "epoch" else \
        (lambda: WeightEvolutionCallback(every_n_steps=10, **WE))
    whole_cb = make()
    whole = fit(tmp_path / "whole", whole_cb)
    counts = [sum(v for k, v in row.items() if k not in ("epoch", "rate")) for row in whole_cb.history]
    assert [row["epoch"] for row in whole_cb.history] == list(range(EPOCHS))
    assert max(counts) > 0  # WE acted
    if mode == "epoch":
        assert counts[-1] == 0  # not after the last epoch
    assert whole_cb.evolution.steps == (EPOCHS - 1 if mode == "epoch" else EPOCHS * 22 // 10)

    if mode == "epoch":  # the evolved run took another path than plain training
        plain = fit(tmp_path / "plain", None)
        assert any(not torch.equal(p, q) for p, q in zip(whole.state_dict().values(), plain.state_dict().values()))

    first_cb = make()
    fit(tmp_path / "cut", first_cb, stop_after=0)
    assert [row["epoch"] for row in first_cb.history] == [0]
    last = tmp_path / "cut" / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["epoch"] == 0 and any("WeightEvolutionCallback" in k for k in saved["callbacks"])
    resumed_cb = make()
    resumed = fit(tmp_path / "cut", resumed_cb, ckpt_path=str(last))
    assert [row["epoch"] for row in resumed_cb.history] == list(range(1, EPOCHS))
    assert resumed_cb.evolution.state_dict() == whole_cb.evolution.state_dict()
    assert_same_weights(resumed, whole)  # bitwise


def test_a_fit_resumed_with_a_larger_max_epochs_steps_as_an_uninterrupted_one(tmp_path: Path):
    """A first fit of 2 epochs skips the step after its last epoch; resumed to 3 epochs, that epoch is no
    longer the last and its step is taken: the same steps, units and weights as a 3-epoch fit."""
    whole_cb = WeightEvolutionCallback(**WE)
    whole = fit(tmp_path / "whole", whole_cb)
    first_cb = WeightEvolutionCallback(**WE)
    fit(tmp_path / "short", first_cb, max_epochs=EPOCHS - 1)
    assert first_cb.evolution.steps == EPOCHS - 2  # not after its last epoch
    resumed_cb = WeightEvolutionCallback(**WE)
    resumed = fit(tmp_path / "short", resumed_cb, ckpt_path=str(tmp_path / "short" / "ckpt" / "last.ckpt"))
    assert resumed_cb.evolution.steps == whole_cb.evolution.steps == EPOCHS - 1
    assert resumed_cb.evolution.state_dict() == whole_cb.evolution.state_dict()
    assert [r["epoch"] for r in resumed_cb.history] == [EPOCHS - 2, EPOCHS - 1]  # the late step, then the new epoch
    assert_same_weights(resumed, whole)  # bitwise


def test_bad_hparams_fail_at_construction():
    with pytest.raises(ValueError, match="r_hat"):
        WeightEvolutionCallback(r_hat=2.0)
    with pytest.raises(ValueError, match="every_n_steps"):
        WeightEvolutionCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="interval"):
        WeightEvolutionCallback(every_n_steps=5, interval=2)
    with pytest.raises(ValueError, match="variant"):
        WeightEvolutionCallback(variant="mine")


class OrderedNet(DigitsNet):
    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events

    def on_validation_epoch_end(self):
        self.events.append(("validate", self.current_epoch))


def test_the_step_follows_the_epochs_validation_and_its_counts_are_logged_as_we_kinds(tmp_path: Path):
    """As the paper's schedule (train, test, then evolve): each epoch's WE step comes after that epoch's
    validation, and the logged `we/<kind>` values are the units the callback evolved."""
    events: list = []

    class Recording(WeightEvolutionCallback):
        def on_fit_start(self, trainer, pl_module):
            super().on_fit_start(trainer, pl_module)
            step = self.evolution.step
            self.evolution.step = lambda epoch: (events.append(("evolve", epoch)), step(epoch))[1]

    torch.manual_seed(0)
    callback = Recording(**WE)
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, deterministic=True,
                         logger=CSVLogger(tmp_path, name="log", version=0), enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback])
    train, test = loaders()
    trainer.fit(OrderedNet(events), train, test)
    sanity = [e for e in events if e == ("validate", 0)][:-1]  # Lightning's sanity check validates once first
    expected = [("validate", 0), ("evolve", 0), ("validate", 1), ("evolve", 1), ("validate", 2)]
    assert events[len(sanity):] == expected, events
    with open(tmp_path / "log" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("we/") and value != "":
                logged.setdefault(int(row["epoch"]), {})[key[3:]] = float(value)
    history = {r["epoch"]: {k: float(v) for k, v in r.items() if k != "epoch"} for r in callback.history}
    assert sorted(logged) == [e for e, h in history.items() if h]  # an epoch without a step logs nothing
    for epoch, counts in logged.items():  # the rate is logged in float32
        assert counts == pytest.approx(history[epoch], rel=1e-6), epoch
    assert sum(logged[0][k] for k in ("conv_weight", "bn_weight", "bn_bias") if k in logged[0]) > 0

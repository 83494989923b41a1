"""Promises of the trainer that a wrong implementation would break silently: which epoch best.pt keeps on a
tie, the held section around an epoch's checkpoint and metrics, and the method-version check of a resumed
last.pt. Each test fails when the guard it names is removed."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import we.train.trainer as trainer
from test_rundir_users import cut_after_epoch_1, tiny
from we import rundir
from we.errors import ConfigError
from we.methods import METHODS
from we.train import main
from we.train.interrupt import Interrupted, interrupts_raise


def scripted_evaluate(monkeypatch, top1: list[float]) -> None:
    """The trainer's evaluation returns these test top-1 values, one per epoch (the rest as measured)."""
    evaluate, epochs = trainer.evaluate, iter(top1)

    def fake(*args, **kwargs):
        return {**evaluate(*args, **kwargs), "test_top1": next(epochs)}

    monkeypatch.setattr(trainer, "evaluate", fake)


def test_best_pt_keeps_the_first_of_tied_best_epochs(tmp_path: Path, monkeypatch):
    scripted_evaluate(monkeypatch, [40.0, 70.0, 55.0, 70.0])  # epochs 2 and 4 tie for the best
    result = main(tiny(tmp_path, "epochs=4"))
    assert rundir.read_checkpoint(tmp_path / rundir.BEST_CHECKPOINT)["epoch"] == 2
    assert result["best_checkpoint_epoch"] == 2 and result["best_epoch"] == 2 and result["best_top1"] == 70.0
    assert rundir.summarize(rundir.read_metrics(tmp_path))["best_epoch"] == 2  # what a report rebuilds


def test_a_signal_during_the_checkpoint_write_waits_until_the_epoch_is_saved(tmp_path: Path, monkeypatch):
    """SIGTERM arrives while last.pt of epoch 1 is being written: the run stops only after last.pt and
    metrics.jsonl both hold epoch 1, and resumes from there."""
    save = trainer.save_checkpoint

    def signalled_save(path, state):
        if state.get("epoch") == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered now, in the middle of the held section
        save(path, state)

    monkeypatch.setattr(trainer, "save_checkpoint", signalled_save)
    with interrupts_raise(), pytest.raises(Interrupted):
        main(tiny(tmp_path, "epochs=3"))
    assert rundir.read_checkpoint(tmp_path / rundir.LAST_CHECKPOINT)["epoch"] == 1
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path)] == [1]
    result = rundir.read_result(tmp_path)
    assert result["status"] == "interrupted" and result["epochs_done"] == 1
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    assert main(tiny(tmp_path, "epochs=3"))["epochs_done"] == 3


def test_a_last_pt_of_another_method_version_is_refused_on_resume(tmp_path: Path, monkeypatch):
    cut_after_epoch_1(tmp_path, monkeypatch)  # result.json: failed, so only last.pt records the version
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    monkeypatch.setattr(METHODS["baseline"], "version", 2)  # the method's behaviour changed since
    with pytest.raises(ConfigError) as caught:
        main(tiny(tmp_path, "epochs=3"))
    line = str(caught.value)
    assert str(tmp_path / rundir.LAST_CHECKPOINT) in line and "version 1" in line and "version 2" in line, line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_best_pt_holds_an_early_best_epoch_as_evaluated_before_wes_step(tmp_path: Path, monkeypatch):
    """The best epoch is epoch 1, after which WE's step changes the weights: best.pt holds the weights the
    evaluation of epoch 1 saw, not the evolved ones that epoch 2 trained from."""
    evaluate, seen = trainer.evaluate, []
    top1 = iter([80.0, 50.0, 60.0])

    def recording(cfg, model, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {**evaluate(cfg, model, *args, **kwargs), "test_top1": next(top1)}

    monkeypatch.setattr(trainer, "evaluate", recording)
    evolved = []
    step = trainer.save_checkpoint

    def keep_last(path, state):  # last.pt of epoch 1: the weights after WE's step of epoch 1
        if Path(path).name == rundir.LAST_CHECKPOINT and state["epoch"] == 1:
            evolved.append({k: v.clone() for k, v in state["model"].items()})
        step(path, state)

    monkeypatch.setattr(trainer, "save_checkpoint", keep_last)
    main(tiny(tmp_path, "epochs=3", "method=we", "we_r_hat=0.5", "we_gamma=0.5"))
    rows = rundir.read_metrics(tmp_path)
    assert sum(rows[0][f"we_{k}"] for k in ("conv_weight", "bn_weight", "bn_bias")) > 0  # WE acted after epoch 1
    best = rundir.read_checkpoint(tmp_path / rundir.BEST_CHECKPOINT)
    assert best["epoch"] == 1
    assert all(torch.equal(best["model"][k], v) for k, v in seen[0].items())  # as evaluated
    assert any(not torch.equal(best["model"][k], v) for k, v in evolved[0].items())  # not the evolved weights


def test_the_readme_names_every_status_result_json_can_hold():
    import re

    row = next(ln for ln in (Path(__file__).parent.parent / "README.md").read_text().splitlines()
               if ln.startswith("| `result.json` |"))
    listed = set(re.findall(r"\b(complete|diverged|failed|interrupted|running)\b", row.split("),")[0]))
    assert listed == set(trainer.EXIT_CODES) | {"interrupted"}, row  # interrupted exits 128 + the signal

"""Reading a run folder never executes code: every checkpoint reader uses torch's restricted unpickler.

A planted `last.pt` (an object whose unpickling creates a marker file) is refused with one line naming
it by the trainer's resume and by the report; every method's state round-trips through the safe loader;
a checkpoint of the format written before (NumPy's RNG array) is refused, then converted only on
`--trust-checkpoint`, and the run resumes bitwise.
"""
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import we.train.trainer
from we.errors import CheckpointError
from we.methods import METHODS
from we.train import cli, main
from we.train.checkpoint import load_checkpoint, save_checkpoint
from we.train.config import load_config, to_dict

REPO = Path(__file__).resolve().parent.parent
TINY = ["dataset=digits", "model=resnet20", "limit_train=64", "batch_size=32", "workers=0", "progress=plain"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class Plant:
    """Unpickling this calls pathlib.Path.touch(marker): what any code could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def plant(path: Path, marker: Path) -> None:
    torch.save({"model": {"conv.weight": torch.ones(4, 2, 3, 3)}, "config": {}, "epoch": 1, "iteration": 2,
                "history": [], "payload": Plant(marker)}, path)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lines_naming(text: str, path: Path) -> list[str]:
    return [line for line in text.splitlines() if str(path) in line]


def test_the_plant_would_run_code_under_full_unpickling(tmp_path: Path):
    """The planted file is a real threat: full unpickling (the old readers) creates the marker."""
    marker = tmp_path / "marker"
    plant(tmp_path / "last.pt", marker)
    torch.load(tmp_path / "last.pt", weights_only=False)
    assert marker.exists()


def test_load_checkpoint_refuses_the_plant_in_one_line(tmp_path: Path):
    marker = tmp_path / "marker"
    plant(tmp_path / "last.pt", marker)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "last.pt")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'last.pt'}: refused")
    assert "Path.touch" in message or "getattr" in message  # names what it refused
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: unreadable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_resuming_a_run_with_a_planted_checkpoint_is_refused_and_touches_nothing(tmp_path: Path):
    run, marker = tmp_path / "run", tmp_path / "marker"
    args = [*TINY, "epochs=2", f"out={run}"]
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config(None, args)), sort_keys=False))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_top1": 10.0}) + "\n")
    plant(run / "last.pt", marker)
    before = snapshot(run)
    proc = subprocess.run([sys.executable, "-m", "we.train", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists()
    assert len(lines_naming(proc.stdout + proc.stderr, run / "last.pt")) == 1
    assert proc.stderr.strip().count("\n") == 0 and "--trust-checkpoint" in proc.stderr
    assert snapshot(run) == before  # no result.json, config.yaml or metrics written, last.pt kept


def _complete_run(root: Path, dataset: str = "cifar10", model: str = "mobilenetv2") -> Path:
    run = root / "figure2" / "mbv2"
    run.mkdir(parents=True)
    labels = {"dataset": dataset, "model": model, "method": "baseline", "seed": 0}
    (run / "cell.json").write_text(json.dumps({"grid": "figure2", "key": "mbv2", "labels": labels,
                                               "config": {"epochs": 2}, "submitted": []}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "lr": 0.1, "train_loss": 1.0, "train_top1": 50.0, "test_loss": 1.0, "test_top1": 50.0,
         "test_top5": 90.0, "seconds": 1.0, "images_per_s": 100.0}) + "\n" for e in (1, 2)))
    (run / "result.json").write_text(json.dumps({"status": "complete", "final_top1": 50.0, "best_top1": 50.0,
                                                 "epochs_done": 2, "config": labels}))
    return run


def test_every_report_reader_refuses_a_planted_checkpoint(tmp_path: Path):
    root, marker = tmp_path / "runs", tmp_path / "marker"
    run = _complete_run(root)
    plant(run / "last.pt", marker)
    before = snapshot(root)
    fig = subprocess.run([sys.executable, "-m", "we.report", "figures", "--runs-root", str(root),
                          "--out-dir", str(tmp_path / "out")], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert fig.returncode == 0, fig.stderr
    assert not marker.exists()
    assert len(lines_naming(fig.stderr, run / "last.pt")) == 1 and "refused" in fig.stderr
    assert (tmp_path / "out" / "figures" / "fig2-l1-norms-mobilenetv2-cifar10.png").exists()  # at initialisation
    col = subprocess.run([sys.executable, "-m", "we.report", "collect", "figure2", "--runs-root", str(root),
                          "--out-dir", str(tmp_path / "out")], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert col.returncode == 0, col.stderr
    assert not marker.exists()
    assert snapshot(root) == before  # the readers write only under --out-dir


# ---- every method's state through the safe loader ---------------------------------------------------
# The resume tests load their checkpoints with weights_only=True and resume through load_checkpoint:
# WE (test_train), FG-2 and RL (test_methods_fg_rl), ONI, SVB and RePr with pruned filters
# (test_methods_oni_svb_repr), WE under DDP (test_distributed). Here: the states those do not reach.
RESUME_TESTED = {"we", "fg", "rl", "oni", "svb", "repr"}
METHOD_STATES = {  # config, and what the method state must hold after the run (its non-trivial part)
    "baseline": (["method=baseline"], lambda s: s == {}),
    "we_official": (["method=we", "we_variant=official", "recipe=official"],
                    lambda s: s["variant"] == "official" and s["official"]["counters"]),
    "fg1": (["method=fg", "fg_n=1"], lambda s: s["nets"] == [] and s["optimizers"] == []),  # one network: the model
    "rl_before_snapshot": (["method=rl", "rl_warmup=5"], lambda s: s["past"] is None),
}


def test_every_registered_method_is_covered():
    covered = RESUME_TESTED | {args[0].split("=")[1] for args, _ in METHOD_STATES.values()}
    assert set(METHODS) <= covered


@pytest.mark.parametrize("name", sorted(METHOD_STATES))
def test_method_state_round_trips_through_the_safe_loader(tmp_path: Path, name: str):
    extra, holds = METHOD_STATES[name]
    cfg = load_config(None, TINY + ["epochs=2", *extra, f"out={tmp_path}"])
    assert main(cfg)["status"] == "complete"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "last.pt") == []
    state = load_checkpoint(tmp_path / "last.pt")
    assert holds(state["method"]), state["method"]
    plain = (str, int, float, bool, type(None), torch.Tensor)

    def walk(x):  # tensors and plain containers only
        if isinstance(x, dict):
            return all(isinstance(k, (str, int)) and walk(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(walk(v) for v in x)
        return isinstance(x, plain)

    assert walk(state)


# ---- the format written before: refused, converted only on --trust-checkpoint ------------------------
def _old_format(path: Path) -> None:
    """Rewrite a checkpoint as the suite wrote it before: NumPy's RNG state as (name, ndarray, ...)."""
    state = torch.load(path, weights_only=True)
    name, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    state["rng"]["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    torch.save(state, path)


def test_old_checkpoint_is_refused_then_resumes_bitwise_on_trust(tmp_path: Path, monkeypatch, capsys):
    args = TINY + ["epochs=2", "method=we"]
    ref = main(load_config(None, args + [f"out={tmp_path / 'ref'}"]))
    real_save = we.train.trainer.save_checkpoint

    def save_then_stop(path, state):
        real_save(path, state)
        raise KeyboardInterrupt("stopped after epoch 1")

    monkeypatch.setattr(we.train.trainer, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        main(load_config(None, args + [f"out={tmp_path / 'cut'}"]))
    monkeypatch.setattr(we.train.trainer, "save_checkpoint", real_save)
    ckpt = tmp_path / "cut" / "last.pt"
    _old_format(ckpt)
    before = snapshot(tmp_path / "cut")
    capsys.readouterr()
    assert cli(args + [f"out={tmp_path / 'cut'}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(ckpt) in err and "--trust-checkpoint" in err
    assert "numpy" in err  # names what it refused
    assert snapshot(tmp_path / "cut") == before
    assert cli(["--trust-checkpoint", "--config", str(tmp_path / "cut" / "config.yaml")]) == 0
    out = capsys.readouterr()
    assert "rewritten in the safe format" in out.err and "resuming after epoch 1" in out.out
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(ckpt)
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert a["method"] == b["method"] and ref["final_top1"] == b["history"][-1]["test_top1"]


def test_rng_states_are_plain_and_restore_exactly():
    """Python, NumPy, torch and (a stand-in list of ByteTensors for) CUDA states load safely and restore."""
    import io
    import random

    from we.train.checkpoint import plain_rng_state, rng_state, set_rng_state

    state = rng_state()
    state["cuda"] = [torch.get_rng_state()]  # the shape of torch.cuda.get_rng_state_all() on a CUDA machine
    buffer = io.BytesIO()
    torch.save(plain_rng_state(state), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(loaded)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws
    assert isinstance(loaded["numpy"][1], torch.Tensor) and isinstance(loaded["cuda"][0], torch.Tensor)

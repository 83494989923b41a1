"""The trainer: run-folder outputs, idempotence, exact resume after a kill, divergence, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from we.train.config import ConfigError, load_config
from we.methods import METHODS, Method
from we.train import cli, main
from we.train.trainer import TIMING_KEYS
from tree_utils import assert_same_tree  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = ["dataset=digits", "model=resnet20", "limit_train=128", "batch_size=32", "workers=0", "progress=plain"]


def tiny(tmp_path: Path, *extra: str):
    return load_config(None, TINY + [f"out={tmp_path}", *extra])


def test_run_folder_outputs(tmp_path: Path):
    result = main(tiny(tmp_path, "epochs=2", "method=we"))
    assert result["status"] == "complete" and result["epochs_done"] == 2
    for name in ("config.yaml", "metrics.csv", "metrics.jsonl", "result.json", "last.pt"):
        assert (tmp_path / name).exists(), name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "seconds",
                "we_conv_weight", "we_bn_weight", "we_rate", "method_seconds"):
        assert key in rows[0], key
    assert "we_conv_weight" not in rows[1]  # no evolution after the last epoch
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["epoch", "lr"]
    saved = json.loads((tmp_path / "result.json").read_text())
    prov = saved["provenance"]
    assert prov["versions"]["torch"] == torch.__version__ and "hardware" in prov and "git_commit" in prov
    assert saved["config"]["seed"] == 0 and saved["final_top1"] == rows[-1]["test_top1"]
    assert saved["best_top1"] == max(r["test_top1"] for r in rows)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "method", "rng", "epoch", "config"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["config"]["method"] == "we"
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["lr"] == 0.1


def test_complete_run_is_not_retrained(tmp_path: Path):
    cfg = tiny(tmp_path, "epochs=1")
    first = main(cfg)
    stamp = (tmp_path / "last.pt").stat().st_mtime_ns
    again = main(cfg)
    assert again["final_top1"] == first["final_top1"]
    assert (tmp_path / "last.pt").stat().st_mtime_ns == stamp


def test_changed_config_in_same_folder_is_refused(tmp_path: Path):
    main(tiny(tmp_path, "epochs=1"))
    before = (tmp_path / "result.json").read_text()
    with pytest.raises(ConfigError, match="'lr'|lr"):
        main(tiny(tmp_path, "epochs=1", "lr=0.05"))
    assert (tmp_path / "result.json").read_text() == before


def _train_cmd(out: Path, epochs: int, method: str) -> list[str]:
    return [sys.executable, "-m", "we.train", *TINY, "limit_train=384", f"epochs={epochs}", f"method={method}",
            "lr_milestones=[2,4]", "we_r_hat=0.3", "we_gamma=0.5", f"out={out}"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["we"])
def test_killed_run_resumes_bitwise(tmp_path: Path, method: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(_train_cmd(ref, 4, method), cwd=REPO, env=env, check=True, capture_output=True)
    proc = subprocess.Popen(_train_cmd(cut, 4, method), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (cut / "last.pt").exists():  # the trainer's event: epoch 1 is on disk, the kill lands after it
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(cut / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done < 4
    out = subprocess.run(_train_cmd(cut, 4, method), cwd=REPO, env=env, check=True, capture_output=True, text=True)
    assert f"resuming after epoch {done}" in out.stdout
    a = torch.load(ref / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in h]
    assert strip(a["history"]) == strip(b["history"])
    assert a["method"] == b["method"]


def test_non_finite_loss_marks_diverged(tmp_path: Path, capsys):
    code = cli(TINY + ["epochs=3", "lr=1e30", "momentum=0.0", f"out={tmp_path}"])
    result = json.loads((tmp_path / "result.json").read_text())
    assert code == 3 and result["status"] == "diverged" and result["diverged_epoch"] == 1


def test_cli_bad_key_is_one_line(tmp_path: Path, capsys):
    code = cli(TINY + ["epochz=3", f"out={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'epochz'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "config.yaml").exists()


def test_method_hooks_are_called_in_order(tmp_path: Path, monkeypatch):
    calls = []

    class Recorder(Method):
        def __init__(self, cfg):
            pass

        def on_train_start(self, ctx):
            calls.append("start")

        def after_optimizer_step(self, ctx, iteration, epoch):
            calls.append(("step", iteration, epoch))

        def extra_loss(self, ctx, inputs, outputs, targets):
            return outputs.float().pow(2).mean() * 0.0

        def on_epoch_end(self, ctx, epoch, last):
            calls.append(("end", epoch, last))
            return {"recorded": 1.0}

    monkeypatch.setitem(METHODS, "recorder", Recorder)
    main(tiny(tmp_path, "epochs=2", "method=recorder", "limit_train=64"))
    assert calls[0] == "start"
    assert [c for c in calls if c[0] == "end"] == [("end", 0, False), ("end", 1, True)]
    steps = [c for c in calls if c[0] == "step"]
    assert [s[1] for s in steps] == list(range(4)) and [s[2] for s in steps] == [0, 0, 1, 1]
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["recorded"] == 1.0


def test_folder_from_before_a_key_was_added_still_resumes(tmp_path: Path):
    cfg = tiny(tmp_path, "epochs=1")
    main(cfg)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["we_level"]  # as if the run predates this key
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(cfg)["status"] == "complete"
    saved["lr"] = 0.5  # a key it did know, with another value, is still refused
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="lr"):
        main(cfg)


@pytest.mark.parametrize("method", ["baseline", "we", "fg", "oni", "svb", "repr", "rl"])
def test_every_method_runs_from_the_command_line(tmp_path: Path, method: str):
    code = cli(TINY + ["limit_train=64", "epochs=2", f"method={method}", "repr_s1=1", "repr_s2=1",
                       "rl_warmup=0", "rl_update=1", f"out={tmp_path}"])
    result = json.loads((tmp_path / "result.json").read_text())
    assert code == 0 and result["status"] == "complete" and result["config"]["method"] == method


class Crash(RuntimeError):
    """The simulated failure."""


def crashing(base: type, at_epoch: int) -> type:
    """`base` that raises at the end of the 0-based epoch `at_epoch` (its checkpoint is not written)."""

    class Crashing(base):
        def on_epoch_end(self, ctx, epoch, last):
            if epoch == at_epoch:
                raise Crash(f"crashed at the end of epoch {epoch + 1}")
            return super().on_epoch_end(ctx, epoch, last)

    return Crashing


def test_a_crash_writes_failed_and_exits_1(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(METHODS, "baseline", crashing(METHODS["baseline"], 0))
    code = cli(TINY + ["limit_train=64", "epochs=2", f"out={tmp_path}"])
    result = json.loads((tmp_path / "result.json").read_text())
    assert code == 1 and result["status"] == "failed"
    assert result["error"] == "Crash: crashed at the end of epoch 1" and "Crash" in result["traceback"]
    assert capsys.readouterr().err.strip() == "error: Crash: crashed at the end of epoch 1"


def test_diverged_run_is_not_retrained(tmp_path: Path, capsys):
    args = TINY + ["epochs=3", "lr=1e30", "momentum=0.0", f"out={tmp_path}"]
    assert cli(args) == 3
    before = (tmp_path / "result.json").read_text()
    capsys.readouterr()
    assert cli(args) == 3
    assert "already diverged; nothing to do" in capsys.readouterr().out
    assert (tmp_path / "result.json").read_text() == before  # not rewritten: no second run


def test_train_evaluate_then_hook_and_the_saved_model_is_the_evaluated_one(tmp_path: Path, monkeypatch):
    import we.train.trainer as trainer

    calls, evaluated = [], []
    evaluate = trainer.evaluate

    def recording_evaluate(cfg, model, *args, **kwargs):
        calls.append("evaluate")
        evaluated.append({k: v.clone() for k, v in model.state_dict().items()})
        return evaluate(cfg, model, *args, **kwargs)

    class Recorder(METHODS["we"]):
        def after_optimizer_step(self, ctx, iteration, epoch):
            calls.append("train")
            return super().after_optimizer_step(ctx, iteration, epoch)

        def on_epoch_end(self, ctx, epoch, last):
            calls.append("hook")
            return super().on_epoch_end(ctx, epoch, last)

    monkeypatch.setattr(trainer, "evaluate", recording_evaluate)
    monkeypatch.setitem(METHODS, "we", Recorder)
    # 64 / 32 = 2 steps an epoch; a high rate so that WE's step changes the weights after epoch 1
    main(tiny(tmp_path, "epochs=2", "method=we", "limit_train=64", "we_r_hat=0.5", "we_gamma=0.5"))
    assert calls == ["train", "train", "evaluate", "hook"] * 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(rows[0][f"we_{k}"] for k in ("conv_weight", "conv_bias", "bn_weight", "bn_bias")) > 0
    saved = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(saved[k], v) for k, v in evaluated[-1].items())  # no WE step after the last evaluation


def test_last_pt_is_never_half_written(tmp_path: Path, monkeypatch):
    """A crash while writing epoch 2's last.pt leaves epoch 1's, whole, and no stray file but the
    staged best of epoch 2, which the resumed run drops."""
    save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:  # epoch 2's last.pt
            f.write(b"\x80\x02 half a checkpoint")
            raise OSError("disk full")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        main(tiny(tmp_path, "epochs=2", "limit_train=64"))
    monkeypatch.setattr(torch, "save", save)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"
    files = sorted(p.name for p in tmp_path.iterdir())
    assert set(files) - {".best-epoch2.pt"} == {"best.pt", "config.yaml", "last.pt", "metrics.csv",
                                                 "metrics.jsonl", "result.json"}, files
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1
    main(tiny(tmp_path, "epochs=2", "limit_train=64"))  # resumes from epoch 1
    assert not (tmp_path / ".best-epoch2.pt").exists()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2


def test_fg1_resumes_exactly(tmp_path: Path, monkeypatch):
    """FG-1 cut after epoch 3 (its grafting state in the checkpoint) and resumed ends as the
    uninterrupted run, epoch 4's grafting included: model, optimizer, method state and metrics."""
    args = ["epochs=5", "method=fg", "fg_n=1", "limit_train=64"]
    main(tiny(tmp_path / "ref", *args))
    fg = METHODS["fg"]
    monkeypatch.setitem(METHODS, "fg", crashing(fg, 3))
    with pytest.raises(Crash):
        main(tiny(tmp_path / "cut", *args))
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 3
    monkeypatch.setitem(METHODS, "fg", fg)
    assert main(tiny(tmp_path / "cut", *args))["status"] == "complete"
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert_same_tree({k: a[k] for k in ("model", "optimizer", "scheduler", "method")},
                     {k: b[k] for k in ("model", "optimizer", "scheduler", "method")})
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in h]
    assert strip(a["history"]) == strip(b["history"])


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_only_on_a_terminal(tmp_path: Path, terminal: bool):
    import fcntl
    import pty
    import struct
    import termios

    cmd = [sys.executable, "-m", "we.train", *TINY, "limit_train=64", "epochs=1", "progress=auto", f"out={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if terminal:  # stdout and stderr on a pseudo-terminal
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns, as a terminal has
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        output = b"".join(chunks).decode(errors="replace")
        assert proc.wait() == 0
    else:
        output = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True).stderr
    assert ("epoch 1/1:" in output and ("it/s" in output or "s/it" in output)) == terminal, output[-2000:]


def test_a_full_recipe_run_without_out_asks_for_out_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key 'out': no run folder given for a 200-epoch run") and "out=DIR" in err
    assert cli(["model=resnet20", "method=we"]) == 2  # epochs still the recipe's
    assert not list(tmp_path.iterdir())


def test_a_short_run_without_out_says_first_where_it_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(TINY + ["limit_train=64", "epochs=1"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "no out given: writing 1 epoch of resnet20 on digits into results/runs/manual"
    assert (tmp_path / "results" / "runs" / "manual" / "result.json").exists()

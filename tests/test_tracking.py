"""Live tracking (`loggers`: TensorBoard, wandb offline) and best.pt: result-neutral, read back, exact on resume."""
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

import models
import we.train.trainer as trainer
from we.errors import ConfigError
from we.grid.identity import resolve_cells
from we.grid.schema import load_grid
from we.grid.identity import config_hash
from we.grid.profiles import load_profile
from we.train import cli, main
from we.train.checkpoint import save_checkpoint, settle_best, stage_best
from we.train.config import load_config, to_dict
from we.train.optim import evaluate
from we.train.pipeline import build_data
from we.train.trainer import TIMING_KEYS

REPO = Path(__file__).resolve().parent.parent
RUN = ["dataset=digits", "model=resnet20", "limit_train=96", "batch_size=32", "workers=0", "progress=plain",
       "epochs=3", "lr=0.02", "lr_milestones=[2]", "method=we"]


def run_config(out: Path, *extra: str):
    return load_config(None, RUN + [f"out={out}", *extra])


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def tb_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_records(out: Path) -> list:
    """The records of the offline wandb run in `out` (a LevelDB-style log of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    raw, pos, block, part, records = path.read_bytes(), 7, 32768, b"", []  # 7: the file header
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, size, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        part, pos = part + raw[pos + 7:pos + 7 + size], pos + 7 + size
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(run_config(out))["status"] == "complete"
    return out


# ---- the config key ----------------------------------------------------------------------------------

def test_loggers_key_is_checked_and_result_neutral(tmp_path: Path, monkeypatch, capsys):
    plain, logged = run_config(tmp_path), run_config(tmp_path, "loggers=[tensorboard,wandb]")
    assert plain.loggers == [] and logged.loggers == ["tensorboard", "wandb"]
    assert config_hash(to_dict(plain)) == config_hash(to_dict(logged))
    with pytest.raises(ConfigError, match="config key 'loggers': 'mlflow' is not one of tensorboard, wandb"):
        run_config(tmp_path, "loggers=[mlflow]")
    with pytest.raises(ConfigError, match="'tensorboard' is given twice"):
        run_config(tmp_path, "loggers=[tensorboard,tensorboard]")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    out = tmp_path / "run"
    assert cli(RUN + ["loggers=[wandb]", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'loggers'" in err and "pip install wandb" in err
    assert not out.exists()


def test_a_cluster_profile_may_turn_loggers_on(tmp_path: Path):
    profile_path = tmp_path / "prof.yaml"
    profile_path.write_text((REPO / "slurm" / "ci.yaml").read_text().replace(
        "config: {device: cpu,", "config: {loggers: [tensorboard], device: cpu,"))
    profile = load_profile(profile_path)
    assert profile.config["loggers"] == ["tensorboard"]
    plain = resolve_cells(load_grid("demo"), tmp_path)
    logged = resolve_cells(load_grid("demo"), tmp_path, neutral=profile.config)
    assert [c.run_dir for c in logged] == [c.run_dir for c in plain]
    assert all(c.config["loggers"] == ["tensorboard"] for c in logged)


# ---- a logged run --------------------------------------------------------------------------------------

def test_logging_leaves_results_bitwise_and_reads_back(reference: Path, tmp_path: Path):
    out = tmp_path / "runs" / "cell-a"
    out.mkdir(parents=True)
    (out / "cell.json").write_text(json.dumps({"grid": "mygrid"}))  # as a grid writes it
    result = main(run_config(out, "loggers=[tensorboard,wandb]"))
    ref_result = json.loads((reference / "result.json").read_text())
    assert strip(rows(out)) == strip(rows(reference))
    assert config_hash(result["config"]) == config_hash(ref_result["config"])
    for name in ("last.pt", "best.pt"):
        assert_same_weights(torch.load(out / name, weights_only=True)["model"],
                            torch.load(reference / name, weights_only=True)["model"])

    history, scalars = rows(out), tb_scalars(out)
    assert scalars["test/top1"] == [(r["epoch"], pytest.approx(r["test_top1"])) for r in history]
    assert scalars["train/loss"] == [(r["epoch"], pytest.approx(r["train_loss"])) for r in history]
    assert [v for _, v in scalars["lr"]] == pytest.approx([r["lr"] for r in history])
    for column in ("we_conv_weight", "we_bn_weight", "we_bn_bias", "we_rate"):  # WE counts per kind
        assert scalars[f"method/{column}"] == [(r["epoch"], pytest.approx(r[column])) for r in history if column in r]
    assert {"test/top5", "test/loss", "train/top1", "time/epoch_seconds"} <= set(scalars)

    records = wandb_records(out)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name, run.run_id) == ("mygrid", "cell-a", "cell-a")
    logged = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
              for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["test/top1"]) for h in logged] == [(r["epoch"], r["test_top1"]) for r in history]


# ---- best.pt --------------------------------------------------------------------------------------------

def test_best_checkpoint_holds_the_best_epoch_as_evaluated(reference: Path):
    result = json.loads((reference / "result.json").read_text())
    best = torch.load(reference / "best.pt", weights_only=True)
    assert best["epoch"] == result["best_checkpoint_epoch"] == result["best_epoch"]
    assert best["test_top1"] == result["best_top1"]
    assert not list(reference.glob(".best-epoch*"))
    row = next(r for r in rows(reference) if r["epoch"] == result["best_epoch"])
    ev = evaluate_weights(reference, best["model"])
    assert ev["test_top1"] == row["test_top1"] and ev["test_loss"] == pytest.approx(row["test_loss"])


def evaluate_weights(out: Path, weights: dict) -> dict:
    """The trainer's evaluation of `weights` with the run's config."""
    cfg = run_config(out)
    model = models.create(cfg.model, num_classes=10)
    model.load_state_dict(weights)
    data = build_data(cfg.dataset, cfg.data_dir, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                      normalization=cfg.normalization, image_size=cfg.image_size, workers=0, download=False,
                      limit_train=cfg.limit_train)
    return evaluate(cfg, model, data, model, torch.device("cpu"))


def test_interrupted_run_logs_each_epoch_once_and_keeps_the_best(reference: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "cut"
    real_save = trainer.save_checkpoint

    def save_then_fail(path, state):  # interrupted after epoch 2 was logged, before its last.pt
        if Path(path).name == "last.pt" and state["epoch"] == 2:
            raise RuntimeError("interrupted before last.pt of epoch 2")
        real_save(path, state)

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        main(run_config(out, "loggers=[tensorboard]"))
    assert [s for s, _ in tb_scalars(out)["test/top1"]] == [1, 2]
    best, last = torch.load(out / "best.pt", weights_only=True), torch.load(out / "last.pt", weights_only=True)
    assert best["epoch"] == last["epoch"] == 1
    # best.pt holds epoch 1's weights as evaluated; last.pt holds them after WE's epoch-end step edited them
    assert last["history"][0]["we_bn_bias"] > 0
    assert any(not torch.equal(w, last["model"][k]) for k, w in best["model"].items())
    assert evaluate_weights(out, best["model"])["test_top1"] == last["history"][0]["test_top1"]
    monkeypatch.undo()

    result = main(run_config(out, "loggers=[tensorboard]"))
    ref_result = json.loads((reference / "result.json").read_text())
    assert result["status"] == "complete"
    assert strip(rows(out)) == strip(rows(reference))
    scalars = tb_scalars(out)
    assert scalars["test/top1"] == [(r["epoch"], pytest.approx(r["test_top1"])) for r in rows(reference)]
    assert [s for s, _ in scalars["method/we_bn_bias"]] == [1, 2]
    assert result["best_checkpoint_epoch"] == ref_result["best_checkpoint_epoch"]
    assert_same_weights(torch.load(out / "best.pt", weights_only=True)["model"],
                        torch.load(reference / "best.pt", weights_only=True)["model"])
    assert not list(out.glob(".best-epoch*"))


def test_settle_best_keeps_best_in_step_with_last(tmp_path: Path):
    save_checkpoint(tmp_path / "best.pt", {"epoch": 1})
    stage_best(tmp_path, 2, {"epoch": 2})  # staged, then interrupted before last.pt of epoch 2
    assert settle_best(tmp_path, 1) == 1 and not (tmp_path / ".best-epoch2.pt").exists()
    stage_best(tmp_path, 2, {"epoch": 2})  # staged, last.pt of epoch 2 written, interrupted before the rename
    assert settle_best(tmp_path, 2) == 2 and not list(tmp_path.glob(".best-epoch*"))
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2
    assert settle_best(tmp_path / "none", 0) is None


def test_the_wandb_project_is_the_grid_else_the_run_folders_parent(tmp_path: Path):
    from we.train.loggers import wandb_project

    alone = tmp_path / "sweeps" / "lr-0.1"
    alone.mkdir(parents=True)
    assert wandb_project(alone) == "sweeps"  # a run outside a grid: its folder's parent
    cell = tmp_path / "runs" / "table1" / "cifar10-resnet56-we-s0-abc"
    cell.mkdir(parents=True)
    (cell / "cell.json").write_text(json.dumps({"grid": "table1-official", "labels": {}, "config": {}}))
    assert wandb_project(cell) == "table1-official"  # the grid's name from cell.json, not the folder's
    (cell / "cell.json").write_text("[1]")
    assert wandb_project(cell) == "table1"  # a broken cell.json: the parent, never a crash

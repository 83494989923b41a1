"""DistributedDataParallel on the CPU (gloo, 2 processes under torchrun): data shards, launch
environment, ranks in bitwise agreement, agreement with the single-process run, resume.

Tolerances against the single-process run. With the global batch B split over 2 ranks, DDP's
gradient is the mean over the same B samples (the shards are the single process's batches, sample
and augmentation alike), but each rank's BatchNorm normalises with the statistics of its own B/2
samples (and the running statistics are rank 0's), and sums are reduced in another order. So the
runs agree closely, not bitwise: the first epoch's training loss within 8% (relative; see LOSS_RTOL),
and both runs learn. Every rank evaluates for itself: the worker records each rank's evaluations.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from we.train import distributed
from we.train.config import ConfigError
from we.train.pipeline import build_data, shard_positions
from we.train.trainer import TIMING_KEYS
from tree_utils import assert_same_tree  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "ddp_worker.py"
RUN = ["dataset=digits", "model=resnet20", "workers=0", "progress=plain", "method=we", "limit_train=512",
       "batch_size=32", "epochs=3", "lr=0.05", "lr_milestones=[2]"]
# Each rank normalises its half batch with its own BN statistics (as plain data-parallel training
# does), so the two runs follow different trajectories from the first step. Measured over seeds
# 0-2 of this 3-epoch run: first-epoch train loss 1.7-5.6% apart, final top-1 up to 23 points
# apart. What sharding guarantees exactly (same samples, same augmentation) is tested on the data
# itself; here: first-epoch loss within 8%, and the DDP run learns (at least twice chance).
LOSS_RTOL = 0.08
MIN_TOP1 = 20.0
# The same run with a model without BatchNorm (tests/plain_models.py): there the mean of the two
# ranks' half-batch gradients is the single process's gradient, so the runs differ only in the order
# of float32 sums. Measured after the 48 steps: weights (|w| <= 0.27) apart by at most 8.3e-7, SGD
# momentum (the last gradients, |m| <= 0.5) by 3.6e-5, the losses of the rows by 1e-7 relative; the
# same top-1 and WE counts. Tolerances: ten times that drift; a top-1 within one test image of the 360.
PLAIN_RUN = [o for o in RUN if not o.startswith("model=")] + ["model=plain_models:plain_cnn"]
PLAIN_ATOL = 1e-5
PLAIN_MOMENTUM_ATOL = 4e-4
PLAIN_LOSS_RTOL = 1e-6
ONE_TEST_IMAGE = 100 / 360
TIMEOUT = 300


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "SLURM_NTASKS")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def launch(probe: Path, overrides: list[str], nproc: int = 2, crash_at: int | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """The trainer in `nproc` processes (torchrun, gloo) or, for 1, one plain process."""
    extra = [] if crash_at is None else ["--crash-at", str(crash_at)]
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(probe), *extra, *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(WORKER), str(probe), *extra, *overrides]
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_state(a: dict, b: dict) -> None:
    """Model tensors and optimizer state bitwise equal."""
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        for name, value in sa[key].items():
            assert torch.equal(value, sb[key][name]), (key, name)


def load_probe(probe: Path, rank: int) -> dict:
    return torch.load(probe / f"rank{rank}.pt", weights_only=True)


def assert_ranks_agree(probe: Path, history: list[dict]) -> list[dict]:
    """Both ranks end with the same weights, momentum and method state, and each computed the
    same evaluations itself; the trainer's rows hold those numbers. Returns rank 0's evaluations."""
    r0, r1 = load_probe(probe, 0), load_probe(probe, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    assert_same_state(r0, r1)
    # (a scheduler's `milestones` Counter comes back in another form after load_state_dict: compared by epoch)
    strip = lambda state: {k: v for k, v in state.items() if k != "schedulers"}
    assert_same_tree(strip(r0["method"]), strip(r1["method"]))
    assert ([s["last_epoch"] for s in r0["method"].get("schedulers", [])]
            == [s["last_epoch"] for s in r1["method"].get("schedulers", [])])
    assert r0["evaluations"] and r0["evaluations"] == r1["evaluations"]
    trainer_evals = r0["evaluations"][::len(r0["evaluations"]) // len(history)]  # the model's, first each epoch
    assert [{k: row[k] for k in e} for row, e in zip(history, trainer_evals)] == trainer_evals
    return r0["evaluations"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same WE run in one process and in two (DDP)."""
    root = tmp_path_factory.mktemp("ddp")
    launch(root / "probe1", RUN + [f"out={root / 'single'}"], nproc=1)
    ddp = launch(root / "probe2", RUN + [f"out={root / 'ddp'}"], nproc=2)
    return {"root": root, "single": root / "single", "ddp": root / "ddp", "probe1": root / "probe1",
            "probe2": root / "probe2", "ddp_stdout": ddp.stdout}


# ---- data shards (no processes) -----------------------------------------------------------------

@pytest.mark.parametrize("data_path", ["loader", "device"])
@pytest.mark.parametrize("n, batch, world", [(100, 32, 2), (99, 32, 2), (67, 30, 3)])
def test_shards_together_are_the_single_process_batches(data_path: str, n: int, batch: int, world: int):
    kwargs = dict(batch_size=batch, data_path=data_path, workers=0, seed=3, limit_train=n)
    single = build_data("digits", "data", **kwargs)
    shards = [build_data("digits", "data", rank=r, world_size=world, **kwargs) for r in range(world)]
    for it in [single.train, *(s.train for s in shards)]:
        it.set_epoch(2)
    assert all(len(s.train) == len(single.train) for s in shards)
    per_rank = [list(s.train) for s in shards]
    for b, (x, y) in enumerate(single.train):
        parts = [per_rank[r][b] for r in range(world)]
        assert all(len(p[1]) == len(parts[0][1]) for p in parts)  # equal shares (the last batch padded)
        xs = torch.stack([p[0] for p in parts], dim=1).flatten(0, 1)  # row j of rank r: position r + world * j
        ys = torch.stack([p[1] for p in parts], dim=1).flatten(0, 1)
        assert torch.equal(xs[:len(y)], x) and torch.equal(ys[:len(y)], y), b  # same samples, same augmentation
        assert len(ys) - len(y) == (-len(y)) % world


def test_shard_positions_are_disjoint_and_cover_the_epoch():
    for n, batch, world in [(10, 4, 2), (11, 4, 2), (13, 6, 3)]:
        shards = [shard_positions(n, batch, r, world, drop_last=False) for r in range(world)]
        assert set(torch.cat(shards).tolist()) == set(range(n)) and len(torch.cat(shards)) == n + (-n) % world
        assert len({len(s) for s in shards}) == 1
        kept = [shard_positions(n, batch, r, world, drop_last=True) for r in range(world)]
        assert sorted(torch.cat(kept).tolist()) == list(range(n // batch * batch))


class _WithIds(torch.utils.data.Dataset):
    """`base` with every label replaced by the sample's index: a batch's labels say which samples it holds."""

    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return self.base[index][0], index


def _train_ids(data) -> torch.Tensor:
    """The sample ids of one epoch (epoch 1) of `data.train`, batch after batch, labels made ids first."""
    if hasattr(data.train, "dataset"):  # loader path: the SeededTransform's source
        data.train.dataset.base = _WithIds(data.train.dataset.base)
    else:  # device path: the whole labels tensor
        data.train.y = torch.arange(len(data.train.y))
    data.train.set_epoch(1)
    return torch.cat([y for _, y in data.train])


@pytest.mark.parametrize("data_path", ["loader", "device"])
@pytest.mark.parametrize("n, batch, world", [(99, 32, 2), (67, 30, 3), (10, 6, 3), (64, 32, 2)])
def test_last_batch_is_padded_with_the_permutations_first_samples(data_path: str, n: int, batch: int, world: int):
    """docs/trainer.md: "The last batch of an epoch is padded with the permutation's first samples to a
    multiple of N", and every rank evaluates the whole test set (nothing padded, nothing left out)."""
    kwargs = dict(batch_size=batch, data_path=data_path, workers=0, seed=5, limit_train=n)
    single = build_data("digits", "data", **kwargs)
    shards = [build_data("digits", "data", rank=r, world_size=world, **kwargs) for r in range(world)]
    order = _train_ids(single)  # the single process's permutation of the n samples
    assert sorted(order.tolist()) == list(range(n))
    per_rank = [_train_ids(s) for s in shards]
    assert len({len(ids) for ids in per_rank}) == 1
    dealt = torch.stack(per_rank, dim=1).flatten().tolist()  # rank r's j-th sample: position r + world * j
    pad = (-n) % world
    assert dealt == order.tolist() + order[:pad].tolist()  # the padding: the permutation's first `pad` samples
    test_labels = torch.cat([y for _, y in single.test])
    assert len(test_labels) == single.num_test
    for shard in shards:
        assert shard.num_test == single.num_test and torch.equal(torch.cat([y for _, y in shard.test]), test_labels)


def test_batch_not_divisible_by_world_is_refused():
    with pytest.raises(ValueError, match="multiple of world_size"):
        build_data("digits", "data", batch_size=33, workers=0, rank=0, world_size=2)


# ---- launch environment (no processes) ------------------------------------------------------------

@pytest.mark.parametrize("submitit_job", [True, False])
def test_slurm_variables_become_torchrun_variables(monkeypatch, submitit_job: bool):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "SLURM_ARRAY_JOB_ID", "SUBMITIT_EXECUTOR", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.setenv(key, "")  # recorded, so what launch_env() exports is removed after the test
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NODEID", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    if submitit_job:
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert distributed.launch_env() == (1, 2, 1)
    assert os.environ["MASTER_ADDR"] == "gpu07" and 20000 <= int(os.environ["MASTER_PORT"]) <= 60000
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the rank picks cuda:LOCAL_RANK itself
    port = os.environ["MASTER_PORT"]
    for key in ("RANK", "MASTER_PORT"):  # the other task
        os.environ.pop(key)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    assert distributed.launch_env() == (0, 2, 0)
    assert os.environ["MASTER_PORT"] == port  # every task derives the same port from the job id


def test_launch_environment_does_not_leak_between_tests():
    assert "WORLD_SIZE" not in os.environ and "MASTER_ADDR" not in os.environ


def test_single_process_environment_is_untouched(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    env, device, created = distributed.setup(torch.device("cpu"))
    assert env is distributed.SINGLE and not env.enabled and env.is_main and not created
    assert device == torch.device("cpu")
    assert distributed.resolve_backend("auto", torch.device("cpu")) == "gloo"
    with pytest.raises(ConfigError, match="'dist_backend'"):
        distributed.resolve_backend("nccl", torch.device("cpu"))


# ---- two processes ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_ddp_we_run_ranks_agree_and_match_single_process(runs):
    r0, r1 = load_probe(runs["probe2"], 0), load_probe(runs["probe2"], 1)
    # every rank ends with the same weights, buffers, momentum and WE state, and evaluated the same
    assert len(assert_ranks_agree(runs["probe2"], rows(runs["ddp"]))) == 3
    assert r0["result"] == r1["result"]  # rank 0's result everywhere
    result = json.loads((runs["ddp"] / "result.json").read_text())
    assert result["status"] == "complete" and result["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert sorted(p.name for p in runs["ddp"].iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.csv",
                                                              "metrics.jsonl", "result.json"]
    assert runs["ddp_stdout"].count("epoch 1/3") == 1  # rank 0 alone reports
    ddp, single = rows(runs["ddp"]), rows(runs["single"])
    assert [r["epoch"] for r in ddp] == [1, 2, 3] and "we_bn_bias" in ddp[0] and "we_rate" in ddp[1]
    assert ddp[0]["train_loss"] == pytest.approx(single[0]["train_loss"], rel=LOSS_RTOL)
    assert ddp[-1]["test_top1"] >= MIN_TOP1 and single[-1]["test_top1"] >= MIN_TOP1
    assert result["final_top1"] == ddp[-1]["test_top1"]
    ckpt = torch.load(runs["ddp"] / "last.pt", weights_only=True)
    assert_same_state({"model": ckpt["model"], "optimizer": ckpt["optimizer"]}, r0)  # rank 0 wrote it


@pytest.mark.slow
def test_ddp_without_batchnorm_is_the_single_process_run(tmp_path: Path):
    """Apart from BatchNorm's per-rank statistics, a DDP run is the single-process run: same samples,
    mean gradient, evolution steps, evaluation (docs/trainer.md, "Batch and learning rate", "Data")."""
    launch(tmp_path / "probe1", PLAIN_RUN + [f"out={tmp_path / 'single'}"], nproc=1)
    launch(tmp_path / "probe2", PLAIN_RUN + [f"out={tmp_path / 'ddp'}"], nproc=2)
    single, ddp = rows(tmp_path / "single"), rows(tmp_path / "ddp")
    assert [r["epoch"] for r in ddp] == [r["epoch"] for r in single] == [1, 2, 3]
    assert single[-1]["test_top1"] > 50  # it learns (chance: 10%), so agreeing is not agreeing on noise
    for a, b in zip(single, ddp):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=PLAIN_LOSS_RTOL), b["epoch"]
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=PLAIN_LOSS_RTOL), b["epoch"]
        assert abs(b["test_top1"] - a["test_top1"]) <= ONE_TEST_IMAGE, b["epoch"]
        assert {k: v for k, v in b.items() if k.startswith("we_")} == {k: v for k, v in a.items() if k.startswith("we_")}
    one, two = load_probe(tmp_path / "probe1", 0), load_probe(tmp_path / "probe2", 0)
    assert one["model"].keys() == two["model"].keys()
    for name, tensor in one["model"].items():
        assert torch.allclose(two["model"][name], tensor, rtol=0, atol=PLAIN_ATOL), name
    for key, state in one["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.allclose(two["optimizer"]["state"][key][name], value, rtol=0, atol=PLAIN_MOMENTUM_ATOL), (key, name)
    assert two["method"]["steps"] == one["method"]["steps"] and two["method"]["evolved"] == one["method"]["evolved"]


@pytest.mark.slow
def test_ddp_resume_after_interruption_is_bitwise(runs):
    out, probe = runs["root"] / "cut", runs["root"] / "probe_cut"
    first = launch(probe, RUN + [f"out={out}"], crash_at=1, check=False)
    assert first.returncode != 0
    failed = json.loads((out / "result.json").read_text())
    assert failed["status"] == "failed" and "interrupted at the end of epoch 2" in failed["error"]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    shutil.copytree(out, runs["root"] / "cut_one_process")
    second = launch(probe, RUN + [f"out={out}"])
    assert second.stdout.count("resuming after epoch 1 of 3") == 1
    assert json.loads((out / "result.json").read_text())["status"] == "complete"
    for rank in (0, 1):
        assert_same_state(load_probe(probe, rank), load_probe(runs["probe2"], rank))
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                       for r in h]
    assert strip(rows(out)) == strip(rows(runs["ddp"]))


@pytest.mark.slow
def test_ddp_repr_prune_and_reinit_stay_in_sync(tmp_path: Path):
    overrides = ["dataset=digits", "model=resnet20", "workers=0", "progress=plain", "method=repr",
                 "limit_train=256", "batch_size=64", "epochs=3", "repr_s1=1", "repr_s2=1", f"out={tmp_path / 'run'}"]
    launch(tmp_path / "probe", overrides)
    r0, r1 = load_probe(tmp_path / "probe", 0), load_probe(tmp_path / "probe", 1)
    assert_same_state(r0, r1)
    history = rows(tmp_path / "run")
    assert history[0]["repr_pruned"] > 0 and history[1]["repr_reinit"] == history[0]["repr_pruned"]
    assert all(torch.isfinite(t).all() for t in r0["model"].values() if t.is_floating_point())


@pytest.mark.slow
def test_ddp_resume_with_another_number_of_processes(runs):
    """The two-process run cut after epoch 1 (test above) resumes in one process."""
    out = runs["root"] / "cut_one_process"
    cut_rows = rows(out)
    resumed = launch(runs["root"] / "probe_one", RUN + [f"out={out}"], nproc=1)
    assert resumed.stdout.count("resuming after epoch 1 of 3") == 1
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "complete" and "distributed" not in result
    history = rows(out)
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[0] == cut_rows[0]  # epoch 1 kept as it ran
    # epoch 2 continued the two-process weights and momentum: its loss is near that run's epoch 2
    # (a restart from scratch would repeat epoch 1's much higher loss)
    assert history[1]["train_loss"] == pytest.approx(rows(runs["ddp"])[1]["train_loss"], rel=LOSS_RTOL)
    assert history[1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert result["final_top1"] >= MIN_TOP1


SMALL = ["dataset=digits", "model=resnet20", "workers=0", "progress=plain", "limit_train=256", "batch_size=64",
         "epochs=2", "lr=0.05"]


@pytest.mark.slow
def test_ddp_we_every_n_iterations_keeps_ranks_identical(tmp_path: Path):
    # 256 / 64 = 4 steps per epoch, interval 2: evolution after iterations 2, 4, 6 and 8
    launch(tmp_path / "probe", SMALL + ["method=we", "we_interval_unit=iter", "we_interval=2",
                                        f"out={tmp_path / 'run'}"])
    history = rows(tmp_path / "run")
    assert_ranks_agree(tmp_path / "probe", history)
    assert load_probe(tmp_path / "probe", 1)["method"]["steps"] == 4
    assert all(sum(r[f"we_{k}"] for k in ("conv_weight", "conv_bias", "bn_weight", "bn_bias")) > 0 for r in history)


@pytest.mark.slow
def test_ddp_fg_trains_every_network_on_every_rank(tmp_path: Path):
    launch(tmp_path / "probe", SMALL + ["method=fg", "fg_n=2", f"out={tmp_path / 'run'}"])
    history = rows(tmp_path / "run")
    evaluations = assert_ranks_agree(tmp_path / "probe", history)  # network 1's evaluations included
    assert len(evaluations) == 4  # per epoch: network 0 (trainer), then network 1 (FG's hook)
    assert [r["fg_net1_top1"] for r in history] == [e["test_top1"] for e in evaluations[1::2]]
    assert "fg_net0_coef" in history[0] and "fg_net0_coef" not in history[1]  # grafted after epoch 1, not after the last

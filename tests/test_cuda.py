"""The CUDA-only branches: device-resident data, amp + channels_last, compile, the WE step without host
synchronisation, DDP with nccl, a packed task of 2 cells. Every test is marked `cuda` and skipped
without a GPU; `slurm/gpu-check.sh` runs them (`python -m pytest -m cuda tests/test_cuda.py`).

The checks themselves take the device as an argument (`check_*`), so that their non-CUDA parts can be
exercised on the CPU; the tests call them on `cuda`.
"""
from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats

import models
from we.core.hook import WeightEvolution
from we.grid.identity import parse_sets, resolve_cells
from we.grid.schema import load_grid
from we.grid.state import write_cell
from we.train import main
from we.train.config import load_config
from we.train.pipeline import _apply_augment, augment_batch, build_data

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() "
                                                   "is False); slurm/gpu-check.sh runs these on one")]
# Digits, as in tests/test_distributed.py: 3 epochs learn to well above chance (10%).
RUN = ["dataset=digits", "model=resnet20", "workers=0", "progress=plain", "limit_train=512", "batch_size=32",
       "epochs=3", "lr=0.05", "lr_milestones=[2]"]
MIN_TOP1 = 20.0


# ---- the checks (device given) -------------------------------------------------------------------

def check_augmentation(device: torch.device, n: int = 8192) -> None:
    """The device path's crop + flip on `device`: the same images as the CPU ops given the same draws,
    crop offsets uniform on 0..8 and flips with p = 0.5 (chi-square / binomial, as on the CPU)."""
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator(device=device).manual_seed(1)
    out, offsets, flips = augment_batch(x.to(device), g)
    assert out.device.type == device.type and out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out.cpu(), _apply_augment(x, offsets.cpu(), flips.cpu()))
    counts = torch.bincount(offsets.flatten().cpu(), minlength=9)
    assert len(counts) == 9 and stats.chisquare(counts.numpy()).pvalue > 1e-4
    assert abs(flips.float().mean().item() - 0.5) < 5 * math.sqrt(0.25 / n)


def check_device_data(device: torch.device) -> None:
    """The device-resident iterables on `device`: uint8 NCHW there; the un-augmented test batches equal
    the CPU's; an epoch's order and augmentation repeat for the same (seed, epoch)."""
    kw = dict(batch_size=64, data_path="device", workers=0, seed=3)
    here, cpu = build_data("digits", "data", device=device, **kw), build_data("digits", "data", device="cpu", **kw)
    assert here.train.x.device.type == device.type and here.train.x.dtype == torch.uint8
    assert here.train.x.shape == (1437, 3, 32, 32)
    for (xa, ya), (xb, yb) in zip(here.test, cpu.test, strict=True):
        assert torch.equal(ya.cpu(), yb) and torch.allclose(xa.cpu(), xb, atol=1e-6)
    here.train.set_epoch(2)
    first = [(x.clone(), y.clone()) for x, y in here.train]
    second = list(here.train)
    assert len(first) == len(here.train) == 23
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    assert all(x.device.type == device.type and x.dtype == torch.float32 for x, _ in first)


def check_training(device: torch.device, tmp: Path, *extra: str) -> dict:
    """A 3-epoch WE run on `device` with `extra` switches; it completes and learns."""
    result = main(load_config(None, RUN + ["method=we", f"device={device}", f"out={tmp}", *extra]))
    assert result["status"] == "complete" and result["epochs_done"] == 3
    assert result["data_path"] == ("device" if device.type == "cuda" else "loader")
    assert result["final_top1"] > MIN_TOP1
    return result


def _no_ties(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm weights and biases off their constant init, so that importance has no ties (the order of
    equal values may differ between devices)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def check_we_step(device: torch.device, variant: str, epoch: int = 0) -> None:
    """The WE step on `device` (sync=False, as the trainer calls it) equals the CPU's step: the same
    counts and weights. On CUDA it runs under torch.cuda.set_sync_debug_mode("error"): any host
    synchronisation inside it (an .item(), a nonzero, a device-to-host copy) raises."""
    torch.manual_seed(0)
    cpu_model = _no_ties(models.create("resnet20", num_classes=10))
    dev_model = copy.deepcopy(cpu_model).to(device)
    warm = WeightEvolution(copy.deepcopy(dev_model), variant)  # first-call work (kernels, workspaces) outside
    warm.evolve_now(epoch, sync=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    evolution = WeightEvolution(dev_model, variant)
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        counts = evolution.evolve_now(epoch, sync=False)
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    expected = WeightEvolution(cpu_model, variant).evolve_now(epoch)
    assert {k: int(v) for k, v in counts.items()} == expected and sum(expected.values()) > 0
    for (name, a), (_, b) in zip(cpu_model.state_dict().items(), dev_model.state_dict().items(), strict=True):
        assert torch.allclose(a, b.cpu(), rtol=1e-5, atol=1e-6), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_process_group_of_one(device: torch.device, backend: str) -> None:
    """A process group of one (`backend` on `device`): DDP's gradients and an all-reduce equal the plain
    model's. (The trainer itself runs DDP only with 2 or more processes.)"""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = models.create("resnet20", num_classes=10).to(device)
        wrapped = DDP(copy.deepcopy(plain), device_ids=[device.index or 0] if device.type == "cuda" else None)
        x = torch.randn(16, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (16,), device=device)
        for net in (plain, wrapped):
            torch.nn.functional.cross_entropy(net(x), y).backward()
        for (name, p), q in zip(plain.named_parameters(), wrapped.module.parameters(), strict=True):
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6), name
        t = torch.arange(4.0, device=device)
        dist.all_reduce(t)
        assert torch.equal(t.cpu(), torch.arange(4.0))
    finally:
        dist.destroy_process_group()


def check_packed_task(device: torch.device, runs_root: Path, monkeypatch) -> list[dict]:
    """Two demo cells (1 epoch, 256 images) in one PackTask, run here as a local job: both processes
    train at once on `device` and complete."""
    from we.grid.slurm import PackTask  # submitit: only this check needs it

    cells = resolve_cells(load_grid("demo"), runs_root, parse_sets(["epochs=1", "limit_train=256"]),
                          {"device": str(device), "workers": 0})[:2]
    for cell in cells:
        write_cell(cell)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "packtest")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    codes = PackTask([str(c.run_dir) for c in cells])()
    assert list(codes.values()) == [0, 0]
    results = [json.loads((c.run_dir / "result.json").read_text()) for c in cells]
    for r in results:
        assert r["status"] == "complete" and r["provenance"]["hardware"]["device"].startswith(device.type)
    for c in cells:
        assert (c.run_dir / "logs" / "slurm-packtest.cell.log").is_file()
    return results


# ---- the tests (on CUDA) ----------------------------------------------------------------------------

CUDA0 = torch.device("cuda", 0)


def test_device_path_augmentation_on_cuda():
    check_augmentation(CUDA0)


def test_device_resident_data_on_cuda():
    check_device_data(CUDA0)


def test_amp_and_channels_last_on_cuda(tmp_path):
    result = check_training(CUDA0, tmp_path, "amp=true", "channels_last=true", "cudnn_benchmark=true")
    assert result["speed"] == {"amp": True, "channels_last": True, "compile": False, "cudnn_benchmark": True}
    assert result["provenance"]["hardware"]["gpu"]


def test_compile_on_cuda(tmp_path):
    result = check_training(CUDA0, tmp_path, "compile=true", "amp=true", "channels_last=true")
    assert result["speed"]["compile"] is True


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_we_step_on_cuda_without_host_sync_equals_cpu(variant):
    check_we_step(CUDA0, variant)


def test_nccl_process_group_of_one_gpu():
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no nccl")
    check_process_group_of_one(CUDA0, "nccl")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the trainer's DDP needs 2 processes, and nccl refuses "
                    "two ranks on one GPU (world size 1 runs no DDP): needs 2 GPUs")
def test_ddp_trainer_with_nccl_on_two_gpus(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "ddp_worker.py"), str(tmp_path / "probe"),
           *RUN, "method=we", "device=cuda", "dist_backend=nccl", f"out={tmp_path / 'run'}"]
    out = subprocess.run(cmd, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["distributed"] == {"world_size": 2, "backend": "nccl"} and result["final_top1"] > MIN_TOP1


def test_packed_task_of_two_cells_on_cuda(tmp_path, monkeypatch):
    results = check_packed_task(CUDA0, tmp_path, monkeypatch)
    assert all(r["data_path"] == "device" for r in results)

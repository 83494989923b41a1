"""Provenance of a run: git commit, library versions, hardware and SLURM ids, for result.json."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from we.files import IN_CHECKOUT, REPO_ROOT


def package_version() -> str | None:
    """The installed we-repro distribution's version (None when it runs from a checkout only)."""
    try:
        return importlib.metadata.version("we-repro")
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """git in the checkout; None from an installed package (never another repository around it)."""
    if not IN_CHECKOUT:
        return None
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(device: torch.device) -> dict[str, Any]:
    """Git commit (in a checkout), package version, library versions and hardware of this process,
    for result.json."""
    versions = {"python": sys.version.split()[0], "torch": str(torch.__version__), "numpy": np.__version__,
                "we-repro": package_version()}
    for name in ("torchvision", "timm", "submitit", "pandas"):
        try:
            versions[name] = str(__import__(name).__version__)  # plain str (torch's is a TorchVersion)
        except ImportError:
            pass
    status = _git("status", "--porcelain", "--untracked-files=no")
    hardware = {"host": socket.gethostname(), "platform": platform.platform(), "cpu": platform.processor()
                or platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "device": str(device)}
    if device.type == "cuda":
        hardware["gpu"] = torch.cuda.get_device_name(device)
        hardware["gpu_count"] = torch.cuda.device_count()
        hardware["cuda"] = torch.version.cuda
    slurm = {k: v for k, v in os.environ.items() if k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID",
                                                            "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")}
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None,
            "versions": versions, "hardware": hardware, "slurm": slurm,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}

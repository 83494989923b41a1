"""`import we` (the core API: WeightEvolution, evolve, selection_rate) needs torch alone: with every other
package of the suite made unimportable, a fresh interpreter imports the core and runs both WE steps."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE_ONLY = ("torchvision", "timm", "pandas", "matplotlib", "submitit", "yaml", "sklearn", "scipy", "tqdm",
              "filelock", "tensorboard", "wandb", "lightning", "pytorch_lightning", "PIL", "models")

PROGRAM = textwrap.dedent(f"""
    import importlib.abc, sys

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {SUITE_ONLY!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not a core dependency)")
            return None

    sys.meta_path.insert(0, NotInstalled())
    import torch
    from torch import nn
    from we import WeightEvolution, evolve, selection_rate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16))
    with torch.no_grad():
        net[0].weight.mul_(torch.logspace(-3, 0, 16).view(-1, 1, 1, 1))
        net[1].weight.copy_(torch.logspace(-3, 0, 16))
    paper = evolve(net, 0.5)
    official = WeightEvolution(net, variant="official", radio_conv=0.5).step(5)
    blocked = sorted(m for m in sys.modules if m.split(".")[0] in {SUITE_ONLY!r})
    print(sum(paper.values()), sum(official.values()), selection_rate(30), blocked)
""")


def test_the_core_imports_and_steps_with_torch_alone():
    proc = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    paper, official, rate, blocked = proc.stdout.split(maxsplit=3)
    assert int(paper) > 0 and int(official) > 0 and 0 < float(rate) < 0.05
    assert blocked.strip() == "[]"

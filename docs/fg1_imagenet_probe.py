"""FG-1 on ImageNet's ResNet-34: how many conv filters fall below the l1 threshold during training,
and how many FG-1's internal grafting touches (docs/fidelity.md, row "FG-1 threshold on ImageNet").

A short CPU probe, not an ImageNet run: the zoo's ResNet-34 (torchvision, 10 classes) trained with
the paper's ImageNet optimiser settings (SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch
--batch) on Fashion-MNIST (the suite's 32x32 three-channel form), upsampled to --size pixels. Every --every
iterations (a pseudo-epoch) it counts the filters whose l1 norm is below --threshold, then applies
`we.methods.fg.internal_graft` (what method fg with fg_n 1 does at an epoch end) and counts what it
grafted. Run from the repository root:

    python docs/fg1_imagenet_probe.py --iters 300 --every 50
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

import models
from we.methods.fg import internal_graft
from we.train.fashion_mnist import load_fashion_mnist_uint8


def filter_l1(model: nn.Module) -> torch.Tensor:
    """The l1 norm of every Conv2d filter, in module order."""
    return torch.cat([m.weight.detach().abs().flatten(1).sum(1) for m in model.modules()
                      if isinstance(m, nn.Conv2d)])


def snapshot(model: nn.Module, threshold: float) -> dict:
    l1 = filter_l1(model)
    return {"filters": l1.numel(), "below": int((l1 < threshold).sum()), "min_l1": round(float(l1.min()), 4),
            "p01_l1": round(float(l1.quantile(0.01)), 4), "median_l1": round(float(l1.median()), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.1)
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    images, labels = load_fashion_mnist_uint8(True, args.data_dir, download=False)
    x_all = torch.as_tensor(images[: args.iters * args.batch]).permute(0, 3, 1, 2).float().div(255.0)
    y_all = torch.as_tensor(labels[: args.iters * args.batch]).long()
    model = models.create("resnet34", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    rows = [{"iteration": 0, **snapshot(model, args.threshold), "grafted": 0}]
    print(json.dumps(rows[-1]), flush=True)
    t0 = time.perf_counter()
    for it in range(1, args.iters + 1):
        i = (it - 1) * args.batch
        x = x_all[i:i + args.batch]
        x = F.interpolate(x, size=args.size, mode="bilinear", align_corners=False)
        x = (x - 0.2860) / 0.3530
        loss = F.cross_entropy(model(x), y_all[i:i + args.batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % args.every == 0:
            before = snapshot(model, args.threshold)
            grafted = internal_graft(model, args.threshold)
            rows.append({"iteration": it, **before, "grafted": grafted, "loss": round(loss.item(), 4),
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"threshold": args.threshold, "iters": args.iters, "batch": args.batch, "size": args.size,
                      "below_max": max(r["below"] for r in rows), "grafted_total": sum(r["grafted"] for r in rows)}))


if __name__ == "__main__":
    main()

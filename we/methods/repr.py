"""RePr (Prakash et al., CVPR 2019) as a trainer plug-in (method=repr).

Training runs in cycles of `repr_s1` epochs of the full network followed by `repr_s2` epochs with a
fraction `repr_p` of the filters pruned. Filters are ranked globally, over all ordinary (ungrouped)
Conv2d layers but the first, by inter-filter orthogonality: with W the layer's l2-normalised
flattened filters, filter f scores sum_j |W W^T - I|[f, j] / J (J filters in the layer); the least
orthogonal (highest) scores are pruned, at least one filter kept per layer. A pruned filter, its
bias and the BatchNorm that directly consumes its output (weight and bias) are held at exactly zero
through the pruned phase, together with their momentum buffers (masks are applied after every
optimizer step, since momentum and weight decay would move them otherwise). At its end the pruned
filters are re-initialised orthogonal to the layer's kept filters and to their own values from
before the prune (stored at prune time): random directions projected on the orthogonal complement
of the span of both, found by QR, then orthonormalised; they take the kept filters' mean norm.
Their BN weight becomes 1, bias 0, running mean 0 and running variance 1.

The ranking is the paper's: global over the ranked layers, the only normalisation across layers
being the 1/J of the score (a per-layer mean). On random filters that score is about
sqrt(2 / (pi d)) (J - 1) / J for fan-in d, so layers of small fan-in score higher and lose more
filters (ResNet-20: most of the 16-filter layers, few of the 64-filter ones), as reimplementers
of RePr report too (siahuat0727/RePr issues 4 and 7).

A pruned phase starts only if, after it, `repr_s1` epochs of full training still fit, so a run
always ends with the re-initialised network fully trained. With 200 epochs and the defaults (20, 10):
pruned epochs 21-30, 51-60, ..., 171-180 (1-based), then 20 full epochs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from we.errors import ConfigError
from we.methods.base import ConfigKey, Method, Preset, TrainContext


@dataclass
class PrunableLayer:
    """A ranked conv layer and the BatchNorm that normalises its output directly (if any)."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None


def find_prunable_layers(model: nn.Module, image_size: int) -> list[PrunableLayer]:
    """Ungrouped Conv2d layers in call order, the first one excluded, each with its directly following BN.

    One forward pass on a zero image (eval mode, no gradients, so no state changes) records which
    conv produced the tensor that each BatchNorm receives.
    """
    convs = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        return []
    order: list[str] = []
    produced: dict[int, tuple[str, Tensor]] = {}
    follows: dict[str, str] = {}
    bns = dict(model.named_modules())

    def conv_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        order.append(convs[module])
        produced[id(output)] = (convs[module], output)

    def bn_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            hit = produced.get(id(inputs[0]))
            if hit is not None and hit[1] is inputs[0]:
                follows.setdefault(hit[0], name)
        return hook

    handles = [m.register_forward_hook(conv_hook) for m in convs]
    handles += [m.register_forward_pre_hook(bn_hook(n)) for n, m in bns.items() if isinstance(m, nn.BatchNorm2d)]
    first = next(iter(convs))
    param = next(model.parameters())
    example = torch.zeros(1, first.in_channels, image_size, image_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    seen: list[str] = list(dict.fromkeys(order))
    layers = []
    for name in seen[1:]:
        conv = modules[name]
        if conv.groups != 1:
            continue
        bn = modules[follows[name]] if name in follows else None
        layers.append(PrunableLayer(name, conv, bn))
    return layers


@torch.no_grad()
def orthogonality_scores(weight: Tensor) -> Tensor:
    """Per filter: sum_j |W W^T - I|[f, j] / J on l2-normalised flattened filters (higher: more redundant)."""
    w = F.normalize(weight.detach().flatten(1).double(), dim=1)
    gram = w @ w.T - torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    return gram.abs().sum(dim=1) / w.shape[0]


@torch.no_grad()
def rank_filters(layers: list[PrunableLayer], fraction: float) -> dict[str, list[int]]:
    """The globally least orthogonal `fraction` of all filters, per layer (sorted indices), one kept per layer."""
    scores = [orthogonality_scores(layer.conv.weight).cpu() for layer in layers]
    flat = torch.cat(scores)
    n_prune = int(fraction * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, descending=True, stable=True)[:n_prune]] = True
    out: dict[str, list[int]] = {}
    start = 0
    for layer, s in zip(layers, scores):
        sel = chosen[start:start + s.numel()].clone()
        if bool(sel.all()):
            sel[int(torch.argmin(s))] = False  # never prune a whole layer
        idx = sel.nonzero().flatten().tolist()
        if idx:
            out[layer.name] = idx
        start += s.numel()
    return out


def _orthonormal_complement(span: Tensor, g: Tensor) -> Tensor:
    """The columns of `g` (d, m) projected off the orthonormal columns `span` (d, r), then orthonormalised."""
    proj = g - span @ (span.T @ g)
    q, _ = torch.linalg.qr(proj)
    return q - span @ (span.T @ q)  # once more against rounding


@torch.no_grad()
def orthogonal_filters(kept: Tensor, count: int, generator: torch.Generator, dropped: Tensor | None = None) -> Tensor:
    """`count` unit rows orthogonal to each other, to the rows of `kept` (k, d) and to the rows of `dropped`
    (the pruned filters' values from before the prune, (p, d)), as far as d allows (float64).

    Random Gaussian directions are projected on the orthogonal complement of span(kept, dropped), an
    orthonormal basis of which QR gives, and orthonormalised. When that complement has fewer than
    `count` dimensions, the rows beyond it are orthogonal to the kept filters (and the rows before)
    only, and beyond that random unit directions.
    """
    kept = kept.double().cpu()
    d = kept.shape[1]
    dropped = torch.zeros(0, d, dtype=torch.float64) if dropped is None else dropped.double().cpu().reshape(-1, d)
    g = torch.randn(d, count, generator=generator, dtype=torch.float64)
    kept_basis, _ = torch.linalg.qr(kept.T)  # (d, min(k, d)): span of the kept filters
    stages = [torch.linalg.qr(torch.cat([kept, dropped]).T)[0]]  # first: orthogonal to kept and dropped
    rows: list[Tensor] = []
    done = 0
    for stage in range(2):
        span = stages[0] if stage == 0 else torch.cat([kept_basis, *(r.T for r in rows)], dim=1)
        n = min(count - done, d - span.shape[1])
        if n > 0:
            rows.append(_orthonormal_complement(span, g[:, done:done + n]).T)
            done += n
    if count > done:
        rows.append(g[:, done:].T)
    return F.normalize(torch.cat(rows), dim=1)


class RePrMethod(Method):
    """Cycles of full training and training with the least orthogonal filters pruned, then re-initialised."""

    array_reason = "its pruning masks act through module hooks and the optimizer's own state"

    name = "repr"
    version = 2  # 2: re-initialised filters also orthogonal to the pruned filters' pre-prune values
    keys = {
        "repr_s1": ConfigKey(int, 20, "epochs of full training per cycle", minimum=0, strict=True),
        "repr_s2": ConfigKey(int, 10, "epochs with the pruned filters held at zero per cycle", minimum=0, strict=True),
        "repr_p": ConfigKey(float, 0.3, "fraction of the ranked filters pruned, in (0, 1)"),
        "repr_cycles": ConfigKey(int, 0, "at most this many prune/re-init cycles (0: as many as fit)", minimum=0),
    }
    presets = {"repr": Preset(paper="RePr")}
    bench_overrides = {"repr_s1": 1, "repr_s2": 1}
    sources = "Prakash et al., RePr: Improved Training of Convolutional Filters, CVPR 2019 (its authors released no code)"

    @classmethod
    def check(cls, cfg: Any) -> None:
        if not 0 < cfg.repr_p < 1:
            raise ConfigError(f"config key 'repr_p': must be in (0, 1), got {cfg.repr_p!r}")

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.layers: dict[str, PrunableLayer] = {}
        self.pruned: dict[str, list[int]] = {}  # layer name -> pruned filter indices (empty: full network)
        self.dropped: dict[str, Tensor] = {}  # layer name -> pruned filters' flattened weights before the prune
        self.cycles_done = 0
        self._masks: list[tuple[Tensor, Tensor]] = []  # (parameter, keep mask of its shape)

    # ---- schedule ------------------------------------------------------------------------------
    def starts_pruning(self, epochs_done: int) -> bool:
        """Whether the pruned phase begins after `epochs_done` epochs."""
        s1, s2, total = self.cfg.repr_s1, self.cfg.repr_s2, self.cfg.epochs
        if self.cfg.repr_cycles and self.cycles_done >= self.cfg.repr_cycles:
            return False
        return epochs_done % (s1 + s2) == s1 and epochs_done + s2 + s1 <= total

    def ends_pruning(self, epochs_done: int) -> bool:
        """Whether the pruned phase ends (and filters are re-initialised) after `epochs_done` epochs."""
        return bool(self.pruned) and epochs_done % (self.cfg.repr_s1 + self.cfg.repr_s2) == 0

    # ---- hooks ---------------------------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        self.layers = {layer.name: layer for layer in find_prunable_layers(ctx.model, self.cfg.image_size)}
        unknown = set(self.pruned) - set(self.layers)
        if unknown:
            raise RuntimeError(f"RePr state names layers this model lacks: {sorted(unknown)}")
        self._build_masks()

    def after_optimizer_step(self, ctx: TrainContext, iteration: int, epoch: int) -> dict[str, float] | None:
        if self._masks:
            self.apply_masks(ctx.optimizer)
        return None

    def on_epoch_end(self, ctx: TrainContext, epoch: int, last: bool) -> dict[str, float]:
        if last:
            return {}
        done = epoch + 1
        if self.ends_pruning(done):
            n = self.reinitialise(seed=self.cfg.seed * 1_000_003 + done)
            return {"repr_reinit": float(n)}
        if not self.pruned and self.starts_pruning(done):
            n = self.prune(ctx.optimizer)
            return {"repr_pruned": float(n)}
        return {}

    # ---- actions -------------------------------------------------------------------------------
    def prune(self, optimizer: torch.optim.Optimizer) -> int:
        """Rank, choose the filters to prune, and zero them (with their BN and momentum); returns how many."""
        self.pruned = rank_filters(list(self.layers.values()), self.cfg.repr_p)
        self.dropped = {name: self.layers[name].conv.weight.detach()[idx].flatten(1).cpu().clone()
                        for name, idx in self.pruned.items()}
        self._build_masks()
        self.apply_masks(optimizer)
        return sum(len(v) for v in self.pruned.values())

    @torch.no_grad()
    def apply_masks(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the pruned entries of every masked parameter and of its momentum buffer."""
        params = [p for p, _ in self._masks]
        masks = [m for _, m in self._masks]
        torch._foreach_mul_(params, masks)
        bufs, buf_masks = [], []
        for p, m in self._masks:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                bufs.append(buf)
                buf_masks.append(m)
        if bufs:
            torch._foreach_mul_(bufs, buf_masks)

    @torch.no_grad()
    def reinitialise(self, seed: int) -> int:
        """Give pruned filters directions orthogonal to their layer's kept filters and to their own values
        from before the prune; returns how many."""
        generator = torch.Generator().manual_seed(seed)
        n = 0
        for name, idx in self.pruned.items():
            layer = self.layers[name]
            w = layer.conv.weight
            flat = w.reshape(w.shape[0], -1)
            index = torch.tensor(idx, device=w.device)
            keep = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
            keep[index] = False
            kept = flat[keep]
            norm = kept.norm(dim=1).mean()
            new = orthogonal_filters(kept, len(idx), generator, self.dropped.get(name))
            new = new.to(device=w.device, dtype=w.dtype) * norm
            w[index] = new.reshape(len(idx), *w.shape[1:])
            if layer.conv.bias is not None:
                layer.conv.bias[index] = 0
            if layer.bn is not None:
                if layer.bn.weight is not None:
                    layer.bn.weight[index] = 1
                    layer.bn.bias[index] = 0
                if layer.bn.running_mean is not None:
                    layer.bn.running_mean[index] = 0
                    layer.bn.running_var[index] = 1
            n += len(idx)
        self.pruned = {}
        self.dropped = {}
        self._masks = []
        self.cycles_done += 1
        return n

    def _build_masks(self) -> None:
        self._masks = []
        for name, idx in self.pruned.items():
            layer = self.layers[name]
            tensors = [layer.conv.weight, layer.conv.bias]
            if layer.bn is not None:
                tensors += [layer.bn.weight, layer.bn.bias]
            for t in tensors:
                if t is None:
                    continue
                keep = torch.ones_like(t)
                keep[torch.tensor(idx, device=t.device)] = 0
                self._masks.append((t, keep))

    # ---- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"pruned": {k: list(v) for k, v in self.pruned.items()}, "cycles_done": self.cycles_done,
                "dropped": {k: v.clone() for k, v in self.dropped.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruned = {k: list(v) for k, v in state.get("pruned", {}).items()}
        self.dropped = {k: v.detach().cpu().clone() for k, v in state.get("dropped", {}).items()}
        if set(self.dropped) != set(self.pruned):
            raise ValueError("RePr state: the stored pre-prune filters do not match the pruned layers")
        self.cycles_done = int(state.get("cycles_done", 0))
        if self.layers:
            self._build_masks()

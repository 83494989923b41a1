"""Filter grafting (Meng et al., CVPR 2020) as a trainer plug-in (method=fg).

FG-n (n >= 2) trains n networks side by side, each on its own data order and augmentation (as the
authors' n processes, each with its own unseeded loader). At every epoch end (except the last)
network j receives from its predecessor j-1 in a ring (network 0 from network n-1), layer by layer,
all reading the pre-exchange weights:

    c = A/pi * arctan(k * (H_own - H_other)) + 1/2,    own <- c * own + (1 - c) * other,

where H is the entropy of a `bins`-bin histogram of the layer's weights. Network 0 is the trainer's
model, trained on the trainer's batches with the trainer's optimizer and scheduler; networks
1..n-1 live here, each with its own optimizer, scheduler and train iterable (the trainer's
`build_train_data` with a seed derived from the run seed and the network index, so its order and
augmentation depend only on (seed, index, epoch)), stepped in lock-step with the trainer's batches
in `after_batch`.

FG-1 is grafting within one network, the FG paper's internal-filter grafting (the authors' `inside`,
first release): after every epoch but the last, in every conv layer, the filters whose l1 norm is
below `threshold`, weakest first, each receive (+=) the filter of the same rank from the strong end
(the weakest gets the strongest, the second weakest the second strongest: reverse matching), until
the first filter at or above the threshold.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from we.errors import ConfigError
from we.keys import excerpt
from we.methods.base import ConfigKey, Method, Preset, TrainContext

StateDict = dict[str, torch.Tensor]


def default_learning_rates(lr: float, n: int) -> list[float]:
    """Initial learning rates of networks 0..n-1 by the authors' rule (their `--difflr`, on by default).

    Their network i = 1..n starts at lr * (1 + cos(pi (n - i) / n)) / 2 and receives from network i-1
    (network 1 from network n). Network j here is their network j for j >= 1 and their network n for
    j = 0, so the ring is the same and network 0 keeps the run's `lr`.
    """
    return [lr * (1.0 + math.cos(math.pi * ((n - j) % n) / n)) / 2.0 for j in range(n)] if n >= 1 else []


def network_seed(seed: int, index: int) -> int:
    """Initialisation seed of FG network `index` (>= 1) in the run with `seed`."""
    digest = hashlib.sha256(f"fg-network:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def data_seed(seed: int, index: int) -> int:
    """Data-order and augmentation seed of FG network `index` (>= 1) in the run with `seed`."""
    digest = hashlib.sha256(f"fg-data:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@torch.no_grad()
def internal_graft(model: nn.Module, threshold: float) -> int:
    """FG's internal-filter grafting, in place: in each Conv2d, filters ordered by l1 norm (ascending);
    the j-th weakest, while its l1 norm is below `threshold`, gets the j-th strongest added (the
    authors' `inside`, sequential as theirs). Returns the number of filters grafted."""
    grafted = 0
    for module in model.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        w = module.weight
        order = torch.argsort(w.abs().flatten(1).sum(dim=1), stable=True).tolist()
        for j, weak in enumerate(order):
            if not bool(w[weak].abs().sum() < threshold):
                break
            w[weak] += w[order[len(order) - j - 1]]
            grafted += 1
    return grafted


def layer_entropy(weight: torch.Tensor, bins: int = 10) -> float:
    """Entropy (nats) of a `bins`-bin histogram of the weights over [min, max], the maximum in the last bin."""
    x = weight.detach().flatten().float()
    lo, hi = x.min(), x.max()
    if not bool(hi > lo):
        return 0.0
    index = ((x - lo) / (hi - lo) * bins).long().clamp_(0, bins - 1)
    p = torch.bincount(index, minlength=bins).double() / x.numel()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def graft_coefficient(h_own: float, h_other: float, a: float = 0.4, k: float = 500.0) -> float:
    """c = a/pi * arctan(k (h_own - h_other)) + 1/2: the share of its own layer a network keeps."""
    return a / math.pi * math.atan(k * (h_own - h_other)) + 0.5


def weight_layers(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Per weight layer (a module whose own `weight` parameter has >= 2 dims: conv, linear), its weight's
    state key and the floating-point state keys blended with its coefficient: its own parameters and
    buffers plus those of the following modules without such a weight (BatchNorm after a conv). Entries
    registered before the first weight layer follow that first layer.
    """
    keys = set(model.state_dict())
    groups: list[tuple[str, list[str]]] = []
    leading: list[str] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        own = [prefix + n for n, t in itertools.chain(module.named_parameters(recurse=False),
                                                      module.named_buffers(recurse=False))
               if t is not None and t.is_floating_point() and prefix + n in keys]
        if not own:
            continue
        weight = module._parameters.get("weight")
        if weight is not None and weight.dim() >= 2:
            groups.append((prefix + "weight", leading + own))
            leading = []
        elif groups:
            groups[-1][1].extend(own)
        else:
            leading.extend(own)
    if not groups:
        raise ValueError("filter grafting needs at least one conv or linear layer")
    return groups


def detached_copy(model: nn.Module) -> StateDict:
    """A copy of the model's state that later training does not change."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def graft_from(model: nn.Module, other: StateDict, groups: list[tuple[str, list[str]]], a: float, k: float,
               bins: int) -> list[float]:
    """Blend `other` into `model` layer by layer (own <- c own + (1 - c) other); returns each layer's c."""
    live = model.state_dict()
    coefficients = []
    for weight_key, group in groups:
        c = graft_coefficient(layer_entropy(live[weight_key], bins), layer_entropy(other[weight_key], bins), a, k)
        for key in group:
            live[key].mul_(c).add_(other[key].to(live[key].device), alpha=1.0 - c)
        coefficients.append(c)
    return coefficients


def ring_graft(nets: list[nn.Module], a: float = 0.4, k: float = 500.0, bins: int = 10,
               groups: list[tuple[str, list[str]]] | None = None) -> list[list[float]]:
    """Each network j receives from network j-1 (network 0 from the last), all reading the pre-exchange
    weights; returns the coefficients per network and layer."""
    groups = groups if groups is not None else weight_layers(nets[0])
    before = [detached_copy(net) for net in nets]
    return [graft_from(net, before[j - 1], groups, a, k, bins) for j, net in enumerate(nets)]


class FGMethod(Method):
    """FG-n: n networks, each on its own data stream, grafted in a ring after every epoch but the last;
    FG-1: internal-filter grafting within one network."""

    array_reason = "it trains further networks on each step's batch (after_batch), outside the fused step"

    name = "fg"
    version = 2  # 2: FG-n networks draw their own batches; FG-1 is internal-filter grafting
    keys = {
        "fg_n": ConfigKey(int, 2, "networks trained side by side, each on its own data stream (1: internal-filter "
                          "grafting in one network)",
                          minimum=1),
        "fg_threshold": ConfigKey(float, 0.1, "FG-1: filters with l1 norm below it receive a strong filter",
                                  minimum=0),
        "fg_a": ConfigKey(float, 0.4, "A in c = A/pi * arctan(k (H_own - H_other)) + 1/2 (in [0, 1]: keeps c in "
                          "[0, 1])", minimum=0, maximum=1),
        "fg_k": ConfigKey(float, 500.0, "k in the same coefficient (the authors' script calls it c)", minimum=0),
        "fg_bins": ConfigKey(int, 10, "histogram bins of the layer entropy H", minimum=2),
        "fg_lrs": ConfigKey(Optional[list[float]], None, "initial lr of networks 0..n-1, the first equal to lr "
                                                         "(None: the authors' rule from lr)"),
    }
    presets = {"fg1": Preset({"fg_n": 1}, "FG-1"), "fg2": Preset({"fg_n": 2}, "FG-2"),
               "fg4": Preset({"fg_n": 4}, "FG-4")}
    bench_overrides = {"fg_n": 1}
    sources = ("Meng et al., Filter Grafting for Deep Neural Networks, CVPR 2020; the authors' "
               "grafting_cifar/grafting.py")

    @classmethod
    def resolve(cls, values: dict[str, Any]) -> None:
        if values["fg_lrs"] is None:  # the authors' per-network rule
            values["fg_lrs"] = default_learning_rates(values["lr"], values["fg_n"])

    @classmethod
    def check(cls, cfg: Any) -> None:
        if cfg.fg_lrs is not None:
            if len(cfg.fg_lrs) != cfg.fg_n or any(lr <= 0 for lr in cfg.fg_lrs):
                raise ConfigError(f"config key 'fg_lrs': must hold fg_n={cfg.fg_n} positive rates, "
                                  f"got {excerpt(cfg.fg_lrs)}")
            if cfg.lr is not None and cfg.fg_lrs[0] != cfg.lr:
                raise ConfigError(f"config key 'fg_lrs': the first rate is network 0's and must equal lr={cfg.lr!r}, "
                                  f"got {cfg.fg_lrs[0]!r}")

    @classmethod
    def cost(cls, config: dict[str, Any]) -> float:
        return float(config.get("fg_n", 1))  # n networks, each trained on every batch

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.n = cfg.fg_n
        self.lrs = list(cfg.fg_lrs) if cfg.fg_lrs is not None else default_learning_rates(cfg.lr, cfg.fg_n)
        self.nets: list[nn.Module] = []  # networks 1..n-1 (network 0 is the trainer's model)
        self.fnets: list[nn.Module] = []  # the same, compiled when cfg.compile
        self.train_fnets: list[nn.Module] = []  # what trains them: fnets, or DDP around them under DDP
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
        self.groups: list[tuple[str, list[str]]] | None = None
        self.train_data: list[Any] = []  # networks 1..n-1: their own train iterables
        self._batches: list[Any] | None = None  # their iterators over the current epoch
        self._pending: dict[str, Any] | None = None
        self._loss_sums: list[torch.Tensor] = []
        self._correct: list[torch.Tensor] = []
        self._seen = 0
        self.device: torch.device | None = None

    def on_train_start(self, ctx: TrainContext) -> None:
        cfg = self.cfg
        self.device = ctx.device
        self.groups = weight_layers(ctx.model)
        for i in range(1, self.n):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(network_seed(cfg.seed, i))
                net = ctx.build_model()
            net = net.to(ctx.device)
            if cfg.channels_last:
                net = net.to(memory_format=torch.channels_last)
            optimizer = ctx.build_optimizer(net, self.lrs[i])
            self.nets.append(net)
            self.fnets.append(torch.compile(net) if cfg.compile else net)
            self.train_fnets.append(ctx.dist.training_module(net, self.fnets[-1], cfg.compile))
            self.optimizers.append(optimizer)
            self.schedulers.append(ctx.build_scheduler(optimizer))
            self.train_data.append(ctx.build_train_data(data_seed(cfg.seed, i)))
        self._reset_sums(ctx.device)
        if self._pending is not None:
            self._load(self._pending)
            self._pending = None

    def after_batch(self, ctx: TrainContext, inputs: torch.Tensor, targets: torch.Tensor, iteration: int,
                    epoch: int) -> None:
        """Train networks 1..n-1 one step each, each on the next batch of its own train iterable (the
        trainer's batch is network 0's)."""
        if not self.nets:
            return
        if self._batches is None:  # the epoch's first batch: every stream starts its epoch `epoch`
            for data in self.train_data:
                data.set_epoch(epoch)
            self._batches = [iter(data) for data in self.train_data]
        for j, (fnet, optimizer) in enumerate(zip(self.train_fnets, self.optimizers)):
            inputs, targets = next(self._batches[j])
            if self.cfg.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp):
                out = fnet(inputs)
                loss = F.cross_entropy(out, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self._loss_sums[j] += loss.detach().float() * targets.shape[0]
            self._correct[j] += (out.detach().argmax(1) == targets).sum()
        self._seen += targets.shape[0]

    def on_epoch_end(self, ctx: TrainContext, epoch: int, last: bool) -> dict[str, float]:
        if self.n == 1:  # FG-1
            return {} if last else {"fg_grafted": float(internal_graft(ctx.model, self.cfg.fg_threshold))}
        self._batches = None  # the streams are in lock-step with the trainer's: each epoch is complete
        metrics: dict[str, float] = {}
        seen = max(self._seen, 1)
        for i, (net, fnet, optimizer) in enumerate(zip(self.nets, self.fnets, self.optimizers), start=1):
            ctx.dist.broadcast_module(net)  # rank 0's BatchNorm running statistics: the same evaluation everywhere
            ev = ctx.evaluate(net, fnet)  # pre-grafting, as network 0
            net.train()
            metrics.update({f"fg_net{i}_lr": optimizer.param_groups[0]["lr"],
                            f"fg_net{i}_train_loss": self._loss_sums[i - 1].item() / seen,
                            f"fg_net{i}_train_top1": 100.0 * self._correct[i - 1].item() / seen,
                            f"fg_net{i}_test_loss": ev["test_loss"], f"fg_net{i}_top1": ev["test_top1"],
                            f"fg_net{i}_top5": ev["test_top5"]})
        self._reset_sums(ctx.device)
        if not last:  # nothing trains after the last epoch: the reported networks are the evaluated ones
            cfg = self.cfg
            for j, coefficients in enumerate(ring_graft([ctx.model, *self.nets], cfg.fg_a, cfg.fg_k, cfg.fg_bins,
                                                        self.groups)):
                metrics[f"fg_net{j}_coef"] = sum(coefficients) / len(coefficients)
        for scheduler in self.schedulers:
            scheduler.step()
        return metrics

    def summarize(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Every network's final and best-epoch top-1; the best network (highest final top-1, ties to the
        lowest index) supplies final_* and best_* (network 0's stay under fg_net0_*)."""
        if self.n == 1 or not history or f"fg_net{self.n - 1}_top1" not in history[-1]:
            return {}
        columns = {"top1": "test_top1", "top5": "test_top5", "test_loss": "test_loss"}
        per_net = []
        for i in range(self.n):
            col = {m: (c if i == 0 else f"fg_net{i}_{m}") for m, c in columns.items()}
            rows = [r for r in history if col["top1"] in r]
            best = max(rows, key=lambda r: -math.inf if math.isnan(r[col["top1"]]) else r[col["top1"]])
            per_net.append({"final_top1": rows[-1][col["top1"]], "final_top5": rows[-1][col["top5"]],
                            "final_test_loss": rows[-1][col["test_loss"]], "best_top1": best[col["top1"]],
                            "best_top5": best[col["top5"]], "best_epoch": best["epoch"]})
        finals = [-math.inf if math.isnan(p["final_top1"]) else p["final_top1"] for p in per_net]
        best_net = finals.index(max(finals))
        out: dict[str, Any] = {"fg_best_net": best_net}
        for i, p in enumerate(per_net):
            out[f"fg_net{i}_final_top1"] = p["final_top1"]
            out[f"fg_net{i}_best_top1"] = p["best_top1"]
        out.update(per_net[best_net])
        return out

    def _reset_sums(self, device: torch.device) -> None:
        self._loss_sums = [torch.zeros((), device=device) for _ in self.nets]
        self._correct = [torch.zeros((), device=device, dtype=torch.long) for _ in self.nets]
        self._seen = 0

    def state_dict(self) -> dict[str, Any]:
        if self.groups is None:
            return self._pending or {}
        return {"nets": [net.state_dict() for net in self.nets],
                "optimizers": [opt.state_dict() for opt in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.groups is None:
            self._pending = state
        else:
            self._load(state)

    def _load(self, state: dict[str, Any]) -> None:
        if len(state.get("nets", [])) != len(self.nets):
            raise ValueError(f"checkpoint holds {len(state.get('nets', []))} extra FG networks, "
                             f"the run has {len(self.nets)}")
        for net, opt, sched, n_state, o_state, s_state in zip(self.nets, self.optimizers, self.schedulers,
                                                              state["nets"], state["optimizers"], state["schedulers"]):
            net.load_state_dict(n_state)
            opt.load_state_dict(o_state)
            sched.load_state_dict(s_state)

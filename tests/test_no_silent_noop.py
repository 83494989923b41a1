"""The public API never does nothing silently: models with nothing to evolve, parametrized weights,
SyncBatchNorm, shared weights, and the official variant's interval in the trainer."""
import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from we import WeightEvolution, evolve
from we.core import gather_units
from we.train import main
from we.train.config import load_config


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


def conv_bn(bn=nn.BatchNorm2d, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), bn(8), nn.ReLU(), nn.Conv2d(8, 8, 3), bn(8))
    with torch.no_grad():  # spread the importances so that selection finds inferior units
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.logspace(-2, 0, m.out_channels).view(-1, 1, 1, 1))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.logspace(-2, 0, 8))
                m.bias.copy_(torch.linspace(-1, 1, 8))
    return net


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_model_with_nothing_to_evolve_is_refused(variant):
    with pytest.raises(ValueError, match="MLP has no Conv2d"):
        WeightEvolution(MLP(), variant=variant)
    with pytest.raises(ValueError, match="MLP has no Conv2d"):
        evolve(MLP(), 0.5)
    with pytest.raises(ValueError, match="Sequential has no Conv2d layer"):  # bn=False on a BN-only model
        WeightEvolution(nn.Sequential(nn.BatchNorm2d(4)), bn=False)


def effective_conv_weights(net):
    return [m.weight.detach().clone() for m in net.modules() if isinstance(m, nn.Conv2d)]


def changed_rows(before, after):
    return sum(int((a != b).flatten(1).any(1).sum()) for a, b in zip(before, after))


def test_weight_norm_evolves_the_effective_weight_exactly_where_counts_say():
    plain, normed = conv_bn(), conv_bn()
    for m in normed.modules():
        if isinstance(m, nn.Conv2d):
            parametrizations.weight_norm(m)  # w = g * v / ||v||, one norm per filter
    convs = [m for m in normed.modules() if isinstance(m, nn.Conv2d)]
    originals = [(m.parametrizations.weight.original0.detach().clone(),
                  m.parametrizations.weight.original1.detach().clone()) for m in convs]
    before = effective_conv_weights(normed)
    counts = evolve(normed, 0.5, gamma=0.5)
    after = effective_conv_weights(normed)
    assert counts["conv_weight"] > 0
    assert changed_rows(before, after) == counts["conv_weight"]
    # the same step as on the plain model with the same effective weights
    assert counts == evolve(plain, 0.5, gamma=0.5)
    for a, p in zip(after, effective_conv_weights(plain)):
        torch.testing.assert_close(a, p)
    # v and g of filters that did not evolve are untouched (the optimiser's tensors)
    for m, (g0, v0), b, a in zip(convs, originals, before, after):
        same = ~(a != b).flatten(1).any(1)
        assert torch.equal(m.parametrizations.weight.original1[same], v0[same])
        assert torch.equal(m.parametrizations.weight.original0[same], g0[same])
        # an evolved filter is written back as v = w', g = ||w'|| (weight_norm's right_inverse, dim=0)
        v, g = m.parametrizations.weight.original1[~same], m.parametrizations.weight.original0[~same]
        torch.testing.assert_close(v, a[~same])
        torch.testing.assert_close(g.flatten(), a[~same].flatten(1).norm(dim=1))


def test_weight_norm_through_the_official_variant_and_the_hook():
    normed = conv_bn()
    for m in normed.modules():
        if isinstance(m, nn.Conv2d):
            parametrizations.weight_norm(m)
    evo = WeightEvolution(normed, variant="official", radio_conv=0.5, eta=1e-3)
    before = effective_conv_weights(normed)
    counts = evo.step(5)
    assert counts["conv_weight"] > 0
    assert changed_rows(before, effective_conv_weights(normed)) == counts["conv_weight"]


@pytest.mark.parametrize("wrap, message", [
    (lambda m: parametrizations.spectral_norm(m), "parametrized by _SpectralNorm"),
    (lambda m: parametrizations.weight_norm(m, dim=1), "weight_norm\\(dim=0\\) only"),
    (lambda m: torch.nn.utils.weight_norm(m), "is not a parameter"),
])
def test_weights_that_cannot_be_written_are_refused(wrap, message):
    net = conv_bn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the hook-based weight_norm is deprecated
        wrap(net[0])
    with pytest.raises(ValueError, match=message):
        WeightEvolution(net)
    with pytest.raises(ValueError, match=message):
        evolve(net, 0.5)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_sync_batch_norm_is_a_batch_norm(variant):
    plain, synced = conv_bn(nn.BatchNorm2d), conv_bn(nn.SyncBatchNorm)
    assert gather_units(synced)["bn_weight"].importance.numel() == 16
    hp = dict(r_hat=0.5, eta=1e-3) if variant == "paper" else dict(radio_bn=0.5, radio_bias=0.5, eta=1e-3)
    a = WeightEvolution(plain, variant=variant, **hp).evolve_now(5)
    b = WeightEvolution(synced, variant=variant, **hp).evolve_now(5)
    assert a == b and a["bn_weight"] > 0
    for p, q in zip(plain.parameters(), synced.parameters()):
        assert torch.equal(p, q)


class Tied(nn.Module):
    """Two convs applying one weight (a shared filter bank)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


def test_a_shared_weight_is_one_set_of_filters():
    tied = Tied()
    with torch.no_grad():
        tied.a.weight.mul_(torch.logspace(-2, 0, 8).view(-1, 1, 1, 1))
    single = nn.Sequential(copy.deepcopy(tied.a))
    pools = gather_units(tied)
    assert pools["conv_weight"].names == ["a.weight"] and pools["conv_weight"].importance.numel() == 8
    counts = evolve(tied, 0.5, gamma=0.5)
    assert counts == evolve(single, 0.5, gamma=0.5) and 0 < counts["conv_weight"] <= 4
    assert torch.equal(tied.a.weight, single[0].weight) and tied.b.weight is tied.a.weight


def test_trainer_runs_the_official_variant_every_iteration(tmp_path: Path):
    cfg = load_config(None, ["dataset=digits", "model=resnet20", "limit_train=96", "batch_size=32", "workers=0",
                             "progress=plain", "epochs=1", "method=we", "we_variant=official",
                             "we_interval_unit=iter", "we_interval=1", f"out={tmp_path}"])
    main(cfg)
    state = torch.load(tmp_path / "last.pt", weights_only=False)["method"]
    assert state["variant"] == "official" and state["hparams"]["interval_unit"] == "iter"
    assert state["steps"] == 3  # 96 images / 32 per batch; nothing after the last epoch
    assert sum(state["evolved"].values()) > 0

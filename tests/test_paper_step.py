"""Paper semantics of weight evolution: each rule on hand-built tensors, then properties and
equality with the loop oracle (we.core.reference) on random small networks."""

from __future__ import annotations

import copy
import inspect
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import we
import we.core.crossover
from we.core.hook import WeightEvolution
from we.core.hparams import HPARAMS, PAPER_STEP_DEFAULTS, PAPER_STEP_IMAGENET, names
from we.core.paper_step import evolve
from we.core.rate import selection_rate
from we.core.reference import evolve_reference
from we.core.units import LAYOUT_CACHE_SIZE, pool_layout
from we.methods.we import WEMethod, we_hparams
from we.train.config import load_config

KINDS = ("conv_weight", "conv_bias", "bn_weight", "bn_bias")


# ------------------------------------------------------------------------------------ helpers

def conv1x1(values, in_channels=1, groups=1, bias=None) -> nn.Conv2d:
    """A 1x1 conv whose filter j has every element equal to values[j] (importance |values[j]|)."""
    conv = nn.Conv2d(in_channels, len(values), 1, groups=groups, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand_as(conv.weight))
        if bias is not None:
            conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return conv


def bn(weight, bias=None) -> nn.BatchNorm2d:
    layer = nn.BatchNorm2d(len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias if bias is not None else [1.0] * len(weight)))
    return layer


def blend(inf: float, dom: float) -> float:
    """Eqs. 5-6 on two numbers: alpha = |inf| / (|inf| + |dom|)."""
    a = abs(inf) / (abs(inf) + abs(dom))
    return a * inf + (1 - a) * dom


def filters(conv: nn.Conv2d) -> list[float]:
    """First element of every filter."""
    return conv.weight.detach().flatten(1)[:, 0].tolist()


def assert_values(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.tensor(expected, dtype=torch.float32))


def random_net(seed: int) -> nn.Module:
    """Plain 3x3 conv with bias, BN, depth-wise, group conv with bias, 1x1 conv, BN, two
    same-shaped 3x3 convs with bias (one crossover class), Linear; units scaled by
    10 ** U(-3, 0) so that every rule has work to do."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.BatchNorm2d(8),
        nn.Conv2d(8, 12, 3, groups=4, bias=True), nn.BatchNorm2d(12),
        nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16),
        nn.Conv2d(16, 16, 3, bias=True), nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, bias=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
            scale = 10 ** (-3 * torch.rand(p.shape[0], generator=g))
            p.mul_(scale.view(-1, *[1] * (p.dim() - 1)))
    return net


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


# ------------------------------------------------------------------------------ selection rate

def test_selection_rate_follows_eq2_with_zero_based_epochs():
    # stage 1 (t-1 = 0, e0 = 0): 0.05 * sigmoid(0) = 0.025
    assert selection_rate(0) == pytest.approx(0.025)
    assert selection_rate(59) == pytest.approx(0.05 / (1 + math.exp(-59 / 15)))
    # epoch 60 starts stage 2: 0.05 / 2.5 * sigmoid(0) = 0.01
    assert selection_rate(60) == pytest.approx(0.01)
    assert selection_rate(119) == pytest.approx(0.02 / (1 + math.exp(-59 / 15)))
    # stage 3: beta ** 2 = 6.25 -> 0.05 / 6.25 * sigmoid(30 / 15)
    assert selection_rate(150) == pytest.approx(0.008 / (1 + math.exp(-2)))
    assert selection_rate(38, r_hat=0.1, beta=2, eta=8, milestones=(30, 60)) == pytest.approx(
        0.05 / (1 + math.exp(-1)))


# ---------------------------------------------------------------------------- global selection

def two_layers():
    # pool (conv filters, importance = value): [1, 2, 6, 8 | 1, 3, 5, 9], P = 8
    return nn.Sequential(conv1x1([1.0, 2.0, 6.0, 8.0]), conv1x1([1.0, 3.0, 5.0, 9.0]))


def test_global_selection_takes_floor_of_rate_times_pool():
    net = two_layers()
    # floor(0.35 * 8) = floor(2.8) = 2 -> W_tbd = the two 1's (rounding would take the 2 too).
    # WE-G: each layer has k = 1 inferior, c = 1, partner = its strongest filter.
    counts = evolve(net, 0.35, selection="global", bn=False)
    assert counts == {"conv_weight": 2, "conv_bias": 0, "bn_weight": 0, "bn_bias": 0}
    # 1 <-> 8: alpha = 1/9 -> 1/9 + 64/9 = 65/9 ; 1 <-> 9: alpha = 1/10 -> 0.1 + 8.1 = 8.2
    assert_values(filters(net[0]), [65 / 9, 2.0, 6.0, 8.0])
    assert_values(filters(net[1]), [8.2, 3.0, 5.0, 9.0])


def test_global_selection_breaks_ties_by_pool_order():
    net = two_layers()
    # floor(0.125 * 8) = 1: the tie between the two 1's goes to the first layer (stable sort)
    assert evolve(net, 0.125, selection="global", bn=False)["conv_weight"] == 1
    assert_values(filters(net[0]), [65 / 9, 2.0, 6.0, 8.0])
    assert_values(filters(net[1]), [1.0, 3.0, 5.0, 9.0])


def test_global_and_local_both_required():
    # importances [0.04, 0.06, 0.5, 1.0 | 0.01, 2, 3, 4]; rate 0.25 -> floor(2) tbd = {0.01, 0.04}
    net = nn.Sequential(conv1x1([0.04, 0.06, 0.5, 1.0]), conv1x1([0.01, 2.0, 3.0, 4.0]))
    counts = evolve(net, 0.25, gamma=0.05, bn=False)
    # layer 1: 0.04 / 1.0 < 0.05 -> inferior, partner 1.0 ; 0.06 is not in W_tbd
    # layer 2: 0.01 / 4 < 0.05 -> inferior, partner 4.0
    assert counts["conv_weight"] == 2
    assert_values(filters(net[0]), [blend(0.04, 1.0), 0.06, 0.5, 1.0])
    assert_values(filters(net[1]), [blend(0.01, 4.0), 2.0, 3.0, 4.0])


# ----------------------------------------------------------------------------- local selection

def test_local_selection_uses_relative_importance_below_gamma():
    net = nn.Sequential(conv1x1([0.04, 0.06, 0.5, 1.0]))
    # rate 1: all in W_tbd; RI = [0.04, 0.06, 0.5, 1]: only 0.04 < 0.05
    assert evolve(net, 1.0, gamma=0.05, bn=False)["conv_weight"] == 1
    assert_values(filters(net[0]), [blend(0.04, 1.0), 0.06, 0.5, 1.0])
    net = nn.Sequential(conv1x1([0.04, 0.06, 0.5, 1.0]))
    # gamma 0.07: RI 0.04 and 0.06 inferior (k = 2, c = 2) -> 0.04 <-> 0.5, 0.06 <-> 1.0
    assert evolve(net, 1.0, gamma=0.07, bn=False)["conv_weight"] == 2
    assert_values(filters(net[0]), [blend(0.04, 0.5), blend(0.06, 1.0), 0.5, 1.0])


def test_local_selection_is_strict():
    # RI = 0.125 / 1 = gamma exactly (both exact in binary): not inferior; 0.0625 / 1 is
    net = nn.Sequential(conv1x1([0.125, 1.0, 0.0625, 1.0]))
    assert evolve(net, 1.0, gamma=0.125, bn=False)["conv_weight"] == 1
    assert_values(filters(net[0]), [0.125, 1.0, blend(0.0625, 1.0), 1.0])


def test_only_min_k_n_minus_k_weakest_inferior_evolve():
    # RI = [0.01, 0.02, 0.03, 1] with gamma 0.05 -> k = 3 of n = 4, c = min(3, 1) = 1
    net = nn.Sequential(conv1x1([0.02, 0.01, 1.0, 0.03]))
    assert evolve(net, 1.0, bn=False)["conv_weight"] == 1
    assert_values(filters(net[0]), [0.02, blend(0.01, 1.0), 1.0, 0.03])


def test_group_convolution_selects_and_matches_inside_each_group():
    # in 4, out 8, groups 2 (1 < 2 < 4): groups of 4 filters, 2 slices of 1x1 each.
    # group 0: [0.01, 1, 2, 3] (max 3), group 1: [0.02, 5, 6, 7] (max 7)
    # per group: 0.01/3 and 0.02/7 < 0.05 -> c = 1 each, partners 3 and 7 of the same group.
    # (Layer-wise it would be 0.01 <-> 6 and 0.02 <-> 7.)
    net = nn.Sequential(conv1x1([0.01, 1.0, 2.0, 3.0, 0.02, 5.0, 6.0, 7.0], in_channels=4, groups=2))
    assert evolve(net, 1.0, bn=False)["conv_weight"] == 2
    assert_values(filters(net[0]), [blend(0.01, 3.0), 1, 2, 3, blend(0.02, 7.0), 5, 6, 7])


def test_group_convolution_relative_importance_is_per_group():
    # group 0: [0.04, 0.5]: RI 0.08 -> not inferior (layer-wise 0.04 / 10 would be)
    # group 1: [0.2, 10]: RI 0.02 -> inferior, partner 10
    net = nn.Sequential(conv1x1([0.04, 0.5, 0.2, 10.0], in_channels=4, groups=2))
    assert evolve(net, 1.0, bn=False)["conv_weight"] == 1
    assert_values(filters(net[0]), [0.04, 0.5, blend(0.2, 10.0), 10.0])


def test_depthwise_convolution_is_one_group():
    # groups == in_channels == 4: one group [0.01, 1, 2, 3]; 4 groups of 1 would evolve nothing
    net = nn.Sequential(conv1x1([0.01, 1.0, 2.0, 3.0], in_channels=4, groups=4))
    assert evolve(net, 1.0, bn=False)["conv_weight"] == 1
    assert_values(filters(net[0]), [blend(0.01, 3.0), 1, 2, 3])


def test_conv_bias_follows_the_conv_groups():
    # weights all equal (RI 1, never inferior); biases per group [0.01, 1, 2, 3 | 0.02, 5, 6, 7]
    net = nn.Sequential(conv1x1([1.0] * 8, in_channels=4, groups=2,
                                bias=[0.01, 1.0, 2.0, 3.0, -0.02, 5.0, 6.0, -7.0]))
    counts = evolve(net, 1.0, bn=False)
    assert counts == {"conv_weight": 0, "conv_bias": 2, "bn_weight": 0, "bn_bias": 0}
    # signed values blend with alpha from |.|: -0.02 <-> -7
    assert_values(net[0].bias.detach(), [blend(0.01, 3.0), 1, 2, 3, blend(-0.02, -7.0), 5, 6, -7])


# -------------------------------------------------------------------------------------- matching

BN_VALUES = [0.8, 0.002, 1.0, 0.5, 0.001, 0.6]  # inferior (gamma 0.05): 0.001, 0.002 -> c = 2


def test_forward_matching_keeps_the_importance_order():
    net = nn.Sequential(bn(BN_VALUES))
    assert evolve(net, 1.0, conv=False)["bn_weight"] == 2
    # dominant ascending [0.8, 1.0]: 0.001 <-> 0.8, 0.002 <-> 1.0
    assert_values(net[0].weight.detach(), [0.8, blend(0.002, 1.0), 1.0, 0.5, blend(0.001, 0.8), 0.6])


def test_reverse_matching_pairs_weakest_with_strongest():
    net = nn.Sequential(bn(BN_VALUES))
    assert evolve(net, 1.0, conv=False, matching="reverse")["bn_weight"] == 2
    # 0.001 <-> 1.0, 0.002 <-> 0.8
    assert_values(net[0].weight.detach(), [0.8, blend(0.002, 0.8), 1.0, 0.5, blend(0.001, 1.0), 0.6])


def test_bn_bias_is_its_own_pool_with_signed_values():
    net = nn.Sequential(bn([1.0, 1.0, 1.0, 1.0], bias=[-0.002, 0.5, -1.0, 0.7]))
    counts = evolve(net, 1.0, conv=False)
    assert counts == {"conv_weight": 0, "conv_bias": 0, "bn_weight": 0, "bn_bias": 1}
    # |-0.002| / 1 < 0.05, partner -1.0: alpha = 0.002 / 1.002
    assert_values(net[0].bias.detach(), [blend(-0.002, -1.0), 0.5, -1.0, 0.7])
    assert_values(net[0].weight.detach(), [1.0] * 4)


# ------------------------------------------------------------------------------------- crossover

def two_filter_conv() -> nn.Sequential:
    """Conv 2 -> 2, kernel 2x2. Filter 0 (inferior): L1 0.77, importance 0.385; filter 1: L1 21,
    importance 10.5; RI 0.0367 < 0.05."""
    conv = nn.Conv2d(2, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([
            [[[0.1, -0.02], [0.3, 0.05]], [[0.0, 0.2], [-0.1, 0.0]]],
            [[[1.0, -4.0], [2.0, 3.0]], [[5.0, -5.0], [1.0, 0.0]]],
        ]))
    return nn.Sequential(conv)


def test_element_crossover_slice_by_slice():
    net = two_filter_conv()
    before = net[0].weight.detach().clone()
    assert evolve(net, 1.0, bn=False)["conv_weight"] == 1
    expected = before.clone()
    # slice 0: q = -0.02 (index 1), p = -4 (index 1): alpha = 0.02 / 4.02
    expected[0, 0, 0, 1] = blend(-0.02, -4.0)
    # slice 1: q = first of the zeros (index 0), p = first of |5| = |-5| (index 0, value 5):
    # alpha = 0 -> the inferior gene becomes 5; the other zero (index 3) is untouched
    expected[0, 1, 0, 0] = 5.0
    torch.testing.assert_close(net[0].weight.detach(), expected)


def test_crossover_when_both_genes_are_zero_keeps_zero():
    # WE-G with rate 0.5 on BN weights [0, 0, 0, 0]: tbd = 2 units, c = 2, every pair 0 <-> 0
    net = nn.Sequential(bn([0.0, 0.0, 0.0, 0.0]))
    assert evolve(net, 0.5, conv=False, selection="global")["bn_weight"] == 2
    assert torch.equal(net[0].weight.detach(), torch.zeros(4))
    # element level, WE-G (no gamma test): zeroing filter 1's slice 1 leaves filter 0 the inferior
    # unit (floor(0.5 * 2) = 1) with filter 1 as partner. Slice 0: q = -0.02, p = -4.0 ->
    # alpha = 0.02 / 4.02. Slice 1: q = 0.0 (first zero), p = 0.0 (all zero) -> 0 / 0, alpha = 1.
    net = two_filter_conv()
    with torch.no_grad():
        net[0].weight[1, 1] = 0.0
    assert evolve(net, 0.5, bn=False, selection="global")["conv_weight"] == 1
    assert torch.isfinite(net[0].weight).all()
    assert net[0].weight[0, 0, 0, 1].item() == pytest.approx(blend(-0.02, -4.0))
    assert_values(net[0].weight[0, 1].detach(), [[0.0, 0.2], [-0.1, 0.0]])


@pytest.mark.parametrize("alpha, slice0, slice1", [
    (0.0, -4.0, 5.0),                       # the inferior gene becomes the dominant one
    (0.25, 0.25 * -0.02 + 0.75 * -4.0, 0.75 * 5.0),
    (1.0, -0.02, 0.0),                      # baseline: nothing changes
])
def test_fixed_alpha(alpha, slice0, slice1):
    net = two_filter_conv()
    before = net[0].weight.detach().clone()
    assert evolve(net, 1.0, bn=False, alpha=alpha)["conv_weight"] == 1
    expected = before.clone()
    expected[0, 0, 0, 1] = slice0
    expected[0, 1, 0, 0] = slice1
    torch.testing.assert_close(net[0].weight.detach(), expected)


def test_fixed_alpha_one_changes_nothing_anywhere():
    net = random_net(0)
    before = params(net)
    counts = evolve(net, 0.5, gamma=0.5, alpha=1.0)
    assert sum(counts.values()) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, params(net)))


def test_filter_level_blends_the_whole_filter():
    net = two_filter_conv()
    inf, dom = (net[0].weight.detach()[i].clone() for i in (0, 1))
    assert evolve(net, 1.0, bn=False, level="filter")["conv_weight"] == 1
    a = 0.77 / (0.77 + 21.0)  # L1(inf) / (L1(inf) + L1(dom))
    torch.testing.assert_close(net[0].weight.detach()[0], a * inf + (1 - a) * dom)
    torch.testing.assert_close(net[0].weight.detach()[1], dom)
    net = two_filter_conv()
    evolve(net, 1.0, bn=False, level="filter", alpha=0.5)
    torch.testing.assert_close(net[0].weight.detach()[0], 0.5 * inf + 0.5 * dom)


# ------------------------------------------------------------------------------------- ablations

def test_we_g_skips_the_gamma_test():
    # RI = [0.5, 0.6, 0.8, 1]: nothing passes gamma 0.05, but WE-G takes W_tbd = {0.5} (rate 0.25)
    net = nn.Sequential(conv1x1([0.6, 0.5, 1.0, 0.8]))
    assert evolve(net, 0.25, bn=False)["conv_weight"] == 0
    assert evolve(net, 0.25, bn=False, selection="global")["conv_weight"] == 1
    assert_values(filters(net[0]), [0.6, blend(0.5, 1.0), 1.0, 0.8])


def test_we_l_ignores_the_global_pool():
    # layer 1 [0.04, 1], layer 2 [0.1, 50]: pool-wise with rate 0.25 only 0.04 is in W_tbd;
    # WE-L tests every unit: 0.04 and 0.1/50 = 0.002 are both inferior, even at rate 0
    net = nn.Sequential(conv1x1([0.04, 1.0]), conv1x1([0.1, 50.0]))
    assert evolve(net, 0.0, bn=False, selection="local")["conv_weight"] == 2
    assert_values(filters(net[0]), [blend(0.04, 1.0), 1.0])
    assert_values(filters(net[1]), [blend(0.1, 50.0), 50.0])
    net = nn.Sequential(conv1x1([0.04, 1.0]), conv1x1([0.1, 50.0]))
    assert evolve(net, 0.25, bn=False)["conv_weight"] == 1


def net_with_conv_and_bn() -> nn.Sequential:
    return nn.Sequential(conv1x1([0.01, 1.0], bias=[0.01, 1.0]), bn([0.01, 1.0], bias=[0.01, 1.0]))


def test_conv_false_leaves_conv_weight_and_bias():
    net = net_with_conv_and_bn()
    counts = evolve(net, 1.0, conv=False)
    assert counts == {"conv_weight": 0, "conv_bias": 0, "bn_weight": 1, "bn_bias": 1}
    assert_values(filters(net[0]), [0.01, 1.0])
    assert_values(net[0].bias.detach(), [0.01, 1.0])
    assert_values(net[1].weight.detach(), [blend(0.01, 1.0), 1.0])


def test_bn_false_leaves_bn_weight_and_bias():
    net = net_with_conv_and_bn()
    counts = evolve(net, 1.0, bn=False)
    assert counts == {"conv_weight": 1, "conv_bias": 1, "bn_weight": 0, "bn_bias": 0}
    assert_values(net[1].weight.detach(), [0.01, 1.0])
    assert_values(net[1].bias.detach(), [0.01, 1.0])
    assert_values(net[0].bias.detach(), [blend(0.01, 1.0), 1.0])


def test_linear_layers_are_never_touched():
    net = random_net(1)
    linear = net[-1].weight.detach().clone()
    convs = [m.weight.detach().clone() for m in net if isinstance(m, nn.Conv2d)]
    assert evolve(net, 1.0, gamma=1.0, selection="local")["conv_weight"] > 0
    # the step did evolve conv filters (every layer has units below gamma = 1 of its strongest)
    assert all(not torch.equal(m.weight, w) for m, w in zip((m for m in net if isinstance(m, nn.Conv2d)), convs))
    assert torch.equal(net[-1].weight.detach(), linear)


# ------------------------------------------------------------------------------------ properties

@pytest.mark.parametrize("kwargs", [{"rate": 0.0}, {"rate": 0.5, "gamma": 0.0}])
def test_rate_zero_or_gamma_zero_changes_nothing(kwargs):
    net = random_net(2)
    before = params(net)
    assert sum(evolve(net, **kwargs).values()) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, params(net)))


def test_only_inferior_units_change_and_one_element_per_slice():
    rate, gamma = 0.6, 0.3
    net = random_net(3)
    original = random_net(3)
    counts = evolve(net, rate, gamma=gamma)
    assert counts["conv_weight"] > 0
    convs = [(m, o) for m, o in zip(net.modules(), original.modules()) if isinstance(m, nn.Conv2d)]
    pool = torch.cat([o.weight.abs().flatten(1).sum(1) / o.weight.shape[1] for _, o in convs])
    cutoff = pool.sort().values[math.floor(rate * pool.numel()) - 1]  # largest importance in W_tbd
    changed_total = 0
    for new, old in convs:
        groups = old.groups if 1 < old.groups < old.in_channels else 1
        imp = (old.weight.abs().flatten(1).sum(1) / old.weight.shape[1]).view(groups, -1)
        inferior = ((imp / imp.amax(1, keepdim=True) < gamma) & (imp <= cutoff)).flatten()
        changed = (new.weight != old.weight).flatten(1).any(1)
        assert not (changed & ~inferior).any()
        assert (new.weight != old.weight).flatten(2).sum(2).max() <= 1
        changed_total += int(changed.sum())
    assert changed_total == counts["conv_weight"]


@pytest.fixture(params=["host rows", "whole classes"])
def crossover_path(request, monkeypatch):
    """Both crossover strategies: evolved rows listed on the host (CPU) or whole classes (GPU)."""
    if request.param == "whole classes":
        monkeypatch.setattr(we.core.crossover, "rows_on_host", lambda tensor: False)
    return request.param


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("rate, gamma, matching", [
    (0.05, 0.05, "forward"), (0.3, 0.2, "reverse"), (0.6, 0.3, "forward"), (1.0, 0.5, "reverse")])
def test_equals_reference_on_random_nets(seed, rate, gamma, matching, crossover_path):
    net = random_net(seed)
    oracle = copy.deepcopy(net)
    counts = evolve(net, rate, gamma=gamma, matching=matching)
    assert counts == evolve_reference(oracle, rate, gamma=gamma, matching=matching)
    for a, b in zip(net.parameters(), oracle.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kwargs", [
    {"selection": "global"}, {"selection": "local"}, {"alpha": 0.3}, {"level": "filter"},
    {"conv": False}, {"bn": False}])
def test_ablations_equal_reference(kwargs, crossover_path):
    for seed in (4, 5):
        net = random_net(seed)
        oracle = copy.deepcopy(net)
        counts = evolve(net, 0.4, gamma=0.2, **kwargs)
        assert sum(counts.values()) > 0
        assert counts == evolve_reference(oracle, 0.4, gamma=0.2, **kwargs)
        for a, b in zip(net.parameters(), oracle.parameters()):
            torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------ WeightEvolution

def bn_ramp(n: int = 100) -> nn.Sequential:
    return nn.Sequential(bn([float(i + 1) for i in range(n)]))


def test_step_uses_selection_rate_of_the_epoch():
    # 100 BN weights, WE-G: floor(100 * r): epoch 0 -> r = 0.025 -> 2 ; epoch 59 -> 0.049 -> 4
    assert WeightEvolution(bn_ramp(), selection="global", conv=False).step(0)["bn_weight"] == 2
    assert WeightEvolution(bn_ramp(), selection="global", conv=False).step(59)["bn_weight"] == 4
    # r_hat 0.2, epoch 0: floor(100 * 0.1) = 10
    assert WeightEvolution(bn_ramp(), selection="global", conv=False, r_hat=0.2).step(0)["bn_weight"] == 10


def test_epoch_interval():
    evo = WeightEvolution(bn_ramp(), selection="global", conv=False, interval=3)
    acted = [evo.step(e) is not None for e in range(7)]
    assert acted == [False, False, True, False, False, True, False]
    assert evo.steps == 2
    assert evo.step_iteration(2, 0) is None


def test_iteration_interval():
    evo = WeightEvolution(bn_ramp(), selection="global", conv=False, interval=2, interval_unit="iter")
    assert evo.step(0) is None
    acted = [evo.step_iteration(i, 0) is not None for i in range(5)]
    assert acted == [False, True, False, True, False]
    assert evo.step_iteration(5, 59)["bn_weight"] == 4  # rate of the given epoch


def test_state_dict_round_trip_resumes_exactly():
    hp = dict(gamma=0.2, matching="reverse", interval=2, milestones=[3, 6], r_hat=0.4, eta=2.0)
    net_a = random_net(6)
    net_b = copy.deepcopy(net_a)
    a = WeightEvolution(net_a, **hp)
    for epoch in range(4):
        a.step(epoch)
    state = a.state_dict()
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    net_b.load_state_dict(net_a.state_dict())
    b = WeightEvolution(net_b)  # default hparams, replaced by the state
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.hparams == a.hparams and b.steps == a.steps == 2 and b.evolved == a.evolved
    for epoch in range(4, 8):
        assert a.step(epoch) == b.step(epoch)
    for x, y in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("key, value", [
    ("matching", "sideways"), ("alpha", 1.5), ("alpha", "auto"), ("selection", "both"),
    ("level", "slice"), ("interval", 0), ("interval_unit", "batch"), ("gamma", -0.1),
    ("milestones", (120, 60)), ("conv", "yes"), ("r_hat", 2.0), ("beta", 1.0), ("eta", 0.0),
    ("r_hat", float("nan")), ("milestones", (0, 5)), ("alpha", True)])
def test_invalid_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        WeightEvolution(bn_ramp(4), **{key: value})


def test_unknown_hparam_names_the_key():
    with pytest.raises(TypeError, match="radio_conv"):
        WeightEvolution(bn_ramp(4), radio_conv=0.2)
    with pytest.raises(ValueError, match="variant"):
        WeightEvolution(bn_ramp(4), variant="fancy")
    with pytest.raises(ValueError, match="matching"):
        evolve(bn_ramp(4), 0.1, matching="x")


def test_package_exports():
    assert we.selection_rate is selection_rate and we.evolve is evolve
    assert we.WeightEvolution is WeightEvolution
    assert "Weight Evolution" in we.__doc__


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_unsynchronised_step_returns_device_counts_and_same_weights(variant):
    a = random_net(3)
    b = copy.deepcopy(a)
    hp = {"r_hat": 0.5, "gamma": 0.5} if variant == "paper" else {"radio_conv": 0.5, "radio_bn": 0.5, "radio_bias": 0.5}
    ea, eb = WeightEvolution(a, variant=variant, **hp), WeightEvolution(b, variant=variant, **hp)
    synced, lazy = ea.step(30), eb.step(30, sync=False)
    assert all(isinstance(v, int) for v in synced.values())
    assert any(isinstance(v, torch.Tensor) for v in lazy.values())
    assert {k: int(v) for k, v in lazy.items()} == synced and sum(synced.values()) > 0
    for pa, pb in zip(params(a), params(b)):
        assert torch.equal(pa, pb)
    assert eb.state_dict()["evolved"] == ea.state_dict()["evolved"]


def test_channels_last_and_float64_weights_evolve_like_the_reference(crossover_path):
    net = random_net(6)
    oracle = copy.deepcopy(net)
    net = net.to(memory_format=torch.channels_last)
    counts = evolve(net, 0.4, gamma=0.2)
    assert counts == evolve_reference(oracle, 0.4, gamma=0.2) and sum(counts.values()) > 0
    for a, b in zip(net.parameters(), oracle.parameters()):
        torch.testing.assert_close(a, b)
    net, oracle = random_net(7).double(), random_net(7).double()  # float64: the two-sort order
    assert evolve(net, 0.4, gamma=0.2) == evolve_reference(oracle, 0.4, gamma=0.2)
    for a, b in zip(net.parameters(), oracle.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("variant, kwargs", [
    ("paper", {}), ("paper", {"selection": "local"}), ("paper", {"selection": "global", "level": "filter"}),
    ("paper", {"matching": "reverse", "alpha": 0.3}), ("official", {})])
def test_step_off_the_cpu_never_reads_device_data_nor_copies_to_it(variant, kwargs, monkeypatch):
    # Meta tensors have shapes but no data: any host read (.item(), .tolist(), nonzero, bool(t))
    # raises. A whole unsynchronised step running on them is a step that never waits for a GPU.
    # Copies from host memory (torch.tensor(list, device=...)) would wait too: after a first step
    # (which builds the cached layouts), a step must not move any CPU tensor to the device.
    import models
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class HostToDevice(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            host_in = any(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0
                          for t in tree_leaves((args, kwargs)))
            if host_in and any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tree_leaves(out)):
                self.ops.append(str(func))
            return out

    for rows in range(1, LAYOUT_CACHE_SIZE):  # a full cache (other models' layouts) must not evict this step's
        pool_layout([torch.empty(rows, 1, 3, 3)], [1])
    model = models.create("resnet20", num_classes=10).to("meta")
    evolution = WeightEvolution(model, variant=variant, **kwargs)
    evolution.step(30, sync=False)
    made_on_device: list[str] = []  # torch.tensor(data, device=...) copies below the dispatcher
    for name in ("tensor", "as_tensor"):
        def guarded(*args, _make=getattr(torch, name), _name=name, **kw):
            if kw.get("device") is not None and torch.device(kw["device"]).type != "cpu":
                made_on_device.append(_name)
            return _make(*args, **kw)
        monkeypatch.setattr(torch, name, guarded)
    with HostToDevice() as spy:
        counts = evolution.step(31, sync=False)
    assert all(v.device.type == "meta" for k, v in counts.items() if k != "conv_bias")
    assert spy.ops == [] and made_on_device == []


@pytest.mark.parametrize("hook", ["step", "step_iteration"])
@pytest.mark.parametrize("value, error", [(-1, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError),
                                          (None, TypeError)])
def test_hooks_take_non_negative_ints_only(hook, value, error):
    evolution = WeightEvolution(bn_ramp(4), interval_unit="iter" if hook == "step_iteration" else "epoch")
    before = {k: v.clone() for k, v in evolution.model.state_dict().items()}
    with pytest.raises(error, match="non-negative integer"):
        evolution.step(value) if hook == "step" else evolution.step_iteration(value, 0)
    assert evolution.steps == 0 and all(torch.equal(v, evolution.model.state_dict()[k]) for k, v in before.items())


def test_hooks_accept_numpy_and_torch_ints():
    import numpy as np

    evolution = WeightEvolution(bn_ramp(4), r_hat=0.5)
    assert evolution.step(np.int64(3)) is not None and evolution.step(torch.tensor(4)) is not None


def test_selection_rate_refuses_a_negative_epoch():
    with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
        selection_rate(-1)
    with pytest.raises(TypeError, match="epoch"):
        selection_rate("2")


@pytest.mark.parametrize("model", ["resnet18", None, [torch.nn.Conv2d(1, 1, 1)]])
def test_a_model_that_is_no_module_is_a_type_error_naming_its_type(model):
    with pytest.raises(TypeError, match=f"torch.nn.Module, got {type(model).__name__}"):
        WeightEvolution(model)


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("edit, named", [
    (lambda s: {}, "lacks 'variant', 'hparams', 'steps', 'evolved'"),
    (lambda s: {k: v for k, v in s.items() if k != "steps"}, "lacks 'steps'"),
    (lambda s: {**s, "hparams": []}, r"state\['hparams'\] must be a mapping, got list"),
    (lambda s: {**s, "steps": "2"}, r"state\['steps'\] must be an integer, got str"),
    (lambda s: [1, 2], "must be a mapping from state_dict"),
])
def test_load_state_dict_names_what_is_missing_or_of_the_wrong_kind(variant, edit, named):
    evolution = WeightEvolution(bn_ramp(4), variant=variant)
    evolution.step(0)
    with pytest.raises(ValueError, match=named):
        evolution.load_state_dict(edit(evolution.state_dict()))
    assert evolution.steps == 1  # nothing changed


def test_load_state_dict_of_the_official_variant_needs_its_counters():
    evolution = WeightEvolution(bn_ramp(4), variant="official")
    state = evolution.state_dict()
    with pytest.raises(ValueError, match="lacks 'official'"):
        evolution.load_state_dict({k: v for k, v in state.items() if k != "official"})
    with pytest.raises(ValueError, match="'counters'"):
        evolution.load_state_dict({**state, "official": {}})


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("model, conv, bn, says", [
    (torch.nn.Conv2d(2, 2, 3), False, False, "conv=False and bn=False leave Weight Evolution nothing to evolve"),
    (torch.nn.Linear(2, 2), True, True, "Linear has no Conv2d or BatchNorm2d/SyncBatchNorm layer to evolve \\("),
    (torch.nn.Conv2d(2, 2, 3), False, True, "Conv2d has no BatchNorm2d/SyncBatchNorm layer to evolve \\(conv=False\\)"),
    (torch.nn.BatchNorm2d(2), True, False, "BatchNorm2d has no Conv2d layer to evolve \\(bn=False\\)"),
])
def test_nothing_to_evolve_reads_correctly_for_every_switch_combination(variant, model, conv, bn, says):
    with pytest.raises(ValueError, match=says) as caught:
        WeightEvolution(model, variant=variant, conv=conv, bn=bn)
    assert "no no" not in str(caught.value) and "no kind" not in str(caught.value)


# ------------------------------------------------------------ the hyper-parameter table (we.core.hparams)

def test_the_table_holds_the_papers_settings():
    """Sec. 4.1.2: r_hat 0.05 and gamma 0.05 everywhere; beta 2.5 and eta 15 for CIFAR, 2 and 8 for ImageNet;
    Sec. 3.1.1: beta is larger than one."""
    assert {k: PAPER_STEP_DEFAULTS[k] for k in ("r_hat", "beta", "eta", "gamma")} == \
        {"r_hat": 0.05, "beta": 2.5, "eta": 15.0, "gamma": 0.05}
    assert {k: PAPER_STEP_IMAGENET[k] for k in ("r_hat", "beta", "eta", "gamma")} == \
        {"r_hat": 0.05, "beta": 2.0, "eta": 8.0, "gamma": 0.05}
    assert (HPARAMS["beta"].minimum, HPARAMS["beta"].strict) == (1, True)


def test_the_core_calls_take_the_tables_names_and_defaults():
    rate = inspect.signature(selection_rate).parameters
    step = inspect.signature(evolve).parameters
    assert list(rate) == ["epoch", *names("rate")]
    assert set(names("step")) <= set(step)
    assert set(names("rate")) | set(names("step")) | set(names("schedule")) == set(HPARAMS)
    for name in names("rate"):
        assert rate[name].default == PAPER_STEP_DEFAULTS[name], name
    for name in names("step"):
        assert step[name].default == PAPER_STEP_DEFAULTS[name], name
    assert WeightEvolution(bn_ramp(4)).hparams == PAPER_STEP_DEFAULTS


def test_the_methods_keys_defaults_and_bounds_are_the_core_tables():
    assert set(WEMethod.keys) == {"we_variant"} | {h.config_key for h in HPARAMS.values()}
    cifar = load_config(None, ["method=we"])
    imagenet = load_config(None, ["method=we", "dataset=imagenet", "model=resnet34"])
    for name, h in HPARAMS.items():
        key = WEMethod.keys[h.config_key]
        assert (key.choices, key.minimum, key.strict, key.maximum, key.check, key.finite) == \
            (h.choices, h.minimum, h.strict, h.maximum, h.check, True), name
        assert key.doc.startswith(h.doc), name
        if h.imagenet is not None:  # filled per dataset family
            assert key.default is None and getattr(cifar, h.config_key) == h.default, name
            assert getattr(imagenet, h.config_key) == h.imagenet, name
        elif not h.from_schedule:
            assert key.default == h.default and key.type == h.type, name
            assert getattr(cifar, h.config_key) == h.default, name
    assert set(we_hparams(cifar)) == set(HPARAMS)
    assert WeightEvolution(bn_ramp(4), **we_hparams(cifar)).hparams["milestones"] == (60, 120)


def test_a_new_row_of_the_table_is_a_checked_config_key_and_reaches_the_core_call():
    """One row added to HPARAMS (before anything derives from it): a `we_` config key with the row's default and
    bounds, passed to WeightEvolution."""
    script = """
from we.core.hparams import HPARAMS, HParam
HPARAMS["kappa"] = HParam("kappa", float, 0.25, "a new parameter", "schedule", minimum=0, maximum=1)
from we.errors import ConfigError
from we.methods.we import WEMethod, we_hparams
from we.train.config import load_config
cfg = load_config(None, ["method=we", "we_kappa=0.5"])
print(WEMethod.keys["we_kappa"].default, cfg.we_kappa, we_hparams(cfg)["kappa"])
try:
    load_config(None, ["method=we", "we_kappa=2"])
except ConfigError as err:
    print(err)
"""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "0.25 0.5 0.5"
    assert "config key 'we_kappa'" in lines[1] and ">= 0 and <= 1" in lines[1]


# ------------------------------------------------------- the hook's contract, value by value

def test_a_state_that_is_no_mapping_is_refused_with_the_whole_message():
    with pytest.raises(ValueError) as caught:
        WeightEvolution(bn_ramp(4)).load_state_dict([1, 2])
    assert str(caught.value) == \
        "WeightEvolution.load_state_dict: a state must be a mapping from state_dict(), got list"


def test_a_state_without_some_evolved_kinds_counts_them_as_zero():
    evolution = WeightEvolution(bn_ramp(4))
    state = evolution.state_dict()
    evolution.load_state_dict({**state, "steps": 3, "evolved": {"bn_weight": 5}})
    assert evolution.steps == 3
    assert evolution.evolved == {"conv_weight": 0, "conv_bias": 0, "bn_weight": 5, "bn_bias": 0}


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_the_state_is_plain_data_that_a_json_round_trip_keeps(variant):
    import json

    evolution = WeightEvolution(bn_ramp(8), variant=variant, milestones=[3, 6])
    evolution.step(0)
    state = evolution.state_dict()
    assert state["hparams"]["milestones"] == [3, 6]
    assert json.loads(json.dumps(state)) == state  # a tuple would come back as a list


def test_the_iteration_hook_acts_after_every_interval_th_iteration_and_says_which_index_is_wrong():
    evo = WeightEvolution(bn_ramp(), selection="global", conv=False, interval=3, interval_unit="iter")
    acted = [evo.step_iteration(i, 0) is not None for i in range(9)]
    assert acted == [False, False, True, False, False, True, False, False, True]  # iterations 3, 6, 9 (1-based)
    counts = evo.step_iteration(11, 0)
    assert all(type(v) is int for v in counts.values()) and counts["bn_weight"] == 2  # floor(100 * 0.025)
    lazy = evo.step_iteration(14, 0, sync=False)
    assert isinstance(lazy["bn_weight"], torch.Tensor) and int(lazy["bn_weight"]) == 2
    with pytest.raises(ValueError, match=r"^iteration must be a non-negative integer \(0-based\), got -1$"):
        evo.step_iteration(-1, 0)
    with pytest.raises(ValueError, match=r"^epoch must be a non-negative integer \(0-based\), got -2$"):
        evo.step_iteration(2, -2)


def test_the_loop_oracle_defaults_are_the_papers():
    """Sec. 4.1.2 and Sec. 3: gamma 0.05, forward matching, global+local selection, adaptive alpha,
    element-level crossover, conv and BN both evolved."""
    defaults = {k: p.default for k, p in inspect.signature(evolve_reference).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"gamma": 0.05, "matching": "forward", "conv": True, "bn": True,
                        "selection": "global+local", "alpha": "adaptive", "level": "element"}


@pytest.mark.parametrize("alpha, inf, dom, expected", [
    ("adaptive", 0.25, 0.75, 0.25),  # |inf| / (|inf| + |dom|), here with a sum of exactly 1
    ("adaptive", 0.5, 0.5, 0.5), ("adaptive", 3.0, 1.0, 0.75),
    ("adaptive", 0.0, 0.0, 1.0),  # both zero: alpha 1, the inferior unit kept
    (0.3, 5.0, 7.0, 0.3)])
def test_the_loop_oracle_alpha_is_eq6(alpha, inf, dom, expected):
    from we.core.reference import _alpha

    assert _alpha(alpha, inf, dom) == pytest.approx(expected, abs=1e-12)


def test_a_weight_norm_conv_is_written_back_only_in_its_evolved_filters():
    """we.core.layers: an evolved filter i gets v_i = w'_i and g_i = ||w'_i||; the others keep their v and g
    (here v = 2 w: the same effective weight, another v). A second step writes only what it changed."""
    from torch.nn.utils import parametrizations

    values = [[0.1, -0.2], [3.0, 1.0], [0.3, 0.1], [2.0, -4.0]]  # filter j: its two 1x1 slices
    def net() -> nn.Sequential:
        layer = nn.Conv2d(2, 4, 1, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(values).view(4, 2, 1, 1))
        return nn.Sequential(layer)

    def step() -> torch.Tensor:
        """One WE-G step on both twins; which filters it changed."""
        before = plain[0].weight.detach().clone()
        hp = dict(gamma=0.5, selection="global", bn=False)
        assert evolve(normed, 0.5, **hp) == evolve_reference(plain, 0.5, **hp)
        torch.testing.assert_close(normed[0].weight, plain[0].weight)
        return (plain[0].weight != before).flatten(1).any(1)

    plain, normed = net(), net()
    parametrizations.weight_norm(normed[0])
    wn = normed[0].parametrizations.weight
    with torch.no_grad():
        wn.original1.mul_(2.0)  # v = 2 w: w = g v / ||v|| unchanged
    torch.testing.assert_close(normed[0].weight, plain[0].weight)
    v_before, g_before = wn.original1.detach().clone(), wn.original0.detach().clone()
    changed = step()
    assert changed.tolist() == [True, False, True, False]  # importance 0.15 and 0.2: the two weakest
    w = plain[0].weight.detach()
    torch.testing.assert_close(wn.original1[changed], w[changed])
    torch.testing.assert_close(wn.original0[changed].flatten(), w[changed].flatten(1).norm(dim=1))
    assert torch.equal(wn.original1[~changed], v_before[~changed])
    assert torch.equal(wn.original0[~changed], g_before[~changed])
    with torch.no_grad():
        wn.original1.mul_(3.0)  # as training might: another v, the same effective weight
    v_between = wn.original1.detach().clone()
    again = step()
    assert again.any() and (changed & ~again).any()  # a filter the first step wrote, the second did not
    assert torch.equal(wn.original1[~again], v_between[~again])


@pytest.mark.parametrize("value", [0, -3, 1.0, True, "2", None])
def test_a_positive_int_check_names_the_key_and_the_value(value):
    from we.core.checks import check_positive_int

    assert check_positive_int("every_n_steps", 1) == 1 and check_positive_int("every_n_steps", 7) == 7
    with pytest.raises(ValueError) as caught:
        check_positive_int("every_n_steps", value)
    assert str(caught.value) == f"every_n_steps must be an integer >= 1, got {value!r}"


def test_the_loop_oracle_leaves_an_all_zero_group_alone():
    """No unit of an all-zero layer is relatively weak (0 / 0 is no ratio below gamma): nothing evolves."""
    model = nn.Sequential(conv1x1([0.0, 0.0, 0.0, 0.0]))
    assert evolve_reference(model, 0.5, bn=False) == {k: 0 for k in KINDS}
    assert filters(model[0]) == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("value, ok", [
    ([0, 5], True), ((1, 2, 90), True), ([], True), ([7], True),
    ([3, 3], False), ([1, 5, 2], False), ([5, 1], False), ([-1, 3], False), ([1.5, 3], False), ([True, 3], False),
    (5, False), ("60,120", False)])
def test_milestones_are_strictly_increasing_non_negative_ints(value, ok):
    from we.core.checks import check_milestones

    if ok:
        assert check_milestones("milestones", value) == tuple(value)
    else:
        with pytest.raises(ValueError) as caught:
            check_milestones("milestones", value)
        assert str(caught.value) == f"milestones must be a list of increasing epochs, got {value!r}"


@pytest.mark.parametrize("value, kind", [(1.5, "float"), ("3", "str"), (None, "NoneType"), (True, "bool")])
def test_a_hook_index_of_the_wrong_type_names_its_type(value, kind):
    with pytest.raises(TypeError) as caught:
        WeightEvolution(bn_ramp(4)).step(value)
    assert str(caught.value) == f"epoch must be a non-negative integer (0-based), got {kind} {value!r}"


@pytest.mark.parametrize("importance, rate, expected", [
    ([1.0, 2.0, 2.0, 2.0, 3.0], 0.4, [True, True, False, False, False]),  # W_tbd of 2: the 1, then the first 2
    ([2.0, 1.0, 2.0, 0.5, 2.0], 0.6, [True, True, False, True, False]),   # of 3: 0.5, 1, then the first 2
    ([3.0, 1.0, 2.0, 4.0, 5.0], 0.19, [False] * 5),                       # floor(0.95) = 0: none
])
def test_w_tbd_is_the_floor_rate_times_n_weakest_ties_first_in_the_pool(importance, rate, expected):
    from we.core.selection import select_global

    mask = select_global(torch.tensor(importance), rate)
    assert mask.dtype == torch.bool and mask.tolist() == expected


@pytest.mark.parametrize("rate, message", [(1.5, "rate must be <= 1.0, got 1.5"), (-0.1, "rate must be >= 0.0, got -0.1"),
                                           ("0.1", "rate must be a finite number, got '0.1'")])
def test_a_step_rate_outside_zero_to_one_is_refused_by_name(rate, message):
    with pytest.raises(ValueError) as caught:
        evolve(bn_ramp(4), rate)
    assert str(caught.value) == message


def test_a_step_returns_ints_unless_told_not_to_synchronise():
    counts = evolve(bn_ramp(), 0.1, selection="global", conv=False)
    assert counts["bn_weight"] == 10 and all(type(v) is int for v in counts.values())  # floor(100 * 0.1)

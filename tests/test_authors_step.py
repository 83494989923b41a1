"""Authors'-script semantics (we.core.authors_step): each rule on hand-built tensors, the shared counter,
and equality with a line-by-line loop transcription of the script on random networks."""

from __future__ import annotations

import copy
import inspect
import io
import math

import pytest
import torch
from torch import nn

from we.core.hook import WeightEvolution
from we.core.authors_step import (AuthorsStep, evolve_authors_step, inferior_counts, stage_rate,
                              threshold)
from we.core.units import pool_layout

CONV_ONLY = {"conv_weight": 0.5, "bn_weight": 0.0, "bn_bias": 0.0}


def conv(weight, bias=None, groups=1) -> nn.Conv2d:
    weight = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                      groups=groups, bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def col(values) -> list:
    """Weights of a 1 -> len(values) 1x1 conv."""
    return [[[[v]]] for v in values]


def bn(weight, bias) -> nn.BatchNorm2d:
    layer = nn.BatchNorm2d(len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def first(layer: nn.Conv2d) -> list[float]:
    return layer.weight.detach().flatten(1)[:, 0].tolist()


# ------------------------------------------------------------------------------ rate, threshold

def test_stage_divisors_are_1_2_5_5():
    assert stage_rate(0, 0.2) == pytest.approx(0.1)
    assert stage_rate(30, 0.2) == pytest.approx(0.2 / (1 + math.exp(-2)))
    assert stage_rate(60, 0.2) == pytest.approx(0.2 / 2.5 * 0.5)
    # third stage divides by 5 (the paper's beta ** 2 would be 6.25)
    assert stage_rate(120, 0.2) == pytest.approx(0.2 / 5 * 0.5)
    rates = AuthorsStep(nn.Sequential(), flavour="cifar").rates(120)
    assert rates == pytest.approx({"conv_weight": 0.02, "bn_weight": 0.005, "bn_bias": 0.005})


def test_imagenet_flavour_schedule():
    evo = AuthorsStep(nn.Sequential(), flavour="imagenet")
    assert evo.hparams["divisors"] == (1.0, 2.0, 4.0) and evo.hparams["milestones"] == (30, 60)
    # epoch 38: stage 2, 0.02 / 2 * sigmoid(8 / 8)
    assert evo.rates(38)["conv_weight"] == pytest.approx(0.01 / (1 + math.exp(-1)))
    assert evo.rates(60)["bn_weight"] == pytest.approx(0.02 / 4 * 0.5)


def test_threshold_indexes_int_of_len_times_rate():
    pool = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])
    assert threshold(pool, 0.3).item() == 2.0  # int(1.5) = 1 (rounding would give 3.0)
    assert threshold(pool, 0.5).item() == 3.0  # int(2.5) = 2
    assert threshold(pool, 0.0).item() == 1.0


# ---------------------------------------------------------------------------------- crossover

def test_signed_crossover_replaces_every_element_equal_to_s():
    # dominant slice: largest |.| is l = -2 ; inferior slice: smallest |.| first is s = 0.05,
    # also at index 1; -0.05 (index 2) has the same |.| but is not equal to s.
    # scores 10 and 0.51: pool [10, 0.51], rate 0.5 -> th = 10, high = 1, count = 1
    dom = [-2.0, 1, 1, 1, 1, 1, 1, 1, 1]
    inf = [0.05, 0.05, -0.05, 0.06, 0.06, 0.06, 0.06, 0.06, 0.06]
    as_filter = lambda values: [torch.tensor(values).view(3, 3).tolist()]  # 1 slice of 3x3
    net = nn.Sequential(conv([as_filter(dom), as_filter(inf)]))
    assert evolve_authors_step(net, CONV_ONLY)["conv_weight"] == 1
    new = 2 * -2.0 * 0.05 / (-2.0 + 0.05)  # 2ls / (l + s) = 0.10256 (alpha = s / (s + l) < 0)
    expected = [new, new, -0.05] + [0.06] * 6
    torch.testing.assert_close(net[0].weight.detach()[1].flatten(), torch.tensor(expected))
    torch.testing.assert_close(net[0].weight.detach()[0].flatten(), torch.tensor(dom))


def test_signed_crossover_leaves_slice_when_l_plus_s_is_zero():
    # slice 0: s = 0.1 (all nine equal), l = 10 -> all nine become 2 * 10 * 0.1 / 10.1
    # slice 1: s = 0.05, l = -0.05 -> l + s == 0: left unchanged (the script would write inf)
    # scores: dominant (90 + 0.05) / 2 = 45.025, inferior (0.9 + 0.05 + 0.56) / 2 = 0.755
    dom = [[[10.0] * 3] * 3, [[-0.05, 0, 0], [0, 0, 0], [0, 0, 0]]]
    inf = [[[0.1] * 3] * 3, [[0.05, 0.07, 0.07], [0.07] * 3, [0.07] * 3]]
    net = nn.Sequential(conv([dom, inf]))
    assert evolve_authors_step(net, CONV_ONLY)["conv_weight"] == 1
    w = net[0].weight.detach()
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w[1, 0], torch.full((3, 3), 2 * 10 * 0.1 / 10.1))
    torch.testing.assert_close(w[1, 1], torch.tensor(inf[1]))


def test_kernel_height_one_blends_the_whole_filter():
    # 2 -> 2, 1x1: f0 = [4, -2] (L1 6, score 3), f1 = [0.1, 0.2] (L1 0.3, score 0.15 <= 0.3)
    net = nn.Sequential(conv([[[[4.0]], [[-2.0]]], [[[0.1]], [[0.2]]]]))
    assert evolve_authors_step(net, CONV_ONLY)["conv_weight"] == 1
    a = 0.3 / 6.3
    expected = [a * 0.1 + (1 - a) * 4.0, a * 0.2 + (1 - a) * -2.0]
    torch.testing.assert_close(net[0].weight.detach()[1].flatten(), torch.tensor(expected))
    torch.testing.assert_close(net[0].weight.detach()[0].flatten(), torch.tensor([4.0, -2.0]))


def test_a_grouped_1x3_conv_blends_whole_filters_across_its_groups():
    """Kernel height 1 (here 1x3) blends the whole filter, and a grouped conv is one layer: its filters are
    ordered and paired over the layer, not per group. 4 -> 4 channels in 2 groups (2 inputs a filter):
    scores sum|w| / 2: f0 3, f1 0.25, f2 6, f3 2.4; rate 0.5 -> th = sorted[2] = 3, high = 2;
    count = #(s <= 0.1 * 6) = 1 -> f1 (group 0) pairs with f2 (group 1), the strongest of the layer,
    alpha = L1(f1) / (L1(f1) + L1(f2)) = 0.5 / 12.5."""
    tiny = [[[0.1, -0.2, 0.1]], [[0.05, 0.0, 0.05]]]
    weights = [[[[1.0] * 3]] * 2, tiny, [[[2.0] * 3]] * 2, [[[0.8] * 3]] * 2]
    net = nn.Sequential(conv(weights, groups=2))
    assert net[0].groups == 2 and tuple(net[0].weight.shape) == (4, 2, 1, 3)
    assert evolve_authors_step(net, CONV_ONLY)["conv_weight"] == 1
    a = 0.5 / 12.5
    expected = a * torch.tensor(tiny) + (1 - a) * 2.0
    torch.testing.assert_close(net[0].weight.detach()[1], expected)
    for j, w in ((0, 1.0), (2, 2.0), (3, 0.8)):  # the other filters are untouched
        torch.testing.assert_close(net[0].weight.detach()[j], torch.full((2, 1, 3), w))


def test_bn_weight_and_bias_blend_with_abs_alpha_and_conv_bias_is_untouched():
    # BN bias [1.0, -0.05]: pool |.| sorted [0.05, 1.0], rate 0.5 -> th = 1.0, high = 1,
    # count = #(|v| <= 0.1) = 1 -> -0.05 <-> 1.0 with alpha = 0.05 / 1.05
    net = nn.Sequential(conv(col([1.0, 1.0]), bias=[1.0, 0.001]), bn([1.0, 1.0], [1.0, -0.05]))
    counts = evolve_authors_step(net, {"conv_weight": 0.5, "bn_weight": 0.5, "bn_bias": 0.5})
    assert counts == {"conv_weight": 0, "conv_bias": 0, "bn_weight": 0, "bn_bias": 1}
    a = 0.05 / 1.05
    torch.testing.assert_close(net[1].bias.detach(), torch.tensor([1.0, a * -0.05 + (1 - a) * 1.0]))
    assert net[0].bias.detach().tolist() == pytest.approx([1.0, 0.001])


def test_pairs_follow_descending_order_with_the_inferior_tail():
    # scores [0.05, 1, 0.02, 0.8]: descending [1, 0.8, 0.05, 0.02], all <= 0.1 -> count 2
    # pool rate 0.75 -> th = 1 -> high 1 -> count = min(2, 3) = 2 ; pairs k < min(2, 2):
    # 1 <-> 0.05 (first of the tail), 0.8 <-> 0.02
    net = nn.Sequential(conv(col([0.05, 1.0, 0.02, 0.8])))
    assert evolve_authors_step(net, {"conv_weight": 0.75, "bn_weight": 0, "bn_bias": 0})["conv_weight"] == 2
    blend = lambda j, i: abs(j) / (abs(j) + abs(i)) * j + abs(i) / (abs(j) + abs(i)) * i
    assert first(net[0]) == pytest.approx([blend(0.05, 1.0), 1.0, blend(0.02, 0.8), 0.8])


def test_count_is_capped_at_n_minus_high():
    # scores [1, 0.05, 0.04, 0.03]; rate 0.25 -> th = sorted[1] = 0.04 -> high 3, N - high = 1
    # count = #(<= 0.1) = 3 -> 1 ; the single inferior is the last of the descending order
    net = nn.Sequential(conv(col([1.0, 0.05, 0.04, 0.03])))
    assert evolve_authors_step(net, {"conv_weight": 0.25, "bn_weight": 0, "bn_bias": 0})["conv_weight"] == 1
    assert first(net[0])[:3] == pytest.approx([1.0, 0.05, 0.04])
    assert first(net[0])[3] == pytest.approx((0.03 * 0.03 + 1.0 * 1.0) / 1.03)  # 1x1: L1 blend with 1.0


# ---------------------------------------------------------------------------------- counter

def counter_net() -> nn.Sequential:
    # 4 convs -> limit 4 / ln_c(2) = 2. Layers 1-3 [1.0, 0.5]: high 1 < N but nothing <= 0.1;
    # layer 4 [1.0, 1.0]: high == N, counter unchanged. Pool rate 0.5 -> sorted[4] = 1.0
    return nn.Sequential(conv(col([1.0, 0.5])), conv(col([1.0, 0.5])), conv(col([1.0, 0.5])),
                         conv(col([1.0, 1.0])))


def changed_layers(net, before) -> list[int]:
    return [i for i, (m, b) in enumerate(zip(net, before)) if not torch.equal(m.weight, b.weight)]


def test_counter_is_shared_across_layers_and_kept_across_epochs():
    net = counter_net()
    counters: dict = {}
    before = copy.deepcopy(net)
    # epoch 1: counter 1 (L1), 2 -> forced count 1 at L2, reset 0, 1 (L3), unchanged (L4)
    assert evolve_authors_step(net, CONV_ONLY, counters=counters)["conv_weight"] == 1
    assert changed_layers(net, before) == [1]
    assert int(counters["conv_weight"]) == 1
    assert first(net[1])[1] == pytest.approx(0.5 / 1.5 * 0.5 + 1.0 / 1.5 * 1.0)
    # epoch 2 starts from 1: forced at L1 (reset), 1 (L2), forced at L3 (reset), L4 unchanged
    before = copy.deepcopy(net)
    assert evolve_authors_step(net, CONV_ONLY, counters=counters)["conv_weight"] == 2
    assert changed_layers(net, before) == [0, 2]
    assert int(counters["conv_weight"]) == 0


def test_counter_resets_when_a_layer_has_inferior_filters():
    # L1 [1, 0.5] -> 1 ; L2 [1, 0.05] has an inferior filter -> reset to 0 ; L3 -> 1 ; L4 -> 2 forced
    net = nn.Sequential(conv(col([1.0, 0.5])), conv(col([1.0, 0.05])), conv(col([1.0, 0.5])),
                        conv(col([1.0, 0.5])))
    counters: dict = {}
    before = copy.deepcopy(net)
    evolve_authors_step(net, CONV_ONLY, counters=counters)
    assert changed_layers(net, before) == [1, 3]
    assert int(counters["conv_weight"]) == 0


def test_inferior_counts_logic_directly():
    scores = torch.tensor([1.0, 0.5])
    one_layer = pool_layout([scores], [1])
    th = torch.tensor(1.0)
    count, counter = inferior_counts(scores, one_layer, th, 0.1, torch.tensor(0), limit=2.0)
    assert (count.tolist(), int(counter)) == ([0], 1)
    count, counter = inferior_counts(scores, one_layer, th, 0.1, counter, limit=2.0)
    assert (count.tolist(), int(counter)) == ([1], 0)
    # high == N: counter unchanged
    count, counter = inferior_counts(scores, one_layer, torch.tensor(0.1), 0.1, torch.tensor(5), limit=9.0)
    assert (count.tolist(), int(counter)) == ([0], 5)


def sequential_counts(high, low, sizes, counter, limit):
    """The script's loop over layers, on plain ints."""
    out = []
    for h, lo, n in zip(high, low, sizes):
        real = 0
        if h != n:
            if lo == 0:
                counter += 1
                if counter >= limit:
                    real, counter = 1, 0
            else:
                real, counter = lo, 0
        out.append(min(real, n - h))
    return out, counter


@pytest.mark.parametrize("seed", range(5))
def test_inferior_counts_scan_equals_the_layer_loop(seed):
    # Many layers of 4 units: each is high == N, has inferior units, or has none (a bump);
    # carried counters beyond the limit and limits below 1 included.
    g = torch.Generator().manual_seed(seed)
    kinds = torch.randint(0, 3, (40,), generator=g).tolist() if seed else [0] * 40  # seed 0: all high
    layers = [torch.tensor({0: [2.0, 2.0, 2.0, 2.0], 1: [1.0, 0.05, 0.5, 0.5], 2: [1.0, 0.5, 0.5, 0.6]}[k])
              for k in kinds]
    scores = torch.cat(layers)
    layout = pool_layout(layers, [1] * len(layers))
    low = [1 if k == 1 else 0 for k in kinds]
    for start, limit in ((0, 3.0), (2, 2.5), (7, 4.0), (0, 0.5), (1, 1.0)):
        count, counter = inferior_counts(scores, layout, torch.tensor(1.5), 0.1, torch.tensor(start), limit)
        high_counts = [4 if k == 0 else 0 for k in kinds]  # th = 1.5: only the all-2 layers are high
        assert (count.tolist(), int(counter)) == sequential_counts(high_counts, low, [4] * 40, start, limit)


def test_counters_are_separate_per_kind():
    # BN weight [1, 0.5] never has count > 0; its counter grows without touching the conv one
    net = nn.Sequential(conv(col([1.0, 1.0])), bn([1.0, 0.5], [1.0, 1.0]), conv(col([1.0, 1.0])),
                        conv(col([1.0, 1.0])), conv(col([1.0, 1.0])))
    counters: dict = {}
    evolve_authors_step(net, {"conv_weight": 0.5, "bn_weight": 0.5, "bn_bias": 0.0}, counters=counters)
    assert int(counters["bn_weight"]) == 1 and int(counters["conv_weight"]) == 0


# ---------------------------------------------------------------------------------- flavours

def test_imagenet_flavour_pools_undivided_conv_scores():
    # A: 4 -> 2 1x1, filters all 1 (score 1, L1 4) and all 0.05 (score 0.05, L1 0.2)
    # B: 1 -> 2 1x1 [0.01, 0.4]. rate 0.25 -> index 1:
    #   cifar pool [1, .05, .01, .4] -> th .05 -> A high == N, untouched
    #   imagenet pool [4, .2, .01, .4] -> th .2 -> A high 1, 0.05 <= 0.1 -> A evolves
    def make():
        return nn.Sequential(conv([[[[1.0]]] * 4, [[[0.05]]] * 4]), conv(col([0.01, 0.4])))
    rates = {"conv_weight": 0.25, "bn_weight": 0, "bn_bias": 0}
    for flavour, a_changes in (("cifar", False), ("imagenet", True)):
        net = make()
        evolve_authors_step(net, rates, flavour=flavour)
        a = 0.2 / (0.2 + 4.0)  # A: L1 0.2 against L1 4, the whole 1x1 filter blends
        assert first(net[0])[1] == pytest.approx(a * 0.05 + (1 - a) * 1.0 if a_changes else 0.05)
        assert first(net[1])[0] == pytest.approx((0.01 * 0.01 + 0.4 * 0.4) / 0.41)  # B: 0.01 <-> 0.4 in both


def test_imagenet_flavour_pools_signed_bn_weight():
    # BN weight [-1, -0.9, 0.5, 0.05], rate 0.5 -> index 2:
    #   cifar |.| sorted [.05, .5, .9, 1] -> th .9 -> high 2, count #(<= 0.1) = 1 -> evolves
    #   imagenet signed sorted [-1, -.9, .05, .5] -> th .05 -> high == N -> nothing
    rates = {"conv_weight": 0.0, "bn_weight": 0.5, "bn_bias": 0.0}
    for flavour, expected in (("cifar", 1), ("imagenet", 0)):
        net = nn.Sequential(bn([-1.0, -0.9, 0.5, 0.05], [1.0] * 4))
        assert evolve_authors_step(net, rates, flavour=flavour)["bn_weight"] == expected


# ---------------------------------------------------------------- transcription of the script

def script_step(net: nn.Module, epoch: int, counters: dict, h: dict) -> None:
    """The script's valid_num + evolution with Python loops (counters: plain ints)."""
    stage = sum(epoch >= m for m in h["milestones"])
    e0 = ([0] + list(h["milestones"]))[stage]
    factor = 1 / (1 + math.exp(-(epoch - e0) / h["eta"]))
    radio = {k: (h[k] / h["divisors"][stage]) * factor for k in ("radio_conv", "radio_bn", "radio_bias")}
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    def scores_of(w):
        return torch.norm(w.reshape(w.shape[0], -1), p=1, dim=1) / w.shape[1]

    norm = torch.cat([scores_of(m.weight.data) for m in convs])
    norm_bn = torch.cat([m.weight.data.abs() for m in bns])
    norm_bias = torch.cat([m.bias.data.abs() for m in bns])
    th = {"conv": sorted(norm)[int(len(norm) * radio["radio_conv"])],
          "bn": sorted(norm_bn)[int(len(norm_bn) * radio["radio_bn"])],
          "bias": sorted(norm_bias)[int(len(norm_bias) * radio["radio_bias"])]}
    limit = len(convs) / h["ln_c"]

    def count_of(scores_desc, key):
        n = len(scores_desc)
        high = sum(1 for v in scores_desc if v >= th[key])
        real = 0
        if high != n:
            real = len([v for v in scores_desc if v.abs() <= scores_desc[0].abs() * h["lab"]])
            if real == 0:
                counters[key] += 1
                if counters[key] >= limit:
                    real, counters[key] = 1, 0
            else:
                counters[key] = 0
        return min(real, n - high)

    def blend(t, i, j, mag_j, mag_i):
        a = mag_j / (mag_j + mag_i)
        t[j] = t[j] * a + t[i] * (1 - a)

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight.data
                scores, order = scores_of(w).sort(descending=True, stable=True)
                cut = len(scores) - count_of(scores, "conv")
                for i, j in zip(order[:cut].tolist(), order[cut:].tolist()):
                    if w[j].shape[1] == 1:
                        blend(w, i, j, w[j].abs().sum(), w[i].abs().sum())
                        continue
                    for h_ in range(w.shape[1]):
                        p, q = w[i][h_].flatten().tolist(), w[j][h_]
                        large = sorted(p, key=abs, reverse=True)[0]
                        small = sorted(q.flatten().tolist(), key=abs)[0]
                        if large + small == 0:
                            continue
                        a = small / (small + large)
                        w[j][h_] = torch.where(q == small, torch.tensor(large * a + small * (1 - a)), q)
            if isinstance(m, nn.BatchNorm2d):
                for t, key in ((m.weight.data, "bn"), (m.bias.data, "bias")):
                    scores, order = t.abs().sort(descending=True, stable=True)
                    cut = len(scores) - count_of(scores, key)
                    for i, j in zip(order[:cut].tolist(), order[cut:].tolist()):
                        blend(t, i, j, t[j].abs(), t[i].abs())


def random_net(seed: int) -> nn.Module:
    """3x3, depth-wise 3x3, 1x1, grouped 1x3 and 3x3 convs with BN; random signs; every third
    tensor spread over 10 ** U(-2.5, 0) and the others over 10 ** U(-0.5, 0), so that some layers
    have no filter under lab * max and the shared counters come into play."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.BatchNorm2d(8),
        nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12), nn.Conv2d(12, 12, (1, 3), groups=4),
        nn.BatchNorm2d(12), nn.Conv2d(12, 6, 3), nn.BatchNorm2d(6), nn.Flatten(), nn.Linear(6, 3))
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            spread = 2.5 if i % 3 == 0 else 0.5
            p.copy_(torch.randn(p.shape, generator=g).abs() + 0.5)
            p.mul_((10 ** (-spread * torch.rand(p.shape[0], generator=g))).view(-1, *[1] * (p.dim() - 1)))
            p.mul_(torch.randint(0, 2, p.shape, generator=g) * 2 - 1)
    return net


@pytest.mark.parametrize("seed, extra", [(0, {}), (1, {}), (2, {}), (0, {"lab": 0.3, "ln_c": 1.0}),
                                         (1, {"lab": 0.03, "ln_c": 4.0})])
def test_equals_script_transcription_on_random_nets(seed, extra):
    net = random_net(seed)
    mirror = copy.deepcopy(net)
    evo = AuthorsStep(net, radio_conv=0.4, radio_bn=0.3, radio_bias=0.3,
                     milestones=(2, 4), eta=2.0, **extra)
    assert all(evo.hparams[k] == v for k, v in extra.items())
    counters = {"conv": 0, "bn": 0, "bias": 0}
    total, counter_seen = 0, False
    for epoch in range(6):
        total += sum(evo.step(epoch).values())
        script_step(mirror, epoch, counters, evo.hparams)
        for a, b in zip(net.parameters(), mirror.parameters()):
            torch.testing.assert_close(a, b)
        assert {k: int(v) for k, v in evo.counters.items()} == {
            "conv_weight": counters["conv"], "bn_weight": counters["bn"], "bn_bias": counters["bias"]}
        counter_seen |= any(counters.values())
    assert total > 0 and counter_seen


# ------------------------------------------------------------------------------ state and hook

def test_state_dict_round_trip_restores_counters():
    # eta tiny: sigmoid((e - 0) / eta) = 1 from epoch 1 on, so the conv rate is radio_conv = 0.5
    hp = dict(variant="official", radio_conv=0.5, radio_bn=0.0, radio_bias=0.0, eta=1e-3)
    net_a = counter_net()
    a = WeightEvolution(net_a, **hp)
    a.step(1)
    assert a.state_dict()["official"]["counters"]["conv_weight"] == 1
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    net_b = copy.deepcopy(net_a)
    net_fresh = copy.deepcopy(net_a)
    b = WeightEvolution(net_b)  # paper defaults: replaced by the saved variant and hparams
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.variant == "official" and b.hparams == a.hparams and b.steps == 1
    # counter 1 carried over: forced at L1 and L3
    assert a.step(2) == b.step(2) == {"conv_weight": 2, "conv_bias": 0, "bn_weight": 0, "bn_bias": 0}
    for x, y in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(x, y)
    # without the counter the same step forces at L2 only
    assert WeightEvolution(net_fresh, **hp).step(2)["conv_weight"] == 1


def test_authors_step_hook_interval_and_validation():
    evo = WeightEvolution(counter_net(), variant="official", interval=2, eta=1e-3, radio_conv=0.5)
    assert evo.step(0) is None and evo.step(1) is not None
    with pytest.raises(TypeError, match="gamma"):
        WeightEvolution(counter_net(), variant="official", gamma=0.1)
    with pytest.raises(ValueError, match="flavour"):
        WeightEvolution(counter_net(), variant="official", flavour="svhn")
    with pytest.raises(ValueError, match="radio_conv"):
        WeightEvolution(counter_net(), variant="official", radio_conv=1.0)
    with pytest.raises(ValueError, match="divisors"):
        WeightEvolution(counter_net(), variant="official", divisors=(1, 2))


@pytest.mark.parametrize("switch, untouched", [("conv", nn.Conv2d), ("bn", nn.BatchNorm2d)])
def test_authors_step_switches_leave_their_layers_untouched(switch, untouched):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1)
                m.bias.uniform_(0.5, 1)
                m.weight[0] = m.bias[0] = 1e-3  # one clearly inferior unit per BN layer
            elif isinstance(m, nn.Conv2d):
                m.weight[0] *= 1e-3  # and one clearly inferior conv filter
    before = copy.deepcopy(model.state_dict())
    evo = WeightEvolution(model, variant="official", radio_conv=0.5, radio_bn=0.5, radio_bias=0.5,
                          **{switch: False})
    counts = evo.step(100)
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, before[n])}
    kinds = ("conv_weight",) if switch == "conv" else ("bn_weight", "bn_bias")
    assert all(counts[k] == 0 for k in kinds)
    names = {n for n, m in model.named_modules() if isinstance(m, untouched)}
    assert not any(c.rsplit(".", 1)[0] in names for c in changed)
    assert changed, "the other kind should still evolve"


def test_counters_are_restored_on_the_models_device_and_on_the_cpu_without_parameters():
    model = nn.Sequential(conv(col([1.0, 2.0])), bn([1.0, 2.0], [0.5, 0.5])).to("meta")
    evolution = AuthorsStep(model)
    evolution.load_state_dict({"counters": {"conv_weight": 3, "bn_weight": 1}})
    assert {k: (v.device.type, v.dtype) for k, v in evolution.counters.items()} == \
        {"conv_weight": ("meta", torch.long), "bn_weight": ("meta", torch.long)}
    without = AuthorsStep(nn.ReLU())
    with torch.device("meta"):  # the default device does not decide: no parameter, the CPU
        without.load_state_dict({"counters": {"conv_weight": 2}})
    assert without.counters["conv_weight"].device.type == "cpu" and int(without.counters["conv_weight"]) == 2


@pytest.mark.parametrize("flavour, expected", [("cifar", 1), ("imagenet", 0)])
def test_the_hook_steps_with_its_flavour_and_returns_ints(flavour, expected):
    """The signed-BN case above through AuthorsStep.step: its flavour reaches the step."""
    evolution = AuthorsStep(nn.Sequential(bn([-1.0, -0.9, 0.5, 0.05], [1.0] * 4)), flavour=flavour)
    evolution.rates = lambda epoch: {"conv_weight": 0.0, "bn_weight": 0.5, "bn_bias": 0.0}
    counts = evolution.step(0)
    assert counts["bn_weight"] == expected and all(type(v) is int for v in counts.values())
    assert isinstance(evolution.step(0, sync=False)["bn_weight"], torch.Tensor)


@pytest.mark.parametrize("given, message", [
    ({"radio_cnv": 0.2}, "unknown official hparam 'radio_cnv'; known: ['bn', 'conv', 'divisors', 'eta', 'flavour', "
                         "'lab', 'ln_c', 'milestones', 'radio_bias', 'radio_bn', 'radio_conv']"),
    ({"flavour": "svhn"}, "flavour must be one of ['cifar', 'imagenet'], got 'svhn'"),
    ({"conv": "yes"}, "conv must be true or false, got 'yes'"),
    ({"bn": 1}, "bn must be true or false, got 1"),
    ({"radio_conv": -0.1}, "radio_conv must be >= 0.0, got -0.1"),
    ({"radio_bn": 1.5}, "radio_bn must be <= 1.0, got 1.5"),
    ({"radio_bias": 1.0}, "radio_bias must be < 1, got 1.0"),
    ({"lab": -0.1}, "lab must be >= 0.0, got -0.1"), ({"lab": "0.1"}, "lab must be a finite number, got '0.1'"),
    ({"ln_c": 0}, "ln_c must be > 0.0, got 0"), ({"ln_c": -2}, "ln_c must be > 0.0, got -2"),
    ({"eta": 0.0}, "eta must be > 0.0, got 0.0"), ({"eta": -1}, "eta must be > 0.0, got -1"),
    ({"milestones": (5, 2)}, "milestones must be a list of increasing epochs, got (5, 2)"),
    ({"divisors": (1.0, 2.0)}, "divisors must list one divisor per stage (3), got (1.0, 2.0)"),
    ({"divisors": 2.0}, "divisors must list one divisor per stage (3), got 2.0"),
    ({"divisors": [1.0, 0.0, 2.0]}, "divisors must be > 0.0, got 0.0"),
])
def test_a_bad_official_hparam_is_named_in_the_whole_message(given, message):
    with pytest.raises((TypeError, ValueError)) as caught:
        AuthorsStep(nn.Sequential(), **given)
    assert str(caught.value) == message


def test_official_hparams_take_the_edges_of_their_ranges():
    """lab 0 and radio 0 are allowed (closed at 0); ln_c and eta only above 0, however small."""
    h = AuthorsStep(nn.Sequential(), lab=0, radio_conv=0.0, ln_c=0.5, eta=1e-3, milestones=[1, 2]).hparams
    assert (h["lab"], h["radio_conv"], h["ln_c"], h["eta"], h["milestones"]) == (0.0, 0.0, 0.5, 1e-3, (1, 2))


def test_the_script_step_defaults_are_the_scripts():
    """official-code-notes: lab 0.1 (a filter under 10% of the layer's largest), ln_c 2 (limit = convs / 2),
    the CIFAR script, both kinds evolved, counts as ints."""
    defaults = {k: p.default for k, p in inspect.signature(evolve_authors_step).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"lab": 0.1, "ln_c": 2, "flavour": "cifar", "conv": True, "bn": True, "counters": None,
                        "sync": True}


def test_fresh_counters_are_long_tensors_on_the_models_device():
    model = nn.Sequential(conv(col([1.0, 2.0, 0.01])), bn([1.0, 2.0, 0.01], [0.5, 0.5, 0.5])).to("meta")
    counters: dict = {}
    evolve_authors_step(model, {"conv_weight": 0.5, "bn_weight": 0.5, "bn_bias": 0.5}, counters=counters, sync=False)
    assert {k: (v.device.type, v.dtype) for k, v in counters.items()} == \
        {k: ("meta", torch.long) for k in ("conv_weight", "bn_weight", "bn_bias")}


def test_threshold_takes_the_sorted_pools_element_at_the_rate_clamped_to_the_last():
    pool = torch.tensor([0.5, 0.1, 0.4, 0.2, 0.3])  # sorted: 0.1 0.2 0.3 0.4 0.5
    assert [float(threshold(pool, r)) for r in (0.0, 0.19, 0.2, 0.5, 0.99, 1.0)] == \
        pytest.approx([0.1, 0.1, 0.2, 0.3, 0.5, 0.5])


def test_a_score_of_exactly_lab_times_the_largest_is_inferior():
    """The script's `<=`: 0.25 <= 0.25 * 1.0 (exact in float32) counts, and resets the counter."""
    scores = torch.tensor([1.0, 0.5, 0.25])
    count, counter = inferior_counts(scores, pool_layout([scores], [1]), torch.tensor(0.5), 0.25,
                                     torch.tensor(3), limit=9.0)
    assert (count.tolist(), int(counter)) == ([1], 0)

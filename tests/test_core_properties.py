"""Properties of the WE core on random layer mixes (hypothesis).

Random networks mix Conv2d layers (any kernel height and width, groups from 1 to depth-wise, with and
without bias), BatchNorm2d, and layers WE never handles (Linear, Conv1d, BatchNorm1d), in float32 or
float64, with units spread over three decades so that every rule has work to do. For every switch
combination the paper step must equal the per-filter loop oracle (`we.core.reference`, which shares no
code with the fast path), and hold on its own: only handled layers of the enabled kinds change, dtypes
stay, rate 0 is a no-op, a changed unit is always one of the floor(rate * P) least important of its
pool, and the counts equal the units that changed. The authors' step must equal the transcription of
their script (`test_authors_step.script_step`) over several epochs. Bounded so the whole file runs in
well under a minute on two cores.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from test_authors_step import script_step
from we.core import AuthorsStep, evolve, evolve_reference
from we.core.checks import KINDS

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_specs(draw) -> tuple:
    """(in, out, kernel, groups, bias) of one Conv2d; groups 1, a divisor, or depth-wise."""
    groups = draw(st.sampled_from([1, 1, 2, 3, 4]))
    depthwise = draw(st.booleans()) and groups > 1
    in_per, out_per = (1, 1) if depthwise else (draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    kernel = (draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 3])))
    return in_per * groups, out_per * groups, kernel, groups, draw(st.booleans())


layer_specs = st.one_of(
    conv_specs().map(lambda spec: ("conv", spec)),
    st.integers(1, 9).map(lambda n: ("bn", n)),
    st.sampled_from([("linear", 4), ("conv1d", 3), ("bn1d", 5)]),
)


def build(specs: list, seed: int, dtype: torch.dtype) -> nn.Module:
    """The layers of `specs` (not a runnable network: a step reads and writes parameters only),
    each unit scaled by 10 ** U(-3, 0) with random signs."""
    layers = []
    for kind, spec in specs:
        if kind == "conv":
            cin, cout, kernel, groups, bias = spec
            layers.append(nn.Conv2d(cin, cout, kernel, groups=groups, bias=bias))
        elif kind == "bn":
            layers.append(nn.BatchNorm2d(spec))
        elif kind == "linear":
            layers.append(nn.Linear(spec, 3))
        elif kind == "conv1d":
            layers.append(nn.Conv1d(spec, 2, 3))
        else:
            layers.append(nn.BatchNorm1d(spec))
    net = nn.Sequential(*layers).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
            p.mul_((10 ** (-3 * torch.rand(p.shape[0], generator=g, dtype=torch.float64))).view(
                -1, *[1] * (p.dim() - 1)).to(dtype))
    return net


def handled_kinds(net: nn.Module, conv: bool, bn: bool) -> dict[str, list[torch.Tensor]]:
    """Per kind, the tensors a step may write (Sec. 3: Conv2d filters and bias, BatchNorm2d weight and bias)."""
    tensors: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}
    for m in net.modules():
        if conv and isinstance(m, nn.Conv2d):
            tensors["conv_weight"].append(m.weight)
            if m.bias is not None:
                tensors["conv_bias"].append(m.bias)
        elif bn and isinstance(m, nn.BatchNorm2d):
            tensors["bn_weight"].append(m.weight)
            tensors["bn_bias"].append(m.bias)
    return tensors


def importance(tensor: torch.Tensor) -> torch.Tensor:
    """Eq. 1 for a filter (mean |w| over its input slices' sums), |v| for a scalar unit."""
    if tensor.dim() == 1:
        return tensor.detach().abs().double()
    return tensor.detach().abs().double().flatten(1).sum(1) / tensor.shape[1]


def changed_units(before: nn.Module, after: nn.Module, conv: bool, bn: bool) -> dict[str, list[tuple[int, int]]]:
    """Per kind, (layer index within the kind, unit) of every unit whose values differ."""
    out: dict[str, list[tuple[int, int]]] = {}
    old, new = handled_kinds(before, conv, bn), handled_kinds(after, conv, bn)
    for kind in KINDS:
        out[kind] = [(li, int(j)) for li, (a, b) in enumerate(zip(old[kind], new[kind]))
                     for j in (a != b).reshape(a.shape[0], -1).any(1).nonzero().flatten()]
    return out


switches = st.fixed_dictionaries({
    "rate": st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.just(1.0)),
    "gamma": st.one_of(st.just(0.05), st.just(1.0), st.floats(0.0, 1.5)),
    "matching": st.sampled_from(["forward", "reverse"]),
    "selection": st.sampled_from(["global+local", "global", "local"]),
    "alpha": st.sampled_from(["adaptive", "adaptive", 0.0, 0.3, 1.0]),
    "level": st.sampled_from(["element", "filter"]),
    "kinds": st.sampled_from([(True, True), (True, False), (False, True)]),
})

networks = st.tuples(st.lists(layer_specs, min_size=1, max_size=6), st.integers(0, 2**31 - 1),
                     st.sampled_from([torch.float32, torch.float64]))


def step_kwargs(s: dict) -> dict:
    """The keyword arguments of one paper step (fast path and oracle alike) for the drawn switches."""
    conv, bn = s["kinds"]
    return {"gamma": s["gamma"], "matching": s["matching"], "conv": conv, "bn": bn, "selection": s["selection"],
            "alpha": s["alpha"], "level": s["level"]}


def run_step(net: nn.Module, s: dict):
    return evolve(net, s["rate"], **step_kwargs(s))


def has_layer(net: nn.Module, conv: bool, bn: bool) -> bool:
    return any(handled_kinds(net, conv, bn).values())


@PROPERTY_SETTINGS
@given(networks, switches)
def test_paper_step_equals_the_loop_oracle(network, s):
    net = build(*network)
    if not has_layer(net, *s["kinds"]):
        with pytest.raises(ValueError, match="Sequential"):
            run_step(net, s)
        return
    oracle = copy.deepcopy(net)
    counts = run_step(net, s)
    expected = evolve_reference(oracle, s["rate"], **step_kwargs(s))
    assert counts == expected
    for (name, a), b in zip(net.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(a, b, msg=name)


@PROPERTY_SETTINGS
@given(networks, switches)
def test_paper_step_touches_only_what_it_may(network, s):
    net, dtype = build(*network), network[2]
    conv, bn = s["kinds"]
    if not has_layer(net, conv, bn):
        return
    before = copy.deepcopy(net)
    counts = run_step(net, s)
    handled = {id(t) for ts in handled_kinds(net, conv, bn).values() for t in ts}
    for (name, a), b in zip(net.named_parameters(), before.parameters()):
        assert a.dtype == dtype, name
        if id(a) not in handled:  # Linear, Conv1d, BatchNorm1d, a disabled kind: never written
            assert torch.equal(a, b), name
    for a, b in zip(net.buffers(), before.buffers()):
        assert torch.equal(a, b)
    changed = changed_units(before, net, conv, bn)
    pools = handled_kinds(before, conv, bn)
    for kind in KINDS:
        if s["selection"] != "local":
            assert s["rate"] > 0 or not changed[kind], "rate 0 evolved a unit"
        if s["alpha"] == 1.0:  # Eq. 5 with alpha 1 keeps the inferior unit
            assert not changed[kind]
        else:  # every counted pair changes its inferior unit (continuous random values)
            assert len(changed[kind]) == counts[kind], kind
        if s["selection"] != "local" and changed[kind]:  # Sec. 3.1.1: among the floor(rate * P) weakest
            imp = [importance(t) for t in pools[kind]]
            flat = torch.cat(imp)
            k = math.floor(s["rate"] * flat.numel())
            bound = flat.kthvalue(k).values if k else -math.inf
            assert all(imp[li][j] <= bound for li, j in changed[kind]), kind


@PROPERTY_SETTINGS
@given(networks, st.integers(0, 2**31 - 1))
def test_paper_step_at_rate_zero_is_the_identity(network, _):
    specs, seed, dtype = network
    net = build(specs, seed, dtype)
    if not has_layer(net, True, True):
        return
    before = copy.deepcopy(net)
    for selection in ("global+local", "global"):
        assert sum(evolve(net, 0.0, selection=selection).values()) == 0
    for a, b in zip(net.parameters(), before.parameters()):
        assert torch.equal(a, b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(conv_specs(), min_size=1, max_size=5), st.lists(st.integers(2, 8), max_size=3),
       st.integers(0, 2**31 - 1), st.floats(0.05, 0.5), st.floats(0.05, 0.5), st.floats(0.05, 0.5))
def test_authors_step_equals_the_script_transcription(convs, bns, seed, radio_conv, radio_bn, radio_bias):
    specs = [("conv", c) for c in convs] + [("bn", n) for n in bns]
    net = build(specs, seed, torch.float64)
    if not bns:
        net.append(nn.BatchNorm2d(3).double())  # the script's threshold indexes a non-empty BN pool
    mirror = copy.deepcopy(net)
    evo = AuthorsStep(net, radio_conv=radio_conv, radio_bn=radio_bn, radio_bias=radio_bias,
                            milestones=(2, 4), eta=2.0)
    counters = {"conv": 0, "bn": 0, "bias": 0}
    for epoch in range(5):
        evo.step(epoch)
        script_step(mirror, epoch, counters, evo.hparams)
        for (name, a), b in zip(net.named_parameters(), mirror.parameters()):
            torch.testing.assert_close(a, b, msg=f"epoch {epoch}: {name}")
        assert {k: int(v) for k, v in evo.counters.items()} == {
            "conv_weight": counters["conv"], "bn_weight": counters["bn"], "bn_bias": counters["bias"]}

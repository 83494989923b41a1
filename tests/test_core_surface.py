"""The core's public surface, each value from the paper, the authors' script or a hand-worked case: the
defaults of every step, Eq. 1's importance, the hook's running counts, the names and groups of the units
a step sees, the sort that orders them (ties included), and the refusals' exact wording."""
import inspect
import random
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from we.core import HPARAMS, WeightEvolution, evolve, evolve_authors_step, evolve_reference, gather_units
from we.core import reference
from we.core.checks import LEVELS, MATCHINGS, SELECTIONS
from we.core.crossover import crossover
from we.core.hook import paper_step_hparams
from we.core.layers import model_sources
from we.core.units import filter_importance, join_pools, segment_order

# Sec. 4.1.2 and Algorithm 1: gamma 0.05, forward matching, global then local selection, the adaptive
# alpha of Eq. 6 at the element level; conv and BN both evolved (Table 8's full row).
PAPER = {"gamma": 0.05, "matching": "forward", "selection": "global+local", "alpha": "adaptive",
         "level": "element", "conv": True, "bn": True}
# official-code-notes.md: lab = 0.1, ln_c = 2, the CIFAR script.
SCRIPT = {"lab": 0.1, "ln_c": 2, "flavour": "cifar", "conv": True, "bn": True}


@pytest.mark.parametrize("step, expected", [
    (evolve, {**PAPER, "sync": True}),
    (evolve_reference, PAPER),
    (crossover, {"alpha": PAPER["alpha"], "level": PAPER["level"]}),
    (evolve_authors_step, {**SCRIPT, "sync": True}),
    (gather_units, {"conv": True, "bn": True}),
    (model_sources, {"conv": True, "bn": True}),
    (WeightEvolution.evolve_now, {"sync": True}),
])
def test_a_steps_defaults_are_the_papers_or_the_scripts(step, expected):
    params = inspect.signature(step).parameters
    assert {k: params[k].default for k in expected} == expected


@pytest.mark.parametrize("key, value", [("matching", "revrese"), ("selection", "Global"), ("level", "elements")])
def test_the_oracle_refuses_a_choice_it_does_not_know(key, value):
    with pytest.raises(ValueError) as err:
        evolve_reference(spread_net(), 0.5, **{key: value})
    assert str(err.value) == f"evolve_reference knows no {{'{key}': '{value}'}}"


def test_the_oracle_knows_the_choices_the_core_checks():
    """The oracle shares no code with the core, so its own list of choices is held to the core's here."""
    assert reference.CHOICES == {"matching": MATCHINGS, "selection": SELECTIONS, "level": LEVELS}


def test_the_hparam_table_holds_the_papers_step_settings():
    assert {k: HPARAMS[k].default for k in PAPER} == PAPER


def test_filter_importance_is_eq1_mean_absolute_weight_over_input_channels():
    weight = torch.tensor([[[[1.0, -2.0]], [[0.5, 0.0]], [[-3.0, 1.5]]],    # |w| sums to 8.0 over 3 inputs
                           [[[0.0, 0.0]], [[-6.0, 0.0]], [[0.0, 3.0]]]])   # 9.0
    assert torch.equal(filter_importance(weight), torch.tensor([8.0 / 3, 3.0]))
    assert torch.equal(filter_importance(weight, average=False), torch.tensor([8.0, 9.0]))


def test_the_element_crossover_of_two_gene_slices_moves_only_the_weakest_gene():
    """Eqs. 5-6 on a 1x2 kernel: in the inferior slice (1, -4) the weakest gene is 1, the partner's (3, 0.5)
    strongest is 3; alpha = 1 / (1 + 3) = 0.25, so 1 becomes 0.25 * 1 + 0.75 * 3 = 2.5 and -4 stays."""
    inf, dom = torch.tensor([[[1.0, -4.0]]]), torch.tensor([[[3.0, 0.5]]])
    assert torch.equal(crossover(inf, dom), torch.tensor([[[2.5, -4.0]]]))
    assert torch.equal(crossover(inf, dom, alpha=0.5), torch.tensor([[[2.0, -4.0]]]))


def spread_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2),
                        nn.BatchNorm2d(8))
    with torch.no_grad():  # importances spread over two decades, so every step finds inferior units
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.logspace(-2, 0, m.out_channels).view(-1, 1, 1, 1))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.logspace(-2, 0, 8))
                m.bias.copy_(torch.linspace(-1, 1, 8))
    return net


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_the_hooks_evolved_counts_start_at_zero_and_add_up_every_step(variant):
    hook = WeightEvolution(spread_net(), variant, **({"r_hat": 1.0} if variant == "paper" else {}))
    assert hook.evolved == {"conv_weight": 0, "conv_bias": 0, "bn_weight": 0, "bn_bias": 0}
    returned = [hook.evolve_now(epoch) for epoch in (0, 1, 2)]
    assert all(type(n) is int for counts in returned for n in counts.values()), returned
    assert sum(returned[0].values()) > 0
    assert hook.evolved == {k: sum(c[k] for c in returned) for k in hook.evolved}
    assert hook.steps == 3


def test_the_steps_return_host_ints_by_default():
    counts = [evolve(spread_net(), 0.5), evolve_authors_step(spread_net(), {"conv_weight": 0.5, "bn_weight": 0.5,
                                                                              "bn_bias": 0.5})]
    assert all(type(n) is int for c in counts for n in c.values()), counts


def test_units_are_named_and_grouped_as_the_models_parameters():
    pools = gather_units(spread_net())
    assert [u.name for u in pools["conv_weight"].layers] == ["0.weight", "3.weight"]
    assert [u.groups for u in pools["conv_weight"].layers] == [1, 2]  # Conv2d(8, 8, groups=2): 2 local groups
    assert [u.name for u in pools["bn_bias"].layers] == ["1.bias", "4.bias"]
    joint = join_pools([pools["conv_weight"], pools["bn_weight"]])
    assert [u.name for u in joint.layers] == ["0.weight", "3.weight", "1.weight", "4.weight"]
    assert [u.groups for u in joint.layers] == [1, 2, 1, 1]
    bare = nn.Conv2d(3, 4, 1)  # a model that is one layer: its tensors are named by their attribute
    assert [s.name for s in model_sources(bare)["conv_weight"]] == ["weight"]
    normed = nn.Sequential(parametrizations.weight_norm(nn.Conv2d(3, 4, 1)), parametrizations.weight_norm(
        nn.Conv2d(4, 4, 1)))  # two weight_norm layers (their biases plain): two sets of filters
    sources = model_sources(normed)
    assert [s.name for s in sources["conv_weight"]] == ["0.weight", "1.weight"]
    assert [s.name for s in sources["conv_bias"]] == ["0.bias", "1.bias"]


def test_the_oracle_keeps_a_two_group_convs_groups():
    """Conv2d(4, 4, groups=2): group 0 holds filters 0-1 (both tiny), group 1 filters 2-3 (both large). The
    paper step selects locally within each group; a step that took the layer as one group would cross the
    tiny filters with group 1's, and the oracle would then disagree with the fast step."""
    def net():
        conv = nn.Conv2d(4, 4, 3, groups=2, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.arange(1.0, 1 + conv.weight.numel()).view_as(conv.weight) / 100)
            conv.weight[:2].mul_(torch.tensor([0.01, 1.0]).view(2, 1, 1, 1))
            conv.weight[2:].mul_(torch.tensor([0.5, 5.0]).view(2, 1, 1, 1))
        return nn.Sequential(conv)

    fast, slow = net(), net()
    assert evolve(fast, 1.0, bn=False) == evolve_reference(slow, 1.0, bn=False)
    torch.testing.assert_close(fast[0].weight, slow[0].weight)
    assert not torch.equal(fast[0].weight, net()[0].weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("descending", [False, True])
def test_segment_order_sorts_by_segment_then_importance_then_pool_index(dtype, descending):
    """Against Python's sort of (segment, +-importance, index) on 6,000 units with many ties."""
    rng = random.Random(0)
    sizes = [rng.randint(1, 900) for _ in range(12)]
    segment = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    importance = torch.tensor([rng.choice([0.0, 0.25, 0.5, 1.0, 3.0]) for _ in range(sum(sizes))], dtype=dtype)
    sign = -1 if descending else 1
    expected = sorted(range(len(importance)), key=lambda i: (int(segment[i]), sign * float(importance[i]), i))
    assert segment_order(importance, segment, descending).tolist() == expected


def test_repeated_milestones_are_refused_in_these_words():
    with pytest.raises(ValueError) as err:
        paper_step_hparams({"milestones": [60, 60]})
    assert str(err.value) == "milestones: must be strictly increasing epochs, got [60, 60]"
    assert paper_step_hparams({"milestones": [60, 61]})["milestones"] == (60, 61)


def test_unknown_or_misnamed_arguments_are_refused_in_these_words():
    with pytest.raises(TypeError) as err:
        WeightEvolution(spread_net(), "paper", gama=0.1)
    assert str(err.value).startswith("unknown paper hparam 'gama'; known: ['alpha', 'beta', ")
    with pytest.raises(ValueError) as err:
        WeightEvolution(spread_net(), "papr")
    assert str(err.value) == "variant must be one of ['paper', 'official'], got 'papr'"


class Doubled(nn.Module):
    def forward(self, x):
        return 2 * x


def test_weights_that_cannot_be_written_are_refused_in_these_words():
    conv = parametrizations.weight_norm(nn.Conv2d(3, 4, 3), dim=1)
    with pytest.raises(ValueError) as err:
        model_sources(nn.Sequential(conv))
    assert str(err.value) == ("0.weight is parametrized by _WeightNorm: Weight Evolution writes plain parameters "
                              "and weight_norm(dim=0) only (a write to this weight would not change the model)")
    scaled = nn.Conv2d(3, 4, 3)
    parametrize.register_parametrization(scaled, "weight", Doubled())
    with pytest.raises(ValueError) as err:
        model_sources(nn.Sequential(nn.Conv2d(3, 3, 1), scaled))
    assert str(err.value) == ("1.weight is parametrized by Doubled: Weight Evolution writes plain parameters "
                              "and weight_norm(dim=0) only (a write to this weight would not change the model)")
    parametrize.register_parametrization(scaled, "weight", Doubled())  # two of them, named in order
    with pytest.raises(ValueError, match=r"^weight is parametrized by Doubled, Doubled: Weight Evolution writes "):
        model_sources(scaled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the hook-based weight_norm is deprecated
        hooked = torch.nn.utils.weight_norm(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError) as err:
        model_sources(hooked)
    assert str(err.value) == ("weight is not a parameter (the hook-based torch.nn.utils.weight_norm recomputes "
                              "it before every forward): use torch.nn.utils.parametrizations.weight_norm")
    with pytest.raises(ValueError) as err:
        model_sources(nn.Sequential(nn.Linear(3, 3)))
    assert str(err.value) == ("Sequential has no Conv2d or BatchNorm2d/SyncBatchNorm layer to evolve (Weight "
                              "Evolution evolves Conv2d filters and bias and BatchNorm weight and bias; conv/bn "
                              "switch them)")
    with pytest.raises(ValueError) as err:
        model_sources(nn.Sequential(nn.Linear(3, 3)), conv=False)
    assert str(err.value).startswith("Sequential has no BatchNorm2d/SyncBatchNorm layer to evolve (conv=False) (")
    with pytest.raises(ValueError) as err:
        model_sources(nn.Sequential(nn.Conv2d(3, 3, 1)), conv=False, bn=False)
    assert str(err.value) == ("conv=False and bn=False leave Weight Evolution nothing to evolve; switch one of "
                              "them on")

"""docs/fidelity.md: every row with a switch does what the row says (each test fails if the switch is broken)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from we.errors import ConfigError
from we.grid.identity import identity
from we.train.config import load_config, model_options, to_dict

DOC = Path(__file__).resolve().parent.parent / "docs" / "fidelity.md"


def _seeded(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return models.create(name, num_classes=10, **kw)


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


# ---- model_init -----------------------------------------------------------------------------------
def test_model_init_authors_resnet_keeps_he_weights_and_pytorchs_linear_bias():
    zoo, authors = _seeded("resnet20"), _seeded("resnet20", init="authors")
    for a, b in zip(_convs(zoo), _convs(authors)):
        assert torch.equal(a.weight, b.weight)  # the same He-normal draws in the same order
    assert torch.equal(zoo.fc.weight, authors.fc.weight)
    assert not zoo.fc.bias.any()  # init_cifar zeroes it
    bound = 1 / 64 ** 0.5  # PyTorch's Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert authors.fc.bias.abs().max() <= bound and authors.fc.bias.abs().min() > 0


@pytest.mark.parametrize("name", ["mobilenetv1", "mobilenetv2", "shufflenetv1"])
def test_model_init_authors_is_pytorchs_layer_defaults(name):
    zoo, authors = _seeded(name), _seeded(name, init="authors")

    def within_default_bound(conv: nn.Conv2d) -> bool:  # kaiming_uniform_(a=sqrt(5)): |w| <= 1/sqrt(fan_in)
        return bool(conv.weight.abs().max() <= 1 / (conv.weight[0].numel()) ** 0.5 + 1e-7)

    assert all(within_default_bound(c) for c in _convs(authors))
    assert not all(within_default_bound(c) for c in _convs(zoo))  # He-normal exceeds that bound
    biases = [c.bias for c in _convs(authors) if c.bias is not None]
    assert (len(biases) > 0) == (name == "shufflenetv1")  # only the authors' ShuffleNetV1 has conv biases
    assert all(b.abs().min() > 0 for b in biases)
    assert all(not c.bias.any() for c in _convs(zoo) if c.bias is not None)


def test_model_init_authors_mobilenetv2_050_is_their_init_params():
    timm_init, authors = _seeded("mobilenetv2_050"), _seeded("mobilenetv2_050", init="authors")
    dw = [c for c in _convs(authors) if c.groups == c.in_channels and c.groups > 1][0]
    fan_out = dw.out_channels * 9  # PyTorch's fan_out of a depth-wise conv; timm divides by the groups
    assert abs(float(dw.weight.detach().std()) - (2 / fan_out) ** 0.5) < 0.3 * (2 / fan_out) ** 0.5
    assert abs(float(authors.get_classifier().weight.detach().std()) - 0.001) < 2e-4
    assert float(timm_init.get_classifier().weight.detach().std()) > 0.005


# ---- model_arch -----------------------------------------------------------------------------------
def test_model_arch_authors_shufflenet_has_no_relu_after_the_depthwise_conv():
    seen = {}
    for arch in ("zoo", "authors"):
        net = _seeded("shufflenetv1", arch=arch).eval()
        unit = net.layers[1]
        unit.conv3.register_forward_pre_hook(lambda m, a, arch=arch: seen.__setitem__(arch, float(a[0].min())))
        net(torch.randn(2, 3, 32, 32))
    assert seen["zoo"] >= 0 > seen["authors"]


@pytest.mark.parametrize("arch, pooled_first", [("zoo", False), ("authors", True)])
def test_model_arch_authors_shufflenet_concatenates_the_pooled_input_first(arch, pooled_first):
    unit = _seeded("shufflenetv1", arch=arch).eval().layers[0]  # stride 2: 24 -> 240 channels
    x = torch.randn(2, 24, 16, 16)
    pooled = torch.relu(torch.nn.functional.avg_pool2d(x, 3, 2, 1))
    out = unit(x)
    assert torch.allclose(out[:, :24] if pooled_first else out[:, -24:], pooled)


def test_model_arch_authors_mobilenetv2_050_is_their_mobilenet2():
    timm_net, authors = _seeded("mobilenetv2_050"), _seeded("mobilenetv2_050", init="authors", arch="authors")
    assert len(_convs(authors)) == len(_convs(timm_net)) + 1  # their first block keeps its t = 1 expansion conv
    first = [c for c in _convs(authors) if c.kernel_size == (1, 1)][0]
    assert (first.in_channels, first.out_channels) == (16, 16)
    drops = [m for m in authors.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.2] and not any(isinstance(m, nn.Dropout) for m in timm_net.modules())
    assert sum(p.numel() for p in models.create("mobilenetv2_050", num_classes=1000, init="authors",
                                                arch="authors").parameters()) == 1_968_968
    x = torch.randn(2, 3, 64, 64)
    authors.train()
    assert not torch.equal(authors(x), authors(x))  # dropout acts in training
    authors.eval()
    assert torch.equal(authors(x), authors(x))
    with pytest.raises(ValueError, match="init 'authors'"):
        models.create("mobilenetv2_050", arch="authors")


# ---- the recipe picks them; run identities ---------------------------------------------------------
@pytest.mark.parametrize("dataset, model, init, arch", [
    ("cifar100", "mobilenetv1", "authors", "zoo"), ("cifar100", "shufflenetv1", "authors", "authors"),
    ("cifar10", "resnet56", "authors", "zoo"), ("cifar10", "densenet40", "zoo", "zoo"),
    ("imagenet", "resnet34", "zoo", "zoo"), ("imagenet", "mobilenetv2_050", "authors", "authors")])
def test_recipe_official_trains_the_authors_model_files(dataset, model, init, arch):
    official = load_config(None, [f"dataset={dataset}", f"model={model}", "recipe=official"])
    assert (official.model_init, official.model_arch) == (init, arch)
    paper = load_config(None, [f"dataset={dataset}", f"model={model}"])
    assert (paper.model_init, paper.model_arch) == ("zoo", "zoo") and model_options(paper) == {}
    assert "model_init" not in identity(to_dict(paper)) and "model_arch" not in identity(to_dict(paper))
    assert ("model_init" in identity(to_dict(official))) == (init == "authors")


def test_model_init_authors_without_an_authors_variant_is_refused():
    with pytest.raises(ConfigError, match="config key 'model_init'.*densenet40"):
        load_config(None, ["dataset=cifar10", "model=densenet40", "model_init=authors"])
    with pytest.raises(ConfigError, match="config key 'model_arch'.*resnet56"):
        load_config(None, ["dataset=cifar10", "model=resnet56", "model_arch=authors"])


def test_the_trainer_builds_the_model_with_the_options(monkeypatch, tmp_path):
    from we.train import trainer

    calls = []

    def fake_create(*args, **kw):
        calls.append(kw)
        raise RuntimeError("built")

    monkeypatch.setattr(trainer.models, "create", fake_create)
    cfg = load_config(None, ["dataset=digits", "model=shufflenetv1", "recipe=official", "epochs=1",
                             "limit_train=32", "workers=0", f"out={tmp_path / 'run'}"])
    with pytest.raises(RuntimeError, match="built"):
        trainer.main(cfg)
    assert calls and calls[0]["init"] == "authors" and calls[0]["arch"] == "authors"


# ---- Tables 5-7 -official: the paper's full WE under the authors' recipe is the ablations' reference --
@pytest.mark.parametrize("table, ablations", [("table5-official", ["we_global_only", "we_local_only"]),
                                              ("table6-official", ["we_reverse_matching"]),
                                              ("table7-official", ["filter_level_gl"])])
def test_official_ablation_tables_hold_the_paper_step_reference(tmp_path, table, ablations):
    from we.grid import load_grid, resolve_cells

    cells = {(c.labels["model"], c.labels["method"]): c.config for c in resolve_cells(load_grid(table), tmp_path)
             if c.labels["seed"] == 0}
    for model in ("mobilenetv1", "shufflenetv1"):
        ref, authors = cells[(model, "we_paper_step")], cells[(model, "we")]
        assert ref["we_variant"] == "paper" and authors["we_variant"] == "official"
        for label in ablations:  # the same step, recipe and model as the reference, one switch apart
            ablated = cells[(model, label)]
            differing = {k for k in ref if k not in ("out",) and ref[k] != ablated[k]}
            assert len(differing) == 1 and differing <= {"we_selection", "we_matching", "we_level"}


def _layout(rows: dict[str, float], grid: str):
    import pandas as pd

    from we.report.paper_layout import paper_layout

    df = pd.DataFrame([{"dataset": "cifar100", "model": "mobilenetv1", "method": m, "n": 5, "final_top1_mean": v,
                        "final_top1_std": 0.1, "paper_top1": float("nan")} for m, v in rows.items()])
    return paper_layout(df, grid)


def test_paper_layout_takes_each_ablation_against_its_reference_row():
    from we.report.paper_layout import layout_latex, layout_markdown

    official = _layout({"baseline": 68.0, "we_global_only": 69.0, "we_paper_step": 70.5, "we": 71.0}, "table5-official")
    assert official.rows == ["Baseline", "WE-G", "WE (paper's step)", "WE"]
    assert official.references == {"WE-G": "WE (paper's step)"}
    assert official.reference_diff("WE-G", 0) == pytest.approx(-1.5)  # against the paper's step, not the authors' WE
    md = layout_markdown(official)
    assert "| against |" in md and "Δ ref" in md and "| WE-G | WE (paper's step) |" in md and "−1.50" in md
    assert r"\begin{tabular}{llrrrr}" in layout_latex(official)
    paper = _layout({"baseline": 68.0, "we_global_only": 69.0, "we": 71.0}, "table5")
    assert paper.references == {"WE-G": "WE"} and paper.reference_diff("WE-G", 0) == pytest.approx(-2.0)
    plain = _layout({"baseline": 68.0, "we": 71.0}, "table1")
    assert not plain.references and "against" not in layout_markdown(plain)


# ---- figure twins ----------------------------------------------------------------------------------
def test_figure_twins_reuse_the_official_tables_runs(tmp_path):
    from we.grid import load_grid, resolve_cells

    table2 = {c.config_hash for c in resolve_cells(load_grid("table2-official"), tmp_path)}
    for grid in ("figure2-official", "figure5-official"):
        cells = resolve_cells(load_grid(grid), tmp_path)
        assert cells and {c.config_hash for c in cells} <= table2
    assert not load_grid("figure3-official").train


def test_figure3_official_draws_the_authors_per_pool_rates(tmp_path):
    from we.core import FLAVOURS, stage_rate
    from we.report.figures import OFFICIAL_POOLS, figure_selection_rate_official

    paths = figure_selection_rate_official(tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    h = FLAVOURS["cifar"]
    rate = lambda e: stage_rate(e, h["radio_conv"], divisors=h["divisors"], eta=h["eta"], milestones=h["milestones"])
    assert rate(130) == pytest.approx(0.2 / 5 * (1 / (1 + 2.718281828 ** (-10 / 15))), rel=1e-6)  # third stage: /5
    assert set(OFFICIAL_POOLS.values()) == {"radio_conv", "radio_bn", "radio_bias"}

"""docs/fidelity.md: every row with a switch does what the row says (each test fails if the switch is broken)."""
from __future__ import annotations

import math
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
def test_m1_model_init_authors_resnet_keeps_he_weights_and_pytorchs_linear_bias():
    zoo, authors = _seeded("resnet20"), _seeded("resnet20", init="authors")
    for a, b in zip(_convs(zoo), _convs(authors)):
        assert torch.equal(a.weight, b.weight)  # the same He-normal draws in the same order
    assert torch.equal(zoo.fc.weight, authors.fc.weight)
    assert not zoo.fc.bias.any()  # init_cifar zeroes it
    bound = 1 / 64 ** 0.5  # PyTorch's Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert authors.fc.bias.abs().max() <= bound and authors.fc.bias.abs().min() > 0


@pytest.mark.parametrize("name", ["mobilenetv1", "mobilenetv2", "shufflenetv1"])
def test_m2_m3_model_init_authors_is_pytorchs_layer_defaults(name):
    zoo, authors = _seeded(name), _seeded(name, init="authors")

    def within_default_bound(conv: nn.Conv2d) -> bool:  # kaiming_uniform_(a=sqrt(5)): |w| <= 1/sqrt(fan_in)
        return bool(conv.weight.abs().max() <= 1 / (conv.weight[0].numel()) ** 0.5 + 1e-7)

    assert all(within_default_bound(c) for c in _convs(authors))
    assert not all(within_default_bound(c) for c in _convs(zoo))  # He-normal exceeds that bound
    biases = [c.bias for c in _convs(authors) if c.bias is not None]
    assert (len(biases) > 0) == (name == "shufflenetv1")  # only the authors' ShuffleNetV1 has conv biases
    assert all(b.abs().min() > 0 for b in biases)
    assert all(not c.bias.any() for c in _convs(zoo) if c.bias is not None)


def test_m9_model_init_authors_mobilenetv2_050_is_their_init_params():
    timm_init, authors = _seeded("mobilenetv2_050"), _seeded("mobilenetv2_050", init="authors")
    dw = [c for c in _convs(authors) if c.groups == c.in_channels and c.groups > 1][0]
    fan_out = dw.out_channels * 9  # PyTorch's fan_out of a depth-wise conv; timm divides by the groups
    assert abs(float(dw.weight.detach().std()) - (2 / fan_out) ** 0.5) < 0.3 * (2 / fan_out) ** 0.5
    assert abs(float(authors.get_classifier().weight.detach().std()) - 0.001) < 2e-4
    assert float(timm_init.get_classifier().weight.detach().std()) > 0.005


# ---- model_arch -----------------------------------------------------------------------------------
def test_m4_model_arch_authors_shufflenet_has_no_relu_after_the_depthwise_conv():
    seen = {}
    for arch in ("zoo", "authors"):
        net = _seeded("shufflenetv1", arch=arch).eval()
        unit = net.layers[1]
        unit.conv3.register_forward_pre_hook(lambda m, a, arch=arch: seen.__setitem__(arch, float(a[0].detach().min())))
        net(torch.randn(2, 3, 32, 32))
    assert seen["zoo"] >= 0 > seen["authors"]


@pytest.mark.parametrize("arch, pooled_first", [("zoo", False), ("authors", True)])
def test_m5_model_arch_authors_shufflenet_concatenates_the_pooled_input_first(arch, pooled_first):
    unit = _seeded("shufflenetv1", arch=arch).eval().layers[0]  # stride 2: 24 -> 240 channels
    x = torch.randn(2, 24, 16, 16)
    pooled = torch.relu(torch.nn.functional.avg_pool2d(x, 3, 2, 1))
    out = unit(x)
    assert torch.allclose(out[:, :24] if pooled_first else out[:, -24:], pooled)


def test_m7_m8_model_arch_authors_mobilenetv2_050_is_their_mobilenet2():
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
    from we.train import run_parts, trainer

    calls = []

    def fake_create(*args, **kw):
        calls.append(kw)
        raise RuntimeError("built")

    monkeypatch.setattr(run_parts.models, "create", fake_create)  # where the trainer builds its model
    cfg = load_config(None, ["dataset=digits", "model=shufflenetv1", "recipe=official", "epochs=1",
                             "limit_train=32", "workers=0", f"out={tmp_path / 'run'}"])
    with pytest.raises(RuntimeError, match="built"):
        trainer.main(cfg)
    assert calls and calls[0]["init"] == "authors" and calls[0]["arch"] == "authors"


# ---- Tables 5-7 -official: the paper's full WE under the authors' recipe is the ablations' reference --
@pytest.mark.parametrize("table, ablations", [("table5-official", ["we_global_only", "we_local_only"]),
                                              ("table6-official", ["we_reverse_matching"]),
                                              ("table7-official", ["filter_level_gl"])])
def test_w10_official_ablation_tables_hold_the_paper_step_reference(tmp_path, table, ablations):
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

    from we.report.reported_tables import reported_table

    df = pd.DataFrame([{"dataset": "cifar100", "model": "mobilenetv1", "method": m, "n": 5, "final_top1_mean": v,
                        "final_top1_std": 0.1, "reported_top1": float("nan")} for m, v in rows.items()])
    return reported_table(df, grid)


def test_w10_paper_layout_takes_each_ablation_against_its_reference_row():
    from we.report.reported_tables import layout_latex, layout_markdown

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
    from we.report.figures import AUTHORS_POOLS, figure_selection_rate_authors

    paths = figure_selection_rate_authors(tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    h = FLAVOURS["cifar"]
    rate = lambda e: stage_rate(e, h["radio_conv"], divisors=h["divisors"], eta=h["eta"], milestones=h["milestones"])
    assert rate(130) == pytest.approx(0.2 / 5 * (1 / (1 + 2.718281828 ** (-10 / 15))), rel=1e-6)  # third stage: /5
    assert set(AUTHORS_POOLS.values()) == {"radio_conv", "radio_bn", "radio_bias"}


# ---- the WE step (rows W*) -------------------------------------------------------------------------
def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, bias=True), nn.BatchNorm2d(8))
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                m.weight[:3] *= 0.01  # clearly inferior units in every layer
                m.bias.normal_()
                m.bias[:3] *= 0.01
    return net


def test_w1_four_pools_under_the_paper_step_three_under_the_authors():
    from we.core import WeightEvolution

    for variant, conv_bias_moves in (("paper", True), ("official", False)):
        net = _tiny_net()
        before = [m.bias.clone() for m in net if isinstance(m, nn.Conv2d)]
        hp = {"r_hat": 0.5} if variant == "paper" else {"radio_conv": 0.5, "radio_bn": 0.5, "radio_bias": 0.5}
        WeightEvolution(net, variant=variant, **hp).step(30)
        after = [m.bias for m in net if isinstance(m, nn.Conv2d)]
        assert any(not torch.equal(a, b) for a, b in zip(after, before)) == conv_bias_moves


def test_w2_w3_local_groups_of_grouped_and_depthwise_convs():
    from we.core.layers import local_groups

    assert local_groups(nn.Conv2d(24, 60, 1, groups=3)) == 3  # ShuffleNet's grouped 1x1: within each group
    assert local_groups(nn.Conv2d(60, 60, 3, groups=60)) == 1  # depth-wise: one group
    assert local_groups(nn.Conv2d(16, 16, 3)) == 1


def test_w4_the_paper_step_under_steplr_gains_a_fourth_stage_and_we_milestones_removes_it():
    from we.core import selection_rate

    cfg = load_config(None, ["dataset=cifar100", "model=mobilenetv1", "recipe=official", "method=we",
                             "we_variant=paper"])
    assert cfg.we_milestones == [60, 120, 180]
    three = load_config(None, ["dataset=cifar100", "model=mobilenetv1", "recipe=official", "method=we",
                               "we_variant=paper", "we_milestones=[60,120]"])
    assert three.we_milestones == [60, 120]
    rate = lambda c: selection_rate(190, r_hat=c.we_r_hat, beta=c.we_beta, eta=c.we_eta, milestones=c.we_milestones)
    sig = lambda x: 1 / (1 + math.exp(-x))
    assert rate(cfg) == pytest.approx(0.05 / 2.5 ** 3 * sig(10 / 15))  # stage 4 from 180
    assert rate(three) == pytest.approx(0.05 / 2.5 ** 2 * sig(70 / 15))  # still stage 3


def test_w5_we_variant_official_uses_the_scripts_rates():
    from we.methods.we import we_hparams

    cfg = load_config(None, ["dataset=cifar100", "model=mobilenetv1", "recipe=official", "method=we",
                             "we_variant=official"])
    assert we_hparams(cfg)["flavour"] == "cifar"
    from we.core import FLAVOURS

    assert (FLAVOURS["cifar"]["radio_conv"], FLAVOURS["cifar"]["radio_bn"], FLAVOURS["cifar"]["lab"]) == (0.2, 0.05, 0.1)
    imagenet = load_config(None, ["dataset=imagenet", "model=resnet34", "recipe=official", "method=we",
                                  "we_variant=official"])
    assert we_hparams(imagenet)["flavour"] == "imagenet"


def test_w6_the_authors_crossover_is_signed():
    from we.core.authors_step import crossover_signed

    inf = torch.tensor([[[0.5, -0.1, 0.3]]]).reshape(1, 1, 3)
    dom = torch.tensor([[[2.0, -4.0, 1.0]]]).reshape(1, 1, 3)
    s, l = -0.1, -4.0  # the smallest |.| of the inferior slice, the largest |.| of the dominant one (signed)
    out = crossover_signed(inf, dom).flatten()
    assert out[1].item() == pytest.approx(2 * s * l / (s + l)) and out[0].item() == 0.5


def test_w7_the_imagenet_flavour_counts_with_a_defined_counter():
    from we.core import WeightEvolution

    evo = WeightEvolution(_tiny_net(), variant="official", flavour="imagenet")
    for epoch in range(3):
        evo.step(epoch)  # the script as published raises NameError: low_cut_count here
    counters = evo.state_dict()["official"]["counters"]
    assert set(counters) == {"conv_weight", "bn_weight", "bn_bias"} and all(isinstance(v, int) for v in counters.values())


def test_w8_the_imagenet_conv_pool_is_undivided():
    from we.core.authors_step import pool_scores
    from we.core.units import gather_units

    pool = gather_units(_tiny_net(), conv=True, bn=False)["conv_weight"]
    cifar, imagenet = pool_scores(pool, "conv_weight", "cifar"), pool_scores(pool, "conv_weight", "imagenet")
    assert torch.allclose(imagenet[8:], cifar[8:] * 8)  # the second conv has 8 input channels
    assert torch.allclose(imagenet[:8], cifar[:8] * 3)


def test_w11_we_conv_off_leaves_the_convs_under_the_authors_step():
    from we.core import WeightEvolution

    net = _tiny_net()
    convs = [m.weight.clone() for m in net if isinstance(m, nn.Conv2d)]
    bns = [m.weight.clone() for m in net if isinstance(m, nn.BatchNorm2d)]
    WeightEvolution(net, variant="official", conv=False, radio_bn=0.5, radio_bias=0.5).step(30)
    assert all(torch.equal(a, m.weight) for a, m in zip(convs, [m for m in net if isinstance(m, nn.Conv2d)]))
    assert any(not torch.equal(a, m.weight) for a, m in zip(bns, [m for m in net if isinstance(m, nn.BatchNorm2d)]))


# ---- training recipe (rows R*) ---------------------------------------------------------------------
def _lr_at(cfg, epoch: int) -> float:
    from we.train.optim import build_optimizer, build_scheduler

    opt = build_optimizer(cfg, nn.Linear(2, 2))
    sched = build_scheduler(cfg, opt)
    for _ in range(epoch):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def test_r1_the_authors_steplr_decays_at_180_too():
    paper = load_config(None, ["dataset=cifar10", "model=resnet20"])
    official = load_config(None, ["dataset=cifar10", "model=resnet20", "recipe=official"])
    assert _lr_at(paper, 185) == pytest.approx(1e-3) and _lr_at(official, 185) == pytest.approx(1e-4)
    assert _lr_at(official, 125) == pytest.approx(1e-3)


def test_r2_nesterov_reaches_sgd():
    from we.train.optim import build_optimizer

    for on in (False, True):
        cfg = load_config(None, ["dataset=cifar10", "model=resnet20", f"nesterov={str(on).lower()}"])
        assert build_optimizer(cfg, nn.Linear(2, 2)).param_groups[0]["nesterov"] is on


def test_r3_normalization_official_uses_the_authors_constants():
    from we.train.datasets import dataset_info

    assert dataset_info("cifar100", "official").mean == pytest.approx((0.4914, 0.4822, 0.4465))
    assert dataset_info("cifar100", "official").std == pytest.approx((0.2023, 0.1994, 0.2010))
    assert dataset_info("cifar100", "paper").mean != dataset_info("cifar100", "official").mean


def test_r6_the_paper_layout_reads_final_or_best_epoch():
    import pandas as pd

    from we.report.reported_tables import reported_table

    df = pd.DataFrame([{"dataset": "cifar10", "model": "resnet56", "method": "we", "n": 5, "final_top1_mean": 93.0,
                        "final_top1_std": 0.1, "best_top1_mean": 93.4, "best_top1_std": 0.1, "reported_top1": 93.85}])
    assert reported_table(df, "table1").entry("WE", 0).mean == 93.0
    assert reported_table(df, "table1", measure="best").entry("WE", 0).mean == 93.4


def test_r9_model_keys_resolve_from_the_recipe():
    cfg = load_config(None, ["dataset=cifar10", "model=mobilenetv2", "recipe=official"])
    assert model_options(cfg) == {"init": "authors"}


# ---- comparison methods (rows C*) ------------------------------------------------------------------
def test_c1_fg_threshold_grafts_exactly_the_filters_below_it():
    from we.methods.fg import internal_graft

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    with torch.no_grad():
        conv.weight[:2] *= 1e-4  # l1 ~ 0.01: below 0.1
    l1 = conv.weight.detach().abs().flatten(1).sum(1)
    assert int((l1 < 0.1).sum()) == 2
    assert internal_graft(nn.Sequential(conv), 0.0) == 0
    assert internal_graft(nn.Sequential(conv), 0.1) == 2
    assert bool((conv.weight.detach().abs().flatten(1).sum(1) >= 0.1).all())
    assert load_config(None, ["dataset=imagenet", "model=resnet34", "method=fg", "fg_n=1"]).fg_threshold == 0.1


def test_c3_oni_group_size_is_not_capped_at_the_fan_in():
    from we.methods.oni import oni_weight

    torch.manual_seed(0)
    w = torch.randn(64, 3, 3, 3, dtype=torch.float64)  # 64 filters, fan-in 27
    other = w.clone()
    other[16:32] = torch.randn(16, 3, 3, 3, dtype=torch.float64)
    parts, parts_other = oni_weight(w, 1, 16, 5, 1e-5), oni_weight(other, 1, 16, 5, 1e-5)
    assert torch.equal(parts[:16], parts_other[:16])  # groups of 16: the first group ignores the second
    whole, whole_other = oni_weight(w, 1, 64, 5, 1e-5), oni_weight(other, 1, 64, 5, 1e-5)
    assert not torch.allclose(whole[:16], whole_other[:16])  # 64 > fan-in 27: still one group of 64


def test_c4_oni_eps_enters_the_iteration():
    from we.methods.oni import oni_weight

    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    assert not torch.allclose(oni_weight(w, 1, 8, 2, 1e-5), oni_weight(w, 1, 8, 2, 1e-1))
    assert load_config(None, ["dataset=cifar10", "model=resnet20", "method=oni"]).oni_eps == 1e-5


@pytest.mark.parametrize("cycles, pruned", [(0, [20, 50]), (1, [20])])
def test_c5_repr_cycles_in_90_imagenet_epochs(cycles, pruned):
    from we.methods.repr import RePrMethod

    cfg = load_config(None, ["dataset=imagenet", "model=resnet34", "method=repr", f"repr_cycles={cycles}"])
    method = RePrMethod(cfg)
    starts = []
    for done in range(cfg.epochs):
        if method.starts_pruning(done):
            starts.append(done)
            method.cycles_done += 1
    assert (cfg.repr_s1, cfg.repr_s2, cfg.epochs) == (20, 10, 90) and starts == pruned


def test_every_row_with_a_key_has_a_test():
    rows = [line.split("|") for line in DOC.read_text().splitlines() if re.match(r"\| [MWRC]\d+ \|", line)]
    keyed = [r[1].strip().lower() for r in rows if not r[-2].strip().startswith("—")]
    names = [n for n in globals() if n.startswith("test_")]
    missing = [row for row in keyed if not any(re.search(rf"_{row}(_|$)", n) for n in names)]
    assert keyed and not missing, missing


def test_m7_m8_the_authors_mobilenetv2_without_their_init_is_refused_before_building():
    with pytest.raises(ConfigError, match="config key 'model_arch'.*init 'authors'"):
        load_config(None, ["dataset=imagenet", "model=mobilenetv2_050", "recipe=official", "model_init=zoo"])
    assert load_config(None, ["dataset=imagenet", "model=mobilenetv2_050", "model_init=authors"]).model_arch == "zoo"

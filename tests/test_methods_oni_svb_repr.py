"""The comparison methods ONI, SVB and RePr: their defining properties, and exact resume through the trainer."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import we.train.optim
import we.train.trainer
from we.train.config import ConfigError, load_config
from we.methods import METHODS, TrainContext, create_method
from we.methods.oni import apply_oni, oni_weight
from we.methods.repr import RePrMethod, find_prunable_layers, orthogonal_filters, rank_filters
from we.methods.svb import bound_bn_scales, bound_singular_values, svb_step
from we.train import main

TINY = ["dataset=digits", "model=resnet20", "limit_train=64", "batch_size=32", "workers=0", "progress=plain"]


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def _eye_error(m: torch.Tensor) -> float:
    return float((m - torch.eye(m.shape[0])).abs().max())


def test_methods_are_registered():
    assert {"oni", "svb", "repr"} <= set(METHODS)
    for name in ("oni", "svb", "repr"):
        assert create_method(load_config(None, [f"method={name}"])).name == name


@pytest.mark.parametrize("override", ["repr_p=0", "repr_p=1.0", "repr_s2=0", "svb_eps=-0.1", "oni_iters=0",
                                      "svb_bn_mode=abs", "oni_group_size=-1"])
def test_bad_method_keys_are_refused(override: str):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])


# ---- ONI ------------------------------------------------------------------------------------------
def test_oni_rows_orthonormal_within_each_group():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 3)  # 48 filters of 288 inputs: well conditioned
    apply_oni(conv, group_size=16, iters=5, scale_init=1.0)
    w = _rows(conv.weight.detach())
    for g in range(3):
        block = w[16 * g:16 * (g + 1)]
        assert _eye_error(block @ block.T) < 5e-3
        assert block.sum(dim=1).abs().max() < 1e-4  # filters are centred
    precise = oni_weight(torch.randn(48, 32, 3, 3), 1, 16, 40, 1e-5)
    assert _eye_error(_rows(precise)[:16] @ _rows(precise)[:16].T) < 1e-4  # T -> infinity: exact


def test_oni_recipe_follows_the_dataset_family():
    cifar = load_config(None, ["method=oni", "dataset=cifar100", "model=resnet110"])
    imagenet = load_config(None, ["method=oni", "dataset=imagenet", "model=resnet34"])
    assert (cifar.oni_group_size, cifar.oni_iters, cifar.oni_skip_shortcut) == (64, 5, False)
    assert (imagenet.oni_group_size, imagenet.oni_iters, imagenet.oni_skip_shortcut) == (0, 2, True)
    assert load_config(None, ["method=oni", "dataset=imagenet", "model=resnet34", "oni_iters=5"]).oni_iters == 5
    model = METHODS["oni"](imagenet)
    net = __import__("models").create("resnet34", num_classes=10)
    model.prepare_model(net, imagenet)
    convs = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    plain = sorted(n for n, m in convs.items() if not parametrize.is_parametrized(m, "weight"))
    assert plain == [f"layer{i}.0.downsample.0" for i in (2, 3, 4)]  # the 1x1 downsample convs only
    assert "conv1" in model.layers and len(model.layers) == len(convs) - 3  # the 7x7 stem included
    for name in ("conv1", "layer3.1.conv2"):  # one group of all filters, T = 2
        conv = convs[name]
        v = conv.parametrizations.weight.original.detach()
        assert torch.allclose(conv.weight.detach(), oni_weight(v, 1, 0, 2, 1e-5) * 1.414, atol=1e-6)
    conv = convs["layer3.1.conv2"]  # 256 filters: one group of all, not four of 64 (the CIFAR recipe)
    assert conv.out_channels == 256
    v = conv.parametrizations.weight.original.detach()
    assert not torch.allclose(conv.weight.detach(), oni_weight(v, 1, 64, 2, 1e-5) * 1.414, atol=1e-3)


def test_oni_iters_beyond_the_float32_range_are_refused():
    with pytest.raises(ConfigError, match="oni_iters.*at most 6"):
        load_config(None, ["method=oni", "oni_iters=7"])
    torch.manual_seed(0)
    # T = 6, the largest allowed, stays within 3e-5 of float64 (docs/methods.md's bound) on the zoo's group
    # shapes: square 1x1 groups (the worst case of Newton's iteration), 3x3 filter groups, few wide filters
    for shape in [(64, 64, 1, 1), (16, 16, 3, 3), (64, 32, 3, 3), (64, 64, 3, 3), (10, 3, 7, 7)]:
        w = torch.randn(shape)
        f32 = oni_weight(w, 1, 64, 6, 1e-5)
        f64 = oni_weight(w.double(), 1, 64, 6, 1e-5)
        assert (f32.double() - f64).abs().max() < 3e-5, shape


def oni_norm_transcription(weight: torch.Tensor, norm_groups: int, iters: int, eps: float = 1e-5) -> torch.Tensor:
    """The authors' PyTorch ONINorm (ONI_PyTorch, NormedConv.py, class ONINorm), one group at a time:
    Zc = Z - row means; S = Zc Zc^T + eps I; S /= ||S||_F; B_0 = I, B_{t+1} = 1.5 B_t - 0.5 B_t^3 S;
    W = B_T Zc / sqrt(||S||_F)."""
    z = weight.reshape(norm_groups, weight.shape[0] // norm_groups, -1)
    rows = []
    for zg in z:
        zc = zg - zg.mean(dim=1, keepdim=True)
        s = zc @ zc.T + eps * torch.eye(zc.shape[0], dtype=zc.dtype)
        norm = torch.linalg.norm(s)
        s = s / norm
        b = torch.eye(zc.shape[0], dtype=zc.dtype)
        for _ in range(iters):
            b = 1.5 * b - 0.5 * torch.linalg.matrix_power(b, 3) @ s
        rows.append(b @ zc / norm.sqrt())
    return torch.cat(rows).reshape_as(weight)


@pytest.mark.parametrize("shape, group_size, iters", [((48, 32, 3, 3), 16, 5), ((64, 16, 3, 3), 64, 5),
                                                      ((32, 64, 1, 1), 8, 2), ((24, 8, 3, 3), 0, 3)])
def test_oni_row_groups_equal_the_authors_oninorm(shape, group_size, iters):
    torch.manual_seed(1)
    w = torch.randn(shape, dtype=torch.float64)
    groups = shape[0] // (group_size or shape[0])
    torch.testing.assert_close(oni_weight(w, 1, group_size, iters, 1e-5), oni_norm_transcription(w, groups, iters),
                               rtol=0, atol=1e-12)


def test_oni_refuses_a_non_finite_weight_at_the_start():
    cfg = load_config(None, ["method=oni", "model=resnet20"])
    import models

    model = models.create("resnet20")
    method = create_method(cfg)
    method.prepare_model(model, cfg)
    method.on_train_start(SimpleNamespace(model=model))  # finite: accepted
    name = method.layers[3]
    with torch.no_grad():
        dict(model.named_modules())[name].parametrizations.weight.original[0, 0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match=f"ONI weight of layer '{name}' is not finite"):
        method.on_train_start(SimpleNamespace(model=model))


def test_oni_scale_multiplies_rows_and_groups_respect_conv_groups():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 40, 1, groups=2)  # two conv groups of 20 filters over 32 inputs each
    v = conv.weight.detach().clone()
    apply_oni(conv, group_size=64, iters=8, scale_init=1.414)
    w = conv.weight.detach()
    for g in range(2):
        rows = slice(20 * g, 20 * (g + 1))
        alone = oni_weight(v[rows], 1, 64, 8, 1e-5)  # each conv group on its own
        assert torch.allclose(w[rows] / 1.414, alone, atol=1e-6)
        block = _rows(alone)
        assert _eye_error(block @ block.T) < 1e-2


def test_oni_column_orthogonalisation_when_more_rows_than_columns():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 64, 1)  # a group of 64 filters over 4 inputs cannot have orthonormal rows
    apply_oni(conv, group_size=64, iters=8, scale_init=1.0)
    w = _rows(conv.weight.detach())
    assert _eye_error(w.T @ w) < 1e-3


def test_oni_gradients_reach_original_weight_and_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                          nn.Flatten(), nn.LazyLinear(2))
    names = apply_oni(model)
    assert names == ["0"]  # the depth-wise conv is left as it is
    assert not parametrize.is_parametrized(model[3])
    model(torch.randn(4, 3, 8, 8)).square().sum().backward()
    weights = model[0].parametrizations.weight
    assert weights.original.grad is not None and weights.original.grad.abs().sum() > 0
    assert weights[0].scale.grad is not None and weights[0].scale.grad.abs().sum() > 0
    assert torch.isfinite(weights.original.grad).all()


def test_oni_prepare_model_puts_scale_in_optimizer_and_state_dict():
    cfg = load_config(None, ["method=oni", "model=resnet20"])
    import models

    model = models.create("resnet20")
    n_before = sum(p.numel() for p in model.parameters())
    method = create_method(cfg)
    method.prepare_model(model, cfg)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(method.layers) == len(convs) == 19
    assert sum(p.numel() for p in model.parameters()) == n_before + sum(c.out_channels for c in convs)
    optimizer = we.train.optim.build_optimizer(cfg, model)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.conv1.parametrizations.weight[0].scale) in held
    assert "conv1.parametrizations.weight.0.scale" in model.state_dict()
    fixed = load_config(None, ["method=oni", "oni_scale=false"])
    model = models.create("resnet20")
    create_method(fixed).prepare_model(model, fixed)
    assert sum(p.numel() for p in model.parameters()) == n_before


# ---- SVB ------------------------------------------------------------------------------------------
def test_svb_bounds_singular_values():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3)
    with torch.no_grad():
        conv.weight.mul_(5)
    n = bound_singular_values(conv, eps=0.5)
    s = torch.linalg.svdvals(_rows(conv.weight.detach()).double())
    assert n > 0 and s.min() >= 1 / 1.5 - 1e-5 and s.max() <= 1.5 + 1e-5


def test_svb_leaves_weights_inside_the_band_untouched():
    torch.manual_seed(0)
    lin = nn.Linear(20, 10)
    u, _ = torch.linalg.qr(torch.randn(10, 10))
    v, _ = torch.linalg.qr(torch.randn(20, 10))
    with torch.no_grad():
        lin.weight.copy_(u @ torch.diag(torch.linspace(0.8, 1.2, 10)) @ v.T)
    before = lin.weight.detach().clone()
    assert bound_singular_values(lin, eps=0.5) == 0
    assert torch.equal(lin.weight, before)


def test_svb_depthwise_bounds_each_filter_norm():
    conv = nn.Conv2d(8, 8, 3, groups=8)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(0.1, 3.0, 8)[:, None, None, None] * torch.ones(8, 1, 3, 3) / 3)
    bound_singular_values(conv, eps=0.5)
    norms = _rows(conv.weight.detach()).norm(dim=1)
    assert norms.min() >= 1 / 1.5 - 1e-5 and norms.max() <= 1.5 + 1e-5


@pytest.mark.parametrize("mode", ["bbn", "rel"])
def test_svb_bn_bounds_scales_around_their_mean(mode: str):
    bn = nn.BatchNorm1d(6)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.1, 0.5, 1.0, 1.0, 2.0, 8.0]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 1.0, 0.25, 1.0, 1.0]))
    std = torch.sqrt(bn.running_var + bn.eps) if mode == "bbn" else torch.ones(6)
    m = (bn.weight / std).mean()
    assert bound_bn_scales(bn, eps=1.0, mode=mode) > 0
    r = bn.weight.detach() / std
    assert r.min() >= m / 2 - 1e-6 and r.max() <= m * 2 + 1e-6


def test_svb_acts_at_epoch_ends_but_not_after_the_last():
    torch.manual_seed(0)
    cfg = load_config(None, ["method=svb", "epochs=4", "svb_interval=2"])
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    with torch.no_grad():
        model[0].weight.mul_(10)
    ctx = TrainContext(model, torch.optim.SGD(model.parameters(), lr=0.1), cfg, torch.device("cpu"), 1)
    method = create_method(cfg)
    before = model[0].weight.detach().clone()
    assert method.on_epoch_end(ctx, 0, last=False) == {}  # interval 2: not after epoch 1
    assert method.on_epoch_end(ctx, 3, last=True) == {}
    assert torch.equal(model[0].weight, before)
    stats = method.on_epoch_end(ctx, 1, last=False)
    assert stats["svb_clipped"] > 0 and not torch.equal(model[0].weight, before)
    assert svb_step(model, 0.5)["clipped"] == 0  # idempotent


# ---- RePr -----------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 12, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _repr_setup(*extra: str):
    torch.manual_seed(0)
    # the toy net's 8x8 inputs (a run of the 32x32 digits refuses image_size=8; this config trains no data)
    cfg = load_config(None, ["method=repr", "repr_s1=1", "repr_s2=2", "epochs=10", *extra]).replace(image_size=8)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ctx = TrainContext(model, opt, cfg, torch.device("cpu"), 4)
    method = RePrMethod(cfg)
    method.on_train_start(ctx)
    return cfg, model, opt, ctx, method


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_repr_finds_conv_bn_pairs_and_skips_the_first_conv():
    model = _Net()
    layers = find_prunable_layers(model, 8)
    assert [(layer.name, layer.bn is model.bn1 or layer.bn is model.bn2) for layer in layers] == \
        [("conv1", True), ("conv2", True)]
    pruned = rank_filters(layers, 0.3)
    assert sum(len(v) for v in pruned.values()) == int(0.3 * 28)


def test_repr_pruned_filters_stay_exactly_zero_then_reinit_orthogonal():
    cfg, model, opt, ctx, method = _repr_setup()
    for _ in range(3):
        _step(model, opt)
    before_prune = {name: _rows(getattr(model, name).weight.detach()).clone() for name in ("conv1", "conv2")}
    assert method.on_epoch_end(ctx, 0, last=False)["repr_pruned"] == int(0.3 * 28)
    pruned = dict(method.pruned)
    assert all(torch.equal(method.dropped[n], before_prune[n][idx]) for n, idx in pruned.items())
    stem_before = model.stem.weight.detach().clone()

    def assert_zero() -> None:
        for name, idx in pruned.items():
            conv, bn = getattr(model, name), getattr(model, "bn" + name[-1])
            for t in (conv.weight, conv.bias, bn.weight, bn.bias):
                if t is None:
                    continue
                assert torch.equal(t.detach()[idx], torch.zeros_like(t[idx])), name
                buf = opt.state[t].get("momentum_buffer")
                assert buf is None or torch.equal(buf[idx], torch.zeros_like(buf[idx])), name

    assert_zero()
    for it in range(6):  # momentum and weight decay would move them; the masks hold them at zero
        _step(model, opt)
        method.after_optimizer_step(ctx, it, 1)
        assert_zero()
    assert not torch.equal(model.stem.weight, stem_before)  # the stem trains and is never pruned
    assert method.on_epoch_end(ctx, 1, last=False) == {}  # still pruned (S2 = 2 epochs)
    assert_zero()
    assert method.on_epoch_end(ctx, 2, last=False)["repr_reinit"] == int(0.3 * 28)
    assert method.pruned == {} and method.cycles_done == 1
    for name, idx in pruned.items():
        conv, bn = getattr(model, name), getattr(model, "bn" + name[-1])
        w = _rows(conv.weight.detach()).double()
        keep = [i for i in range(w.shape[0]) if i not in idx]
        new, kept = w[idx], w[keep]
        old = before_prune[name][idx].double()
        cos = lambda a, b: nn.functional.normalize(a, dim=1) @ nn.functional.normalize(b, dim=1).T
        assert len(keep) + 2 * len(idx) <= w.shape[1]  # room for both conditions
        assert cos(new, kept).abs().max() < 1e-6  # orthogonal to the kept filters
        assert cos(new, old).abs().max() < 1e-6  # and to the dropped filters' values from before the prune
        assert torch.allclose(new.norm(dim=1), kept.norm(dim=1).mean().expand(len(idx)), rtol=1e-4)
        assert torch.equal(bn.weight.detach()[idx], torch.ones(len(idx)))
        assert torch.equal(bn.bias.detach()[idx], torch.zeros(len(idx)))


def test_repr_new_filters_orthogonal_to_kept_and_to_old_dropped_values():
    torch.manual_seed(0)
    kept, dropped = torch.randn(16, 144), torch.randn(5, 144)  # a ResNet-20 16-filter layer, 5 pruned
    new = orthogonal_filters(kept, 5, torch.Generator().manual_seed(1), dropped)
    unit = lambda m: nn.functional.normalize(m.double(), dim=1)
    assert (unit(new) @ unit(kept).T).abs().max() < 1e-12
    assert (unit(new) @ unit(dropped).T).abs().max() < 1e-12
    assert _eye_error(new @ new.T) < 1e-12
    # without the dropped values only the kept filters are avoided: a random direction there is not
    # orthogonal to them (the check above fails on re-initialisation orthogonal to the kept ones only)
    plain = orthogonal_filters(kept, 5, torch.Generator().manual_seed(1))
    assert (unit(plain) @ unit(dropped).T).abs().max() > 1e-3


def test_repr_reinit_fills_what_fits_then_orthogonal_to_kept_only():
    torch.manual_seed(0)
    kept, dropped = torch.randn(4, 8), torch.randn(3, 8)  # 8 - 7 = 1 direction avoids both
    new = orthogonal_filters(kept, 3, torch.Generator().manual_seed(2), dropped)
    unit = lambda m: nn.functional.normalize(m.double(), dim=1)
    assert (unit(new[:1]) @ unit(dropped).T).abs().max() < 1e-12
    assert (unit(new) @ unit(kept).T).abs().max() < 1e-12  # 8 - 4 = 4 >= 3 directions avoid the kept ones
    assert _eye_error(new @ new.T) < 1e-12


def test_repr_orthogonal_filters_beyond_the_null_space():
    torch.manual_seed(0)
    kept = torch.randn(5, 8)
    new = orthogonal_filters(kept, 6, torch.Generator().manual_seed(1))
    assert new.shape == (6, 8) and torch.allclose(new.norm(dim=1), torch.ones(6, dtype=torch.float64))
    assert (new[:3] @ kept.double().T).abs().max() < 1e-10  # 3 = 8 - 5 free dimensions
    assert _eye_error(new[:3] @ new[:3].T) < 1e-10


def test_repr_cycles_fit_the_schedule():
    def phases(*extra: str) -> list[tuple[int, int]]:
        cfg = load_config(None, ["method=repr", *extra])
        method = RePrMethod(cfg)
        out, start = [], None
        for done in range(1, cfg.epochs):
            if method.ends_pruning(done):
                out.append((start, done))
                method.pruned, method.cycles_done = {}, method.cycles_done + 1
            elif not method.pruned and method.starts_pruning(done):
                method.pruned, start = {"x": [0]}, done
        assert not method.pruned
        return out

    assert phases() == [(20, 30), (50, 60), (80, 90), (110, 120), (140, 150), (170, 180)]  # 200 epochs
    assert phases("repr_cycles=2") == [(20, 30), (50, 60)]
    assert phases("epochs=50") == [(20, 30)]  # S1 full epochs must follow each re-initialisation
    assert phases("epochs=49") == []
    assert phases("epochs=3", "repr_s1=1", "repr_s2=1") == [(1, 2)]


# ---- through the trainer: runs, and resumes bitwise ------------------------------------------------
METHOD_RUNS = {
    "oni": (["method=oni", "epochs=2"], None),
    "svb": (["method=svb", "epochs=2", "svb_bn=true"], "svb_clipped"),
    "repr": (["method=repr", "epochs=3", "repr_s1=1", "repr_s2=1"], "repr_pruned"),
}


@pytest.fixture
def one_thread():
    """One intra-op thread: several test workers share two cores, and oversubscription costs 10x here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(METHOD_RUNS))
def test_trainer_runs_and_resumes_bitwise(tmp_path: Path, monkeypatch, one_thread, name: str):
    overrides, first_epoch_key = METHOD_RUNS[name]
    ref = main(load_config(None, TINY + overrides + [f"out={tmp_path / 'ref'}"]))
    assert ref["status"] == "complete"

    real_save = we.train.trainer.save_checkpoint

    def save_then_stop(path, state):
        real_save(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt("stopped after epoch 1")

    cut = load_config(None, TINY + overrides + [f"out={tmp_path / 'cut'}"])
    monkeypatch.setattr(we.train.trainer, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        main(cut)
    monkeypatch.setattr(we.train.trainer, "save_checkpoint", real_save)
    mid = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert mid["epoch"] == 1
    if name == "repr":
        assert mid["method"]["pruned"]  # stopped inside the pruned phase
        assert set(mid["method"]["dropped"]) == set(mid["method"]["pruned"])  # with the pre-prune filters
        torch.save(mid["method"], tmp_path / "method.pt")
        safe = torch.load(tmp_path / "method.pt", weights_only=True)  # plain tensors, lists, dicts, ints
        assert all(torch.equal(safe["dropped"][k], v) for k, v in mid["method"]["dropped"].items())
    resumed = main(cut)
    assert resumed["status"] == "complete"

    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert a["method"] == b["method"]
    assert [r["test_top1"] for r in a["history"]] == [r["test_top1"] for r in b["history"]]
    if first_epoch_key:
        assert first_epoch_key in a["history"][0]
    if name == "oni":
        assert any(k.endswith("parametrizations.weight.0.scale") for k in a["model"])
    if name == "repr":
        assert "repr_reinit" in a["history"][1] and a["method"] == {"pruned": {}, "cycles_done": 1, "dropped": {}}

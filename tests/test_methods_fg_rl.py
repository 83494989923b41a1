"""Filter grafting (method=fg) and retrospective loss (method=rl): formulas, ring exchange, trainer runs, resume."""
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import models
import we.train.trainer
from we.train.config import ConfigError, load_config
from we.methods import TrainContext
from we.methods.fg import (FGMethod, default_learning_rates, graft_coefficient, layer_entropy, ring_graft,
                           weight_layers)
from we.methods.rl import RLMethod, retrospective_loss
from we.train import main
from we.train.distributed import SINGLE
from we.train.optim import build_optimizer, build_scheduler
from we.train.pipeline import build_data
from we.train.trainer import TIMING_KEYS

TINY = ["dataset=digits", "model=resnet20", "limit_train=64", "batch_size=32", "workers=0", "progress=plain",
        "data_path=device", "epochs=2"]


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: one intra-op thread is several times faster here than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():  # distinct weight spreads and BN statistics per network
        for p in net.parameters():
            p.mul_(1.0 + seed).add_(torch.rand_like(p) * seed)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(seed + 7)
    return net


def context(model: nn.Module, cfg) -> TrainContext:
    return TrainContext(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), cfg=cfg,
                        device=torch.device("cpu"), steps_per_epoch=1)


# ---- filter grafting: formulas -------------------------------------------------------------------------


def test_graft_coefficient_hand_values():
    assert graft_coefficient(1.3, 1.3) == 0.5
    # k (H_own - H_other) = 500 * 0.002 = 1, arctan 1 = pi/4: c = 0.4/4 + 0.5
    assert graft_coefficient(1.002, 1.0, a=0.4, k=500) == pytest.approx(0.6, abs=1e-9)
    assert graft_coefficient(1.0, 1.002, a=0.4, k=500) == pytest.approx(0.4, abs=1e-9)
    # a difference of 1 nat: arctan 500 = pi/2 - arctan(1/500), c = 0.7 - 0.4/pi * 0.0019999973
    assert graft_coefficient(2.0, 1.0) == pytest.approx(0.699745, abs=1e-6)
    assert graft_coefficient(0.5, 1.5, a=1.0, k=1.0) == pytest.approx(0.25, abs=1e-12)  # arctan(-1) = -pi/4


def test_layer_entropy_hand_values():
    assert layer_entropy(torch.arange(10.0), bins=10) == pytest.approx(math.log(10))
    assert layer_entropy(torch.tensor([0.0, 1.0, 2.0, 3.0]), bins=2) == pytest.approx(math.log(2))  # max in last bin
    assert layer_entropy(torch.tensor([0.0, 0.0, 0.0, 1.0]), bins=2) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert layer_entropy(torch.full((3, 3), 0.7)) == 0.0


def test_default_learning_rates_follow_the_authors_rule():
    assert default_learning_rates(0.1, 1) == [0.1]
    assert default_learning_rates(0.1, 2) == pytest.approx([0.1, 0.05])
    r = math.sqrt(2) / 2
    assert default_learning_rates(0.1, 4) == pytest.approx([0.1, 0.1 * (1 - r) / 2, 0.05, 0.1 * (1 + r) / 2])


def test_each_bn_follows_its_conv():
    groups = dict(weight_layers(tiny_net(0)))
    assert groups == {"0.weight": ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"],
                      "3.weight": ["3.weight", "3.bias", "4.weight", "4.bias", "4.running_mean", "4.running_var"],
                      "7.weight": ["7.weight", "7.bias"]}
    import models

    net = models.create("resnet20", num_classes=10)
    groups = dict(weight_layers(net))
    assert len(groups) == 20  # 19 convolutions and the classifier
    assert groups["layers.0.conv1.weight"] == ["layers.0.conv1.weight", "layers.0.bn1.weight", "layers.0.bn1.bias",
                                               "layers.0.bn1.running_mean", "layers.0.bn1.running_var"]
    covered = [k for keys in groups.values() for k in keys]
    assert sorted(covered) == sorted(k for k, v in net.state_dict().items() if v.is_floating_point())


@pytest.mark.parametrize("n", [2, 4])
def test_ring_exchange_reads_pre_exchange_weights_of_the_predecessor(n: int):
    nets = [tiny_net(seed) for seed in range(n)]
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in nets]
    groups = weight_layers(nets[0])
    coefs = ring_graft(nets, a=0.4, k=500.0, bins=10)
    for j, net in enumerate(nets):
        src = before[(j - 1) % n]
        after = net.state_dict()
        for layer, (weight_key, keys) in enumerate(groups):
            c = graft_coefficient(layer_entropy(before[j][weight_key]), layer_entropy(src[weight_key]))
            assert coefs[j][layer] == pytest.approx(c, abs=1e-12)
            for key in keys:
                expected = c * before[j][key] + (1 - c) * src[key]
                assert torch.allclose(after[key], expected, rtol=0, atol=1e-6), (j, key)
        for key in after:
            if key.endswith("num_batches_tracked"):
                assert torch.equal(after[key], before[j][key])
    assert any(abs(c - 0.5) > 0.05 for row in coefs for c in row)  # the entropies differ: a real test


def test_fg1_internal_grafting_gives_the_weakest_filters_the_strongest_in_reverse_order():
    cfg = load_config(None, ["method=fg", "fg_n=1", "fg_threshold=0.1"])
    model = tiny_net(0)
    conv = model[3]  # 4 filters of 3x3x3
    with torch.no_grad():
        conv.weight.copy_(torch.randn(4, 3, 3, 3))
        conv.weight[1].mul_(0).add_(0.001)  # l1 0.027: the weakest
        conv.weight[2].mul_(0).add_(0.002)  # l1 0.054: the second weakest
        conv.weight[0].abs_().add_(1.0)  # the strongest
        conv.weight[3].abs_().mul_(0.01).add_(0.5)  # the second strongest
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = FGMethod(cfg)
    ctx = context(model, cfg)
    method.on_train_start(ctx)
    assert method.on_epoch_end(ctx, 0, last=False) == {"fg_grafted": 2.0}
    w, w0 = conv.weight.detach(), before["3.weight"]
    assert torch.equal(w[1], w0[1] + w0[0]) and torch.equal(w[2], w0[2] + w0[3])  # reverse matching
    assert torch.equal(w[0], w0[0]) and torch.equal(w[3], w0[3])
    for key, value in model.state_dict().items():  # the other layers' filters are all above the threshold
        if key != "3.weight":
            assert torch.equal(value, before[key]), key
    grafted = {k: v.clone() for k, v in model.state_dict().items()}
    assert method.on_epoch_end(ctx, 1, last=False) == {"fg_grafted": 0.0}  # now all above: nothing changes
    assert method.on_epoch_end(ctx, 2, last=True) == {}  # never after the last epoch
    assert all(torch.equal(grafted[k], v) for k, v in model.state_dict().items())


def test_summary_reports_every_network_and_uses_the_best():
    method = FGMethod(load_config(None, ["method=fg", "fg_n=2"]))
    history = [
        {"epoch": 1, "test_top1": 50.0, "test_top5": 90.0, "test_loss": 1.5, "fg_net1_top1": 40.0,
         "fg_net1_top5": 80.0, "fg_net1_test_loss": 2.0},
        {"epoch": 2, "test_top1": 60.0, "test_top5": 91.0, "test_loss": 1.2, "fg_net1_top1": 65.0,
         "fg_net1_top5": 92.0, "fg_net1_test_loss": 1.1},
        {"epoch": 3, "test_top1": 62.0, "test_top5": 93.0, "test_loss": 1.0, "fg_net1_top1": 63.0,
         "fg_net1_top5": 94.0, "fg_net1_test_loss": 0.9},
    ]
    out = method.summarize(history)
    assert out["fg_best_net"] == 1
    assert out["fg_net0_final_top1"] == 62.0 and out["fg_net0_best_top1"] == 62.0
    assert out["fg_net1_final_top1"] == 63.0 and out["fg_net1_best_top1"] == 65.0
    assert (out["final_top1"], out["final_top5"], out["final_test_loss"]) == (63.0, 94.0, 0.9)
    assert (out["best_top1"], out["best_top5"], out["best_epoch"]) == (65.0, 92.0, 2)
    assert FGMethod(load_config(None, ["method=fg", "fg_n=1"])).summarize(history) == {}


def test_fg_and_rl_keys_are_checked():
    cfg = load_config(None, ["method=fg", "fg_n=4", "lr=0.2"])
    assert cfg.fg_lrs == pytest.approx(default_learning_rates(0.2, 4))  # resolved explicitly into the config
    assert load_config(None, ["fg_lrs=[0.2,0.1]", "lr=0.2"]).fg_lrs == [0.2, 0.1]
    for bad in (["fg_n=0"], ["fg_a=1.5"], ["fg_k=-1"], ["fg_bins=1"], ["method=fg", "fg_lrs=[0.1]"],
                ["method=fg", "fg_lrs=[0.05,0.1]", "lr=0.1"], ["rl_kappa=-1"], ["rl_norm=l3"], ["rl_warmup=-1"],
                ["rl_update=0"]):
        with pytest.raises(ConfigError):
            load_config(None, bad)


# ---- retrospective loss: formula, snapshot -------------------------------------------------------------------


def test_retrospective_loss_hand_values():
    outputs = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # softmax: (1/2, 1/2), (3/4, 1/4)
    past = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # softmax: (3/4, 1/4), (1/2, 1/2)
    targets = torch.tensor([0, 1])
    # L1, sample 1: |p - y| = 1/2 + 1/2 = 1, |p - q| = 1/4 + 1/4 = 1/2: 5 * 1 - 4 * 1/2 = 3
    # L1, sample 2: |p - y| = 3/4 + 3/4 = 3/2, |p - q| = 1/2: 5 * 3/2 - 4 * 1/2 = 5.5
    assert retrospective_loss(outputs, past, targets, kappa=4.0, norm="l1").item() == pytest.approx((3 + 5.5) / 2)
    # L2: sqrt(1/2), sqrt(1/8); sqrt(9/8), sqrt(1/8)
    l2 = (5 * math.sqrt(0.5) - 4 * math.sqrt(0.125) + 5 * math.sqrt(1.125) - 4 * math.sqrt(0.125)) / 2
    assert retrospective_loss(outputs, past, targets, kappa=4.0, norm="l2").item() == pytest.approx(l2)
    assert retrospective_loss(outputs, past, targets, kappa=0.0).item() == pytest.approx((1 + 1.5) / 2)


def test_no_gradient_reaches_the_snapshot_and_the_loss_is_the_formula():
    cfg = load_config(None, ["method=rl", "rl_warmup=0", "rl_kappa=4"])
    model = tiny_net(1)
    method = RLMethod(cfg)
    ctx = context(model, cfg)
    method.on_train_start(ctx)  # warm-up 0: snapshot of the initial weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    snapshot = {k: v.clone() for k, v in method.past.state_dict().items()}
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 1, 0, 1])
    out = model(x)
    loss = method.extra_loss(ctx, x, out, y)
    p = out.softmax(1)
    q = method.past(x).softmax(1)
    onehot = nn.functional.one_hot(y, 2).float()
    expected = (5 * (p - onehot).abs().sum(1) - 4 * (p - q).abs().sum(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert not method.past.training
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.past.parameters())
    assert all(p.grad is not None for p in model.parameters())
    ctx.optimizer.step()
    assert all(torch.equal(snapshot[k], v) for k, v in method.past.state_dict().items())


def test_rl_warmup_and_refresh_schedule():
    cfg = load_config(None, ["method=rl", "rl_warmup=2", "rl_update=3"])
    method = RLMethod(cfg)
    assert [d for d in range(12) if method.refreshes_after(d)] == [2, 5, 8, 11]
    model = tiny_net(2)
    ctx = context(model, cfg)
    method.on_train_start(ctx)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    assert method.extra_loss(ctx, x, model(x), y) is None and method.past is None
    method.on_epoch_end(ctx, 0, last=False)
    assert method.past is None
    method.on_epoch_end(ctx, 1, last=False)
    assert method.past_epoch == 2 and method.extra_loss(ctx, x, model(x), y) is not None
    metrics = method.on_epoch_end(ctx, 2, last=False)
    assert metrics["rl_past_epoch"] == 2.0 and "rl_retro_loss" in metrics and method.past_epoch == 2


# ---- through the trainer: runs and bitwise resume ---------------------------------------------------------


def _interrupted_then_resumed(tmp_path: Path, args: list[str], monkeypatch) -> tuple[dict, dict, dict]:
    """An uninterrupted run, and one stopped after epoch 1 (inside the loop) then resumed."""
    ref = main(load_config(None, TINY + args + [f"out={tmp_path / 'ref'}"]))
    real = we.train.trainer.write_metrics

    def stop(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(we.train.trainer, "write_metrics", stop)  # called right after epoch 1's checkpoint
    with pytest.raises(RuntimeError, match="interrupted"):
        main(load_config(None, TINY + args + [f"out={tmp_path / 'cut'}"]))
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(we.train.trainer, "write_metrics", real)
    main(load_config(None, TINY + args + [f"out={tmp_path / 'cut'}"]))
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    timing = TIMING_KEYS
    strip = lambda h: [{k: v for k, v in r.items() if k not in timing} for r in h]
    assert strip(a["history"]) == strip(b["history"])
    return ref, a["method"], b["method"]


def _drawn_batches(cfg, epoch: int) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """The trainer's batches of an FG epoch, and those each further network trained on (one call per batch)."""
    build = lambda seed: build_data("digits", "", batch_size=cfg.batch_size, data_path="device", seed=seed,
                                    limit_train=cfg.limit_train)
    data = build(cfg.seed)
    model = models.create(cfg.model, num_classes=10)
    ctx = TrainContext(model, build_optimizer(cfg, model), cfg, torch.device("cpu"), len(data.train), data=data,
                       dist=SINGLE, build_model=lambda: models.create(cfg.model, num_classes=10),
                       build_optimizer=lambda net, lr: build_optimizer(cfg, net, lr),
                       build_scheduler=lambda opt: build_scheduler(cfg, opt),
                       build_train_data=lambda seed: build(seed).train)
    method = FGMethod(cfg)
    method.on_train_start(ctx)
    seen: list[list[torch.Tensor]] = [[] for _ in method.nets]
    for j, net in enumerate(method.train_fnets):
        method.train_fnets[j] = lambda x, j=j, net=net: (seen[j].append(x.clone()), net(x))[1]
    data.train.set_epoch(epoch)
    trainer_batches = []
    for it, (x, y) in enumerate(data.train):
        trainer_batches.append(x.clone())
        method.after_batch(ctx, x, y, it, epoch)
    return trainer_batches, seen


def test_fg_networks_draw_their_own_data_order_and_augmentation():
    cfg = load_config(None, TINY + ["method=fg", "fg_n=3"])
    base, nets = _drawn_batches(cfg, 0)
    assert len(nets) == 2 and all(len(batches) == len(base) == 2 for batches in nets)  # lock-step
    for a, b in ((base, nets[0]), (base, nets[1]), (nets[0], nets[1])):  # three different streams
        assert all(not torch.equal(x, z) for x, z in zip(a, b))
    again_base, again = _drawn_batches(cfg, 0)  # deterministic from the run seed and the network index
    assert all(torch.equal(x, z) for x, z in zip(base + nets[0] + nets[1], again_base + again[0] + again[1]))
    _, later = _drawn_batches(cfg, 1)  # and from the epoch
    assert not torch.equal(later[0][0], nets[0][0])
    _, other_seed = _drawn_batches(cfg.replace(seed=cfg.seed + 1), 0)
    assert not torch.equal(other_seed[0][0], nets[0][0])


def test_fg1_through_the_trainer_and_exact_resume(tmp_path: Path, monkeypatch):
    ref, a, b = _interrupted_then_resumed(tmp_path, ["method=fg", "fg_n=1", "fg_threshold=14"], monkeypatch)
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["fg_grafted"] > 0 and "fg_grafted" not in rows[1]  # grafted after epoch 1, not after the last
    assert ref["status"] == "complete" and a == b and a["nets"] == []


def test_fg_through_the_trainer_and_exact_resume(tmp_path: Path, monkeypatch):
    ref, a, b = _interrupted_then_resumed(tmp_path, ["method=fg", "fg_n=2"], monkeypatch)
    again = main(load_config(None, TINY + ["method=fg", "fg_n=2", f"out={tmp_path / 'again'}"]))
    c = torch.load(tmp_path / "again" / "last.pt", weights_only=True)["method"]
    assert all(torch.equal(t, c["nets"][0][k]) for k, t in a["nets"][0].items())  # the same run twice
    assert again["final_top1"] == ref["final_top1"] and again["fg_net1_final_top1"] == ref["fg_net1_final_top1"]
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    for key in ("fg_net1_top1", "fg_net1_top5", "fg_net1_test_loss", "fg_net1_train_loss", "fg_net1_lr"):
        assert key in rows[0] and key in rows[1], key
    assert rows[0]["fg_net1_lr"] == pytest.approx(0.05) and rows[0]["lr"] == 0.1  # the authors' rule
    assert "fg_net0_coef" in rows[0] and "fg_net0_coef" not in rows[1]  # no grafting after the last epoch
    assert ref["fg_best_net"] in (0, 1)
    best = ref["fg_best_net"]
    assert ref["final_top1"] == rows[-1]["test_top1" if best == 0 else "fg_net1_top1"]
    assert ref["fg_net0_final_top1"] == rows[-1]["test_top1"] and ref["fg_net1_final_top1"] == rows[-1]["fg_net1_top1"]
    # the other network, its optimizer and its scheduler all resume exactly
    assert len(a["nets"]) == len(b["nets"]) == 1
    for name, tensor in a["nets"][0].items():
        assert torch.equal(tensor, b["nets"][0][name]), name
    for pa, pb in zip(a["optimizers"][0]["state"].values(), b["optimizers"][0]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert a["schedulers"] == b["schedulers"]
    assert not any(torch.equal(t, a["nets"][0][k]) for k, t in
                   torch.load(tmp_path / "ref" / "last.pt", weights_only=True)["model"].items()
                   if k.endswith("conv1.weight"))  # two distinct networks


def test_rl_through_the_trainer_and_exact_resume(tmp_path: Path, monkeypatch):
    ref, a, b = _interrupted_then_resumed(tmp_path, ["method=rl", "rl_warmup=1", "rl_update=1"], monkeypatch)
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert "rl_retro_loss" not in rows[0] and math.isfinite(rows[1]["rl_retro_loss"])  # after the warm-up only
    assert rows[1]["rl_past_epoch"] == 1.0
    assert ref["status"] == "complete"
    assert a["past_epoch"] == b["past_epoch"] == 1
    for name, tensor in a["past"].items():
        assert torch.equal(tensor, b["past"][name]), name

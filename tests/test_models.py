"""Tests of the model zoo: registry API, shapes, gradients and exact parameter counts."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from models import registry
from we.grid.cost import DEFAULT_SOURCE, FALLBACK_IMAGES_PER_S, Throughput, default_images_per_s
from we.report.reported_tables import Column
from we.train.config import load_config


def cifar_resnet_params(depth: int, classes: int, shortcut: str = "A") -> int:
    """He et al.'s CIFAR ResNet (6n + 2 layers, widths 16/32/64, 3x3 convs without bias, BN with
    weight and bias), counted by hand: stem conv + BN, n basic blocks per stage, the classifier;
    option B adds a 1x1 projection + BN at the two widening blocks (option A's shortcut is free)."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += c_in * width * 9 + 2 * width + width * width * 9 + 2 * width
            if shortcut == "B" and c_in != width:
                total += c_in * width + 2 * width
            c_in = width
    return total + 64 * classes + classes


# Published counts: ResNet-20 0.27M and ResNet-56 0.85M (He et al., Table 6) are these formulas'
# 269,722 and 853,018. At 10 classes, from the authors' script and the paper's model descriptions:
# densenet40, mobilenetv1, mobilenetv2, shufflenetv1; at 1000 classes, torchvision's resnet34
# (21,797,672) and timm's mobilenetv2_050 (1,968,680). Other class counts only swap the classifier:
# FEATURES[name] inputs -> k outputs with bias.
PUBLISHED: dict[str, tuple[int, int]] = {  # name: (classes, parameters)
    "densenet40": (10, 1_019_722), "mobilenetv1": (10, 3_217_226), "mobilenetv2": (10, 2_296_922),
    "shufflenetv1": (10, 925_618), "resnet34": (1000, 21_797_672), "mobilenetv2_050": (1000, 1_968_680),
}
FEATURES = {"densenet40": 16 + 3 * 12 * 12,  # growth 12, 12 layers per dense block
            "mobilenetv1": 1024, "mobilenetv2": 1280, "shufflenetv1": 960, "resnet34": 512, "mobilenetv2_050": 1280}
CIFAR_RESNETS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}


def expected_params(name: str, classes: int) -> int:
    if name in CIFAR_RESNETS:
        return cifar_resnet_params(CIFAR_RESNETS[name], classes)
    known, count = PUBLISHED[name]
    return count + (classes - known) * (FEATURES[name] + 1)


EXPECTED = {name: tuple(expected_params(name, k) for k in (10, 100, 1000)) for name in [*CIFAR_RESNETS, *PUBLISHED]}
assert EXPECTED["resnet20"][0] == 269_722 and EXPECTED["resnet56"][0] == 853_018  # the published figures
IMAGENET = {"resnet34", "mobilenetv2_050"}
TEST_SIZE = {"cifar": 32, "imagenet": 64}  # small ImageNet inputs keep the CPU tests fast


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_list_models_matches_table() -> None:
    names = models.list_models()
    assert names == sorted(EXPECTED)
    assert set(models.list_models("imagenet")) == IMAGENET
    assert set(models.list_models("cifar")) == set(EXPECTED) - IMAGENET


@pytest.mark.parametrize("name", models.list_models())
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    net = models.create(name, num_classes=7)
    size = TEST_SIZE[models.model_info(name).family]
    x = torch.randn(2, 3, size, size)
    net.train()
    out = net(x)
    assert out.shape == (2, 7)
    out.logsumexp(1).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has non-finite gradient"
    net.eval()
    with torch.no_grad():
        assert net(x[:1]).shape == (1, 7)


@pytest.mark.parametrize("classes_idx", [0, 1, 2], ids=["c10", "c100", "c1000"])
@pytest.mark.parametrize("name", models.list_models())
def test_param_count(name: str, classes_idx: int) -> None:
    classes = (10, 100, 1000)[classes_idx]
    assert n_params(models.create(name, num_classes=classes)) == EXPECTED[name][classes_idx]


def test_default_num_classes_is_10() -> None:
    assert models.create("resnet20")(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name,kw,count", [
    ("resnet20", {"shortcut": "B"}, cifar_resnet_params(20, 10, "B")),  # option-B projection shortcuts
    ("resnet56", {"shortcut": "B"}, cifar_resnet_params(56, 10, "B")),
    # the script's 925,618 less one bias per conv filter: stem 24; per unit 2 x (width // 4) + branch, where the
    # branch is width - input width in a stage's first unit: 24 + 1,416 + 5,520 + 5,280 = 12,240 biases
    ("shufflenetv1", {"conv_bias": False}, PUBLISHED["shufflenetv1"][1] - 24 - sum(
        2 * (w // 4) + (w - cin if i == 0 else w)
        for w, n, cin in ((240, 4, 24), (480, 8, 240), (960, 4, 480)) for i in range(n))),
])
def test_options(name: str, kw: dict, count: int) -> None:
    assert n_params(models.create(name, **kw)) == count


def test_option_b_forward() -> None:
    net = models.create("resnet20", shortcut="B")
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="shortcut"):
        models.create("resnet20", shortcut="C")


def test_unknown_name() -> None:
    with pytest.raises(ValueError) as e:
        models.create("resnet57")
    msg = str(e.value)
    assert "resnet57" in msg and "resnet56" in msg and "mobilenetv2_050" in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match="resnet57"):
        models.model_info("resnet57")


def test_unknown_kwarg() -> None:
    with pytest.raises(TypeError, match="bogus"):
        models.create("resnet20", bogus=1)
    with pytest.raises(TypeError, match="conv_bias"):
        models.create("mobilenetv1", conv_bias=True)
    with pytest.raises(TypeError, match="bogus"):
        models.create("resnet34", bogus=1)


def test_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        models.create("resnet20", num_classes=0)


# The paper's names of the models its tables show, and the input sides it trains them at (Table 4:
# MobileNetV2-0.5 at 128x128).
PAPER_NAMES = {"resnet20": "ResNet-20", "resnet34": "ResNet-34", "resnet56": "ResNet-56", "resnet110": "ResNet-110",
               "densenet40": "DenseNet-40", "mobilenetv1": "MobileNetV1", "mobilenetv2": "MobileNetV2",
               "shufflenetv1": "ShuffleNetV1", "mobilenetv2_050": "MobileNetV2-0.5"}
INPUT_SIZES = {"resnet34": 224, "mobilenetv2_050": 128}


@pytest.mark.parametrize("name", models.list_models())
def test_model_info(name: str) -> None:
    info = models.model_info(name)
    assert info.name == name
    assert (info.family, info.input_size) == (("imagenet", INPUT_SIZES[name]) if name in IMAGENET else ("cifar", 32))
    assert info.display == PAPER_NAMES.get(name, name) == models.display_name(name)
    assert isinstance(info.images_per_s, float) and info.images_per_s > 0  # every zoo model has a default
    with pytest.raises(dataclasses.FrozenInstanceError):
        models.model_info(name).family = "imagenet"  # type: ignore[misc]


@pytest.mark.parametrize("name", models.list_models())
def test_the_report_the_planner_and_the_config_read_the_registry(name: str) -> None:
    info = models.model_info(name)
    dataset = "imagenet" if info.family == "imagenet" else "cifar10"
    assert Column(dataset, name, "top1").head.startswith(info.display)
    assert Throughput({}, "").lookup(name, dataset) == (info.images_per_s, DEFAULT_SOURCE)
    assert load_config(None, [f"dataset={dataset}", f"model={name}"]).image_size == info.input_size


@pytest.fixture
def toy_model(monkeypatch: pytest.MonkeyPatch) -> str:
    """A model registered for one test only (the registry is restored afterwards)."""
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_INFO", dict(registry._INFO))

    @models.register_model("imagenet", display="Toy-Net", input_size=96, images_per_s=1234)
    def toynet(num_classes: int = 1000) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, num_classes))
    return "toynet"


def test_a_registered_models_facts_reach_the_report_the_planner_and_the_config(toy_model: str) -> None:
    assert Column("imagenet", toy_model, "top1").head == "Toy-Net top-1"
    assert Throughput({}, "").lookup(toy_model, "imagenet") == (1234.0, DEFAULT_SOURCE)
    assert default_images_per_s(toy_model) == 1234.0
    assert load_config(None, ["dataset=imagenet", f"model={toy_model}"]).image_size == 96
    assert models.create(toy_model, num_classes=5)(torch.zeros(1, 3, 96, 96)).shape == (1, 5)


def test_register_model_refuses_bad_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_INFO", dict(registry._INFO))
    for bad in ({"input_size": 0}, {"input_size": 1.5}, {"images_per_s": 0}, {"images_per_s": float("nan")},
                {"images_per_s": "fast"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            models.register_model("cifar", name="bad", **bad)
    assert models.display_name("timm:resnet18") == "timm:resnet18"
    assert default_images_per_s("timm:resnet18") == FALLBACK_IMAGES_PER_S


def test_register_duplicate_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):
        @models.register_model("cifar", name="resnet20")
        def _dup(num_classes: int = 10) -> nn.Module:
            return nn.Identity()
    assert models.create("resnet20").__class__.__name__ == "CifarResNet"


def test_same_seed_same_weights() -> None:
    torch.manual_seed(1)
    a = models.create("resnet20").state_dict()
    torch.manual_seed(1)
    b = models.create("resnet20").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_shufflenet_group_convs() -> None:
    convs = _convs(models.create("shufflenetv1"))
    grouped = [c for c in convs if 1 < c.groups < c.in_channels]
    depthwise = [c for c in convs if c.groups == c.in_channels > 1]
    assert len(grouped) == 32 and all(c.groups == 3 and c.kernel_size == (1, 1) for c in grouped)
    assert len(depthwise) == 16 and all(c.kernel_size == (3, 3) for c in depthwise)
    assert all(c.bias is not None for c in convs)
    assert len(convs) == 1 + len(grouped) + len(depthwise)


@pytest.mark.parametrize("name,n_dw", [("mobilenetv1", 13), ("mobilenetv2", 17), ("mobilenetv2_050", 17)])
def test_mobilenet_depthwise(name: str, n_dw: int) -> None:
    convs = _convs(models.create(name))
    dw = [c for c in convs if c.groups == c.in_channels > 1]
    assert len(dw) == n_dw
    assert all(c.out_channels == c.in_channels and c.kernel_size == (3, 3) for c in dw)
    assert all(c.groups in (1, c.in_channels) for c in convs)  # nothing in between


@pytest.mark.parametrize("name", ["resnet56", "densenet40"])
def test_plain_convs(name: str) -> None:
    assert all(c.groups == 1 and c.bias is None for c in _convs(models.create(name)))


def test_option_a_shortcut_has_no_parameters() -> None:
    net = models.create("resnet20")
    convs = _convs(net)
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)


def test_models_does_not_import_we() -> None:
    root = Path(models.__file__).resolve().parent.parent
    code = "import sys, models; models.create('resnet20'); assert 'we' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)

"""Any model: timm:<name> and <module>:<callable> through models.create, the config and the trainer."""
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from we.grid.identity import config_hash
from we.train import main
from we.train.config import ConfigError, load_config, to_dict

TINY = ["dataset=digits", "limit_train=64", "batch_size=32", "workers=0", "progress=plain", "epochs=1", "method=we",
        "we_interval_unit=iter", "we_r_hat=0.5"]  # WE evolves after each iteration of the one epoch

USER_MODULE = '''
from torch import nn


class Small(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def build(num_classes):
    return Small(num_classes)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_nets_i10.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_nets_i10"
    sys.modules.pop("my_nets_i10", None)


def test_create_accepts_specs(user_module):
    vit = models.create("timm:test_vit", num_classes=7, image_size=32)
    assert vit.patch_embed.img_size == (32, 32) and vit.head.out_features == 7  # img_size from the run
    cnn = models.create("timm:test_resnet", num_classes=7, image_size=32)  # takes any input size
    assert cnn.get_classifier().out_features == 7
    mine = models.create(f"{user_module}:build", num_classes=5)
    assert type(mine).__name__ == "Small" and mine.head.out_features == 5


@pytest.mark.parametrize("spec, message", [
    ("resnet5", "unknown model 'resnet5'; did you mean 'resnet56'"),
    ("timm:resnet1888", "unknown timm model 'resnet1888'; did you mean"),
    ("timm:", "model spec .timm:. is not <zoo name>, timm:<name> or <module>:<callable>"),
    ("no_such_module_i10:build", "cannot import module 'no_such_module_i10'"),
])
def test_unknown_models_are_refused_at_config_time_with_close_matches(spec, message):
    with pytest.raises(ConfigError, match="config key 'model': (.* )?" + message):
        load_config(None, {"model": spec})


def test_misspelt_callable_gets_a_suggestion(user_module):
    with pytest.raises(ConfigError, match=f"config key 'model': .*has no callable 'biuld'; did you mean 'build'"):
        load_config(None, [f"model={user_module}:biuld"])


def test_family_check_applies_to_zoo_models_only(user_module):
    with pytest.raises(ConfigError, match="'resnet34' is a imagenet model"):
        load_config(None, ["model=resnet34"])
    assert load_config(None, ["model=timm:test_resnet"]).model == "timm:test_resnet"


def test_run_identity_covers_the_model_spec(user_module):
    hashes = {spec: config_hash(to_dict(load_config(None, [f"model={spec}"])))
              for spec in ("resnet20", "timm:test_resnet", "timm:test_vit", f"{user_module}:build")}
    assert len(set(hashes.values())) == 4


@pytest.mark.parametrize("spec", ["timm:test_resnet", "USER:build"])
def test_a_timm_model_and_a_user_callable_train_with_we(tmp_path: Path, user_module, spec):
    spec = spec.replace("USER", user_module)
    result = main(load_config(None, TINY + [f"model={spec}", f"out={tmp_path / 'run'}"]))
    assert result["status"] == "complete" and result["epochs_done"] == 1
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["config"]["model"] == spec
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["method"]
    assert state["steps"] == 2 and sum(state["evolved"].values()) > 0


def test_user_callable_must_return_a_module(tmp_path, monkeypatch):
    (tmp_path / "bad_nets_i10.py").write_text("def build(num_classes):\n    return num_classes\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match="returned int, not an nn.Module"):
        models.create("bad_nets_i10:build", num_classes=3)
    assert isinstance(models.create("resnet20", num_classes=3), nn.Module)

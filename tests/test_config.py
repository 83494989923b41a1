"""Config: unknown keys, wrong types, ranges, recipe resolution, YAML files and overrides."""
from pathlib import Path

import pytest

from we.train.config import RECIPES, Config, ConfigError, config_diff, load_config, make_config, parse_overrides, to_dict


def test_paper_recipe_resolves_every_none():
    cfg = load_config(None, ["dataset=cifar10", "model=resnet56"])
    assert all(v is not None for v in to_dict(cfg).values())
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (200, 128, 0.1, 0.9, 5e-4)
    assert cfg.schedule == "multistep" and cfg.lr_milestones == [60, 120]
    assert cfg.we_milestones == [60, 120] and cfg.we_beta == 2.5 and cfg.we_eta == 15.0
    assert cfg.normalization == "paper" and cfg.nesterov is False and cfg.image_size == 32


def test_authors_recipe_uses_steplr_every_60():
    cfg = load_config(None, ["dataset=cifar100", "recipe=official"])
    assert cfg.schedule == "step" and cfg.lr_step == 60 and cfg.normalization == "official"
    assert cfg.we_milestones == [60, 120, 180]  # StepLR(60) over 200 epochs decays three times


def test_imagenet_defaults_and_mobilenet_input_size():
    cfg = load_config(None, ["dataset=imagenet", "model=mobilenetv2_050"])
    assert (cfg.epochs, cfg.batch_size, cfg.weight_decay, cfg.lr_step) == (90, 256, 1e-4, 30)
    assert (cfg.we_beta, cfg.we_eta, cfg.we_milestones) == (2.0, 8.0, [30, 60])
    assert cfg.image_size == 128
    assert load_config(None, ["dataset=imagenet", "model=resnet34"]).image_size == 224


def test_explicit_values_beat_the_recipe():
    cfg = load_config(None, ["epochs=10", "lr=0.05", "lr_milestones=[3,6]"])
    assert (cfg.epochs, cfg.lr, cfg.lr_milestones, cfg.we_milestones) == (10, 0.05, [3, 6], [3, 6])


@pytest.mark.parametrize("override, key", [
    ("learning_rate=0.1", "learning_rate"), ("epochs=ten", "epochs"), ("epochs=0", "epochs"),
    ("lr=-1", "lr"), ("model=resnet9000", "model"), ("method=magic", "method"), ("dataset=mnist", "dataset"),
    ("we_alpha=1.5", "we_alpha"), ("we_alpha=often", "we_alpha"), ("we_matching=sideways", "we_matching"),
    ("nesterov=maybe", "nesterov"), ("lr_milestones=[120,60]", "lr_milestones"), ("device=tpu", "device"),
    ("model=resnet34", "model"), ("we_selection=none", "we_selection"), ("batch_size=1.5", "batch_size"),
])
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert f"'{key}'" in msg and "\n" not in msg


def test_int_accepted_for_float_and_bool_not_for_int():
    assert make_config({"lr": 1}).lr == 1.0 and isinstance(make_config({"lr": 1}).lr, float)
    with pytest.raises(ConfigError, match="'epochs'"):
        make_config({"epochs": True})
    assert make_config({"we_alpha": 0.3}).we_alpha == 0.3
    assert make_config({"we_alpha": 1}).we_alpha == 1.0


def test_yaml_file_and_override_precedence(tmp_path: Path):
    f = tmp_path / "run.yaml"
    f.write_text("model: resnet32\nlr: 0.2\nmethod: we\n")
    cfg = load_config(f, ["lr=0.3"])
    assert (cfg.model, cfg.lr, cfg.method) == ("resnet32", 0.3, "we")


@pytest.mark.parametrize("text, needle", [("model: [unclosed\n", "malformed YAML"), ("- a\n- b\n", "mapping"),
                                          ("colour: red\n", "'colour'")])
def test_bad_yaml_file_names_the_file(tmp_path: Path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(f) in str(err.value) and needle in str(err.value)


def test_missing_file_and_bad_override_syntax(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_recipes_only_name_real_keys():
    known = set(to_dict(Config()))
    for recipe in RECIPES.values():
        assert set(recipe) <= known


def test_config_diff():
    a, b = to_dict(Config()), to_dict(Config(lr=0.5, out="x"))
    assert config_diff(a, b) == ["lr", "out"] and config_diff(a, b, ignore=("out",)) == ["lr"]


def test_keys_page_documents_every_config_key():
    page = (Path(__file__).resolve().parent.parent / "docs" / "keys.md").read_text()
    missing = [k for k in to_dict(Config()) if f"| `{k}` |" not in page]
    assert not missing, f"docs/keys.md lacks: {missing}"

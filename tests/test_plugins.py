"""Plug-ins own their knowledge: a new method is one module plus one registration, and run identities of
finished runs never move."""
from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pytest
import yaml

from we.errors import ConfigError
from we.grid.cli import submit
from we.grid.identity import resolve_cells
from we.grid.schema import load_grid
from we.grid.state import assess
from we.grid.identity import identity
from we.methods import (METHODS, ConfigKey, Method, cost_factor, method_presets, paper_name, register_method,
                        unregister_method)
from we.report import collect
from we.train.config import config_keys, load_config, make_config, resolve, to_dict
from we.train.trainer import main as train_main

# Run-folder hashes of cells of the shipped grids, taken before the package was reorganised: a user's
# finished runs must keep their folders.
PINNED = [
    ("table1", "cifar10-resnet56-we-s0", "e248271c17"),
    ("table1", "cifar100-resnet110-oni-s1", "09047fe7ed"),
    ("table1", "cifar10-densenet40-baseline-s0", "f80fa26102"),
    ("table1", "cifar10-resnet110-rl-s0", "1f565c01d6"),
    ("table2", "cifar100-shufflenetv1-svb-s0", "9b96e65532"),
    ("table1-official", "cifar10-densenet40-we-s0", "17b3cce2b0"),  # the authors' code has no DenseNet-40
    ("table3", "imagenet-resnet34-baseline-s0", "fcc4337efd"),
    ("table3-official", "imagenet-resnet34-we-s0", "63cb21f00b"),
    ("table4", "imagenet-mobilenetv2_050-we-s0", "cbf28991a2"),
    ("table5", "cifar100-mobilenetv1-we_global_only-s2", "187dc586c7"),
    ("table6", "cifar100-shufflenetv1-we_reverse_matching-s4", "3f171123b1"),
    ("table7", "cifar100-mobilenetv1-filter_level_gl-s0", "4e84dd53fc"),
    ("table8", "cifar100-shufflenetv1-we_without_conv-s3", "fe5b2b3d36"),
    ("figure6", "cifar100-mobilenetv1-we_alpha_0.3-s0", "28d68899bb"),
    ("demo", "digits-resnet20-we_official-s1", "fae1d4a956"),
]


def shipped_cell(grid: str, key: str, root, sets=None):
    """The cell `key` of the shipped grid `grid`, resolved under `root` (with `sets` applied to every cell)."""
    return {c.key: c for c in resolve_cells(load_grid(grid), root, sets)}[key]


@pytest.mark.parametrize("grid, key, digest", PINNED)
def test_run_folder_hashes_are_pinned(tmp_path, grid, key, digest):
    cell = shipped_cell(grid, key, tmp_path)
    assert cell.config_hash == digest
    assert cell.run_dir.name == f"{key}-{digest}"


# Hashes of cells whose method changed its results (issue 12), as they were before: their runs must move.
CHANGED = [
    ("table1", "cifar10-resnet110-repr-s0", "1a48d46330", "repr"),
    ("table1", "cifar10-resnet110-fg1-s0", "407a962fce", "fg"),
    ("table2", "cifar10-mobilenetv1-fg2-s0", "5dbb849276", "fg"),
    ("table3", "imagenet-resnet34-repr-s0", "4b036c6b03", "repr"),
    ("table3", "imagenet-resnet34-oni-s0", "b2bea86a97", "oni"),
]


# Cells of the -official grids that now train the authors' model files (model_init / model_arch
# authors), as they were before: their runs must move, and those keys alone moved them.
AUTHORS_MODELS = [
    ("table2-official", "cifar10-mobilenetv1-we-s0", "d882153a44"),
    ("table2-official", "cifar100-shufflenetv1-we-s2", "509419781e"),
    ("table1-official", "cifar10-resnet56-baseline-s0", "6db9cc2090"),
    ("table4-official", "imagenet-mobilenetv2_050-baseline-s0", "125ebb7495"),
]


@pytest.mark.parametrize("grid, key, digest", AUTHORS_MODELS)
def test_authors_model_files_move_only_their_cells(tmp_path, grid, key, digest):
    cell = shipped_cell(grid, key, tmp_path)
    assert cell.config_hash != digest and cell.config["model_init"] == "authors"
    assert shipped_cell(grid, key, tmp_path, {"model_init": "zoo", "model_arch": "zoo"}).config_hash == digest


@pytest.mark.parametrize("grid, key, digest, method", CHANGED)
def test_changed_methods_get_new_run_folders(tmp_path, monkeypatch, grid, key, digest, method):
    cell = {c.key: c for c in resolve_cells(load_grid(grid), tmp_path)}[key]
    assert cell.config_hash != digest
    if method == "oni":  # ImageNet's recipe moved it; its CIFAR cells keep theirs (PINNED)
        assert [cell.config[k] for k in ("oni_group_size", "oni_iters", "oni_skip_shortcut")] == [0, 2, True]
        assert "oni_version" not in identity(cell.config)
        return
    version = METHODS[method].version
    assert version > 1 and identity(cell.config)[f"{method}_version"] == version
    monkeypatch.setattr(METHODS[method], "version", 1)  # the version alone moved it
    assert {c.key: c for c in resolve_cells(load_grid(grid), tmp_path)}[key].config_hash == digest


def test_a_run_of_another_method_version_is_not_reused(tmp_path, monkeypatch):
    cfg = load_config(None, ["dataset=digits", "model=resnet20", "limit_train=32", "batch_size=32", "workers=0",
                             "progress=plain", "epochs=1", "method=fg", "fg_n=1", f"out={tmp_path / 'run'}"])
    result = train_main(cfg)
    assert result["method_version"] == METHODS["fg"].version == 2
    monkeypatch.setattr(METHODS["fg"], "version", 3)
    with pytest.raises(ConfigError, match="version 2 of method 'fg'"):
        train_main(cfg)


def test_registry_supplies_keys_presets_names_and_costs():
    assert {"we", "fg", "oni", "svb", "repr", "rl", "baseline"} <= set(METHODS)
    for name, cls in METHODS.items():
        assert all(k.startswith(f"{name}_") for k in cls.keys), name
        assert cls.sources, name
    assert method_presets()["fg4"] == {"method": "fg", "fg_n": 4}
    assert method_presets()["we_official"]["we_variant"] == "official"
    assert paper_name("we_global_only") == "WE-G" and paper_name("fg1") == "FG-1" and paper_name("mine") == "mine"
    assert cost_factor({"method": "fg", "fg_n": 4}) == 4 and cost_factor({"method": "baseline"}) == 1
    assert cost_factor({"method": "rl"}) > 1


PLUGIN = '''
    """A throwaway method: scales every weight by toy_scale after each epoch but the last."""
    import torch

    from we.errors import ConfigError
    from we.methods.base import ConfigKey, Method, Preset


    class ToyMethod(Method):
        name = "toy"
        keys = {"toy_scale": ConfigKey(float, 1.0, "factor applied to the weights", minimum=0, strict=True),
                "toy_label": ConfigKey(str, "a", "a choice", choices=("a", "b"))}
        presets = {"toy": Preset(paper="Toy"), "toy_half": Preset({"toy_scale": 0.5}, "Toy-1/2")}
        sources = "this test"

        @classmethod
        def check(cls, cfg):
            if cfg.toy_scale > 2:
                raise ConfigError(f"config key 'toy_scale': must be <= 2, got {cfg.toy_scale!r}")

        @classmethod
        def cost(cls, config):
            return 1.5

        def on_epoch_end(self, ctx, epoch, last):
            if last:
                return {}
            with torch.no_grad():
                for p in ctx.model.parameters():
                    p.mul_(self.cfg.toy_scale)
            return {"toy_scaled": 1.0}
'''


@pytest.fixture
def toy_method(tmp_path):
    path = tmp_path / "toy_plugin.py"
    path.write_text(textwrap.dedent(PLUGIN))
    spec = importlib.util.spec_from_file_location("toy_plugin", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_plugin"] = module
    spec.loader.exec_module(module)
    register_method(module.ToyMethod)  # the one registration line
    yield module.ToyMethod
    unregister_method("toy")
    sys.modules.pop("toy_plugin", None)


def test_a_new_method_is_one_module_and_one_registration(tmp_path, toy_method):
    # config: its keys, defaults, choices and checks
    assert config_keys()["toy_scale"].default == 1.0
    cfg = load_config(None, ["method=toy", "toy_scale=0.5"])
    assert cfg.toy_scale == 0.5 and to_dict(cfg)["toy_label"] == "a"
    with pytest.raises(ConfigError, match="'toy_scale'"):
        load_config(None, ["method=toy", "toy_scale=3"])
    with pytest.raises(ConfigError, match="'toy_label'"):
        load_config(None, ["method=toy", "toy_label=c"])
    with pytest.raises(ConfigError, match="toy_scale"):
        load_config(None, ["method=toy", "toy_scale=0"])
    # the trainer runs it and logs its metric
    out = tmp_path / "run"
    result = train_main(load_config(None, ["method=toy", "toy_scale=0.5", "epochs=2", "limit_train=64",
                                           "batch_size=32", "workers=0", "progress=plain", f"out={out}"]))
    assert result["status"] == "complete"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["toy_scaled"] == 1.0 and "toy_scaled" not in rows[1]
    # a grid names it by its presets; its keys enter the run identity; its cost and paper name reach plan and table
    grid_file = tmp_path / "toy.yaml"
    grid_file.write_text(yaml.safe_dump({"name": "toy", "base": {"dataset": "digits", "epochs": 1, "limit_train": 64,
                                                                  "batch_size": 32, "workers": 0, "progress": "plain"},
                                         "axes": {"method": ["baseline", "toy", "toy_half"]}, "seeds": [0, 1]}))
    runs = tmp_path / "runs"
    cells = {c.key: c for c in resolve_cells(load_grid(grid_file), runs)}
    assert cells["digits-resnet20-toy_half-s0"].config["toy_scale"] == 0.5
    assert cells["digits-resnet20-toy-s0"].config_hash != cells["digits-resnet20-toy_half-s0"].config_hash
    assert cost_factor(cells["digits-resnet20-toy-s0"].config) == 1.5

    class InProcess:
        name = "local"

        def submit(self, chosen, grid_dir, jobs=None):
            for cell in chosen:
                train_main(resolve(make_config(cell.config)))
            return [{"job_id": f"inproc-{i}", "executor": "inproc", "time": "2026-01-01T00:00:00+00:00"}
                    for i, _ in enumerate(chosen)]

    submit(load_grid(grid_file), list(cells.values()), InProcess(), runs)
    assert {s.state for s in assess(list(cells.values()), runs)} == {"done"}
    table = collect("toy", runs_root=runs, out_dir=tmp_path / "tables", figures=False, echo=False)["table"]
    assert set(table["method"]) == {"baseline", "toy", "toy_half"} and set(table["n"]) == {2}
    assert cells["digits-resnet20-baseline-s0"].config_hash == resolve_cells(load_grid(grid_file), runs)[0].config_hash


def test_keys_of_a_plugin_must_carry_its_prefix():
    class Bad(Method):
        name = "bad"
        keys = {"scale": ConfigKey(float, 1.0)}

    with pytest.raises(ValueError, match="must start with 'bad_'"):
        register_method(Bad)
    assert "bad" not in METHODS

"""Config machinery (common/config.py) and the pretrain / fine-tune schemas."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from soliderkit.config import (ConfigError, add_config_args, config_to_dict, format_config, load_config, option,
                           parse_config_from_args, require, save_resolved_config)
from soliderkit.finetune.config import FinetuneConfig
from soliderkit.pretrain.config import PretrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPO / "configs").rglob("*.yaml"))

CARD_MODEL_BLOCK = """\
model:
  backbone: swin_tiny_patch4_window7_224
  last_stride: 1
  pretrain_choice: self
  pretrained_model_path: /path/to/swintiny_pretrained.pth
  input_channels: 3
  input_width: 128
  input_height: 256
  neck: bnneck
  stride_size: [16, 16]
  reduce_feat_dim: True
  feat_dim: 256
  no_margin: True
  neck_feat: after
  metric_loss_type: triplet
  with_center_loss: False
  with_flip_feature: False
  label_smooth: False
  pretrain_hw_ratio: 2
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def schema_for(path: Path) -> type:
    return PretrainConfig if "pretrain" in path.parts else FinetuneConfig


def no_effect_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "soliderkit.config" and "has no effect" in r.getMessage()]


# --- a small schema exercising the generic machinery -------------------------------------

@dataclass
class Inner:
    ratio: float = 0.5
    size: tuple[int, int] = (256, 128)
    names: list[str] = option(["a"])
    mode: str | None = None
    old: int = option(0, no_effect="kept for compatibility")

    def validate(self) -> None:
        require(0 <= self.ratio < 1, "ratio", "must be in [0, 1)")


@dataclass
class Outer:
    steps: int = 3
    flag: bool = False
    inner: Inner = option(Inner())


# --- unknown keys --------------------------------------------------------------------------

def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "model:\n  bacbone: swin_tiny_patch4_window7_224\n")
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, path)
    msg = str(e.value)
    assert str(path) in msg and "model.bacbone" in msg and "model.backbone" in msg


def test_unknown_key_suggests_key_in_another_section(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.batch_size.*did you mean `dataset\.batch_size`"):
        load_config(FinetuneConfig, overrides=["model.batch_size=32"])


def test_unknown_key_in_override_names_the_override():
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, overrides=["train.optim.base_lrr=0.1"])
    msg = str(e.value)
    assert "command-line override `train.optim.base_lrr=0.1`" in msg
    assert "train.optim.base_lrr" in msg and "train.optim.base_lr`" in msg


def test_unknown_top_level_section(tmp_path):
    path = write(tmp_path, "trian:\n  num_epochs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key `trian`; did you mean `train`"):
        load_config(FinetuneConfig, path)


def test_malformed_override():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(FinetuneConfig, overrides=["train.num_epochs"])


# --- types -----------------------------------------------------------------------------------

def test_wrong_type_names_key_value_and_file(tmp_path):
    path = write(tmp_path, "train:\n  num_epochs: ten\n")
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, path)
    msg = str(e.value)
    assert str(path) in msg and "train.num_epochs" in msg and "'ten'" in msg and "integer" in msg


@pytest.mark.parametrize("override, fragment", [
    ("train.num_epochs=true", "expected an integer, got bool"),  # bool is not an int
    ("model.with_center_loss=1", "expected a boolean"),  # int is not a bool
    ("train.optim.base_lr=true", "expected a number, got bool"),
    ("dataset.pixel_mean=0.5", "expected a list of numbers"),
    ("dataset.pixel_mean=[0.5, x, 0.5]", "dataset.pixel_mean[1]='x'"),
    ("dataset.pixel_std=0.5,0.5,0.5", "expected a list of numbers"),  # a str where a list is expected
    ("model.neck=foo", "must be one of 'bnneck', 'no'"),
    ("train.mixed_precision=fp8", "must be one of 'no', 'fp16', 'bf16'"),
    ("dataset.train_dataset_dir=[a, 3]", "a string or a list of strings or null"),
])
def test_wrong_types_from_overrides(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, overrides=[override])
    assert fragment in str(e.value) and f"`{override}`" in str(e.value)


def test_only_true_false_are_booleans(tmp_path):
    cfg = load_config(FinetuneConfig, write(tmp_path, "train:\n  mixed_precision: no\nmodel:\n  neck: no\n"))
    assert cfg.train.mixed_precision == "no" and cfg.model.neck == "no"
    with pytest.raises(ConfigError, match=r"model\.label_smooth='yes': expected a boolean"):
        load_config(FinetuneConfig, overrides=["model.label_smooth=yes"])


def test_int_is_accepted_for_float_and_converted():
    cfg = load_config(FinetuneConfig, overrides=["train.optim.base_lr=1", "train.optim.cosine_scale=64"])
    assert cfg.train.optim.base_lr == 1.0 and isinstance(cfg.train.optim.base_lr, float)
    assert isinstance(cfg.train.optim.cosine_scale, float)


def test_exponent_floats_parse_as_numbers(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 5e-4\n  min_lr: 1E-6\n")
    cfg = load_config(PretrainConfig, path)
    assert cfg.optim.lr == 5e-4 and cfg.optim.min_lr == 1e-6


def test_optional_accepts_null_and_literal_choices():
    cfg = load_config(FinetuneConfig, overrides=["model.pretrained_model_path=null", "model.neck=no"])
    assert cfg.model.pretrained_model_path is None and cfg.model.neck == "no"


def test_tuple_length_and_generic_schema(tmp_path):
    path = write(tmp_path, "inner:\n  size: [1, 2, 3]\n")
    with pytest.raises(ConfigError, match=r"inner\.size=\[1, 2, 3\]: expected a list of 2 items"):
        load_config(Outer, path)
    cfg = load_config(Outer, overrides=["inner.size=[64, 32]", "inner.names=[x, y]", "inner.mode=fast"])
    assert cfg.inner.size == (64, 32) and cfg.inner.names == ["x", "y"] and cfg.inner.mode == "fast"


def test_non_mapping_section_names_the_key(tmp_path):
    path = write(tmp_path, "model: swin\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml: model='swin': expected a mapping"):
        load_config(FinetuneConfig, path)
    with pytest.raises(ConfigError, match=r"override `train\.optim=3`.*train\.optim=3: expected a mapping"):
        load_config(FinetuneConfig, overrides=["train.optim=3"])


def test_override_below_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="`model.backbone` is not a section"):
        load_config(FinetuneConfig, overrides=["model.backbone=swin_tiny_patch4_window7_224",
                                               "model.backbone.depth=3"])


def test_empty_file_and_empty_section_give_defaults(tmp_path):
    assert load_config(FinetuneConfig, write(tmp_path, "")) == FinetuneConfig()
    assert load_config(FinetuneConfig, write(tmp_path, "# nothing\nmodel:\n", "b.yaml")) == FinetuneConfig()
    assert load_config(PretrainConfig) == PretrainConfig()


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(FinetuneConfig, write(tmp_path, "- a\n- b\n"))


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(FinetuneConfig, "does/not/exist.yaml")


# --- impossible values -------------------------------------------------------------------

@pytest.mark.parametrize("schema, override, key", [
    (FinetuneConfig, "dataset.batch_size=30", "dataset.batch_size=30"),  # not a multiple of num_instances=4
    (FinetuneConfig, "model.input_width=100", "model.input_width=100"),
    (FinetuneConfig, "train.optim.base_lr=0", "train.optim.base_lr=0.0"),
    (FinetuneConfig, "model.label_smooth_epsilon=1.0", "model.label_smooth_epsilon=1.0"),
    (FinetuneConfig, "model.metric_loss_type=center", "model.metric_loss_type='center'"),
    (FinetuneConfig, "model.jpm=true", "model.jpm=true"),
    (FinetuneConfig, "train.optim.lr_steps=[70, 40]", "train.optim.lr_steps=[70, 40]"),
    (PretrainConfig, "data.global_crop_size=[250, 128]", "data.global_crop_size=[250, 128]"),
    (PretrainConfig, "semantic.lambda_probs=[0.3, 0.3]", "semantic.lambda_probs=[0.3, 0.3]"),
    (PretrainConfig, "optim.min_lr=0.1", "optim.min_lr=0.1"),
    (PretrainConfig, "data.global_crop_scale=[0.9, 0.2]", "data.global_crop_scale=[0.9, 0.2]"),
])
def test_impossible_values_name_key_and_value(schema, override, key):
    with pytest.raises(ConfigError) as e:
        load_config(schema, overrides=[override])
    assert key in str(e.value) and f"`{override}`" in str(e.value)


def test_cross_field_error_points_at_the_file_that_set_it(tmp_path):
    path = write(tmp_path, "dataset:\n  num_instances: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: dataset.batch_size=64") and "num_instances (5)" in msg


def test_generic_validate_runs_on_nested_sections(tmp_path):
    with pytest.raises(ConfigError, match=r"inner\.ratio=1\.5: must be in \[0, 1\)"):
        load_config(Outer, write(tmp_path, "inner:\n  ratio: 1.5\n"))


# --- overrides -------------------------------------------------------------------------------

def test_overrides_of_nested_keys_and_lists(tmp_path):
    path = write(tmp_path, "train:\n  num_epochs: 3\n  optim:\n    base_lr: 0.1\n")
    cfg = load_config(FinetuneConfig, path, [
        "train.optim.base_lr=0.02", "train.optim.lr_steps=[5, 9]", "dataset.pixel_mean=[0.1,0.2,0.3]",
        "model.with_flip_feature=true", "dataset.train_dataset_dir=[/a, /b]", "re_ranking.re_ranking=True",
    ])
    assert cfg.train.num_epochs == 3  # untouched file value survives
    assert cfg.train.optim.base_lr == 0.02 and cfg.train.optim.lr_steps == [5, 9]
    assert cfg.dataset.pixel_mean == [0.1, 0.2, 0.3] and cfg.model.with_flip_feature is True
    assert cfg.dataset.train_dataset_dir == ["/a", "/b"] and cfg.re_ranking.re_ranking is True


def test_tao_5_0_steps_alias():
    cfg = load_config(FinetuneConfig, overrides=["train.optim.steps=[30, 55]"])
    assert cfg.train.optim.lr_steps == [30, 55]
    with pytest.raises(ConfigError, match="same setting"):
        load_config(FinetuneConfig, overrides=["train.optim.steps=[1]", "train.optim.lr_steps=[2]"])


def test_interpolation_like_tao_specs(tmp_path):
    path = write(tmp_path, 'results_dir: /out\ntrain:\n  results_dir: "${results_dir}/train"\n'
                           'evaluate:\n  checkpoint: "${train.results_dir}/last.pth"\n')
    cfg = load_config(FinetuneConfig, path, ["train.num_epochs=${re_ranking.k1}"])
    assert cfg.train.results_dir == "/out/train" and cfg.evaluate.checkpoint == "/out/train/last.pth"
    assert cfg.train.num_epochs == 20  # a whole-value reference keeps the type; unset keys use defaults
    with pytest.raises(ConfigError, match="names no config key"):
        load_config(FinetuneConfig, overrides=["results_dir=${nowhere}/x"])


# --- `_base_` inheritance ------------------------------------------------------------------

BASE_SPEC = """\
results_dir: /base
model:
  backbone: swin_small_patch4_window7_224
  feat_dim: 512
dataset:
  pixel_mean: [0.1, 0.2, 0.3]
  train_dataset_dir: [/a, /b]
train:
  num_epochs: 50
  optim:
    base_lr: 0.01
    lr_steps: [10, 20]
"""


def test_child_overrides_base_merges_sections_and_replaces_lists(tmp_path):
    write(tmp_path, BASE_SPEC, "base.yaml")
    child = write(tmp_path, "_base_: base.yaml\nmodel:\n  feat_dim: 128\ndataset:\n  pixel_mean: [0.5, 0.5, 0.5]\n"
                            "  train_dataset_dir: [/c]\ntrain:\n  optim:\n    lr_steps: [30]\n", "child.yaml")
    cfg = load_config(FinetuneConfig, child)
    assert cfg.model.feat_dim == 128  # the child wins
    assert cfg.model.backbone == "swin_small_patch4_window7_224"  # a sibling from the base survives
    assert cfg.results_dir == "/base" and cfg.train.num_epochs == 50
    assert cfg.train.optim.base_lr == 0.01 and cfg.train.optim.lr_steps == [30]  # two levels deep
    assert cfg.dataset.pixel_mean == [0.5, 0.5, 0.5] and cfg.dataset.train_dataset_dir == ["/c"]  # replaced whole
    assert cfg.dataset.batch_size == FinetuneConfig().dataset.batch_size  # set nowhere: the default


def test_a_scalar_or_null_replaces_a_whole_base_value(tmp_path):
    write(tmp_path, BASE_SPEC, "base.yaml")
    cfg = load_config(FinetuneConfig, write(tmp_path, "_base_: base.yaml\ndataset:\n  train_dataset_dir: /one\n"
                                                      "model: null\n", "child.yaml"))
    assert cfg.dataset.train_dataset_dir == "/one" and cfg.model == FinetuneConfig().model


def test_chain_of_bases_in_other_folders(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "exp").mkdir()
    write(tmp_path / "common", "train:\n  num_epochs: 10\n  seed: 1\nmodel:\n  feat_dim: 64\n", "root.yaml")
    write(tmp_path / "common", "_base_: root.yaml\ntrain:\n  seed: 2\n", "middle.yaml")
    child = write(tmp_path / "exp", "_base_: ../common/middle.yaml\ntrain:\n  num_epochs: 3\n", "child.yaml")
    cfg = load_config(FinetuneConfig, child)
    assert (cfg.train.num_epochs, cfg.train.seed, cfg.model.feat_dim) == (3, 2, 64)


def test_list_of_bases_merges_left_to_right_then_the_child(tmp_path):
    write(tmp_path, "train:\n  num_epochs: 1\n  seed: 1\nmodel:\n  feat_dim: 64\n", "a.yaml")
    write(tmp_path, "train:\n  seed: 2\n  checkpoint_interval: 7\n", "b.yaml")
    child = write(tmp_path, "_base_: [a.yaml, b.yaml]\ntrain:\n  checkpoint_interval: 9\n", "child.yaml")
    cfg = load_config(FinetuneConfig, child)
    assert (cfg.train.num_epochs, cfg.train.seed, cfg.train.checkpoint_interval, cfg.model.feat_dim) == (1, 2, 9, 64)


def test_overrides_and_references_apply_after_the_merge(tmp_path):
    write(tmp_path, 'results_dir: /base\ntrain:\n  results_dir: "${results_dir}/train"\n  num_epochs: 4\n', "base.yaml")
    child = write(tmp_path, "_base_: base.yaml\nresults_dir: /child\n", "child.yaml")
    cfg = load_config(FinetuneConfig, child, ["train.num_epochs=8"])
    assert cfg.train.results_dir == "/child/train" and cfg.train.num_epochs == 8


def test_cycle_of_bases_names_the_files(tmp_path):
    a = write(tmp_path, "_base_: b.yaml\n", "a.yaml")
    write(tmp_path, "_base_: a.yaml\ntrain:\n  seed: 1\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle") as e:
        load_config(FinetuneConfig, a)
    assert f"{a} -> {tmp_path / 'b.yaml'} -> {a}" in str(e.value)
    itself = write(tmp_path, "_base_: self.yaml\n", "self.yaml")
    with pytest.raises(ConfigError, match=f"cycle: {itself} -> {itself}"):
        load_config(FinetuneConfig, itself)


def test_diamond_is_not_a_cycle(tmp_path):
    write(tmp_path, "train:\n  seed: 5\n", "root.yaml")
    write(tmp_path, "_base_: root.yaml\n", "left.yaml")
    write(tmp_path, "_base_: root.yaml\n", "right.yaml")
    assert load_config(FinetuneConfig, write(tmp_path, "_base_: [left.yaml, right.yaml]\n", "c.yaml")).train.seed == 5


def test_missing_base_names_the_child_the_key_and_the_path(tmp_path):
    child = write(tmp_path, "_base_: nowhere/base.yaml\n", "child.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, child)
    msg = str(e.value)
    assert msg.startswith(f"{child}: _base_='nowhere/base.yaml'") and "not found" in msg
    assert str(tmp_path / "nowhere" / "base.yaml") in msg
    write(tmp_path, "", "ok.yaml")
    with pytest.raises(ConfigError, match=r"_base_\[1\]='gone\.yaml': base file not found"):
        load_config(FinetuneConfig, write(tmp_path, "_base_: [ok.yaml, gone.yaml]\n", "two.yaml"))


def test_base_must_name_files(tmp_path):
    with pytest.raises(ConfigError, match=r"_base_=3: expected a file path or a list of file paths"):
        load_config(FinetuneConfig, write(tmp_path, "_base_: 3\n"))


def test_unknown_key_in_a_base_names_the_base_file(tmp_path):
    base = write(tmp_path, "model:\n  bacbone: swin_tiny_patch4_window7_224\n", "base.yaml")
    child = write(tmp_path, "_base_: base.yaml\nmodel:\n  feat_dim: 128\n", "child.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, child)
    msg = str(e.value)
    assert msg.startswith(f"{base}: unknown key `model.bacbone`") and "model.backbone" in msg


def test_wrong_type_names_the_file_that_wrote_it(tmp_path):
    base = write(tmp_path, "train:\n  num_epochs: ten\n  seed: 3\n", "base.yaml")
    child = write(tmp_path, "_base_: base.yaml\ntrain:\n  seed: three\n", "child.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, child, ["train.num_epochs=5"])  # the base's bad value is overridden
    assert str(e.value).startswith(f"{child}: train.seed='three': expected an integer")
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, child, ["train.seed=4"])
    assert str(e.value).startswith(f"{base}: train.num_epochs='ten': expected an integer")


def test_impossible_value_from_a_base_names_the_base(tmp_path):
    base = write(tmp_path, "dataset:\n  num_instances: 5\n", "base.yaml")
    child = write(tmp_path, "_base_: base.yaml\ndataset:\n  num_workers: 2\n", "child.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, child)
    assert str(e.value).startswith(f"{base}: dataset.batch_size=64") and "num_instances (5)" in str(e.value)


def test_no_effect_notice_names_the_base(tmp_path, caplog):
    base = write(tmp_path, "model:\n  last_stride: 1\n", "base.yaml")
    with caplog.at_level(logging.WARNING, logger="soliderkit.config"):
        load_config(FinetuneConfig, write(tmp_path, "_base_: base.yaml\n", "child.yaml"))
    assert [line.split(":")[0] for line in no_effect_lines(caplog)] == [str(base)]


def test_base_key_is_not_in_the_resolved_or_saved_config(tmp_path):
    write(tmp_path, BASE_SPEC, "base.yaml")
    child = write(tmp_path, "_base_: base.yaml\ntrain:\n  seed: 9\n", "child.yaml")
    cfg = load_config(FinetuneConfig, child)
    saved = save_resolved_config(cfg, tmp_path / "run")
    data = yaml.safe_load(saved.read_text())
    assert "_base_" not in config_to_dict(cfg) and "_base_" not in data
    assert data == config_to_dict(cfg) and data["model"]["feat_dim"] == 512  # the full config, base values in
    assert load_config(FinetuneConfig, saved, warn_no_effect=False) == cfg
    with pytest.raises(ConfigError, match="unknown key `_base_`"):
        load_config(FinetuneConfig, overrides=["_base_=base.yaml"])  # a file-only key


# --- no-effect fields ----------------------------------------------------------------------

def test_card_model_block_loads_with_one_warning_per_no_effect_field(tmp_path, caplog):
    path = write(tmp_path, CARD_MODEL_BLOCK)
    with caplog.at_level(logging.WARNING, logger="soliderkit.config"):
        cfg = load_config(FinetuneConfig, path)
    lines = no_effect_lines(caplog)
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    for field in ("model.last_stride", "model.stride_size", "model.pretrain_hw_ratio"):
        assert sum(line.startswith(f"{path}: {field} has no effect") for line in lines) == 1
    assert cfg.model.pretrain_choice == "self"
    assert cfg.model.pretrained_model_path == "/path/to/swintiny_pretrained.pth"  # need not exist yet
    assert cfg.model.reduce_feat_dim and cfg.model.no_margin and not cfg.model.label_smooth


def test_no_effect_warning_for_override_and_not_for_defaults(caplog):
    with caplog.at_level(logging.WARNING, logger="soliderkit.config"):
        load_config(FinetuneConfig)
        assert no_effect_lines(caplog) == []
        load_config(FinetuneConfig, overrides=["model.stride_size=[8, 8]"])
    (line,) = no_effect_lines(caplog)
    assert line.startswith("command-line override `model.stride_size=[8, 8]`: model.stride_size has no effect")


def test_no_effect_in_generic_schema(caplog):
    with caplog.at_level(logging.WARNING, logger="soliderkit.config"):
        load_config(Outer, overrides=["inner.old=2"])
        load_config(Outer, overrides=["inner.old=2"], warn_no_effect=False)
    assert no_effect_lines(caplog) == ["command-line override `inner.old=2`: inner.old has no effect: "
                                       "kept for compatibility"]


# --- shipped configs -----------------------------------------------------------------------

def test_full_tao_reference_spec_loads():
    path = REPO / "configs/finetune/tao_swin_tiny_reference.yaml"
    cfg = load_config(FinetuneConfig, path)
    assert cfg.model.backbone == "swin_tiny_patch4_window7_224"
    assert cfg.train.optim.name == "SGD" and cfg.train.optim.warmup_method == "cosine"
    assert cfg.train.results_dir == "/path/to/experiment_results/train"
    assert cfg.dataset.pixel_mean == [0.5, 0.5, 0.5] and cfg.re_ranking.re_ranking is True


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path):
    load_config(schema_for(path), path, warn_no_effect=False)


def leaf_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        keys += leaf_keys(v, key) if isinstance(v, dict) and v else [key]
    return keys


def value_at(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if "_base_" in yaml.safe_load(p.read_text())],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_presets_with_a_base_state_only_what_differs(path, tmp_path):
    own = yaml.safe_load(path.read_text())
    bases = own.pop("_base_")
    bases = [bases] if isinstance(bases, str) else bases
    only_bases = write(tmp_path, f"_base_: {[str(path.parent / name) for name in bases]}\n", "bases.yaml")
    schema = schema_for(path)
    cfg = load_config(schema, path, warn_no_effect=False)
    base_cfg = load_config(schema, only_bases, warn_no_effect=False)
    same = [k for k in leaf_keys(own) if value_at(cfg, k) == value_at(base_cfg, k)]
    assert same == [], f"{path.name} repeats its base's value for {same}"


def test_the_expected_configs_exist():
    names = {str(p.relative_to(REPO / "configs")) for p in CONFIG_FILES}
    assert {"finetune/tao_swin_tiny_reference.yaml", "pretrain/solider_swin_tiny.yaml",
            "pretrain/solider_swin_small.yaml", "pretrain/solider_swin_base.yaml"} <= names


# --- output --------------------------------------------------------------------------------

@pytest.mark.parametrize("schema, path", [
    (FinetuneConfig, REPO / "configs/finetune/tao_swin_tiny_reference.yaml"),
    (PretrainConfig, REPO / "configs/pretrain/solider_swin_base.yaml"),
    (FinetuneConfig, None),
])
def test_resolved_config_round_trips(tmp_path, schema, path):
    cfg = load_config(schema, path, ["results_dir=" + str(tmp_path / "run")], warn_no_effect=False)
    saved = save_resolved_config(cfg, tmp_path / "run")
    assert saved == tmp_path / "run" / "config.yaml"
    assert load_config(schema, saved, warn_no_effect=False) == cfg
    assert yaml.safe_load(saved.read_text()) == config_to_dict(cfg)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.yaml"]  # no temp files left


def test_format_config_is_yaml_with_inline_lists():
    text = format_config(load_config(PretrainConfig))
    assert "global_crop_size: [256, 128]" in text and "\ndata:\n  kind: shards\n" in text


# --- command line ----------------------------------------------------------------------------

def test_cli_helpers(tmp_path):
    path = write(tmp_path, "train:\n  num_epochs: 7\n")
    parser = add_config_args(argparse.ArgumentParser())
    args = parser.parse_args(["--config", str(path), "--dry-run", "train.seed=3", "dataset.batch_size=32"])
    assert args.dry_run and args.overrides == ["train.seed=3", "dataset.batch_size=32"]
    cfg = parse_config_from_args(FinetuneConfig, args)
    assert (cfg.train.num_epochs, cfg.train.seed, cfg.dataset.batch_size) == (7, 3, 32)
    with pytest.raises(SystemExit) as e:
        parse_config_from_args(FinetuneConfig, parser.parse_args(["--config", str(path), "train.sed=3"]))
    assert "train.sed" in str(e.value.code) and "train.seed" in str(e.value.code)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --config is required


def test_query_and_test_folder_lists_pair_up():
    from soliderkit.config import ConfigError, config_from_dict
    from soliderkit.finetune.config import FinetuneConfig

    cfg = config_from_dict(FinetuneConfig, {"dataset": {"query_dataset_dir": ["a/q", "b/q"],
                                                        "test_dataset_dir": ["a/g", "b/g"]}}, "test")
    assert cfg.dataset.query_dataset_dir == ["a/q", "b/q"]
    with pytest.raises(ConfigError, match="pair up in order.*2 query and 1 test"):
        config_from_dict(FinetuneConfig, {"dataset": {"query_dataset_dir": ["a/q", "b/q"],
                                                      "test_dataset_dir": "a/g"}}, "test")

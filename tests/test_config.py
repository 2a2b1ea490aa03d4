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

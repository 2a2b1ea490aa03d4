"""pretrain/knn.py probes a backbone with the settings its run's kNN monitor used (checkpoint metadata,
else the run's config.yaml beside it), so it reproduces the monitor's numbers."""
import json

import pytest
import torch

from soliderkit.backbone import build_backbone, save_backbone
from soliderkit.config import load_config, save_resolved_config
from soliderkit.pretrain import knn
from soliderkit.pretrain.config import PretrainConfig

PICO = "swin_pico_patch4_window7"
RUN = ["data.global_crop_size=[64, 32]", "data.local_crop_size=[32, 32]", "data.pixel_mean=[0.5, 0.4, 0.3]",
       "data.pixel_std=[0.2, 0.25, 0.3]", "knn_eval.semantic_weight=0.0", f"model.arch={PICO}"]


@pytest.fixture(scope="module")
def run_cfg():
    return load_config(PretrainConfig, overrides=RUN, warn_no_effect=False)


def _backbone(seed=0):
    torch.manual_seed(seed)
    return build_backbone(PICO, img_size=(64, 32), drop_path_rate=0.0).eval()


def _monitor(backbone, world, cfg):
    """What pretrain/run.py's kNN monitor computes for this teacher."""
    return knn.knn_reid(backbone, knn.load_query_gallery(str(world)), size=cfg.data.global_crop_size,
                        mean=cfg.data.pixel_mean, std=cfg.data.pixel_std, semantic_weight=cfg.knn_eval.semantic_weight)


def _probe(argv, capsys):
    assert knn.main([*argv, "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_settings_from_the_checkpoint_metadata(run_cfg, tiny_world, tmp_path, capsys):
    backbone = _backbone()
    path = tmp_path / "backbone.safetensors"
    save_backbone(backbone, path, preprocessing=knn.knn_preprocessing(run_cfg))  # as pretrain/run.py does
    result = _probe([str(tiny_world), "--checkpoint", str(path)], capsys)
    assert (result["size"], result["semantic_weight"], result["mean"], result["std"]) == (
        [64, 32], 0.0, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    assert set(result["sources"].values()) == {"checkpoint"}
    assert result["mAP"] == pytest.approx(_monitor(backbone, tiny_world, run_cfg)["mAP"], abs=1e-9)
    # flags still win
    flagged = _probe([str(tiny_world), "--checkpoint", str(path), "--semantic-weight", "1.0"], capsys)
    assert flagged["semantic_weight"] == 1.0 and flagged["sources"]["semantic_weight"] == "command line"


@pytest.mark.slow
def test_settings_from_the_run_config_beside_an_older_checkpoint(run_cfg, tiny_world, tmp_path, capsys):
    backbone = _backbone(seed=1)
    save_backbone(backbone, tmp_path / "backbone.safetensors")  # no preprocessing record
    save_resolved_config(run_cfg, tmp_path)  # results_dir/config.yaml, as every run writes
    result = _probe([str(tiny_world), "--checkpoint", str(tmp_path / "backbone.safetensors")], capsys)
    assert result["size"] == [64, 32] and result["semantic_weight"] == 0.0 and result["mean"] == [0.5, 0.4, 0.3]
    assert result["sources"]["semantic_weight"].startswith("run config")
    assert result["mAP"] == pytest.approx(_monitor(backbone, tiny_world, run_cfg)["mAP"], abs=1e-9)


def test_where_the_settings_come_from(run_cfg, tmp_path):
    meta = tmp_path / "meta" / "backbone.safetensors"
    meta.parent.mkdir()
    save_backbone(_backbone(), meta, preprocessing=knn.knn_preprocessing(run_cfg))
    settings, sources = knn.checkpoint_settings(str(meta))
    assert settings == {"arch": PICO, "size": (64, 32), "semantic_weight": 0.0, "mean": (0.5, 0.4, 0.3),
                        "std": (0.2, 0.25, 0.3)}
    assert set(sources.values()) == {"checkpoint"}
    old = tmp_path / "old" / "backbone.safetensors"
    old.parent.mkdir()
    save_backbone(_backbone(), old)
    assert knn.checkpoint_settings(str(old))[0]["semantic_weight"] == knn.DEFAULTS["semantic_weight"]
    assert knn.checkpoint_settings(str(old))[0]["size"] == (64, 32)  # the backbone's own img_size metadata
    save_resolved_config(run_cfg, old.parent)
    settings, sources = knn.checkpoint_settings(str(old))
    assert settings["semantic_weight"] == 0.0 and settings["mean"] == (0.5, 0.4, 0.3)
    assert sources["mean"] == f"run config {old.parent / 'config.yaml'}"


def test_random_init_uses_the_defaults():
    settings, sources = knn.checkpoint_settings(None)
    assert settings == knn.DEFAULTS and set(sources.values()) == {"default"}

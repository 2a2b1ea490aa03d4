"""finetune/run.py end to end on a tiny world: dry run, center loss stepping, exact resume, 2 processes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from script_loader import load_script
from soliderkit.finetune.model import load_reid_model

ROOT = Path(__file__).resolve().parents[1]
run = load_script("finetune/run.py")
CONFIG = str(ROOT / "configs/finetune/synthetic_tiny.yaml")


def _overrides(world, results, *extra):
    return [f"dataset.train_dataset_dir={world}/bounding_box_train",
            f"dataset.query_dataset_dir={world}/query", f"dataset.test_dataset_dir={world}/bounding_box_test",
            f"results_dir={results}", "model.input_height=64", "model.input_width=32",
            "dataset.batch_size=8", "dataset.num_instances=2", "dataset.num_workers=0",
            "train.num_epochs=2", "train.checkpoint_interval=1", "train.validation_interval=2",
            "re_ranking.re_ranking=true", "re_ranking.k1=6", "re_ranking.k2=3", *extra]


def _log(results):
    return [json.loads(line) for line in (Path(results) / "train/log.jsonl").read_text().splitlines()]


def test_dry_run_builds_everything_and_writes_nothing(tiny_world, tmp_path, capsys):
    assert run.main(["--config", CONFIG, "--dry-run", *_overrides(tiny_world, tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "| train " in out and "model:" in out and "steps per epoch" in out
    assert not (tmp_path / "r").exists()


def test_training_writes_metrics_and_steps_the_center_loss(tiny_world, tmp_path):
    results = tmp_path / "center"
    assert run.main(["--config", CONFIG, *_overrides(tiny_world, results, "model.with_center_loss=true",
                                                      "model.metric_loss_type=triplet_center")]) == 0
    metrics = json.loads((results / "train/metrics.json").read_text())
    assert set(metrics) >= {"mAP", "rank1", "rank5", "rank10", "mINP", "cmc", "re_ranked"}
    assert set(metrics["re_ranked"]) >= {"mAP", "rank1"}
    assert [r["epoch"] for r in _log(results)] == [1, 2]
    assert all("loss_center" in r for r in _log(results))
    # accelerate saves prepared modules in order: model, then the center loss.
    centers = [load_file(results / f"train/checkpoints/epoch_00{e}/model_1.safetensors")["centers"]
               for e in (1, 2)]
    assert (centers[0] - centers[1]).abs().max() > 0
    model, model_cfg, _ = load_reid_model(results / "train/model.safetensors")
    assert model_cfg.with_center_loss and not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 32)).shape == (2, model_cfg.feat_dim)
    assert (results / "train/config.yaml").is_file()


def test_resume_continues_with_the_same_losses(tiny_world, tmp_path):
    full = tmp_path / "full"
    assert run.main(["--config", CONFIG, *_overrides(tiny_world, full)]) == 0
    resumed = tmp_path / "resumed"
    (resumed / "train/checkpoints").mkdir(parents=True)
    shutil.copytree(full / "train/checkpoints/epoch_001", resumed / "train/checkpoints/epoch_001")
    assert run.main(["--config", CONFIG, "--resume", *_overrides(tiny_world, resumed)]) == 0
    [epoch2] = _log(resumed)
    expected = _log(full)[1]
    assert epoch2["epoch"] == 2
    for key in ("loss", "loss_id", "loss_triplet", "lr", "mAP"):
        assert epoch2[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9)


def test_two_process_cpu_run(tiny_world, tmp_path):
    results = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "finetune/run.py"), "--config", CONFIG, *_overrides(tiny_world, results, "train.num_epochs=1")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training on 2 process(es)" in done.stdout
    assert (results / "train/metrics.json").is_file()

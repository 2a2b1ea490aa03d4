"""finetune/run.py end to end on a tiny world: dry run, center loss stepping, exact resume, 2 processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from script_loader import load_script
from soliderkit.finetune import losses as losses_module

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


def _checkpoints(results):
    """Checkpoint folders in the order of the step each recorded."""
    folders = (Path(results) / "train/checkpoints").glob("step_*")
    return sorted(folders, key=lambda f: json.loads((f / "progress.json").read_text())["step"])


def _log(results):
    return [json.loads(line) for line in (Path(results) / "train/log.jsonl").read_text().splitlines()]


def test_dry_run_builds_everything_and_writes_nothing(tiny_world, tmp_path, capsys):
    assert run.main(["--config", CONFIG, "--dry-run", *_overrides(tiny_world, tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "| train " in out and "model:" in out and "steps per epoch" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
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
    folders = _checkpoints(results)
    assert [json.loads((f / "progress.json").read_text())["epoch"] for f in folders] == [1, 2]
    centers = [load_file(f / "model_1.safetensors")["centers"] for f in folders]
    assert (centers[0] - centers[1]).abs().max() > 0
    model, model_cfg, _ = load_reid_model(results / "train/model.safetensors")
    assert model_cfg.with_center_loss and not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 32)).shape == (2, model_cfg.feat_dim)
    assert (results / "train/config.yaml").is_file()


@pytest.mark.slow
def test_resume_continues_with_the_same_losses(tiny_world, tmp_path):
    full = tmp_path / "full"
    assert run.main(["--config", CONFIG, *_overrides(tiny_world, full)]) == 0
    resumed = tmp_path / "resumed"
    (resumed / "train/checkpoints").mkdir(parents=True)
    first = _checkpoints(full)[0]
    shutil.copytree(first, resumed / "train/checkpoints" / first.name)
    assert run.main(["--config", CONFIG, "--resume", *_overrides(tiny_world, resumed)]) == 0
    [epoch2] = _log(resumed)
    expected = _log(full)[1]
    assert epoch2["epoch"] == 2
    for key in ("loss", "loss_id", "loss_triplet", "lr", "mAP"):
        assert epoch2[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_gives_the_same_final_weights(tiny_world, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert run.main(["--config", CONFIG, *_overrides(tiny_world, full)]) == 0

    # A real SIGTERM during the third batch of epoch 1: checkpoint after that step, exit 0.
    calls = {"n": 0}
    original = losses_module.id_loss

    def loss_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    cut = tmp_path / "cut"
    monkeypatch.setattr(losses_module, "id_loss", loss_then_signal)
    assert run.main(["--config", CONFIG, *_overrides(tiny_world, cut)]) == 0
    monkeypatch.setattr(losses_module, "id_loss", original)
    [saved] = _checkpoints(cut)
    progress = json.loads((saved / "progress.json").read_text())
    assert (progress["step"], progress["epoch"], progress["batch"], progress["epoch_end"]) == (3, 0, 3, False)
    assert not (cut / "train/metrics.json").exists()

    assert run.main(["--config", CONFIG, "--resume", *_overrides(tiny_world, cut)]) == 0
    a, b = load_file(full / "train/model.safetensors"), load_file(cut / "train/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert _log(cut)[-1]["epoch"] == 2
    for key in ("loss", "loss_id", "loss_triplet", "mAP"):
        assert _log(cut)[-1][key] == pytest.approx(_log(full)[-1][key], rel=1e-5, abs=1e-7), key


def test_non_finite_losses_are_skipped_then_abort(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setattr(losses_module, "id_loss", lambda logits, pids, smoothing: logits.sum() * float("nan"))
    with pytest.raises(SystemExit, match=r"not finite for 2 step\(s\) in a row.*max_nan_steps=1"):
        run.main(["--config", CONFIG, *_overrides(tiny_world, tmp_path / "nan", "train.max_nan_steps=1")])
    assert not (tmp_path / "nan/train/checkpoints").exists() or not _checkpoints(tmp_path / "nan")


@pytest.mark.slow
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

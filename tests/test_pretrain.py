"""pretrain/: multi-crop views, batched part clustering vs scikit-learn, one training step,
SIGTERM + exact resume, non-finite losses, and a 2-process CPU run (tiny, CPU)."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import load_file
from script_loader import load_script
from sklearn.metrics import adjusted_rand_score

from soliderkit.backbone import build_backbone
from soliderkit.config import ConfigError, config_from_dict, load_config
from soliderkit.pretrain.config import PretrainConfig, recipe_warnings
from soliderkit.pretrain.dino import DINOLoss
from soliderkit.pretrain.multicrop import MultiCropAugmentation
from soliderkit.pretrain.semantic import cluster_parts, mask_parts, sklearn_part_labels
from soliderkit.run_control import StopRequest, find_latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
run = load_script("pretrain/run.py")
CONFIG = str(ROOT / "configs/pretrain/synthetic_tiny.yaml")
PICO = "swin_pico_patch4_window7"


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny models: one intra-op thread (conftest.one_thread)."""


def _overrides(world, results, *extra):
    return [f"results_dir={results}", f"data.path={world}/unlabeled", "data.batch_size_per_device=4",
            "data.batches_per_epoch=2", "data.local_crops_number=1", "model.out_dim=128",
            "model.head_hidden_dim=32", "model.bottleneck_dim=16", "semantic.part_head_hidden_dim=16",
            "optim.epochs=2", "optim.warmup_epochs=1", "knn_eval.dataset_dir=null", *extra]


def _log(results):
    return [json.loads(line) for line in (Path(results) / "log.jsonl").read_text().splitlines()]


# --- augmentation ----------------------------------------------------------------------------

def test_multicrop_views_sizes_and_determinism():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 64, 3), dtype=np.uint8))
    augment = MultiCropAugmentation((128, 64), (64, 32), local_number=3)
    views = augment.crops(image, random.Random(5))
    assert [tuple(v.shape) for v in views] == [(3, 128, 64)] * 2 + [(3, 64, 32)] * 3
    again = augment.crops(image, random.Random(5))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    assert not torch.equal(views[0], augment.crops(image, random.Random(6))[0])
    # the crop's aspect-ratio range is centred on each view's own width/height
    assert augment.ratio_range((256, 128)) == pytest.approx((0.4, 0.6))
    assert augment.ratio_range((384, 128)) == pytest.approx((1 / 3 * 0.8, 1 / 3 * 1.2))


def test_multicrop_photometric_strengths_are_configurable():
    """With jitter and grayscale off, a global view of a flat colour keeps that colour exactly
    (global view 2 may still be solarised, so only view 1 is checked); with grayscale forced,
    every view is gray."""
    image = Image.new("RGB", (64, 128), (200, 40, 90))
    plain = MultiCropAugmentation((128, 64), (64, 32), local_number=2, color_jitter_prob=0.0,
                                  grayscale_prob=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    view = plain.crops(image, random.Random(0))[0]
    assert torch.allclose(view.mean((1, 2)), torch.tensor([200, 40, 90]) / 255, atol=1e-3)
    gray = MultiCropAugmentation((128, 64), (64, 32), local_number=2, grayscale_prob=1.0)
    for v in gray.crops(image, random.Random(0)):
        assert torch.allclose(v[0] * 0.229 + 0.485, v[1] * 0.224 + 0.456, atol=1e-5)


def test_pretrain_config_rejects_bad_photometric_values():
    with pytest.raises(ConfigError, match="grayscale_prob"):
        config_from_dict(PretrainConfig, {"data": {"grayscale_prob": 1.5}}, "test")
    with pytest.raises(ConfigError, match="color_jitter"):
        config_from_dict(PretrainConfig, {"data": {"color_jitter": [0.4, 0.4, 0.2, 0.7]}}, "test")


def test_recipe_warnings_name_the_keys_and_stay_quiet_for_the_shipped_recipes():
    narrow = config_from_dict(PretrainConfig, {"data": {"local_crops_number": 0}}, "test")
    (warning,) = recipe_warnings(narrow)
    assert "data.local_crops_number=0" in warning and "data.global_crop_scale=[0.8, 1.0]" in warning
    assert "[0.14, 1.0]" in warning
    wide = config_from_dict(PretrainConfig, {"data": {"local_crops_number": 0, "global_crop_scale": [0.14, 1.0]}},
                            "test")
    assert recipe_warnings(wide) == []
    bf16 = config_from_dict(PretrainConfig, {"train": {"mixed_precision": "bf16"}}, "test")
    assert recipe_warnings(bf16, cpu_capability=None) == []  # on an accelerator
    assert recipe_warnings(bf16, cpu_capability="AVX512") == []
    (warning,) = recipe_warnings(bf16, cpu_capability="AVX2")
    assert "train.mixed_precision=bf16" in warning and "AVX2" in warning
    for path in sorted((ROOT / "configs/pretrain").glob("*.yaml")):
        assert recipe_warnings(load_config(PretrainConfig, path, warn_no_effect=False)) == [], path.name


# --- clustering --------------------------------------------------------------------------------

def _person_tokens(n=12, h=8, w=4, c=48, seed=0):
    """Well-separated stage-4-like maps: low-norm background, three high-norm parts in bands."""
    gen = torch.Generator().manual_seed(seed)
    maps, truth = torch.empty(n, h * w, c), torch.zeros(n, h * w, dtype=torch.long)
    rows = torch.arange(h * w) // w
    for i in range(n):
        centers = torch.randn(3, c, generator=gen) * 4
        cut1 = int(torch.randint(2, 4, (1,), generator=gen))
        cut2 = int(torch.randint(cut1 + 2, h - 1, (1,), generator=gen))
        part = (rows >= cut1).long() + (rows >= cut2).long()
        background = torch.rand(h * w, generator=gen) < 0.3
        background[torch.arange(h * w) % w == 0] = False  # every band keeps some foreground
        noise = torch.randn(h * w, c, generator=gen) * 0.3
        maps[i] = torch.where(background[:, None], noise * 0.5, centers[part] + noise)
        truth[i] = torch.where(background, 0, part + 1)
    return maps.transpose(1, 2).reshape(n, c, h, w), truth.view(n, h, w)


def test_batched_clustering_matches_sklearn_and_orders_parts_top_to_bottom():
    maps, truth = _person_tokens()
    ours = cluster_parts(maps, num_parts=3, fg_threshold=0.5, iters=10)
    ref_labels, ref_valid = sklearn_part_labels(maps, num_parts=3, fg_threshold=0.5)
    assert ours.valid.all() and ref_valid.all()
    for i in range(maps.shape[0]):
        assert adjusted_rand_score(ref_labels[i].flatten(), ours.labels[i].flatten()) >= 0.9
        assert adjusted_rand_score(truth[i].flatten(), ours.labels[i].flatten()) >= 0.9
        rows = torch.arange(8)[:, None].expand(8, 4)
        mean_rows = [rows[ours.labels[i] == k].float().mean().item() for k in (1, 2, 3)]
        assert mean_rows == sorted(mean_rows)
    assert ours.sizes.sum(1).eq(32).all()


def test_views_with_little_foreground_are_left_out_and_masking_hits_one_part():
    maps, _ = _person_tokens(n=4)
    flat = maps.flatten(2)
    flat[0, :, :24] *= 0.05  # view 0: only 8 of 32 tokens keep a high norm
    out = cluster_parts(maps, 3, 0.5)
    assert out.valid.tolist() == [False, True, True, True] and out.fg_ratio[0] <= 0.25
    images = torch.ones(4, 3, 256, 128)
    parts = torch.tensor([1, 2, 3, 1])
    masked = mask_parts(images, out.labels, parts)
    for i in range(4):
        region = (out.labels[i] == parts[i]).repeat_interleave(32, 0).repeat_interleave(32, 1)
        assert masked[i][:, region].eq(0).all() and masked[i][:, ~region].eq(1).all()


# --- DINO loss --------------------------------------------------------------------------------

def test_dino_loss_matches_the_pairwise_definition_and_center_ema():
    torch.manual_seed(0)
    loss_fn = DINOLoss(16, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.normal_()
    student, teacher = torch.randn(4 * 3, 16), torch.randn(2 * 3, 16)
    targets = torch.softmax((teacher - loss_fn.center) / 0.04, -1).chunk(2)
    logp = torch.log_softmax(student / 0.1, -1).chunk(4)
    terms = [-(targets[t] * logp[v]).sum(-1).mean() for t in range(2) for v in range(4) if v != t]
    assert loss_fn(student, teacher, 0.04).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    before = loss_fn.center.clone()
    loss_fn.update_center(teacher)
    torch.testing.assert_close(loss_fn.center, 0.9 * before + 0.1 * teacher.mean(0, keepdim=True))


# --- one step ---------------------------------------------------------------------------------

@pytest.mark.parametrize("part_classifier", ["solider", "trained"])
def test_one_step_updates_student_part_classifier_and_teacher_by_ema(tiny_world, tmp_path, part_classifier):
    cfg = load_config(PretrainConfig, CONFIG, _overrides(tiny_world, tmp_path, "semantic.lambda_values=[1.0]",
                                                         "semantic.lambda_probs=[1.0]", "semantic.fg_ratio_threshold=0.0",
                                                         "optim.weight_decay=0.0", "optim.weight_decay_end=0.0",
                                                         "optim.warmup_epochs=0",
                                                         f"semantic.part_classifier={part_classifier}"),
                      warn_no_effect=False)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    student, teacher = run.build_networks(cfg)
    dino_loss = DINOLoss(cfg.model.out_dim)
    optimizer = torch.optim.AdamW(run.param_groups(student))
    schedules = run.Schedules.build(cfg, iters_per_epoch=2, total_batch=4)
    student, optimizer = accelerator.prepare(student, optimizer)
    trainer = run.Trainer(accelerator, cfg, student, teacher, dino_loss, optimizer, schedules, StopRequest())
    plain = accelerator.unwrap_model(student)
    before_s = {k: v.clone() for k, v in plain.state_dict().items()}
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    views = [torch.randn(4, 3, 128, 64), torch.randn(4, 3, 128, 64), torch.randn(4, 3, 64, 32)]

    result = run.train_one_step(trainer, views, step=0)
    assert result.finite  # SIGTERM is the loop's (StepControl), not the step's
    assert result.stats["loss_part"] > 0 and result.stats["masked_views"] > 0

    after_s = plain.state_dict()
    changed = lambda prefix: any(not torch.equal(before_s[k], after_s[k]) for k in after_s if k.startswith(prefix))  # noqa: E731
    assert changed("backbone.") and changed("head.mlp.")
    # SOLIDER's part classifier is a fixed random cosine head (never in its optimizer); "trained" learns
    assert changed("part_classifier.") == (part_classifier == "trained")
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all((id(p) in in_optimizer) == (part_classifier == "trained") for p in plain.part_classifier.parameters())
    assert changed("backbone.controller.")
    assert not changed("head.last_layer.")  # frozen during the first epoch
    m = schedules.momentum[0]
    for name, value in teacher.state_dict().items():
        expected = m * before_t[name] + (1 - m) * after_s[name]
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(before_t[k], v) for k, v in teacher.state_dict().items())
    assert dino_loss.center.abs().sum() > 0

    # An empty semantic batch (no view with enough foreground) is a valid step with no part loss.
    trainer.cfg.semantic.fg_ratio_threshold = 0.999
    result = run.train_one_step(trainer, views, step=1)
    assert result.finite and result.stats["masked_views"] == 0 and result.stats["loss_part"] == 0.0
    assert "part_accuracy" not in result.stats


def test_dry_run_writes_nothing(tiny_world, tmp_path, capsys):
    assert run.main(["--config", CONFIG, "--dry-run", *_overrides(tiny_world, tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "semantic:" in out and "steps per epoch" in out and "peak lr" in out
    assert not (tmp_path / "r").exists()


# --- SIGTERM and exact resume ----------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues_with_the_same_loss(tiny_world, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert run.main(["--config", CONFIG, *_overrides(tiny_world, full)]) == 0
    expected = {r["step"]: r for r in _log(full) if "loss" in r}
    assert sorted(expected) == [1, 2, 3, 4]

    # Interrupt with a real SIGTERM during step 3 (mid-epoch 2): a checkpoint, then exit 0.
    original = run.train_one_step

    def step_then_signal(trainer, views, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(trainer, views, step)

    cut = tmp_path / "cut"
    monkeypatch.setattr(run, "train_one_step", step_then_signal)
    assert run.main(["--config", CONFIG, *_overrides(tiny_world, cut)]) == 0
    monkeypatch.setattr(run, "train_one_step", original)
    assert find_latest_checkpoint(cut / "checkpoints").name == "step_00000003"
    assert [r["step"] for r in _log(cut)] == [1, 2, 3]

    assert run.main(["--config", CONFIG, "--resume", *_overrides(tiny_world, cut)]) == 0
    resumed = _log(cut)[3:]
    assert [r["step"] for r in resumed] == [4]
    for key in ("loss", "loss_dino", "loss_part", "lr", "weight_decay", "teacher_momentum", "fg_ratio"):
        assert resumed[0][key] == pytest.approx(expected[4][key], rel=1e-5, abs=1e-7), key
    a, b = load_file(full / "backbone.safetensors"), load_file(cut / "backbone.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # The output is what fine-tuning loads (strict keys, default out_indices).
    build_backbone(PICO, img_size=(128, 64), checkpoint=cut / "backbone.safetensors")


def test_non_finite_losses_are_skipped_then_abort(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setattr(DINOLoss, "forward", lambda self, s, t, temp: s.sum() * float("nan"))
    with pytest.raises(SystemExit, match=r"not finite for 2 step\(s\) in a row.*max_nan_steps=1"):
        run.main(["--config", CONFIG, *_overrides(tiny_world, tmp_path / "nan", "train.max_nan_steps=1",
                                                  "semantic.enabled=false", "data.global_crop_size=[64,32]",
                                                  "data.local_crop_size=[32,32]")])
    assert [r["skipped_steps"] for r in _log(tmp_path / "nan")] == [1.0]


# --- shards ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_trains_from_webdataset_shards(tiny_world, tmp_path):
    from soliderkit.data.build import build_shards

    build_shards(tiny_world / "unlabeled", tmp_path / "shards", maxcount=16)
    results = tmp_path / "from_shards"
    assert run.main(["--config", CONFIG, *_overrides(tiny_world, results, "data.kind=shards",
                                                      f"data.path={tmp_path / 'shards'}", "data.shuffle_buffer=8",
                                                      "optim.epochs=1")]) == 0
    assert [r["step"] for r in _log(results)] == [1, 2]
    assert json.loads((results / "checkpoints/step_00000002/progress.json").read_text())["epoch_end"]


# --- two processes ------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_process_cpu_run(tiny_world, tmp_path):
    results = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "pretrain/run.py"), "--config", CONFIG,
           *_overrides(tiny_world, results, "optim.epochs=1", f"knn_eval.dataset_dir={tiny_world}")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size 2" in done.stdout
    log = _log(results)
    assert {r["world_size"] for r in log} == {2}
    assert any("knn_mAP" in r for r in log)
    build_backbone(PICO, img_size=(128, 64), checkpoint=results / "backbone.safetensors")
    shutil.rmtree(results / "checkpoints")

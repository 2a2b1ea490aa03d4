"""The compute side of both training steps, on the CPU: FLOP counts and the GPU peak table,
no host sync in the steps, non-finite steps skipped on the device, bf16 / fp16 (GradScaler),
torch.compile against eager, and the loops' throughput log."""
import json
import re
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from script_loader import load_script

from soliderkit.backbone import build_backbone
from soliderkit.config import load_config
from soliderkit.finetune.config import FinetuneConfig
from soliderkit.finetune.losses import CenterLoss, ReidLosses
from soliderkit.finetune.model import build_reid_model
from soliderkit.finetune.optim import build_optimizer
from soliderkit.pretrain.config import PretrainConfig
from soliderkit.pretrain.dino import DINOLoss
from soliderkit.run_control import NonFiniteGuard, StepControl, StopRequest, fused_optimizer
from soliderkit.throughput import (
    HostSyncCounter,
    ThroughputMeter,
    count_flops,
    meta_copy,
    peak_tflops,
    precision_key,
)

ROOT = Path(__file__).resolve().parents[1]
finetune = load_script("finetune/run.py")
pretrain = load_script("pretrain/run.py")
FT_CONFIG = str(ROOT / "configs/finetune/synthetic_tiny.yaml")
PT_CONFIG = str(ROOT / "configs/pretrain/synthetic_tiny.yaml")
PICO = "swin_pico_patch4_window7"
PT_SMALL = ["model.out_dim=128", "model.head_hidden_dim=32", "model.bottleneck_dim=16",
            "semantic.part_head_hidden_dim=16", "data.local_crops_number=1", "data.batch_size_per_device=4"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny models: one intra-op thread (conftest.one_thread)."""


def _accelerator(mixed_precision: str = "no") -> Accelerator:
    """A CPU Accelerator at ``mixed_precision``. Accelerate trains fp16 on the CPU in float32 (no
    autocast, no GradScaler); for fp16 its GPU path is switched on here, with torch's CPU
    GradScaler and CPU fp16 autocast, so the loops' GradScaler code runs as on a GPU."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True, mixed_precision=mixed_precision)
    if mixed_precision == "fp16":
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")
    return accelerator


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _guard(max_nan_steps: int = 0) -> NonFiniteGuard:
    return NonFiniteGuard(max_nan_steps, script="test", checkpoint_dir=Path("."), advice="Advice")


def _finetune_parts(accelerator, *extra, center: bool = False, forward=None):
    overrides = ["model.input_height=64", "model.input_width=32", "train.grad_clip=1.0", *extra]
    if center:
        overrides += ["model.with_center_loss=true", "model.metric_loss_type=triplet_center"]
    cfg = load_config(FinetuneConfig, FT_CONFIG, overrides, warn_no_effect=False)
    torch.manual_seed(0)
    model = build_reid_model(cfg.model, 6, load_pretrained=False)
    optimizer = build_optimizer(model, cfg.train.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    fused_optimizer(optimizer.optimizer)
    center_loss = center_optimizer = None
    if center:
        center_loss = CenterLoss(6, accelerator.unwrap_model(model).embedding_dim)
        center_optimizer = torch.optim.SGD(center_loss.parameters(), lr=0.5)
        center_loss, center_optimizer = accelerator.prepare(center_loss, center_optimizer)
        fused_optimizer(center_optimizer.optimizer)
    control = StepControl(accelerator, StopRequest(), _guard())
    parts = finetune.StepParts(accelerator, model, forward(model) if forward else model, ReidLosses(cfg), optimizer,
                               control, grad_clip=cfg.train.grad_clip, center_loss=center_loss,
                               center_optimizer=center_optimizer, center_weight=cfg.train.optim.center_loss_weight)
    return cfg, parts


def _finetune_batch():
    images = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    return images, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _pretrain_trainer(accelerator, *extra, compiled: bool = False):
    cfg = load_config(PretrainConfig, PT_CONFIG, [*PT_SMALL, *extra], warn_no_effect=False)
    torch.manual_seed(0)
    student, teacher = pretrain.build_networks(cfg)
    optimizer = torch.optim.AdamW(pretrain.param_groups(student))
    schedules = pretrain.Schedules.build(cfg, iters_per_epoch=2, total_batch=4)
    student, optimizer = accelerator.prepare(student, optimizer)
    fused_optimizer(optimizer.optimizer)
    forwards = {"student_forward": torch.compile(student), "teacher_forward": torch.compile(teacher)} \
        if compiled else {}
    stop = StopRequest()
    return pretrain.Trainer(accelerator, cfg, student, teacher, DINOLoss(cfg.model.out_dim), optimizer, schedules,
                            stop, StepControl(accelerator, stop, _guard()), **forwards)


def _views():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 128, 64, generator=g), torch.randn(4, 3, 128, 64, generator=g),
            torch.randn(4, 3, 64, 32, generator=g)]


# --- FLOPs, peaks, rates -----------------------------------------------------------------------

def test_flop_count_of_a_linear_layer_and_of_a_meta_copy():
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    # forward 2*B*I*O, backward: input and weight gradients 2*B*I*O each
    assert count_flops(lambda: layer(x).sum().backward()) == 6 * 4 * 16 * 8

    model = build_backbone(PICO, img_size=(128, 64)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, 128, 64)
    real = count_flops(lambda: model(images).pooled.sum().backward())
    rng = torch.get_rng_state()
    meta = meta_copy(model)
    assert all(p.device.type == "meta" for p in meta.parameters())
    counted = count_flops(lambda: meta(torch.empty(2, 3, 128, 64, device="meta")).pooled.sum().backward())
    assert counted == real > 0
    assert torch.equal(torch.get_rng_state(), rng)  # nothing drawn on the meta copy counts
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_step_flops_of_both_stages():
    cfg = load_config(FinetuneConfig, FT_CONFIG, ["model.input_height=64", "model.input_width=32"],
                      warn_no_effect=False)
    model = build_reid_model(cfg.model, 6, load_pretrained=False)
    four, eight = finetune.step_flops(model, 4, (64, 32), 6), finetune.step_flops(model, 8, (64, 32), 6)
    assert four > 0 and eight == 2 * four  # every counted product scales with the batch

    dino = load_config(PretrainConfig, PT_CONFIG, [*PT_SMALL, "semantic.enabled=false"], warn_no_effect=False)
    solider = load_config(PretrainConfig, PT_CONFIG, PT_SMALL, warn_no_effect=False)
    plain = pretrain.step_flops(dino, *pretrain.build_networks(dino))
    semantic = pretrain.step_flops(solider, *pretrain.build_networks(solider))
    # SOLIDER adds the teacher's λ=1 pass and the student's masked copies (P(λ>0) = 1/2 of 2 x batch)
    assert 0 < plain < semantic


def test_gpu_peak_table_knows_common_gpus_and_guesses_nothing():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA H200", "fp16") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "tf32") == 156.0
    assert peak_tflops("NVIDIA L4", "bf16") == 121.0 and peak_tflops("NVIDIA L40S", "bf16") == 362.0
    assert peak_tflops("NVIDIA A10", "fp16") == 125.0 and peak_tflops("NVIDIA A10G", "fp16") is None
    assert peak_tflops("Tesla T4", "fp16") == 65.0 and peak_tflops("Tesla T4", "bf16") is None
    assert peak_tflops("Tesla V100-PCIE-16GB", "fp16") == 112.0
    assert peak_tflops("NVIDIA GeForce RTX 2080 Ti", "fp16") is None
    assert peak_tflops(None, "bf16") is None
    assert precision_key("bf16") == "bf16" and precision_key("fp16") == "fp16"
    assert precision_key("no") in ("fp32", "tf32")


def test_throughput_meter_rates():
    meter = ThroughputMeter(flops_per_step=int(2e12), images_per_step=64, world_size=2, peak=100.0)
    rates = meter.rates(steps=10, seconds=4.0)
    assert rates["images_per_second"] == pytest.approx(160.0)
    assert rates["tflops_per_second"] == pytest.approx(10.0)  # 10 steps x 2 TFLOP x 2 processes / 4 s
    assert rates["mfu"] == pytest.approx(0.05)  # 10 TFLOP/s over 2 devices of 100
    assert "mfu" not in ThroughputMeter(int(2e12), 64).rates(10, 4.0)
    assert set(ThroughputMeter(None, 64).rates(10, 4.0)) == {"images_per_second"}
    assert ThroughputMeter.postfix(rates) == {"img/s": "160.0", "TFLOP/s": "10", "MFU": "5.0%"}


# --- host syncs --------------------------------------------------------------------------------

def test_host_sync_counter_names_the_line_and_the_function():
    x = torch.arange(4.0)

    def reads():
        x.sum().item()
        bool(x.any())
        x.nonzero()
        x[x > 1]
        x.tolist()
        return x + 1  # not a sync

    with HostSyncCounter() as counter:
        reads()
    ops = sorted(site.split()[-1] for site in counter.sites)
    assert ops == ["__bool__", "__getitem__", "item", "nonzero", "tolist"]
    assert all(site.startswith("tests/test_compute.py:") and " reads " in site for site in counter.sites)
    with HostSyncCounter(only="no_such_function") as counter:
        reads()
    assert counter.total == 0


def test_finetune_step_has_no_host_sync():
    _, parts = _finetune_parts(_accelerator(), center=True)
    images, pids = _finetune_batch()
    finetune.train_step(parts, images, pids)
    with HostSyncCounter() as counter:
        for _ in range(2):
            values, skipped = finetune.train_step(parts, images, pids)
            parts.control.record(skipped, 0)
    assert dict(counter.sites) == {}
    assert set(values) == {"loss", "loss_id", "loss_triplet", "loss_center", "id_accuracy"}
    assert all(v.ndim == 0 for v in values.values())


def _kinds(counter):
    return sorted({(site.split(":")[0], *site.split()[1:]) for site in counter.sites})


def test_pretrain_step_host_syncs_are_solider_masking_only():
    trainer = _pretrain_trainer(_accelerator(), "semantic.enabled=false")
    pretrain.train_one_step(trainer, _views(), 0)
    with HostSyncCounter() as counter:
        result = pretrain.train_one_step(trainer, _views(), 1)
    assert dict(counter.sites) == {}  # DINO: none
    assert all(torch.is_tensor(v) for v in result.stats.values())

    # SOLIDER with the batched clustering: the clustered views and the masked copies are
    # data-dependent batches (one nonzero each); the part to mask is a CPU draw (no device wait).
    trainer = _pretrain_trainer(_accelerator(), "semantic.clustering=batched")
    pretrain.train_one_step(trainer, _views(), 0)
    with HostSyncCounter() as counter:
        pretrain.train_one_step(trainer, _views(), 1)
    assert _kinds(counter) == [("pretrain/run.py", "draw_mask_parts", "__int__"),
                               ("pretrain/run.py", "train_one_step", "nonzero"),
                               ("soliderkit/pretrain/semantic.py", "cluster_parts", "nonzero")]
    assert counter.total == 3


# --- non-finite steps ----------------------------------------------------------------------------

def _snapshot(parts):
    model = {k: v.detach().clone() for k, v in parts.model.state_dict().items()}
    state = {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
             for p, s in parts.optimizer.optimizer.state.items()}
    return model, state


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_a_non_finite_step_is_skipped_on_the_device(monkeypatch, optimizer):
    accelerator = _accelerator()
    _, parts = _finetune_parts(accelerator, f"train.optim.name={optimizer}", "train.optim.momentum=0.9",
                               "model.with_center_loss=true", center=True)
    images, pids = _finetune_batch()
    finite_terms = parts.losses.terms
    monkeypatch.setattr(parts.losses, "terms", lambda out, p, c=None: {
        k: v * float("nan") for k, v in finite_terms(out, p, c).items()})
    model, state = _snapshot(parts)
    centers = parts.center_loss.centers.detach().clone()
    with HostSyncCounter() as counter:
        _, skipped = finetune.train_step(parts, images, pids)  # the first step: SGD's buffers do not exist yet
        parts.control.record(skipped, 0)
    assert counter.total == 0 and skipped.item() == 1.0
    after_model, after_state = _snapshot(parts)
    # (the BNNeck's running statistics follow every forward, skipped or not, as before)
    moved = [k for k in model if not torch.equal(model[k], after_model[k])]
    assert all(k.startswith("bottleneck.") and ("running" in k or "batches" in k) for k in moved), moved
    assert torch.equal(centers, parts.center_loss.centers)
    for key, saved in state.items():  # step counts, moments, momentum buffers: untouched
        assert all(torch.equal(v, after_state[key][k]) if torch.is_tensor(v) else v == after_state[key][k]
                   for k, v in saved.items())
    monkeypatch.setattr(parts.losses, "terms", finite_terms)

    # The next finite step is the step a fresh optimizer takes first (the skip left no trace).
    accelerator_b = _accelerator()
    _, fresh = _finetune_parts(accelerator_b, f"train.optim.name={optimizer}", "train.optim.momentum=0.9",
                               "model.with_center_loss=true", center=True)
    for step_parts in (parts, fresh):
        torch.manual_seed(5)  # the same drop-path draws
        finetune.train_step(step_parts, images, pids)
    for (name, a), b in zip(parts.model.named_parameters(), fresh.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_an_optimizer_resumed_from_a_foreach_state_is_fused_and_continues():
    """A checkpoint written before the optimizers were fused (foreach state, CPU step counts)
    continues under fused_optimizer: the same updates, within float rounding."""
    def run(convert_at):
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(64))
        optimizer = torch.optim.AdamW([param], lr=1e-2, weight_decay=0.05)
        for step in range(4):
            if step == convert_at:
                fused_optimizer(optimizer)
                assert optimizer.param_groups[0]["fused"] and optimizer._step_supports_amp_scaling
            param.grad = torch.linspace(-1, 1, 64) * (step + 1)
            optimizer.step()
        return param.detach()

    torch.testing.assert_close(run(convert_at=2), run(convert_at=None), rtol=1e-6, atol=1e-7)


def test_the_streak_is_read_once_per_check_and_aborts_past_the_limit(capsys):
    accelerator = _accelerator()
    control = StepControl(accelerator, StopRequest(), _guard(max_nan_steps=2))
    for step, bad in enumerate([1.0, 1.0, 0.0, 1.0]):
        control.record(torch.tensor(bad), step)
    assert control.check(step=4, epoch=1) is False
    assert "non-finite loss in 3 step(s) up to step 4" in capsys.readouterr().err
    assert control.guard.streak == 1
    for step in (4, 5):
        control.record(torch.tensor(1.0), step)
    with pytest.raises(SystemExit, match=r"not finite for 3 step\(s\) in a row \(at step 6, epoch 2.*"
                                         r"max_nan_steps=2\. Advice"):
        control.check(step=8, epoch=2)
    # gradient accumulation: a bad micro-batch skips the whole optimizer step
    assert control.skip_flag(torch.tensor(1.0), sync_gradients=False).item() == 1.0
    assert control.skip_flag(torch.tensor(0.0), sync_gradients=True).item() == 1.0
    assert control.skip_flag(torch.tensor(0.0), sync_gradients=True).item() == 0.0


def test_a_single_process_stops_at_the_next_step_without_a_collective():
    stop = StopRequest()
    control = StepControl(_accelerator(), stop, _guard())
    assert not control.stop_now()
    stop.requested = True
    assert control.stop_now() and control.check(step=1, epoch=1)


# --- mixed precision --------------------------------------------------------------------------------

@pytest.mark.parametrize("mixed_precision", ["bf16", "fp16"])
def test_both_steps_train_under_mixed_precision(mixed_precision):
    accelerator = _accelerator(mixed_precision)
    assert accelerator.native_amp
    _, parts = _finetune_parts(accelerator, center=True)
    images, pids = _finetune_batch()
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    for _ in range(3):  # fp16: GradScaler starts at 2^16 and may skip its first steps
        values, skipped = finetune.train_step(parts, images, pids)
        assert skipped.item() == 0.0 and torch.isfinite(values["loss"])
    assert any(not torch.equal(before[k], v) for k, v in parts.model.state_dict().items())
    assert (accelerator.scaler is not None) == (mixed_precision == "fp16")

    trainer = _pretrain_trainer(accelerator, "semantic.clustering=batched")
    for step in range(2):
        result = pretrain.train_one_step(trainer, _views(), step)
        assert result.finite and torch.isfinite(result.stats["loss"])


def test_fp16_overflow_is_the_scalers_business_not_a_non_finite_step(monkeypatch):
    accelerator = _accelerator("fp16")
    _, parts = _finetune_parts(accelerator)
    images, pids = _finetune_batch()
    finite_terms = parts.losses.terms
    # finite in float32, but x 2^16 (the loss scale) overflows: every gradient is inf
    monkeypatch.setattr(parts.losses, "terms", lambda out, p, c=None: {
        k: v * 3e34 for k, v in finite_terms(out, p, c).items()})
    model, _ = _snapshot(parts)
    scale = accelerator.scaler.get_scale()
    _, skipped = finetune.train_step(parts, images, pids)
    parts.control.record(skipped, 0)
    assert skipped.item() == 0.0  # the loss was finite: not counted
    assert accelerator.scaler.get_scale() < scale  # the scaler skipped the step and backed off
    assert all(torch.equal(model[k], v) for k, v in parts.model.state_dict().items() if v.is_floating_point()
               and "running" not in k)
    assert parts.control.check(step=1, epoch=1) is False  # no abort, no warning

    # a non-finite loss under fp16: skipped (by the scaler) and counted
    monkeypatch.setattr(parts.losses, "terms", lambda out, p, c=None: {
        k: v * float("nan") for k, v in finite_terms(out, p, c).items()})
    _, skipped = finetune.train_step(parts, images, pids)
    parts.control.record(skipped, 1)
    assert skipped.item() == 1.0
    with pytest.raises(SystemExit, match="not finite for 1 step"):
        parts.control.check(step=2, epoch=1)


# --- torch.compile -------------------------------------------------------------------------------

@pytest.mark.slow
def test_compiled_steps_give_the_eager_losses(monkeypatch):
    """torch.compile (inductor, the system C++ compiler on the CPU) against eager: the losses of
    three steps of each stage within 1e-4 (the weights after Adam steps are not compared: Adam
    turns rounding-level gradient differences near zero into LR-sized moves). Inductor draws its
    own random numbers unless told to use eager's (``fallback_random``): the student's drop-path
    would then differ whenever it lands inside a compiled graph."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    images, pids = _finetune_batch()
    losses = {}
    for compiled in (False, True):
        _, parts = _finetune_parts(_accelerator(), forward=torch.compile if compiled else None)
        losses[compiled] = []
        for step in range(3):
            torch.manual_seed(step)
            losses[compiled].append(finetune.train_step(parts, images, pids)[0]["loss"].item())
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)

    results = {}
    for compiled in (False, True):
        trainer = _pretrain_trainer(_accelerator(), "semantic.enabled=false", compiled=compiled)
        results[compiled] = []
        for step in range(2):
            torch.manual_seed(step)
            stats = pretrain.train_one_step(trainer, _views(), step).values()
            results[compiled].append((stats["loss"], stats["teacher_entropy"]))
    for eager, compiled in zip(results[False], results[True]):
        assert compiled == pytest.approx(eager, abs=1e-4)


# --- the loops' log ------------------------------------------------------------------------------

@pytest.mark.slow
def test_loops_log_throughput_and_run_under_bf16(tiny_world, tmp_path, capsys):
    ft_args = ["--config", FT_CONFIG, f"dataset.train_dataset_dir={tiny_world}/bounding_box_train",
               f"dataset.query_dataset_dir={tiny_world}/query", f"dataset.test_dataset_dir={tiny_world}/bounding_box_test",
               f"results_dir={tmp_path / 'ft'}", "model.input_height=64", "model.input_width=32",
               "dataset.batch_size=8", "dataset.num_instances=2", "dataset.num_workers=0", "train.num_epochs=1",
               "train.mixed_precision=bf16", "train.log_every=2"]
    assert finetune.main(ft_args) == 0
    [record] = [json.loads(line) for line in (tmp_path / "ft/train/log.jsonl").read_text().splitlines()]
    assert record["images_per_second"] > 0 and record["tflops_per_second"] > 0 and "mfu" not in record
    out = capsys.readouterr().out
    assert re.search(r"step cost: [\d.e+-]+ TFLOP per step per process \([\d.e+-]+ GFLOP per image", out)
    assert "no MFU" in out

    pt_args = ["--config", PT_CONFIG, f"results_dir={tmp_path / 'pt'}", f"data.path={tiny_world}/unlabeled",
               *PT_SMALL, "data.batches_per_epoch=2", "optim.epochs=1", "optim.warmup_epochs=0",
               "knn_eval.dataset_dir=null", "train.mixed_precision=bf16", "train.log_every=2"]
    assert pretrain.main(pt_args) == 0
    [record] = [json.loads(line) for line in (tmp_path / "pt/log.jsonl").read_text().splitlines()]
    assert record["steps"] == 2 and record["skipped_steps"] == 0
    assert record["images_per_second"] > 0 and record["tflops_per_second"] > 0


# --- the bench scripts ---------------------------------------------------------------------------

BENCH = ROOT / "bench"


@pytest.mark.slow
def test_gpu_check_runs_the_same_code_paths_on_the_cpu(tmp_path, capsys):
    """bench/gpu_check.py --quick on the CPU: both stages at bf16 and fp16 (the GradScaler path),
    the table, ONNX export checked in onnxruntime; TensorRT reported as unavailable."""
    check = load_script("bench/gpu_check.py")
    report_path = tmp_path / "gpu_check.json"
    assert check.main(["--device", "cpu", "--quick", "--threads", "1", "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    rows = report["rows"]
    assert {(r["stage"], r["dtype"], r["compile"]) for r in rows} == {
        (s, d, "off") for s in ("finetune", "pretrain") for d in ("bf16", "fp16")}
    for row in rows:
        assert row["images_per_second"] > 0 and row["tflops_per_second"] > 0 and row["mfu"] is None
        assert row["peak_memory_gib"] is None  # device memory: CUDA only
    assert "| stage | arch | dtype | compile |" in out
    assert report["onnx"]["failures"] == [] and "ONNX: exported and checked" in out
    assert "TensorRT:" in out
    assert set(report["attention"]["results"]) == {"packed", "padded", "padded+rebuild", "explicit", "project-all"}
    assert report["seconds"] < 60


@pytest.mark.slow
def test_attention_and_checkpointing_benches_print_their_ratios(capsys):
    attention = load_script("bench/bench_attention.py")
    assert attention.main(["--arch", PICO, "--size", "64", "32", "--batch", "2", "--repeats", "1",
                           "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(packed|padded|padded\+rebuild|explicit|project-all)\s+[\d.]+\s+[\d.]+\s+"
                      r"([\d.]+)\s+([\d.e+-]+)\s*$", out, re.M)
    # every variant computes the same function (project-all: the padded tokens projected too)
    assert [r[0] for r in rows] == ["packed", "padded", "padded+rebuild", "explicit", "project-all"]
    assert float(rows[0][1]) == 1.0 and all(float(r[2]) < 1e-4 for r in rows)

    checkpointing = load_script("bench/bench_grad_checkpointing.py")
    assert checkpointing.main(["--arch", PICO, "--size", "64", "32", "--batch", "2", "--repeats", "1",
                               "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"on / off: peak RSS [\d.]+, above the model [\d.]+, time [\d.]+", out)

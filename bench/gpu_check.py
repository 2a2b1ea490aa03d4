"""The first check on a GPU: step throughput, peak memory and MFU of both training stages, ONNX
export, and (when the ``tensorrt`` package is importable) an fp16 TensorRT engine.

    python bench/gpu_check.py                       # a CUDA device: Swin-T and Swin-B, bf16 / fp16, compile off / on
    python bench/gpu_check.py --device cpu --quick  # the same code paths on the tiny pico model (the tests run this)
    python bench/gpu_check.py --json gpu_check.json --budget 270

Every row runs the loops' own step functions (``train_step`` of finetune/run.py,
``train_one_step`` of pretrain/run.py) under Accelerate at the row's precision, on random images
of the presets' sizes (no data pipeline: compute only): fine-tune = card_market1501_swin_{tiny,base}
(64 images at 256x128, P x K = 16 x 4, 751 identities); pretrain = solider_swin_{tiny,base} (48
images, 2 global 256x128 + 8 local 128x64 crops, out_dim 65536) with ``semantic.clustering:
batched`` (the GPU clustering; SOLIDER's scikit-learn one runs on the CPU) and λ alternating 0 / 1
with every view usable, so each step has the same shapes and the FLOPs counted at start (every λ=1
view masked: 48 copies) are the work done. ``--warmup`` steps (the compilation with compile on),
then ``--steps`` timed steps between two device syncs. Columns: images/s, peak device memory
(``torch.cuda.max_memory_allocated``), achieved TFLOP/s from ``FlopCounterMode``'s count, MFU
against ``soliderkit.throughput.PEAK_TFLOPS`` (empty for a GPU or precision not in it), and the
seconds of the warm-up steps. Order: the eager rows, the attention comparison, ONNX / TensorRT,
then the compile rows while ``--budget`` seconds allow (each compilation takes about a minute; the
rest are listed as skipped); the table is printed at the end.

Then bench/bench_attention.py's comparison runs on the device (Swin-B forward + backward, batch 64:
attention over the real tokens only, as the backbone does, vs SOLIDER's padded windows, the mask
rebuilt per block, timm's explicit softmax; time, peak memory): whether packing pays on a GPU too. Then the eager Swin-T fine-tune model (after its steps) is exported to ONNX with
``soliderkit.finetune.export`` and compared with PyTorch in onnxruntime; with ``tensorrt``
importable and a CUDA device, an fp16 engine is built from it (dynamic batch 1-64) and its
embeddings compared with PyTorch's (the fp16 tolerance of ``finetune/export.py --fp16``) and timed.

On the CPU (``--device cpu``) Accelerate trains fp16 in float32; the fp16 rows switch on its GPU
path with torch's CPU fp16 autocast and GradScaler instead, so the GradScaler code runs as on a
GPU. ``--quick`` uses the pico model at small sizes, one warm-up and two timed steps, compile off
(compiling on the CPU takes minutes: ``--compile off on`` asks for it).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from soliderkit.benchmarking import load_script as load_script_at
from soliderkit.config import load_config  # noqa: E402
from soliderkit.finetune.config import FinetuneConfig  # noqa: E402
from soliderkit.finetune.losses import CenterLoss, ReidLosses  # noqa: E402
from soliderkit.finetune.model import build_reid_model  # noqa: E402
from soliderkit.finetune.optim import build_optimizer  # noqa: E402
from soliderkit.pretrain.config import PretrainConfig  # noqa: E402
from soliderkit.pretrain.dino import DINOLoss  # noqa: E402
from soliderkit.run_control import (  # noqa: E402
    NonFiniteGuard,
    StepControl,
    StopRequest,
    fused_optimizer,
)
from soliderkit.throughput import ThroughputMeter, peak_tflops, precision_key  # noqa: E402

ARCHS = {"T": "swin_tiny_patch4_window7_224", "B": "swin_base_patch4_window7_224", "pico": "swin_pico_patch4_window7"}
FINETUNE_PRESET = {"T": "configs/finetune/card_market1501_swin_tiny.yaml",
                   "B": "configs/finetune/card_market1501_swin_base.yaml"}
PRETRAIN_PRESET = {"T": "configs/pretrain/solider_swin_tiny.yaml", "B": "configs/pretrain/solider_swin_base.yaml"}
QUICK_FINETUNE = ["model.backbone=swin_pico_patch4_window7", "model.input_height=64", "model.input_width=32",
                  "dataset.batch_size=8", "dataset.num_instances=2"]
QUICK_PRETRAIN = ["model.arch=swin_pico_patch4_window7", "model.out_dim=128", "model.head_hidden_dim=32",
                  "model.bottleneck_dim=16", "semantic.part_head_hidden_dim=16", "data.batch_size_per_device=4",
                  "data.global_crop_size=[64,32]", "data.local_crop_size=[32,32]", "data.local_crops_number=2"]
NUM_CLASSES = 751  # Market-1501's training identities


def load_script(relative: str):
    """A script of this project (``pretrain/run.py``) as a module."""
    return load_script_at(ROOT / relative)


finetune = load_script("finetune/run.py")
pretrain = load_script("pretrain/run.py")


# ------------------------------------------------------------------------------ helpers

def fresh_accelerator(device: torch.device, mixed_precision: str) -> Accelerator:
    """An Accelerator at ``mixed_precision`` (its state is process-wide: reset first). On the CPU,
    fp16 gets Accelerate's GPU path (CPU fp16 autocast + torch's CPU GradScaler)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision)
    if mixed_precision == "fp16" and device.type == "cpu":
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")
    return accelerator


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def device_label(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def timed_steps(step, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the warm-up steps, seconds of the timed steps), each between device syncs."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return warm, time.perf_counter() - start


# ------------------------------------------------------------------------------ rows

@dataclass
class Built:
    """One stage's training step, ready to call: ``step()`` runs one step (no host sync)."""

    step: Callable[[], None]
    flops: int | None  # of one step, FlopCounterMode on meta copies
    batch: int
    control: StepControl
    loss: Callable[[], float]  # the last step's loss (a host read)
    restore: Callable[[], None] = lambda: None  # undo what the builder patched
    size: tuple[int, int] | None = None  # fine-tune: the input size
    plain_copy: Callable[[], torch.nn.Module] | None = None  # fine-tune: the model without Accelerate's wrapper


def make_finetune_step(arch: str, dtype: str, compiled: bool, device: torch.device, *, quick: bool,
                       compile_mode: str = "default") -> Built:
    """The fine-tune preset's step (finetune/run.py ``train_step``) on random images."""
    accelerator = fresh_accelerator(device, dtype)
    overrides = ["model.pretrained_model_path=null", *(QUICK_FINETUNE if quick else [])]
    cfg = load_config(FinetuneConfig, str(ROOT / FINETUNE_PRESET["T" if quick else arch]), overrides,
                      warn_no_effect=False)
    classes = 16 if quick else NUM_CLASSES
    size, batch, k = (cfg.model.input_height, cfg.model.input_width), cfg.dataset.batch_size, cfg.dataset.num_instances
    torch.manual_seed(0)
    model = build_reid_model(cfg.model, classes, load_pretrained=False)
    flops = finetune.step_flops(model, batch, size, classes)
    optimizer = build_optimizer(model, cfg.train.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    fused_optimizer(optimizer.optimizer)
    center_loss = center_optimizer = None
    if cfg.model.with_center_loss:
        center_loss = CenterLoss(classes, accelerator.unwrap_model(model).embedding_dim)
        center_optimizer = torch.optim.SGD(center_loss.parameters(), lr=cfg.train.optim.center_lr)
        center_loss, center_optimizer = accelerator.prepare(center_loss, center_optimizer)
        fused_optimizer(center_optimizer.optimizer)
    control = StepControl(accelerator, StopRequest(), NonFiniteGuard(0, script="gpu_check", checkpoint_dir=Path("."),
                                                                      advice="-"))
    forward = torch.compile(model, mode=compile_mode) if compiled else model
    parts = finetune.StepParts(accelerator, model, forward, ReidLosses(cfg), optimizer, control,
                               grad_clip=cfg.train.grad_clip, center_loss=center_loss,
                               center_optimizer=center_optimizer,
                               center_weight=cfg.train.optim.center_loss_weight)
    images = torch.randn(batch, 3, *size, device=device)
    pids = torch.arange(batch // k, device=device).repeat_interleave(k) % classes
    last = {}

    def step():
        last["values"], skipped = finetune.train_step(parts, images, pids)
        control.record(skipped, 0)

    def plain_copy() -> torch.nn.Module:  # the prepared model runs its forward under Accelerate's autocast
        plain = build_reid_model(cfg.model, classes, load_pretrained=False)
        plain.load_state_dict({k: v.float().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()})
        return plain.eval()

    return Built(step, flops, batch, control, lambda: last["values"]["loss"].item(), size=size, plain_copy=plain_copy)


def make_pretrain_step(arch: str, dtype: str, compiled: bool, device: torch.device, *, quick: bool,
                       compile_mode: str = "default") -> Built:
    """The pretrain preset's step (pretrain/run.py ``train_one_step``) on random views, λ
    alternating 0 / 1 and every view usable (the same shapes every step)."""
    accelerator = fresh_accelerator(device, dtype)
    overrides = ["semantic.clustering=batched", "semantic.fg_ratio_threshold=0.0", "optim.epochs=2",
                 "optim.warmup_epochs=1", *(QUICK_PRETRAIN if quick else [])]
    cfg = load_config(PretrainConfig, str(ROOT / PRETRAIN_PRESET["T" if quick else arch]), overrides,
                      warn_no_effect=False)
    batch = cfg.data.batch_size_per_device
    torch.manual_seed(0)
    student, teacher = pretrain.build_networks(cfg, load_init=False)
    flops = pretrain.step_flops(cfg, student, teacher)
    optimizer = torch.optim.AdamW(pretrain.param_groups(student, cfg.optim.decay_position_tables))
    schedules = pretrain.Schedules.build(cfg, iters_per_epoch=100, total_batch=batch)
    student, optimizer = accelerator.prepare(student, optimizer)
    fused_optimizer(optimizer.optimizer)
    teacher.to(device)
    dino_loss = DINOLoss(cfg.model.out_dim, student_temp=cfg.dino.student_temp,
                         center_momentum=cfg.dino.center_momentum).to(device)
    stop = StopRequest()
    control = StepControl(accelerator, stop, NonFiniteGuard(0, script="gpu_check", checkpoint_dir=Path("."),
                                                             advice="-"))
    forwards = {}
    if compiled:
        forwards = {"student_forward": torch.compile(student, mode=compile_mode),
                    "teacher_forward": torch.compile(teacher, mode=compile_mode)}
    trainer = pretrain.Trainer(accelerator, cfg, student, teacher, dino_loss, optimizer, schedules, stop, control,
                               **forwards)
    d = cfg.data
    views = [torch.randn(batch, 3, *d.global_crop_size, device=device) for _ in range(2)]
    views += [torch.randn(batch, 3, *d.local_crop_size, device=device) for _ in range(d.local_crops_number)]
    lam = (torch.arange(batch, device=device) % 2).float()  # λ 0 / 1: half the views get a masked copy
    counter = {"step": 0}
    last = {}

    def step():
        last["result"] = pretrain.train_one_step(trainer, views, counter["step"] % schedules.lr.shape[0])
        control.record(last["result"].skipped, counter["step"])
        counter["step"] += 1

    saved = pretrain.draw_lambda
    pretrain.draw_lambda = lambda sem, b, dev: lam if sem.enabled else torch.zeros(b, device=dev)

    def restore():
        pretrain.draw_lambda = saved

    return Built(step, flops, batch, control, lambda: float(last["result"].stats["loss"]), restore)


def run_row(stage: str, arch: str, dtype: str, compiled: bool, device: torch.device, args,
            keep_model: bool = False) -> dict:
    make = make_finetune_step if stage == "finetune" else make_pretrain_step
    built = make(arch, dtype, compiled, device, quick=args.quick, compile_mode=args.compile_mode)
    try:
        reset_memory(device)
        warm, seconds = timed_steps(built.step, device, args.warmup, args.steps)
        built.control.check(step=args.warmup + args.steps, epoch=1)  # raises if a step was not finite
    finally:
        built.restore()
    row = result_row(stage, arch, dtype, compiled, built.batch, built.flops, device, warm, seconds, args.steps,
                     loss=built.loss())
    if keep_model:
        row["_model"], row["_size"] = built.plain_copy(), built.size
    return row


def result_row(stage, arch, dtype, compiled, batch, flops, device, warm, seconds, steps, loss) -> dict:
    peak = peak_tflops(device_label(device), precision_key(dtype))
    rates = ThroughputMeter(flops, batch, 1, peak).rates(steps, seconds)
    return {"stage": stage, "arch": arch, "dtype": dtype, "compile": "on" if compiled else "off", "batch": batch,
            "images_per_second": rates["images_per_second"], "peak_memory_gib": peak_memory_gib(device),
            "tflops_per_second": rates.get("tflops_per_second"), "mfu": rates.get("mfu"),
            "gflop_per_image": flops / batch / 1e9 if flops else None, "warmup_seconds": warm,
            "step_ms": seconds / steps * 1000, "loss": loss}


# ------------------------------------------------------------------------------ attention

def attention_check(device: torch.device, quick: bool, dtype: str, repeats: int) -> dict:
    """bench/bench_attention.py on this device: the real tokens only (packed) against SOLIDER's padded
    windows, the mask rebuilt per block, timm's explicit softmax and the padded tokens projected too
    (Swin-B forward + backward at 256x128, batch 64)."""
    bench = load_script("bench/bench_attention.py")
    arch, size, batch = (ARCHS["pico"], (64, 32), 2) if quick else (ARCHS["B"], (256, 128), 64)
    torch.manual_seed(0)
    from soliderkit.backbone import build_backbone

    model = build_backbone(arch, img_size=size, drop_path_rate=0.0).to(device).train()
    images = torch.randn(batch, 3, *size, device=device)
    results = bench.measure(model, images, repeats, dtype)
    return {"arch": arch, "size": size, "batch": batch, "dtype": dtype, "results": results,
            "print": lambda: bench.print_results(results, batch)}


# ------------------------------------------------------------------------------ deployment

def onnx_check(model: torch.nn.Module, size: tuple[int, int], folder: Path, device: torch.device) -> dict:
    from soliderkit.finetune.export import (
        check_onnx,
        compare_with_pytorch,
        export_onnx,
        parity_failures,
    )

    path = folder / "reid.onnx"
    model = model.float().eval()
    start = time.perf_counter()
    export_onnx(model, path, input_size=size, device="cpu")
    interface = check_onnx(path)
    generator = torch.Generator().manual_seed(0)
    batches = {f"batch {b}": torch.randn(b, 3, *size, generator=generator) for b in (1, 8)}
    results = compare_with_pytorch(path, model, batches)
    return {"path": path, "seconds": time.perf_counter() - start, "interface": interface, "results": results,
            "failures": parity_failures(results, fp16=False)}


def tensorrt_check(onnx_path: Path, model: torch.nn.Module, size: tuple[int, int], device: torch.device) -> dict:
    """An fp16 engine from the ONNX file (batch 1-64), its embeddings against PyTorch's, its speed."""
    try:
        import tensorrt as trt  # optional: NVIDIA's wheel, only on GPU machines
    except ImportError as exc:
        raise RuntimeError(f"the tensorrt package cannot be imported: {exc}") from None

    from soliderkit.finetune.export import INPUT_NAME, OUTPUT_NAME, parity_failures

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(1 << int(flag) if flag is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (3, *size)
    profile.set_shape(INPUT_NAME, (1, *shape), (16, *shape), (64, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    build_seconds = time.perf_counter() - start

    model = model.float().eval().to(device)
    stream = torch.cuda.current_stream(device)

    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous()
        context.set_input_shape(INPUT_NAME, tuple(images.shape))
        out = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), device=device, dtype=torch.float32)
        context.set_tensor_address(INPUT_NAME, images.data_ptr())
        context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out

    generator = torch.Generator().manual_seed(0)
    results = {}
    for b in (1, 8, 64):
        images = torch.randn(b, 3, *size, generator=generator).to(device)
        with torch.no_grad():
            expected = model(images).float()
        got = run(images)
        torch.cuda.synchronize(device)
        cosine = torch.nn.functional.cosine_similarity(got.double(), expected.double(), dim=1)
        results[f"batch {b}"] = {"batch": b, "max_abs_diff": float((got - expected).abs().max()),
                                 "max_abs_value": float(expected.abs().max()), "min_cosine": float(cosine.min())}
    images = torch.randn(64, 3, *size, device=device)
    for _ in range(5):
        run(images)
    torch.cuda.synchronize(device)
    timed = time.perf_counter()
    for _ in range(20):
        run(images)
    torch.cuda.synchronize(device)
    per_batch = (time.perf_counter() - timed) / 20
    return {"build_seconds": build_seconds, "results": results, "failures": parity_failures(results, fp16=True),
            "images_per_second": 64 / per_batch, "version": trt.__version__}


# ------------------------------------------------------------------------------ output

def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    header = ("stage", "arch", "dtype", "compile", "batch", "images/s", "step ms", "peak mem GiB", "TFLOP/s", "MFU",
              "GFLOP/image", "warm-up s", "note")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 4 else "---:" for i in range(len(header) - 1)) + "|---|")
    for r in rows:
        if "skipped" in r:
            cells = [r["stage"], r["arch"], r["dtype"], r["compile"]] + [""] * 8 + [r["skipped"]]
        else:
            cells = [r["stage"], r["arch"], r["dtype"], r["compile"], str(r["batch"]),
                     fmt(r["images_per_second"], ".1f"), fmt(r["step_ms"], ".1f"), fmt(r["peak_memory_gib"], ".2f"),
                     fmt(r["tflops_per_second"], ".3g"), fmt(r["mfu"], ".1%"), fmt(r["gflop_per_image"], ".1f"),
                     fmt(r["warmup_seconds"], ".1f"), f"loss {r['loss']:.3f}"]
        print("| " + " | ".join(cells) + " |")


def attention_section(args, device: torch.device, report: dict) -> None:
    dtype = "bf16" if "bf16" in args.dtypes else args.dtypes[0]
    try:
        attention = attention_check(device, args.quick, dtype, repeats=1 if args.quick else 3)
        print(f"\nwindow attention, {attention['arch']} at {attention['size'][0]}x{attention['size'][1]}, "
              f"batch {attention['batch']}, {dtype}, forward + backward:")
        attention.pop("print")()
        report["attention"] = attention
    except Exception as exc:  # noqa: BLE001
        print(f"\nwindow attention: FAILED: {type(exc).__name__}: {exc}")
        report["attention"] = {"error": str(exc)}
    reset_memory(device)


def export_section(kept: tuple[torch.nn.Module, tuple[int, int]], device: torch.device, report: dict) -> None:
    model, size = kept
    with tempfile.TemporaryDirectory() as tmp:
        print()
        try:
            onnx = onnx_check(model, size, Path(tmp), device)
            worst = max(r["max_abs_diff"] for r in onnx["results"].values())
            print(f"ONNX: exported and checked in {onnx['seconds']:.1f} s, opset {onnx['interface']['opset']}, "
                  f"onnxruntime vs PyTorch max |diff| {worst:.2e} at batch 1 and 8: "
                  f"{'OK' if not onnx['failures'] else 'FAILED ' + '; '.join(onnx['failures'])}")
            report["onnx"] = {k: v for k, v in onnx.items() if k != "path"}
        except Exception as exc:  # noqa: BLE001
            onnx = None
            print(f"ONNX: FAILED: {type(exc).__name__}: {exc}")
            report["onnx"] = {"error": str(exc)}
        if importlib.util.find_spec("tensorrt") is None:
            print("TensorRT: the tensorrt package is not importable here: engine not built")
        elif device.type != "cuda":
            print("TensorRT: needs a CUDA device: engine not built")
        elif onnx is not None:
            try:
                trt = tensorrt_check(onnx["path"], model, size, device)
                worst = max(r["max_abs_diff"] for r in trt["results"].values())
                cosine = min(r["min_cosine"] for r in trt["results"].values())
                print(f"TensorRT {trt['version']}: fp16 engine built in {trt['build_seconds']:.1f} s; vs PyTorch "
                      f"fp32 max |diff| {worst:.2e}, min cosine {cosine:.6f} at batch 1, 8, 64: "
                      f"{'OK' if not trt['failures'] else 'FAILED ' + '; '.join(trt['failures'])}; "
                      f"{trt['images_per_second']:.0f} images/s at batch 64")
                report["tensorrt"] = trt
            except Exception as exc:  # noqa: BLE001
                print(f"TensorRT: FAILED: {type(exc).__name__}: {exc}")
                report["tensorrt"] = {"error": str(exc)}
    reset_memory(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto = cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true",
                        help="the pico model at small sizes, 1 warm-up + 2 timed steps, compile off (the CPU test)")
    parser.add_argument("--archs", nargs="+", choices=("T", "B"), default=("T", "B"),
                        help="Swin-T / Swin-B rows (--quick: the pico model instead)")
    parser.add_argument("--dtypes", nargs="+", choices=("bf16", "fp16", "no"), default=("bf16", "fp16"),
                        help="train.mixed_precision of the rows")
    parser.add_argument("--stages", nargs="+", choices=("finetune", "pretrain"), default=("finetune", "pretrain"))
    parser.add_argument("--compile", nargs="+", choices=("off", "on"), default=None,
                        help="torch.compile settings to measure (default: off on; --quick: off)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of the compile rows")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per row (default 3; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10; --quick 2)")
    parser.add_argument("--budget", type=float, default=270.0,
                        help="seconds for the whole check; compile rows that would not fit are skipped")
    parser.add_argument("--no-export", action="store_true", help="skip ONNX export and TensorRT")
    parser.add_argument("--no-attention", action="store_true",
                        help="skip the attention comparison (packed vs padded windows, rebuilt mask, explicit softmax)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU rows)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    args.compile = args.compile or (["off"] if args.quick else ["off", "on"])
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 10)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = ["pico"] if args.quick else list(args.archs)

    name = device_label(device) or platform.processor() or "CPU"
    print(f"gpu_check on {args.device} ({name}), torch {torch.__version__}, "
          f"{'quick (pico model)' if args.quick else 'preset sizes'}; budget {args.budget:.0f} s")
    if device.type == "cuda":
        peaks = {p: peak_tflops(name, precision_key(p)) for p in args.dtypes}
        print("dense peak TFLOP/s from the table: " + ", ".join(f"{k} {v if v else 'unknown (no MFU)'}"
                                                               for k, v in peaks.items()))
    rows: list[dict] = []
    report = {"device": args.device, "device_name": name, "torch": torch.__version__, "rows": rows}
    kept = None
    compile_seconds: list[float] = []

    def run_rows(compiled: str) -> None:
        nonlocal kept
        for dtype in args.dtypes:
            for arch in archs:
                for stage in args.stages:
                    elapsed = time.perf_counter() - started
                    if compiled == "on":
                        needed = max(compile_seconds, default=60.0) * 1.2
                        if elapsed + needed > args.budget:
                            rows.append({"stage": stage, "arch": arch, "dtype": dtype, "compile": compiled,
                                         "skipped": f"skipped: {elapsed:.0f} s used of the --budget, a compile "
                                                    f"row needs ~{needed:.0f} s"})
                            continue
                    row_start = time.perf_counter()
                    try:
                        keep = kept is None and stage == "finetune" and compiled == "off" and arch in ("T", "pico")
                        row = run_row(stage, arch, dtype, compiled == "on", device, args, keep_model=keep)
                        if keep:
                            kept = (row.pop("_model"), row.pop("_size"))
                        print(f"... {stage} {arch} {dtype} compile {compiled}: {row['images_per_second']:.1f} "
                              f"images/s ({time.perf_counter() - row_start:.0f} s)", flush=True)
                    except Exception as exc:  # noqa: BLE001 - one failing row must not hide the others
                        row = {"stage": stage, "arch": arch, "dtype": dtype, "compile": compiled,
                               "skipped": f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
                        print(f"... {stage} {arch} {dtype} compile {compiled}: {row['skipped']}", flush=True)
                    if compiled == "on":
                        compile_seconds.append(time.perf_counter() - row_start)
                    rows.append(row)
                    reset_memory(device)

    # Eager rows, then the attention comparison and the deployment checks, then the compile rows
    # with what is left of the budget (each compilation takes about a minute).
    if "off" in args.compile:
        run_rows("off")
    if not args.no_attention:
        attention_section(args, device, report)
    if not args.no_export:
        if kept is None:
            print("\nONNX / TensorRT: no eager Swin-T fine-tune row ran, nothing to export")
        else:
            export_section(kept, device, report)
    if "on" in args.compile:
        run_rows("on")
    print()
    print_table(rows)

    total = time.perf_counter() - started
    print(f"\ngpu_check took {total:.0f} s")
    report["seconds"] = total
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    failed = [r for r in rows if str(r.get("skipped", "")).startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

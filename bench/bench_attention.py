"""Swin window attention: the real tokens only (padded keys folded) vs SOLIDER's padded windows, the
shifted-window mask cached per input size vs rebuilt in every block call, scaled-dot-product vs timm's
explicit softmax, and the padded tokens' projections skipped vs computed; measured back to back.

    python bench/bench_attention.py [--arch swin_tiny_patch4_window7_224] [--size 256 128] [--batch 8]
                                    [--repeats 5] [--threads 2] [--device cpu] [--dtype no|bf16|fp16]

Five variants of one forward + backward of the backbone (train mode, λ = 0.2): ``packed`` (what the
backbone does: ``packed_window_attention``, the real tokens of each window plus one key standing for
its padded ones, windows grouped by their number of real tokens; SDPA where PyTorch has a fused
kernel, the explicit softmax for a CPU backward), ``padded`` (SOLIDER's padded, shifted windows
as built, ``_attn_padded``: q / k / v and the output projection for the real tokens only, the mask
built once per size), ``padded+rebuild`` (the same with the mask built in every shifted block's
call), ``explicit`` (packed with timm's softmax(QK^T + bias)V on every device) and ``project-all``
(the first path: the zero-padded windows through timm's ``WindowAttention``, which projects every
padded token too). Variants rotate within each round so drift of a shared machine hits all; medians
and the ratios to ``packed`` are printed, the largest output difference to it and, on a GPU, the
peak memory of each variant's pass. ``bench/gpu_check.py`` runs it on the GPU.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import window_partition, window_reverse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from soliderkit.backbone import build_backbone, swin  # noqa: E402
from soliderkit.benchmarking import backbone_bench_parser, parse_bench_args  # noqa: E402

VARIANTS = ("packed", "padded", "padded+rebuild", "explicit", "project-all")
BASELINE = VARIANTS[0]


def attention_projecting_all(self: swin.PadThenShiftBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's attention as it was: pad the normalised map with zeros, shift, and run timm's
    ``WindowAttention`` (qkv, attention, output projection) on every token of the windows."""
    _, height, width, channels = x.shape
    win_h, win_w = self.window_size
    pad_h, pad_w = (-height) % win_h, (-width) % win_w
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    shift_h, shift_w = self.shift_size
    shifted, mask = shift_h > 0 or shift_w > 0, None
    if shifted:
        x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))
        mask = swin.shifted_window_mask(self, x)
    windows = self.attn(window_partition(x, self.window_size).view(-1, self.window_area, channels), mask=mask)
    x = window_reverse(windows.view(-1, win_h, win_w, channels), self.window_size, height + pad_h, width + pad_w)
    if shifted:
        x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
    return x[:, :height, :width, :].contiguous()


def configure(model: torch.nn.Module, variant: str) -> None:
    swin.set_fused_attention(model, variant != "explicit")
    swin.set_window_packing(model, variant in ("packed", "explicit"))
    if variant.endswith("rebuild"):
        swin.shifted_window_mask = lambda block, padded: block.get_attn_mask(padded)
    else:
        swin.shifted_window_mask = CACHED
    swin.PadThenShiftBlock._attn_padded = attention_projecting_all if variant == "project-all" else PADDED


CACHED = swin.shifted_window_mask
PADDED = swin.PadThenShiftBlock._attn_padded


def time_pass(model: torch.nn.Module, images: torch.Tensor, dtype: str = "no") -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.autocast(images.device.type, dtype=getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}.get(dtype, "float32")),
                        enabled=dtype != "no"):
        pooled = model(images, semantic_weight=0.2).pooled
    pooled.float().sum().backward()
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, pooled.detach().float()


def measure(model: torch.nn.Module, images: torch.Tensor, repeats: int, dtype: str = "no") -> dict[str, dict]:
    """Per variant: median seconds of ``repeats`` rotated rounds, peak CUDA memory (GiB, None on the
    CPU), and the largest output difference to ``packed``. Leaves the backbone as built."""
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    outputs, memory = {}, {}
    cuda = images.device.type == "cuda"
    try:
        for variant in VARIANTS:  # warm-up: allocator, kernel selection, the mask cache; peak memory
            configure(model, variant)
            if cuda:
                torch.cuda.reset_peak_memory_stats(images.device)
            outputs[variant] = time_pass(model, images, dtype)[1]
            memory[variant] = torch.cuda.max_memory_allocated(images.device) / 2**30 if cuda else None
        for round_index in range(repeats):
            shift = round_index % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                configure(model, variant)
                times[variant].append(time_pass(model, images, dtype)[0])
    finally:
        configure(model, BASELINE)
    return {v: {"seconds": statistics.median(times[v]), "peak_memory_gib": memory[v],
                "max_abs_diff": (outputs[v] - outputs[BASELINE]).abs().max().item()} for v in VARIANTS}


def print_results(results: dict[str, dict], batch: int) -> None:
    base = results[BASELINE]["seconds"]
    print(f"{'variant':<16}{'ms':>10}{'images/s':>10}{'time / packed':>15}{'max |diff|':>12}{'peak mem GiB':>14}")
    for variant, r in results.items():
        memory = "" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        print(f"{variant:<16}{r['seconds'] * 1000:>10.1f}{batch / r['seconds']:>10.2f}{r['seconds'] / base:>15.3f}"
              f"{r['max_abs_diff']:>12.2e}{memory:>14}")


def main(argv: list[str] | None = None) -> int:
    parser = backbone_bench_parser(__doc__.splitlines()[0], arch="swin_tiny_patch4_window7_224", size=(256, 128),
                                   batch=8, repeats=5, repeats_help="timed rounds per variant (after one warm-up)")
    parser.add_argument("--dtype", choices=("no", "bf16", "fp16"), default="no", help="autocast precision")
    args = parse_bench_args(parser, argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_backbone(args.arch, img_size=tuple(args.size), drop_path_rate=0.0).to(device).train()
    images = torch.randn(args.batch, 3, *args.size, device=device)
    results = measure(model, images, args.repeats, args.dtype)
    print(f"{args.arch} at {args.size[0]}x{args.size[1]}, batch {args.batch}, {args.device}, {args.dtype}, "
          f"{args.threads} thread(s), forward + backward, median of {args.repeats}")
    print_results(results, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())

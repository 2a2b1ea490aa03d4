"""Swin forward+backward time in fp32 vs bf16 autocast, measured back to back in one process.

    python bench/bench_cpu_precision.py [--arch swin_pico_patch4_window7] [--size 128 64] [--batch 128]
                                        [--repeats 5] [--threads 2] [--device cpu]

The workload is one DINO student pass of phase 1 on the synthetic world (two global views of
64 images = 128 crops at 128x64 by default): forward under ``torch.autocast`` (off for fp32,
bfloat16 for bf16, as ``train.mixed_precision=bf16`` does through Accelerate), backward of
the pooled feature's sum. The two precisions alternate, each round in both orders, so drift
of a shared machine hits both; medians are printed with the bf16 / fp32 speed-up. On CPUs
with AMX / AVX512-BF16 bf16 matrix products are native; on others bf16 may be slower.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from soliderkit.backbone import build_backbone  # noqa: E402
from soliderkit.benchmarking import backbone_bench_parser, parse_bench_args  # noqa: E402


def time_pass(model: torch.nn.Module, images: torch.Tensor, bf16: bool) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        pooled = model(images).pooled
    pooled.float().sum().backward()
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = backbone_bench_parser(__doc__.splitlines()[0], arch="swin_pico_patch4_window7", size=(128, 64),
                                   batch=128, repeats=5, repeats_help="timed rounds per precision (after one warm-up)")
    args = parse_bench_args(parser, argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_backbone(args.arch, img_size=tuple(args.size)).to(device).train()
    images = torch.randn(args.batch, 3, *args.size, device=device)

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for bf16 in (False, True):  # warm-up: allocator, oneDNN kernel selection
        time_pass(model, images, bf16)
    for round_index in range(args.repeats):
        order = ("fp32", "bf16") if round_index % 2 == 0 else ("bf16", "fp32")
        for name in order:
            times[name].append(time_pass(model, images, name == "bf16"))

    fp32, bf16 = (statistics.median(times[k]) for k in ("fp32", "bf16"))
    print(f"{args.arch} at {args.size[0]}x{args.size[1]}, batch {args.batch}, {args.device}, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'precision':<10}{'fwd+bwd ms':>12}{'images/s':>10}")
    for name, seconds in (("fp32", fp32), ("bf16", bf16)):
        print(f"{name:<10}{seconds * 1000:>12.2f}{args.batch / seconds:>10.1f}")
    print(f"bf16 speed-up over fp32: {fp32 / bf16:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

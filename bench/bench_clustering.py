"""Batched torch clustering (soliderkit.pretrain.semantic.cluster_parts) vs SOLIDER's per-image scikit-learn loop.

    python bench/bench_clustering.py [--batch 96] [--arch swin_tiny_patch4_window7_224] [--size 256 128]
                                     [--checkpoint backbone.safetensors] [--images data/synthetic/unlabeled]
                                     [--repeats 20] [--device cpu] [--threads 1]

Both cluster the *same* stage-4 tokens: a teacher backbone (random init with a random
final-norm gain, see below, unless ``--checkpoint``) at λ = 1 on ``--batch`` images (person crops from ``--images`` if it
exists, else noise). The scikit-learn side is SOLIDER's procedure (``utils.get_mask``):
per image, a device->host copy, KMeans(2) on the token norms and KMeans(3) on the
foreground tokens; the torch side is one batched call on ``--device``. Prints the median
times, the speed-up, and how often the two agree (adjusted Rand index per image, and
whether both keep the same views).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from soliderkit.backbone import build_backbone
from soliderkit.pretrain.semantic import cluster_parts, sklearn_part_labels
from soliderkit.reid.transforms import test_transform


def load_images(folder: str | None, count: int, size: tuple[int, int]) -> torch.Tensor:
    paths = sorted(Path(folder).rglob("*.jpg"))[:count] if folder and Path(folder).is_dir() else []
    if len(paths) < count:
        print(f"(using noise images: {folder} has {len(paths)} of the {count} images needed)")
        return torch.randn(count, 3, *size)
    transform = test_transform(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def timed(fn, repeats: int, sync) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--arch", default="swin_tiny_patch4_window7_224")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 128))
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--images", default="data/synthetic/unlabeled")
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="Lloyd iterations of the torch k-means")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats of the torch side")
    parser.add_argument("--sklearn-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch and scikit-learn (0: library defaults). One thread is "
                             "the fair default: both sides work on tiny arrays, and on a busy machine extra "
                             "OpenMP threads mostly spin")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    teacher = build_backbone(args.arch, img_size=args.size, checkpoint=args.checkpoint, drop_path_rate=0.0)
    if args.checkpoint is None:
        # At initialisation the last LayerNorm has unit gain and zero bias, so every stage-4
        # token has norm sqrt(C) and the foreground split is decided by rounding noise. A
        # random gain/bias stands in for a trained norm, so that token norms differ and both
        # sides do a realistic amount of work (views kept, k-means on their foreground).
        with torch.no_grad():
            teacher.norm.weight.uniform_(0.25, 1.75)
            teacher.norm.bias.normal_(0.0, 0.2)
    teacher.to(device).eval()
    images = load_images(args.images, args.batch, tuple(args.size)).to(device)
    with torch.no_grad():
        tokens = teacher(images, semantic_weight=1.0).feature_maps[-1]
    n, c, h, w = tokens.shape
    print(f"tokens: {n} images x {h}x{w} stage-4 tokens x {c} channels ({args.arch} at {args.size[0]}x{args.size[1]}, "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'random init, random final-norm gain'}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, device {device}")

    cluster_parts(tokens, args.parts, 0.5, args.iters)  # warm-up
    t_torch, ours = timed(lambda: cluster_parts(tokens, args.parts, 0.5, args.iters), args.repeats, sync)
    t_sklearn, (ref_labels, ref_valid) = timed(lambda: sklearn_part_labels(tokens, args.parts, 0.5),
                                               args.sklearn_repeats, sync)
    both = ours.valid.cpu() & ref_valid
    aris = [adjusted_rand_score(ref_labels[i].flatten().numpy(), ours.labels[i].cpu().flatten().numpy())
            for i in torch.nonzero(both).flatten().tolist()]
    print(f"scikit-learn per-image loop : {t_sklearn * 1e3:9.2f} ms per batch (median of {args.sklearn_repeats})")
    print(f"torch batched ({args.iters} iters)  : {t_torch * 1e3:9.2f} ms per batch (median of {args.repeats})")
    print(f"speed-up                    : {t_sklearn / t_torch:9.1f}x")
    print(f"views kept (fg > 50%)       : torch {int(ours.valid.sum())}, scikit-learn {int(ref_valid.sum())}, "
          f"same decision for {int((ours.valid.cpu() == ref_valid).sum())}/{n}")
    if aris:
        print(f"adjusted Rand vs sklearn    : mean {statistics.mean(aris):.3f}, median {statistics.median(aris):.3f} "
              f"over {len(aris)} views kept by both")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tune training throughput (images/s) of the tiny (pico, 128x64) and Swin-T (256x128) configs.

    python bench/bench_finetune.py [--steps 5] [--batch 32] [--threads N] [--pico-only]

Runs full training steps (forward, ID + soft-margin triplet loss, backward, SGD step) on
random images with a P x K label layout, after one warm-up step, and prints images/s for
each model with the backbone's attention over the real tokens only (as it runs) and over
SOLIDER's padded windows (``set_window_packing(False)``, the same function), their ratio,
and the ratio against the pico model measured in the same run (absolute numbers on a shared
machine mean little).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from soliderkit.backbone.swin import set_window_packing
from soliderkit.finetune.config import ModelConfig
from soliderkit.finetune.losses import TripletLoss, id_loss
from soliderkit.finetune.model import build_reid_model

MODELS = {
    "pico 128x64 (configs/finetune/synthetic_tiny.yaml)": ("swin_pico_patch4_window7", 128, 64, 64),
    "Swin-T 256x128 (configs/finetune/card_market1501_swin_tiny.yaml)": ("swin_tiny_patch4_window7_224", 256, 128, 256),
}


def images_per_second(arch: str, height: int, width: int, feat_dim: int, batch: int, steps: int,
                      packed: bool = True) -> float:
    cfg = ModelConfig(backbone=arch, input_height=height, input_width=width, reduce_feat_dim=True,
                      feat_dim=feat_dim, semantic_weight=0.2)
    model = build_reid_model(cfg, num_classes=751).train()
    set_window_packing(model, packed)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    triplet = TripletLoss(margin=None)
    images = torch.randn(batch, 3, height, width)
    labels = torch.arange(batch // 4).repeat_interleave(4)

    def step():
        out = model(images, labels)
        loss = id_loss(out.logits, labels) + triplet(out.features, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up: allocator, kernels
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="a multiple of 4 (P x K with K=4)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pico-only", action="store_true", help="skip Swin-T (a quick run)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.steps} steps")
    baseline = None
    for name, spec in list(MODELS.items())[:1 if args.pico_only else None]:
        padded = images_per_second(*spec, batch=args.batch, steps=args.steps, packed=False)
        rate = images_per_second(*spec, batch=args.batch, steps=args.steps)
        baseline = baseline or rate
        print(f"{name:<62} {rate:8.1f} images/s   {rate / baseline:6.3f}x pico   "
              f"padded windows {padded:8.1f} images/s (packed: {rate / padded:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

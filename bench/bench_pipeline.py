"""CPU-seconds per image of the pretraining loader, today's path against draft decoding and
device-side augmentation, side by side in one run, and the CPU cores one GPU needs.

The loader is the training one (``soliderkit.data.stream.make_shard_loader``: resampled shards,
shuffle buffer, DataLoader workers, batches of 48) with the recipe's views
(``configs/pretrain/solider_swin_tiny.yaml``: 2 global 256x128 at area 0.8-1, 8 local 128x64 at
0.05-0.8, width/height 0.4-0.6, DINO's flip / colour jitter / grayscale / blur / solarisation,
normalisation). Four paths:

* ``today``: workers decode at full size and make every view with PIL (``data.augment_on=cpu``);
* ``cpu + draft``: the same, JPEGs decoded at 1/2-1/8 size when every planned crop allows it
  (``data.decode_draft=true``);
* ``device``: workers only decode and plan; the views are made on the training device
  (``data.augment_on=device``), so the loader's CPU time is decoding alone;
* ``device + draft``: both.

Each measurement is one full pass (worker start-up included, as every epoch in training), with
the CPU time of the main process and of its DataLoader workers (``getrusage`` self + children;
the workers are joined at the end of a pass). Passes alternate between the paths, ``--repeats``
rounds after a warm-up pass of each; the median per path and its ratio to ``today`` are printed.
The device path's own work (crops + photometric steps of a batch) runs on the GPU in training;
its time on this CPU is printed for reference, not added to the loader's.

Images: person crops of the synthetic world re-encoded as JPEG (quality 90, mild sensor noise
so the entropy coding is realistic) at ``--sizes`` (default 128x64 ... 512x256, equal shares;
LUPerson's crops are of varied size, often above 256x128), or ``--src`` (a folder of images).

Cores per GPU: a step's FLOPs per image are counted at the recipe's sizes (student forward +
backward on all 10 views and the masked copies of the global views of the half of the images at
λ=1, teacher forward on the global views at λ and at λ=1; ``soliderkit.throughput.count_flops`` on
weightless ``meta`` copies); a GPU at ``--mfu`` of its dense bf16 peak consumes
``mfu * peak / FLOPs`` images per second, and needs that many times the CPU-seconds per image.

    .venv/bin/python bench/bench_pipeline.py                  # ~2-4 minutes on 2 cores
    .venv/bin/python bench/bench_pipeline.py --src /data/LUPerson_sample --workers 8
"""
from __future__ import annotations

import argparse
import copy
import io
import itertools
import logging
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from soliderkit.config import load_config
from soliderkit.data.build import build_shards
from soliderkit.data.stream import make_shard_loader
from soliderkit.pretrain.config import PretrainConfig
from soliderkit.pretrain.device_multicrop import DeviceMultiCrop, collate_device_samples
from soliderkit.pretrain.multicrop import MultiCropAugmentation

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/pretrain/solider_swin_tiny.yaml"
# Dense bf16 peaks (NVIDIA datasheets), used when soliderkit.throughput is not there to ask.
GPUS = (("A100 (bf16 dense 312 TFLOP/s)", "NVIDIA A100-SXM4-80GB", 312.0),
        ("H100 / H200 SXM (bf16 dense 989 TFLOP/s)", "NVIDIA H100 80GB HBM3", 989.0))
PATHS = ("today", "cpu + draft", "device", "device + draft")


# ------------------------------------------------------------------------------ images

def draw_images(work: Path, sizes: list[tuple[int, int]], count: int, quality: int) -> Path:
    """``count`` JPEG person crops at ``sizes`` (cycled) in ``work/images`` (kept for later runs)."""
    out = work / f"images_{count}_{'-'.join(f'{h}x{w}' for h, w in sizes)}_q{quality}"
    if out.is_dir() and len(list(out.glob("*.jpg"))) == count:
        return out
    from soliderkit.data.synth import generate_world

    world = work / "world"
    if not (world / "world.json").exists():
        print(f"drawing a synthetic world into {world} ...", file=sys.stderr)
        generate_world(world, identities=20, cameras=6, seed=0, unlabeled_identities=150, overwrite=True,
                       workers=min(2, os.cpu_count() or 1))
    people = sorted((world / "unlabeled").rglob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        height, width = sizes[i % len(sizes)]
        with Image.open(people[i % len(people)]) as person:
            pixels = np.asarray(person.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(out / f"{i:06d}.jpg", quality=quality)
    return out


# ------------------------------------------------------------------------------ the loader paths

def cpu_seconds() -> float:
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def loader(path: str, shards: Path, cfg: PretrainConfig, batch: int, workers: int, epoch: int):
    d = cfg.data
    draft, device = "draft" in path, path.startswith("device")
    augment = MultiCropAugmentation(
        d.global_crop_size, d.local_crop_size, global_scale=d.global_crop_scale, local_scale=d.local_crop_scale,
        local_number=d.local_crops_number, aspect_ratio_scale=d.crop_aspect_ratio_scale, mean=d.pixel_mean,
        std=d.pixel_std, color_jitter_prob=d.color_jitter_prob, color_jitter=d.color_jitter,
        grayscale_prob=d.grayscale_prob, seed=0, decode_draft=draft)
    augment.set_epoch(epoch)
    if path == "today":  # exactly today's call in pretrain/run.py: default decode, views in the transform
        return make_shard_loader(shards, batch, augment, resampled=True, epoch=epoch, num_workers=workers,
                                 rank=0, world_size=1, shuffle_buffer=256)
    return make_shard_loader(shards, batch, augment.device_sample if device else augment, resampled=True,
                             epoch=epoch, num_workers=workers, rank=0, world_size=1, shuffle_buffer=256,
                             decode=augment.decode_stream,
                             collate_fn=collate_device_samples if device else torch.utils.data.default_collate)


def one_pass(make) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, images) of one full pass."""
    start_cpu, start = cpu_seconds(), time.perf_counter()
    images = 0
    for batch in make():
        images += (batch["images"] if isinstance(batch, dict) else batch[0]).shape[0]
    return cpu_seconds() - start_cpu, time.perf_counter() - start, images


# ------------------------------------------------------------------------------ FLOPs per image

def step_flops_per_image(cfg: PretrainConfig) -> float:
    """FLOPs of one pretraining step per image at the recipe's sizes (forward + backward)."""
    try:
        from soliderkit.throughput import count_flops
    except ImportError:  # the shared helper is newer than this bench: count the same way here
        from torch.utils.flop_counter import FlopCounterMode

        def count_flops(fn):
            with FlopCounterMode(display=False) as counter:
                fn()
            return counter.get_total_flops()
    from soliderkit.backbone import build_backbone
    from soliderkit.pretrain.dino import DINOHead, MultiCropNetwork

    m, s, d = cfg.model, cfg.semantic, cfg.data

    def network(with_parts: bool) -> MultiCropNetwork:
        backbone = build_backbone(m.arch, img_size=d.global_crop_size)
        head = DINOHead(backbone.num_features, m.out_dim, hidden_dim=m.head_hidden_dim,
                        bottleneck_dim=m.bottleneck_dim, use_bn=m.use_bn_in_head, norm_last_layer=m.norm_last_layer)
        parts = (DINOHead(backbone.num_features, s.num_parts + 1, hidden_dim=s.part_head_hidden_dim,
                          bottleneck_dim=s.part_head_bottleneck_dim, nlayers=s.part_head_layers)
                 if with_parts else None)
        return MultiCropNetwork(backbone, head, parts)

    student, teacher = network(s.enabled), network(False)

    def count_on(device: str, batch: int) -> float:
        make = torch.empty if device == "meta" else torch.zeros
        views = [make(batch, 3, *d.global_crop_size, device=device) for _ in range(2)]
        views += [make(batch, 3, *d.local_crop_size, device=device) for _ in range(d.local_crops_number)]
        lam, ones = torch.ones(batch, device=device), torch.ones(2 * batch, device=device)
        copies = [copy.deepcopy(student).to(device), copy.deepcopy(teacher).to(device)]

        def step() -> None:
            with torch.no_grad():
                copies[1](views[:2], [lam, lam], extra=torch.cat(views[:2]) if s.enabled else None,
                          extra_weights=ones if s.enabled else None)
            masked = make(batch, 3, *d.global_crop_size, device=device) if s.enabled else None  # half of the images
            out = copies[0](views, [lam] * len(views), extra=masked, extra_weights=lam if s.enabled else None)
            loss = out.logits.float().sum() + (out.part_logits.float().sum() if out.part_logits is not None else 0)
            loss.backward()

        return count_flops(step) / batch

    try:  # weightless ``meta`` copies: shapes only, nothing computed
        return count_on("meta", 2)
    except (RuntimeError, NotImplementedError):  # a forward that reads a value: compute it, one image
        return count_on("cpu", 1)


def peak_for(device_name: str, fallback: float) -> float:
    try:
        from soliderkit.throughput import peak_tflops

        return peak_tflops(device_name, "bf16") or fallback
    except ImportError:
        return fallback


# ------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=None, help="folder of images (default: synthetic JPEGs)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_pipeline"), help="scratch folder")
    parser.add_argument("--sizes", nargs="+", default=["128x64", "192x96", "256x128", "384x192", "512x256"],
                        help="HxW of the synthetic JPEGs, in equal shares")
    parser.add_argument("--images", type=int, default=960, help="synthetic images (one pass reads them all)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the synthetic images")
    parser.add_argument("--config", type=Path, default=RECIPE, help="pretraining config with the view recipe")
    parser.add_argument("--batch-size", type=int, default=48, help="images per batch (the recipe's per GPU)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--repeats", type=int, default=3, help="measured passes per path (after a warm-up)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation of the GPU")
    parser.add_argument("--skip-flops", action="store_true", help="do not count the step's FLOPs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("soliderkit.data.build").setLevel(logging.ERROR)
    cfg = load_config(PretrainConfig, args.config, warn_no_effect=False)

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    src = args.src or draw_images(args.work, sizes, args.images, args.quality)
    shards = args.work / ("shards_" + src.name)
    result = build_shards(src, shards, maxcount=64, workers=min(2, os.cpu_count() or 1))
    num_images = result.num_samples
    batch = min(args.batch_size, num_images)
    per_pass = num_images - num_images % batch

    # how often the plans let a JPEG decode smaller (header sizes only)
    planner = MultiCropAugmentation(cfg.data.global_crop_size, cfg.data.local_crop_size,
                                    global_scale=cfg.data.global_crop_scale, local_scale=cfg.data.local_crop_scale,
                                    local_number=cfg.data.local_crops_number,
                                    aspect_ratio_scale=cfg.data.crop_aspect_ratio_scale)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    factors, pixels = [], []
    for i, file in enumerate(files):
        with Image.open(file) as image:
            factors.append(planner.draft_factor(planner.plan(image.width, image.height, random.Random(i))))
            pixels.append(image.width * image.height)

    epochs = itertools.count()
    runs = {path: (lambda path=path: loader(path, shards, cfg, batch, args.workers, next(epochs)))
            for path in PATHS}
    for path, make in runs.items():  # warm-up: page cache, imports, a first pass of each
        _, _, images = one_pass(make)
        assert images == per_pass, f"{path}: {images} images, expected {per_pass}"
    cpu: dict[str, list[float]] = {path: [] for path in PATHS}
    wall: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(args.repeats):
        for path, make in runs.items():
            seconds, wall_seconds, images = one_pass(make)
            cpu[path].append(seconds / images)
            wall[path].append(wall_seconds / images)
    cpu_ms = {path: 1e3 * statistics.median(v) for path, v in cpu.items()}

    # the device path's own work on one batch, on this CPU (on the GPU in training)
    sample_loader = loader("device + draft", shards, cfg, batch, 0, 0)
    sample = next(iter(sample_loader))
    views_on = DeviceMultiCrop(cfg.data.global_crop_size, cfg.data.local_crop_size, cfg.data.local_crops_number,
                               cfg.data.pixel_mean, cfg.data.pixel_std)
    start = time.process_time()
    views = views_on(sample, "cpu")
    device_work_ms = 1e3 * (time.process_time() - start) / batch
    assert len(views) == 2 + cfg.data.local_crops_number
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # the resampling products (float32)
        views_on(sample, "cpu")
    device_flops = counter.get_total_flops() / batch

    sizes_seen = sorted({(Image.open(f).height, Image.open(f).width) for f in files[:200]})
    print(f"{num_images} JPEGs, {np.mean(pixels) / 1e3:.0f} kpixels on average "
          f"(sizes {', '.join(f'{h}x{w}' for h, w in sizes_seen[:8])}{' ...' if len(sizes_seen) > 8 else ''}), "
          f"{result.num_shards} shards; recipe {args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}: "
          f"2 x {cfg.data.global_crop_size[0]}x{cfg.data.global_crop_size[1]} + {cfg.data.local_crops_number} x "
          f"{cfg.data.local_crop_size[0]}x{cfg.data.local_crop_size[1]} views")
    shares = {f: factors.count(f) / len(factors) for f in sorted(set(factors))}
    print("draft decoding allowed by the plans: "
          + ", ".join(f"1/{f}: {share:.0%}" if f > 1 else f"full size: {share:.0%}" for f, share in shares.items()))
    print(f"batch {batch}, {args.workers} DataLoader workers, {os.cpu_count()} CPUs; median of {args.repeats} "
          f"full passes per path, alternating")
    print(f"{'loader path':<18}{'CPU ms/image':>14}{'wall ms/image':>15}{'CPU vs today':>14}")
    for path in PATHS:
        print(f"{path:<18}{cpu_ms[path]:>14.2f}{1e3 * statistics.median(wall[path]):>15.2f}"
              f"{cpu_ms['today'] / cpu_ms[path]:>13.2f}x")
    print(f"device path's own work (crops + photometric steps, on the GPU in training): "
          f"{device_work_ms:.1f} ms/image on this CPU, one thread, not counted above; "
          f"{device_flops / 1e9:.2f} GFLOP float32 per image in its resampling matrix products")

    if args.skip_flops:
        return 0
    flops = step_flops_per_image(cfg)
    print(f"\none pretraining step: {flops / 1e9:.1f} GFLOP per image ({cfg.model.arch}, forward + backward, "
          f"student on all views + masked copies, teacher on the globals at λ and λ=1); the device "
          f"path adds {device_flops / 1e9:.2f} GFLOP float32 ({device_flops / flops:.1%})")
    print(f"{'GPU at ' + format(args.mfu, '.0%') + ' MFU':<44}{'images/s':>10}"
          + "".join(f"{'cores (' + p + ')':>24}" for p in ("today", "device + draft")))
    for label, name, fallback in GPUS:
        rate = args.mfu * peak_for(name, fallback) * 1e12 / flops
        print(f"{label:<44}{rate:>10.0f}" + "".join(f"{rate * cpu_ms[p] / 1e3:>24.1f}"
                                                    for p in ("today", "device + draft")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

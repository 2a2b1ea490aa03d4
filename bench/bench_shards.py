"""Benchmark reading person crops from WebDataset shards against a torchvision ImageFolder.

Both paths read the same JPEGs (the shards hold their original bytes), decode them with
PIL, apply the same transform, and batch them in DataLoader worker processes, in the same
run. Two transforms are timed:

* ``decode``: decode + convert to a tensor at native size;
* ``multicrop``: decode + SOLIDER/DINO multi-crop (2 global 256x128 and 8 local 128x64
  random-resized crops, flip, normalise; the pretraining defaults).

Shards are read in the training mode (resampled, a fixed number of batches: one pass
worth) and in the exact one-pass mode. Each measurement is one full pass (one epoch,
worker start-up included, as in training), repeated ``--repeats`` times alternating the
paths after a warm-up pass of each (warm page cache for all). Printed: the median images
per wall-clock second, and per CPU second (main process + its DataLoader workers, from
getrusage: steadier than wall time on a shared machine), and the shards/folder ratios.

By default a synthetic Market-style world is drawn into ``--work`` (reused on later runs):

    .venv/bin/python bench/bench_shards.py                       # ~1,800 images, 2 workers
    .venv/bin/python bench/bench_shards.py --src /data/market1501 --workers 8   # image subfolders
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from soliderkit.data.build import build_shards
from soliderkit.data.stream import make_shard_loader

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class MultiCrop:
    """2 global + N local random-resized crops of a person image (widths/heights 0.4-0.6)."""

    def __init__(self, global_size=(256, 128), local_size=(128, 64), local_crops=8):
        to_tensor = [T.ToTensor(), T.Normalize(MEAN, STD)]
        self.global_view = T.Compose([T.RandomResizedCrop(global_size, scale=(0.8, 1.0), ratio=(0.4, 0.6)),
                                      T.RandomHorizontalFlip(), *to_tensor])
        self.local_view = T.Compose([T.RandomResizedCrop(local_size, scale=(0.05, 0.8), ratio=(0.4, 0.6)),
                                     T.RandomHorizontalFlip(), *to_tensor])
        self.local_crops = local_crops

    def __call__(self, image):
        return ([self.global_view(image) for _ in range(2)]
                + [self.local_view(image) for _ in range(self.local_crops)])


def folder_pass(root: Path, transform, batch_size: int, workers: int) -> int:
    dataset = ImageFolder(str(root), transform=transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    return sum(len(targets) for _, targets in loader)


def shard_pass(shard_dir: Path, transform, batch_size: int, workers: int, epoch: int, resampled: bool) -> int:
    # Resampled = the training mode: every worker owes the same number of full batches, one
    # pass worth in all. Exact = every image once; workers finish unevenly (whole shards).
    # A buffer small next to the pass, as in training (10k samples against millions): the
    # read-ahead it leaves unused at the end of a pass would otherwise be a large share here.
    loader = make_shard_loader(shard_dir, batch_size, transform, resampled=resampled, epoch=epoch,
                               num_workers=workers, rank=0, world_size=1, shuffle_buffer=256,
                               return_keys=True)
    return sum(len(keys) for _, keys in loader)


def cpu_seconds() -> float:
    # This process plus its finished children: DataLoader joins its (non-persistent) workers
    # at the end of each pass, so their CPU time is in RUSAGE_CHILDREN by then.
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def timed(run) -> tuple[float, float, int]:
    """(images per wall second, images per CPU second, images) for one pass."""
    start, start_cpu = time.perf_counter(), cpu_seconds()
    images = run()
    return images / (time.perf_counter() - start), images / (cpu_seconds() - start_cpu), images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=None,
                        help="folder of JPEGs in class subfolders (ImageFolder layout); default: synthetic world")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_shards"), help="scratch folder")
    parser.add_argument("--identities", type=int, default=60, help="synthetic world size (labelled ids)")
    parser.add_argument("--unlabeled-identities", type=int, default=150, help="synthetic world size (unlabeled)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, both paths")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--maxcount", type=int, default=100,
                        help="images per shard (default: ~20 shards, as a real set has many per worker)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("soliderkit.data.build").setLevel(logging.ERROR)  # the world holds query/test folders: fine here

    src = args.src
    if src is None:
        from soliderkit.data.synth import generate_world

        src = args.work / "world"
        if not (src / "world.json").exists():
            print(f"drawing a synthetic world into {src} ...", file=sys.stderr)
            generate_world(src, identities=args.identities, cameras=6, seed=0,
                           unlabeled_identities=args.unlabeled_identities, overwrite=True,
                           workers=min(2, os.cpu_count() or 1))
    shard_dir = args.work / "shards"
    result = build_shards(src, shard_dir, maxcount=args.maxcount, workers=min(2, os.cpu_count() or 1))
    jpeg_bytes = sum(p.stat().st_size for p in src.rglob("*.jpg"))
    num_images = result.num_samples

    transforms = {"decode": T.ToTensor(), "multicrop": MultiCrop()}
    paths = ("shards, resampled", "shards, exact", "ImageFolder")
    rates: dict[tuple[str, str], list[float]] = {}
    epochs = itertools.count()  # a new shuffle every pass, as in training
    for name, transform in transforms.items():
        runs = {
            paths[0]: lambda: shard_pass(shard_dir, transform, args.batch_size, args.workers, next(epochs), True),
            paths[1]: lambda: shard_pass(shard_dir, transform, args.batch_size, args.workers, next(epochs), False),
            paths[2]: lambda: folder_pass(src, transform, args.batch_size, args.workers),
        }
        if name == "decode":
            for path, run in runs.items():  # warm-up: page cache, lazy imports
                _, _, images = timed(run)
                wanted = num_images - num_images % args.batch_size if "resampled" in path else num_images
                assert images == wanted, f"{path} read {images} images, expected {wanted}"
        for _ in range(args.repeats):
            for path, run in runs.items():
                wall_rate, cpu_rate, _ = timed(run)
                rates.setdefault((path, name), []).append(wall_rate)
                rates.setdefault((path, name + " cpu"), []).append(cpu_rate)

    median = {key: statistics.median(values) for key, values in rates.items()}
    print(f"{num_images} JPEGs ({jpeg_bytes / max(num_images, 1) / 1e3:.1f} kB average) from {src}; "
          f"{result.num_shards} shards of <= {args.maxcount}")
    print(f"DataLoader workers {args.workers}, batch {args.batch_size}, cpus {os.cpu_count()}, "
          f"median of {args.repeats} full passes")
    columns = [("decode", "decode"), ("decode cpu", "per CPU-s"), ("multicrop", "multicrop"),
               ("multicrop cpu", "per CPU-s")]
    print(f"{'images/s':<28}" + "".join(f"{title:>12}" for _, title in columns))
    for path in paths:
        print(f"{path:<28}" + "".join(f"{median[(path, key)]:>12.0f}" for key, _ in columns))
    for path in paths[:2]:
        print(f"{path + ' / folder':<28}"
              + "".join(f"{median[(path, key)] / median[(paths[2], key)]:>11.2f}x" for key, _ in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())

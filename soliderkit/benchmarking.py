"""Measurement helpers the `bench/` scripts and the tests share (scripts never import each other).

Absolute times on a shared machine mean little: every bench prints ratios against a baseline
measured in the same run; :func:`timed` keeps the best of several runs, the one least
disturbed by other processes.
"""
from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

# MSMT17's evaluation size (query / gallery images, identities, cameras): the largest common benchmark.
MSMT = dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15)


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def synthetic_split(rng: np.random.Generator, num_query: int, num_gallery: int, num_ids: int,
                    num_cams: int, dim: int, noise: float, distractor_fraction: float = 0.15):
    """Identity-clustered random features; ``noise`` sets how hard the ranking is."""
    centroids = rng.standard_normal((num_ids + 1, dim), dtype=np.float32)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = rng.integers(1, num_ids + 1, num_gallery)
    g_pids[rng.random(num_gallery) < distractor_fraction] = 0  # pid 0 = distractor

    def features(pids):
        jitter = rng.standard_normal((pids.size, dim), dtype=np.float32)
        clustered = centroids[pids] + noise * jitter
        return np.where((pids == 0)[:, None], jitter, clustered)

    return (features(q_pids), features(g_pids), q_pids, g_pids,
            rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery))


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(result, best wall time over ``repeat`` runs): the best run is the least disturbed
    by other processes on a shared machine."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return out, best


def load_script(path: str | Path) -> ModuleType:
    """A script of the project (``pretrain/run.py``: not installed, not a package) as a module, so a
    bench or a test can call its functions; loaded once per process."""
    path = Path(path).resolve()
    name = f"script_{path.parent.name}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def backbone_bench_parser(description: str, *, arch: str, size: tuple[int, int], batch: int, repeats: int,
                          repeats_help: str, device: bool = True) -> argparse.ArgumentParser:
    """The arguments the backbone benches share: ``--arch``, ``--size H W``, ``--batch``, ``--repeats``,
    ``--threads`` and (unless ``device`` is false) ``--device``; parse with :func:`parse_bench_args`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--arch", default=arch)
    parser.add_argument("--size", type=int, nargs=2, default=size, metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    parser.add_argument("--threads", type=int, default=2)
    if device:
        parser.add_argument("--device", default="cpu")
    return parser


def parse_bench_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1 (got {args.repeats})")
    return args

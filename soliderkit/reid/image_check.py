"""Check that every image of a data set can be opened before training starts.

A bad file found mid-epoch (or at validation) used to crash the run and lose the epochs since
the last checkpoint. :func:`find_unreadable` reads each file's header once (PIL opens the file
and parses the header; pixels are not decoded), in worker processes for large sets, with a
progress bar, and returns the files that fail with the reason.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

# Below this many files one process is faster than starting a pool.
_POOL_THRESHOLD = 4000
_CHUNK = 256


def _problem(path: str) -> str | None:
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if width <= 0 or height <= 0:
        return f"empty image ({width}x{height})"
    return None


def _problems(paths: Sequence[str]) -> list[str | None]:
    return [_problem(p) for p in paths]


def find_unreadable(paths: Sequence[str | os.PathLike], *, workers: int | None = None, desc: str = "checking images",
                    progress: bool = True) -> list[tuple[str, str]]:
    """``(path, reason)`` for every file of ``paths`` whose image header cannot be read."""
    paths = [str(p) for p in paths]
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    results: list[str | None] = []
    if len(paths) < _POOL_THRESHOLD or workers <= 1:
        for chunk in chunks:
            results.extend(_problems(chunk))
            bar.update(len(chunk))
    else:
        with ProcessPoolExecutor(workers) as pool:
            for chunk, found in zip(chunks, pool.map(_problems, chunks)):
                results.extend(found)
                bar.update(len(chunk))
    bar.close()
    return [(p, why) for p, why in zip(paths, results) if why is not None]


def report_unreadable(bad: list[tuple[str, str]], *, what: str, fix: str) -> str:
    """A message listing every bad file with its reason, and the fix."""
    lines = [f"{len(bad)} unreadable image(s) in {what}:"]
    lines += [f"  {path}: {why}" for path, why in bad]
    lines.append(f"remove or replace them, or {fix} to leave them out")
    return "\n".join(lines)


def readable_only(paths: Sequence[str | os.PathLike], *, skip: bool, what: str, fix: str,
                  progress: bool = True, rank: int = 0, world_size: int = 1,
                  gather: Callable[[list], list] | None = None) -> set[str]:
    """Check ``paths``; stop with the full list of unreadable files (naming ``fix``, the setting that
    leaves them out) unless ``skip``, when they are counted on stderr. Returns the paths to drop.

    In a run of ``world_size`` processes each checks every ``world_size``-th file (from ``rank``) and
    ``gather`` (accelerate's ``gather_object``: every process gets all processes' lists) pools what
    they found, so the work is shared and every process drops, or stops on, the same files.
    """
    paths = [str(p) for p in paths]
    bad = find_unreadable(paths[rank::world_size], progress=progress)
    if world_size > 1:
        if gather is None:
            raise ValueError("readable_only: a multi-process check needs gather (accelerate.utils.gather_object)")
        found = dict(gather(bad))
        bad = [(p, found[p]) for p in paths if p in found]
    if bad and not skip:
        raise SystemExit(report_unreadable(bad, what=what, fix=fix))
    if bad and rank == 0:
        print(f"warning: left out {len(bad)} unreadable image(s) ({fix}), e.g. {bad[0][0]}: {bad[0][1]}",
              file=sys.stderr)
    return {path for path, _ in bad}

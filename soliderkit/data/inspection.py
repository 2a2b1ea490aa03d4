"""Validate a shard folder written by ``soliderkit.data.build`` and print its statistics.

CLI::

    python data_shards/inspect_shards.py OUT_DIR [--decode N] [--workers W] [--seed S]

Python: ``inspect_shards(out_dir, ...) -> InspectReport`` (``report.ok``, ``report.format()``).

Every shard listed in ``_info.json`` is read end to end with the same tar reader training
uses. A shard is reported when its file is missing, its size differs from the recorded
one, the tar is truncated or corrupt, its sample count differs from ``_info.json``, a
sample lacks its image or metadata (or has a key with a dot, which splits it), a key
repeats inside the shard, metadata is not valid JSON, or one of ``N`` randomly chosen
images per shard (seeded, default 4) fails to decode. Tar files with the build's prefix
that ``_info.json`` does not list, and an unfinished build, are reported too.
Exit status: 0 when nothing is wrong, 1 otherwise, 2 for a folder that is not a build.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from soliderkit.cli import HelpFormatter
from soliderkit.data.stream import IMAGE_FIELDS, INFO_NAME, iter_tar_samples

__all__ = ["InspectError", "InspectReport", "ShardCheck", "inspect_shards", "main"]

_SHOWN_PROBLEMS = 50


class InspectError(ValueError):
    """OUT_DIR is not a folder written by ``soliderkit.data.build``."""


@dataclass
class ShardCheck:
    """What reading one shard found."""

    name: str
    expected_count: int
    count: int = 0
    size: int = 0
    problems: list[str] = field(default_factory=list)
    decoded: int = 0
    formats: Counter = field(default_factory=Counter)
    widths: Counter = field(default_factory=Counter)
    heights: Counter = field(default_factory=Counter)
    image_bytes: int = 0
    labelled: int = 0
    pids: set = field(default_factory=set)
    cameras: set = field(default_factory=set)


def check_shard(path: str, expected_count: int, expected_bytes: int | None, decode: int, seed: int) -> ShardCheck:
    """Read one shard fully; decode ``decode`` of its images chosen with a seeded reservoir."""
    name = os.path.basename(path)
    check = ShardCheck(name, expected_count)
    if not os.path.isfile(path):
        check.problems.append(f"{name}: file missing")
        return check
    check.size = os.path.getsize(path)
    if expected_bytes is not None and check.size != expected_bytes:
        check.problems.append(f"{name}: {check.size} bytes on disk, {INFO_NAME} records {expected_bytes}")
    rng = random.Random(f"{seed}:{name}")
    reservoir: list[tuple[str, bytes]] = []
    seen_keys: set[str] = set()
    errors: list[str] = []
    for sample in iter_tar_samples(path, errors):
        key = sample["__key__"]
        fields = [f for f in sample if not f.startswith("__")]
        images = [f for f in fields if f in IMAGE_FIELDS]
        if len(images) != 1 or "json" not in fields:
            if not errors:  # the partial sample before a read error is reported as that error
                check.problems.append(f"{name}: sample {key} has fields {sorted(fields)}, expected one image "
                                      f"({'/'.join(IMAGE_FIELDS)}) and json (a dot in the key splits it)")
            continue
        if key in seen_keys:
            check.problems.append(f"{name}: key {key} appears twice")
        seen_keys.add(key)
        check.count += 1
        data = sample[images[0]]
        check.image_bytes += len(data)
        try:
            meta = json.loads(sample["json"])
            check.widths[int(meta["width"])] += 1
            check.heights[int(meta["height"])] += 1
            check.formats[meta.get("format", images[0])] += 1
            if meta.get("pid") is not None:
                check.labelled += 1
                check.pids.add(meta["pid"])
                if meta.get("camera") is not None:
                    check.cameras.add(meta["camera"])
        except (ValueError, KeyError, TypeError) as exn:
            check.problems.append(f"{name}: sample {key} has unreadable metadata ({type(exn).__name__}: {exn})")
        # Reservoir sampling: a uniform choice of `decode` images in one pass.
        if len(reservoir) < decode:
            reservoir.append((key, data))
        elif decode:
            slot = rng.randrange(check.count)
            if slot < decode:
                reservoir[slot] = (key, data)
    if errors:
        check.problems.append(f"{name}: truncated or corrupt tar ({errors[0]}); {check.count} samples readable")
    elif check.count < expected_count:
        # tarfile takes end-of-file at a member boundary for the end of the archive.
        check.problems.append(f"{name}: tar ends early, after {check.count} samples (truncated?)")
    if check.count != expected_count:
        check.problems.append(f"{name}: {check.count} samples read, {INFO_NAME} records {expected_count}")
    for key, data in reservoir:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.convert("RGB")
            check.decoded += 1
        except Exception as exn:  # any PIL failure means the image is unusable
            check.problems.append(f"{name}: image {key} does not decode ({type(exn).__name__}: {exn})")
    return check


def _check_task(task: tuple) -> ShardCheck:
    return check_shard(*task)


@dataclass
class InspectReport:
    out_dir: Path
    info: dict
    checks: list[ShardCheck]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        checks = self.checks
        counts = [c.count for c in checks]
        total = sum(counts)
        widths = sum((c.widths for c in checks), Counter())
        heights = sum((c.heights for c in checks), Counter())
        formats = sum((c.formats for c in checks), Counter())
        size = sum(c.size for c in checks)
        image_bytes = sum(c.image_bytes for c in checks)
        labelled = sum(c.labelled for c in checks)
        pids = set().union(*(c.pids for c in checks)) if checks else set()
        cameras = set().union(*(c.cameras for c in checks)) if checks else set()
        source = self.info.get("source", {})
        lines = [
            f"shards in {self.out_dir}: {len(checks)} (prefix {self.info.get('prefix')}, "
            f"source {source.get('kind')} {source.get('path')})",
            f"samples: {total} read, {self.info.get('num_samples')} recorded; "
            f"{self.info.get('num_skipped', 0)} images skipped at build time",
            f"size: {size / 1e9:.3f} GB on disk, {image_bytes / max(total, 1) / 1e3:.1f} kB per image on average",
        ]
        if counts:
            lines.append(f"samples per shard: min {min(counts)}, mean {total / len(counts):.1f}, max {max(counts)}")
        if total:
            lines.append(f"image height: {_quantiles(heights)}; width: {_quantiles(widths)}")
            lines.append("formats: " + ", ".join(f"{name} {n}" for name, n in formats.most_common()))
            lines.append(f"labelled (pid): {labelled} samples, {len(pids)} distinct pids, {len(cameras)} cameras")
        lines.append(f"decoded: {sum(c.decoded for c in checks)} sampled images")
        if self.problems:
            lines.append(f"PROBLEMS ({len(self.problems)}):")
            lines.extend(f"  {p}" for p in self.problems[:_SHOWN_PROBLEMS])
            if len(self.problems) > _SHOWN_PROBLEMS:
                lines.append(f"  ... and {len(self.problems) - _SHOWN_PROBLEMS} more")
        else:
            lines.append("OK: every shard is complete and matches " + INFO_NAME)
        return "\n".join(lines)


def _quantiles(histogram: Counter) -> str:
    values = sorted(histogram.elements()) if sum(histogram.values()) < 1_000_000 else None
    if values is None:  # millions of samples: walk the histogram instead of expanding it
        total = sum(histogram.values())
        running, median = 0, None
        for value in sorted(histogram):
            running += histogram[value]
            if median is None and running * 2 >= total:
                median = value
        return f"min {min(histogram)}, median {median}, max {max(histogram)}"
    return f"min {values[0]}, median {values[len(values) // 2]}, max {values[-1]}"


def inspect_shards(out_dir: str | os.PathLike, *, decode: int = 4, workers: int = 1, seed: int = 0,
                   progress: bool = False) -> InspectReport:
    """Check every shard of a build (see the module docstring) and gather statistics."""
    out_dir = Path(out_dir).expanduser().resolve()
    info_path = out_dir / INFO_NAME
    if not info_path.is_file():
        raise InspectError(f"{info_path} not found: give a folder written by python data_shards/build_shards.py")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        entries = [(e["name"], int(e["count"]), e.get("bytes")) for e in info["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as exn:
        raise InspectError(f"cannot read {info_path}: {exn}") from exn
    if decode < 0 or workers < 1:
        raise InspectError("--decode must be >= 0 and --workers >= 1")

    problems: list[str] = []
    if not info.get("complete", False):
        problems.append(f"build unfinished: {len(entries)} of {info.get('num_shards')} shards written "
                        f"(re-run python data_shards/build_shards.py)")
    listed = {name for name, _, _ in entries}
    prefix = info.get("prefix", "")
    for stray in sorted(out_dir.glob(f"{prefix}-*.tar")):
        if re.fullmatch(rf"{re.escape(prefix)}-\d+\.tar", stray.name) and stray.name not in listed:
            problems.append(f"{stray.name}: shard file not listed in {INFO_NAME}")

    from tqdm import tqdm

    tasks = [(str(out_dir / name), count, size, decode, seed) for name, count, size in entries]
    with tqdm(total=len(tasks), unit="shard", desc="inspecting", disable=not progress, dynamic_ncols=True) as bar:
        if workers == 1 or len(tasks) <= 1:
            checks = []
            for task in tasks:
                checks.append(_check_task(task))
                bar.update()
        else:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            with multiprocessing.get_context(method).Pool(min(workers, len(tasks))) as pool:
                checks = []
                for check in pool.imap(_check_task, tasks):  # imap keeps the shard order
                    checks.append(check)
                    bar.update()
    for check in checks:
        problems.extend(check.problems)
    if sum(c.count for c in checks) != info.get("num_samples"):
        problems.append(f"{sum(c.count for c in checks)} samples read in total, {INFO_NAME} records "
                        f"{info.get('num_samples')}")
    return InspectReport(out_dir, info, checks, problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python data_shards/inspect_shards.py", formatter_class=HelpFormatter,
                                     description="Validate WebDataset shards against _info.json and print statistics.")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="a folder written by python data_shards/build_shards.py")
    parser.add_argument("--decode", type=int, default=4, help="images decoded per shard (default %(default)s)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes reading shards (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="which images get decoded (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        report = inspect_shards(args.out_dir, decode=args.decode, workers=args.workers, seed=args.seed,
                                progress=True)
    except InspectError as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

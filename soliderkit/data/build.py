"""Build WebDataset tar shards from an image tree, a file list or an LMDB database.

CLI::

    python data_shards/build_shards.py SRC OUT_DIR [--maxcount N] [--maxsize BYTES] [--workers W]
                                [--prefix NAME] [--max-height H] [--source-kind KIND] [--root DIR]

Python: ``build_shards(src, out_dir, ...) -> BuildResult``.

What lands in ``OUT_DIR``
-------------------------
* ``{prefix}-000000.tar`` ...: one sample per image, two members each:
  ``<key>.jpg`` (or ``.png`` / ``.webp``, by the decoded format, not the file name)
  holding the original encoded bytes, untouched unless ``--max-height`` asks for a
  downscale, and ``<key>.json`` with ``source`` (relative path, list entry or LMDB key),
  ``width``, ``height``, ``format``, ``bytes`` and any labels (``pid``, ``camera`` for
  Market-style names, ``resized_from`` after a downscale).
  Keys are ``<global index>_<sanitised source name>``: unique through the index, free of
  dots and slashes (WebDataset splits a member name at its first dot), at most 80 chars.
* ``_info.json``: every shard with its sample count, byte size and skipped-image count,
  plus the build options; ``"complete": true`` only once every shard is written. It is
  rewritten as shards finish, so an interrupted build shows its progress.
* ``_skipped.tsv``: ``path<TAB>reason<TAB>shard`` for every image left out (unreadable,
  not decodable, unsupported format); the build never stops for one bad image.

Planning and resuming
---------------------
Samples are assigned to shards from the source listing in its fixed order, greedily:
a shard closes before ``maxcount`` images or before its estimated tar size would pass
``maxsize`` (a single larger image still gets a shard). Each shard gets a digest of its
planned images and the content options. Workers write a shard under a hidden temporary
name and rename it when complete, so a shard file that exists is whole. A re-run keeps
every shard whose file exists with the size and digest recorded in ``_info.json`` and
writes the others; the same plan gives byte-identical shards (fixed tar mtime), so
nothing is ever duplicated. Shards of an older plan that the new plan no longer has are
removed. Only one build may write to an ``OUT_DIR`` at a time (a lock file enforces it).

Every image is fully decoded once while building: truncated or corrupt files are caught
here, not in the middle of training.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Imported here, not in the workers: forked workers inherit it instead of each importing
# webdataset (and torch, which it pulls in) again.
from webdataset import TarWriter

from soliderkit.cli import HelpFormatter
from soliderkit.data.sources import ImageSource, SourceError, SourceItem, close_lmdb_environments
from soliderkit.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = [
    "DEFAULT_MAXCOUNT",
    "DEFAULT_MAXSIZE",
    "INFO_NAME",
    "SKIPPED_NAME",
    "BuildResult",
    "ShardBuildError",
    "build_shards",
    "main",
    "parse_size",
]

log = logging.getLogger("soliderkit.data.build")

INFO_NAME = "_info.json"
SKIPPED_NAME = "_skipped.tsv"
LOCK_NAME = ".build.lock"
FORMAT_NAME = "solider-reid-shards"
FORMAT_VERSION = 1

DEFAULT_MAXCOUNT = 10_000
DEFAULT_MAXSIZE = 1_000_000_000
DEFAULT_PREFIX = "shard"

# PIL format name -> sample field (the member extension readers dispatch on).
FORMAT_FIELDS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}

# Tar accounting used to plan shard sizes: a 512-byte header per member, data padded to
# 512 bytes, one metadata member (<512 bytes) per sample.
_TAR_BLOCK = 512
_PER_SAMPLE_OVERHEAD = 3 * _TAR_BLOCK
# A fixed member mtime makes a re-built shard byte-identical to the first build.
_TAR_MTIME = 0
_MAX_KEY_LENGTH = 80
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# _info.json is rewritten at most this often while shards finish (and always at the end).
_LEDGER_INTERVAL_S = 2.0
# Market-1501 folders that hold evaluation images: shards for pretraining should not.
_EVALUATION_FOLDERS = ("query", "bounding_box_test")


class ShardBuildError(ValueError):
    """A build argument or the output folder is unusable; the message names which."""


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    first_index: int                 # global index of the first planned image (for keys)
    items: tuple[SourceItem, ...]
    digest: str


@dataclass(frozen=True)
class ShardOutcome:
    name: str
    count: int
    bytes: int
    skipped: tuple[tuple[str, str], ...]   # (source name, reason)


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    num_shards: int
    num_samples: int
    num_skipped: int
    shards_written: int
    shards_reused: int

    def summary(self) -> str:
        return (f"{self.num_samples} images in {self.num_shards} shards at {self.out_dir} "
                f"({self.shards_written} written, {self.shards_reused} kept from an earlier run); "
                f"{self.num_skipped} images skipped" + (f", see {SKIPPED_NAME}" if self.num_skipped else ""))


# ---------------------------------------------------------------------------- planning

def parse_size(text: str | int | float) -> int:
    """Bytes from ``1000000``, ``1e9``, ``500MB``, ``2GiB`` (K/M/G/T decimal, KiB/MiB/GiB/TiB binary)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9.]+(?:[eE][0-9]+)?)\s*([KMGT]i?B?|B)?\s*", str(text), flags=re.IGNORECASE)
        if match is None:
            raise ShardBuildError(f"--maxsize: cannot read {text!r} as a size (examples: 1000000000, 1e9, 500MB, 2GiB)")
        value = float(match.group(1))
        unit = (match.group(2) or "B").upper().rstrip("B")
        if unit:
            base = 1024 if unit.endswith("I") else 1000
            value *= base ** ("KMGT".index(unit[0]) + 1)
    if value < 1:
        raise ShardBuildError(f"--maxsize must be at least 1 byte (got {text!r})")
    return int(value)


def _estimated_tar_bytes(item: SourceItem) -> int:
    padded = -(-item.size // _TAR_BLOCK) * _TAR_BLOCK
    return padded + _PER_SAMPLE_OVERHEAD


def plan_shards(items: list[SourceItem], *, prefix: str, maxcount: int, maxsize: int,
                content_options: dict) -> list[ShardPlan]:
    """Cut the ordered listing into shards (see the module docstring); deterministic."""
    options_text = json.dumps(content_options, sort_keys=True)
    plans: list[ShardPlan] = []
    start = 0
    while start < len(items):
        end, size = start, 0
        while end < len(items) and end - start < maxcount:
            size += _estimated_tar_bytes(items[end])
            if end > start and size > maxsize:
                break
            end += 1
        chunk = tuple(items[start:end])
        digest = hashlib.sha1(f"{options_text}\n{start}".encode())  # keys embed the global index
        for item in chunk:
            digest.update(f"\n{item.name}\t{item.size}\t{item.label}".encode("utf-8", "surrogateescape"))
        index = len(plans)
        plans.append(ShardPlan(index, f"{prefix}-{index:06d}.tar", start, chunk, digest.hexdigest()))
        start = end
    return plans


def sample_key(index: int, name: str, index_width: int) -> str:
    """``<index>_<slug>``: unique via the index, readable via the slug, no dots or slashes."""
    stem = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", name)  # drop the file extension
    slug = _SLUG_UNSAFE.sub("-", stem).strip("-")
    prefix = f"{index:0{index_width}d}"
    room = _MAX_KEY_LENGTH - len(prefix) - 1
    # Keep the end of the path: the file name says more than the top folders.
    slug = slug[-room:].lstrip("-") if room > 0 else ""
    return f"{prefix}_{slug}" if slug else prefix


# ---------------------------------------------------------------------------- writing (workers)

class _BadImage(Exception):
    """The bytes are not an image this build accepts; the message is the reason."""


def _prepare_sample(data: bytes, max_height: int | None) -> tuple[str, bytes, dict]:
    """Decode fully (catching truncation), optionally downscale; return field, bytes, metadata."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            field = FORMAT_FIELDS.get(image.format)
            if field is None:
                raise _BadImage(f"unsupported image format {image.format} (expected JPEG, PNG or WebP)")
            image.load()
            width, height = image.size
            meta = {"width": width, "height": height, "format": field}
            if max_height is not None and height > max_height:
                data, (width, height) = _downscale(image, max_height)
                meta.update(width=width, height=height, resized_from=[meta["width"], meta["height"]])
    except _BadImage:
        raise
    except UnidentifiedImageError as exn:
        raise _BadImage("not an image PIL can identify") from exn
    except Exception as exn:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        raise _BadImage(f"cannot decode: {type(exn).__name__}: {exn}") from exn
    meta["bytes"] = len(data)
    return field, data, meta


def _downscale(image: Image.Image, max_height: int) -> tuple[bytes, tuple[int, int]]:
    width = max(1, round(image.width * max_height / image.height))
    fmt = image.format
    resized = image.resize((width, max_height), Image.Resampling.BICUBIC)
    if fmt == "JPEG" and resized.mode not in ("RGB", "L"):
        resized = resized.convert("RGB")
    buffer = io.BytesIO()
    options = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}.get(fmt, {})
    resized.save(buffer, format=fmt, **options)
    return buffer.getvalue(), resized.size


def _write_shard(task: tuple[ImageSource, ShardPlan, str, int | None, int]) -> ShardOutcome:
    source, plan, out_dir, max_height, index_width = task
    skipped: list[tuple[str, str]] = []
    count = 0
    target = Path(out_dir) / plan.name
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as stream:
            with TarWriter(stream, encoder=False, mtime=_TAR_MTIME) as writer:
                for offset, item in enumerate(plan.items):
                    try:
                        data = source.read(item)
                    except (OSError, KeyError) as exn:
                        skipped.append((item.name, f"cannot read: {exn}"))
                        continue
                    try:
                        field, data, meta = _prepare_sample(data, max_height)
                    except _BadImage as exn:
                        skipped.append((item.name, str(exn)))
                        continue
                    meta = {"source": item.name, **meta, **source.labels(item)}
                    writer.write({
                        "__key__": sample_key(plan.first_index + offset, item.name, index_width),
                        field: data,
                        "json": json.dumps(meta).encode("utf-8"),
                    })
                    count += 1
    return ShardOutcome(plan.name, count, target.stat().st_size, tuple(skipped))


# ---------------------------------------------------------------------------- orchestration

def _lock_out_dir(out_dir: Path):
    handle = open(out_dir / LOCK_NAME, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ShardBuildError(f"another build is writing to {out_dir} (lock {LOCK_NAME} is held)") from None
    return handle


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exn:
        raise ShardBuildError(f"cannot create OUT_DIR {out_dir}: {exn.strerror or exn}") from exn
    if not out_dir.is_dir():
        raise ShardBuildError(f"OUT_DIR {out_dir} exists and is not a folder")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ShardBuildError(f"OUT_DIR {out_dir} is not writable")


def _read_previous(out_dir: Path, prefix: str) -> tuple[dict, dict[str, list[tuple[str, str]]]]:
    """Shard entries and per-shard skipped rows of an earlier (possibly interrupted) build."""
    info_path = out_dir / INFO_NAME
    if not info_path.exists():
        return {}, {}
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        shards = {entry["name"]: entry for entry in info["shards"]}
    except (OSError, ValueError, KeyError, TypeError) as exn:
        raise ShardBuildError(f"{info_path} is not a shard index written by this tool ({exn}); "
                              f"remove it or choose another OUT_DIR") from exn
    if info.get("format") != FORMAT_NAME:
        raise ShardBuildError(f"{info_path} was not written by soliderkit.data.build; choose another OUT_DIR")
    if info.get("prefix") != prefix:
        raise ShardBuildError(f"OUT_DIR {out_dir} already holds shards named {info.get('prefix')}-*.tar; "
                              f"use --prefix {info.get('prefix')} to resume that build, or another OUT_DIR")
    skipped: dict[str, list[tuple[str, str]]] = {}
    skipped_path = out_dir / SKIPPED_NAME
    if skipped_path.exists():
        with open(skipped_path, newline="", encoding="utf-8") as handle:
            for row in list(csv.reader(handle, delimiter="\t"))[1:]:
                if len(row) == 3:
                    skipped.setdefault(row[2], []).append((row[0], row[1]))
    return shards, skipped


def _remove_stale_files(out_dir: Path, prefix: str, planned: set[str], previous: dict) -> None:
    # Temporary files of a killed run (soliderkit.io.atomic_path names them ".<target>.*.tmp.tar").
    for leftover in out_dir.glob(f".{prefix}-*.tar.*.tmp.tar"):
        leftover.unlink(missing_ok=True)
    # Shards of an older plan with more shards; only files that build itself recorded.
    for name in previous:
        if name not in planned and re.fullmatch(rf"{re.escape(prefix)}-\d+\.tar", name):
            log.info("removing %s: not part of the new plan", name)
            (out_dir / name).unlink(missing_ok=True)


class _Ledger:
    """Keeps ``_info.json`` and ``_skipped.tsv`` in step with the shards on disk."""

    def __init__(self, out_dir: Path, header: dict, plans: list[ShardPlan],
                 listing_skipped: list[tuple[str, str]]):
        self.out_dir = out_dir
        self.header = header
        self.plans = plans
        self.entries: dict[str, dict] = {}
        self.skipped: dict[str, list[tuple[str, str]]] = {"-": list(listing_skipped)}
        self._last_write = 0.0

    def record(self, plan: ShardPlan, count: int, size: int, skipped: list[tuple[str, str]]) -> None:
        self.entries[plan.name] = {"name": plan.name, "count": count, "bytes": size,
                                   "skipped": len(skipped), "digest": plan.digest}
        self.skipped[plan.name] = list(skipped)

    def write(self, complete: bool, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < _LEDGER_INTERVAL_S:
            return
        self._last_write = now
        shards = [self.entries[plan.name] for plan in self.plans if plan.name in self.entries]
        num_skipped = sum(len(rows) for rows in self.skipped.values())
        info = {**self.header, "complete": complete, "num_shards": len(self.plans),
                "num_samples": sum(entry["count"] for entry in shards), "num_skipped": num_skipped,
                "shards": shards}
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(["path", "reason", "shard"])
        for shard in ["-", *(plan.name for plan in self.plans)]:
            for name, reason in self.skipped.get(shard, ()):
                writer.writerow([name, reason, shard])
        # Skipped list first: a recorded shard always has its skipped rows on disk.
        atomic_write_text(self.out_dir / SKIPPED_NAME, buffer.getvalue())
        atomic_write_json(self.out_dir / INFO_NAME, info)

    @property
    def num_samples(self) -> int:
        return sum(entry["count"] for entry in self.entries.values())

    @property
    def num_skipped(self) -> int:
        return sum(len(rows) for rows in self.skipped.values())


def _warn_about_evaluation_images(source: ImageSource) -> None:
    if source.kind != "tree":
        return
    found = [name for name in _EVALUATION_FOLDERS if (source.path / name).is_dir()]
    if found:
        log.warning("SRC %s contains Market-1501 evaluation folders (%s): their images go into the shards too; "
                    "point SRC at bounding_box_train/ or unlabeled/ to keep test images out of pretraining",
                    source.path, ", ".join(found))


def build_shards(src: str | os.PathLike, out_dir: str | os.PathLike, *, maxcount: int = DEFAULT_MAXCOUNT,
                 maxsize: int | str = DEFAULT_MAXSIZE, workers: int = 1, prefix: str = DEFAULT_PREFIX,
                 source_kind: str = "auto", root: str | os.PathLike | None = None,
                 max_height: int | None = None, progress: bool = False) -> BuildResult:
    """Write (or finish writing) the shards of ``src`` into ``out_dir``; see the module docstring.

    ``workers`` processes write shards in parallel (1: in this process). Raises
    :class:`ShardBuildError` / :class:`~soliderkit.data.sources.SourceError` (both
    ``ValueError``) with a message naming the bad argument or path.
    """
    if not isinstance(maxcount, int) or maxcount < 1:
        raise ShardBuildError(f"--maxcount must be a positive integer (got {maxcount!r})")
    maxsize = parse_size(maxsize)
    if not isinstance(workers, int) or workers < 1:
        raise ShardBuildError(f"--workers must be a positive integer (got {workers!r})")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix or ""):
        raise ShardBuildError(f"--prefix must be letters, digits, '_' or '-' (got {prefix!r})")
    if max_height is not None and (not isinstance(max_height, int) or max_height < 1):
        raise ShardBuildError(f"--max-height must be a positive integer (got {max_height!r})")

    source = ImageSource.open(src, source_kind, root)
    out_dir = Path(out_dir).expanduser().resolve()
    _prepare_out_dir(out_dir)
    lock = _lock_out_dir(out_dir)
    try:
        previous, previous_skipped = _read_previous(out_dir, prefix)  # before a long listing
        _warn_about_evaluation_images(source)
        items, listing_problems = source.list_items()
        content_options = {"version": FORMAT_VERSION, "max_height": max_height}
        plans = plan_shards(items, prefix=prefix, maxcount=maxcount, maxsize=maxsize,
                            content_options=content_options)
        _remove_stale_files(out_dir, prefix, {plan.name for plan in plans}, previous)

        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                  "source": {"path": str(source.path), "kind": source.kind},
                  "prefix": prefix, "maxcount": maxcount, "maxsize": maxsize, "max_height": max_height}
        ledger = _Ledger(out_dir, header, plans, [(p.name, p.reason) for p in listing_problems])
        todo: list[ShardPlan] = []
        for plan in plans:
            entry = previous.get(plan.name)
            path = out_dir / plan.name
            if (entry is not None and entry.get("digest") == plan.digest and path.is_file()
                    and path.stat().st_size == entry.get("bytes")):
                ledger.record(plan, entry["count"], entry["bytes"], previous_skipped.get(plan.name, []))
            else:
                todo.append(plan)
        reused = len(plans) - len(todo)
        ledger.write(complete=False, force=True)

        from tqdm import tqdm

        index_width = max(9, len(str(len(items))))
        tasks = [(source, plan, str(out_dir), max_height, index_width) for plan in todo]
        with tqdm(total=len(items), initial=len(items) - sum(len(p.items) for p in todo), unit="img",
                  desc="writing shards", disable=not progress, dynamic_ncols=True) as bar:
            by_name = {plan.name: plan for plan in todo}
            try:
                for outcome in _run_tasks(tasks, workers):
                    plan = by_name[outcome.name]
                    ledger.record(plan, outcome.count, outcome.bytes, list(outcome.skipped))
                    ledger.write(complete=False)
                    bar.update(len(plan.items))
            except BaseException:
                # Interrupted (Ctrl-C, a failing worker): record every finished shard so a
                # re-run keeps them. Only a hard kill loses the last _LEDGER_INTERVAL_S of
                # records, and those shards are simply written again.
                ledger.write(complete=False, force=True)
                raise
        ledger.write(complete=True, force=True)
        result = BuildResult(out_dir, len(plans), ledger.num_samples, ledger.num_skipped, len(todo), reused)
    finally:
        lock.close()
    if result.num_samples == 0:
        raise ShardBuildError(f"no readable images in {source.path}: all {result.num_skipped} were skipped "
                              f"(reasons in {out_dir / SKIPPED_NAME})")
    return result


def _run_tasks(tasks: list, workers: int):
    if workers == 1 or len(tasks) <= 1:
        yield from map(_write_shard, tasks)
        return
    # fork: workers start in milliseconds (no re-import of torch/webdataset); the parent has
    # no CUDA context or extra threads at this point. Elsewhere, spawn.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    close_lmdb_environments()
    with multiprocessing.get_context(method).Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(_write_shard, tasks, chunksize=1)


# ---------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python data_shards/build_shards.py", formatter_class=HelpFormatter,
        description="Pack person crops into WebDataset tar shards (resumable; see the module docstring).")
    parser.add_argument("src", metavar="SRC", help="image folder (any depth; Market-1501 names keep pid/camera), "
                        "text file list, or LMDB database of encoded images")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for the shards, _info.json and _skipped.tsv")
    parser.add_argument("--maxcount", type=int, default=DEFAULT_MAXCOUNT,
                        help="images per shard, at most (default %(default)s)")
    parser.add_argument("--maxsize", default=str(DEFAULT_MAXSIZE),
                        help="shard size, at most, e.g. 1e9 or 500MB (default %(default)s bytes)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes writing shards (default %(default)s)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="shard file name prefix (default %(default)s)")
    parser.add_argument("--max-height", type=int, default=None,
                        help="downscale (and re-encode) images taller than this; default: keep original bytes")
    parser.add_argument("--source-kind", choices=("auto", "tree", "list", "lmdb"), default="auto",
                        help="how to read SRC (default: detect)")
    parser.add_argument("--root", default=None, help="folder that relative paths of a file list start from "
                        "(default: the list's folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = build_shards(args.src, args.out_dir, maxcount=args.maxcount, maxsize=args.maxsize,
                              workers=args.workers, prefix=args.prefix, source_kind=args.source_kind,
                              root=args.root, max_height=args.max_height, progress=True)
    except (ShardBuildError, SourceError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())

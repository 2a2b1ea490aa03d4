"""Stream shards written by ``soliderkit.data.build`` into training batches.

Public API::

    loader = make_shard_loader(shards, batch_size, transform, resampled=True, seed=0, epoch=0,
                               batches_per_epoch=None, num_workers=4)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader: ...          # collate([transform(PIL RGB image), ...])
        loader.stats                      # {"samples": .., "corrupt_samples": .., "damaged_shards": ..}

    sample_keys(shards, rank=.., world_size=.., num_workers=.., epochs=..)  # what a rank would read
    load_shard_set(shards) -> list[ShardInfo]

``shards`` is a build's ``OUT_DIR``, its ``_info.json``, or a glob / brace pattern of
shard files that ``_info.json`` (beside them) lists, e.g. ``out/shard-{000000..000099}.tar``.
Rank and world size default to the ``RANK`` / ``WORLD_SIZE`` environment variables that
``accelerate launch`` (and ``torchrun``) set, else 0 / 1. This is not a sampler for
``accelerator.prepare``: every process calls ``make_shard_loader`` itself, with the same
``seed``, ``batch_size``, ``num_workers`` and ``batches_per_epoch`` on every rank.

Per worker the pipeline is: shard choice -> tar members -> samples (webdataset's
``group_by_keys``) -> a shuffle buffer of raw, still-encoded samples (webdataset's
``shuffle``) -> decode to an RGB ``PIL.Image`` (or ``decode(bytes)``, when given) -> ``transform`` -> batches of
``batch_size`` -> ``collate_fn`` (default: torch's ``default_collate``, so a transform may
return a tensor, or a list of tensors of several sizes as multi-crop does). Tar members
of plain ustar shards (what ``soliderkit.data.build`` writes) are read by a small header
parser, about five times cheaper than tarfile; anything else (pax headers, compression) goes
through webdataset's ``tar_file_iterator``.

Three modes
-----------
* **resampled** (``resampled=True``, the training mode): each (rank, worker) draws shards
  with replacement (webdataset ``ResampledShards``) from a seed made of (seed, epoch,
  rank, worker), out of its own part of the shards: the exact mode's balanced deal for
  that epoch (``resample_pool``), so the streams of all ranks and workers read disjoint
  shards. With fewer (non-empty) shards than ranks x workers the workers of a rank share
  the rank's part; with fewer shards than ranks every stream draws from all of them (and
  streams may meet). Every rank yields exactly ``batches_per_epoch`` full batches; ``None``
  means one pass worth, ``num_samples // (batch_size * world_size)``. DDP-safe.
* **fixed-length, no resampling** (``resampled=False``, ``batches_per_epoch=N``): shards are
  split between ranks and workers as in the exact mode; a worker cycles through its own
  shards (reshuffled each cycle) until the rank has exactly N full batches. DDP-safe;
  samples may repeat or be left out within an epoch when N does not match the data.
* **exact one pass** (``resampled=False``, ``batches_per_epoch=None``): every sample is read
  exactly once per epoch across all ranks and workers (tested with 2 ranks x 2 workers).
  Shards are permuted per epoch with (seed, epoch), the same on every rank, then dealt
  to ranks largest-first onto the least-loaded rank, and likewise to workers inside a
  rank, so sample counts per rank differ by at most one shard. Each worker's last batch
  may be partial, and ranks may get **different numbers of batches**: do not use this
  mode where ranks must step together (DDP training); it is for evaluation, feature
  extraction and checking data. ``len(loader)`` gives this rank's count.

Why not webdataset's ``split_by_node`` / ``split_by_worker``: they deal shards round-robin
whatever their sizes, and know nothing about equal batch counts; the few lines here give
a balanced, deterministic assignment and a per-rank quota. Workers must not be persistent
(the epoch reaches them when each epoch's ``DataLoader`` starts them).

Damaged data never stops training: an image that does not decode, a sample missing its
image or metadata, a truncated or unreadable tar, or a shard with fewer samples than
``_info.json`` records is skipped and counted; the first few are logged one by one, and
at the end of each epoch one warning sums them up. Counts are in ``loader.stats`` (last
epoch; names of damaged shards in ``loader.damaged_shards``) and ``loader.total_stats``
(all epochs). A stream that cannot produce any sample raises instead of looping forever.

CLI (check your sharding)::

    python data_shards/stream_shards.py OUT_DIR --rank R --world-size W --workers K --epochs E
                                 [--resampled] [--batch-size B] [--batches-per-epoch N]
                                 [--seed S] [--shuffle-buffer N] --dump-keys FILE

writes the keys rank R would see, in order, one per line, each epoch introduced by a line
``# epoch <e>``.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate
from webdataset import ResampledShards
from webdataset.filters import shuffle as wds_shuffle
from webdataset.tariterators import group_by_keys, tar_file_iterator

from soliderkit.cli import HelpFormatter

__all__ = [
    "IMAGE_FIELDS",
    "ShardInfo",
    "ShardLoader",
    "ShardSetError",
    "assign_shards",
    "iter_tar_samples",
    "load_shard_set",
    "make_shard_loader",
    "resample_pool",
    "sample_keys",
    "main",
]

log = logging.getLogger("soliderkit.data.stream")

INFO_NAME = "_info.json"
IMAGE_FIELDS = ("jpg", "png", "webp")
STAT_NAMES = ("samples", "corrupt_samples", "damaged_shards")
DEFAULT_SHUFFLE_BUFFER = 2000
# Problems logged one by one per worker and epoch; the rest only count.
_LOGGED_PROBLEMS_PER_WORKER = 3
# An endless stream gives up after this many undecodable samples in a row.
_MAX_CONSECUTIVE_CORRUPT = 1000


class ShardSetError(ValueError):
    """The shard set or a loader argument is unusable; the message names which."""


@dataclass(frozen=True)
class ShardInfo:
    path: str
    count: int


# ---------------------------------------------------------------------------- shard set

def load_shard_set(shards: str | os.PathLike) -> list[ShardInfo]:
    """The shards of a finished build, with the sample counts recorded in ``_info.json``."""
    spec = os.fspath(shards)
    path = Path(spec).expanduser()
    if path.is_dir():
        info_path, selection = path / INFO_NAME, None
    elif path.name == INFO_NAME:
        info_path, selection = path, None
    else:
        from webdataset.shardlists import expand_urls

        selection = []
        for pattern in expand_urls(str(path)):
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            selection.extend(Path(match).resolve() for match in matches)
        if not selection:
            raise ShardSetError(f"no shard files match {spec}")
        folders = {p.parent for p in selection}
        if len(folders) != 1:
            raise ShardSetError(f"{spec} matches shards in several folders; give one build's folder")
        info_path = folders.pop() / INFO_NAME
    if not info_path.is_file():
        raise ShardSetError(f"{info_path} not found: give a folder written by python data_shards/build_shards.py")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        entries = [(entry["name"], int(entry["count"])) for entry in info["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as exn:
        raise ShardSetError(f"cannot read shard index {info_path}: {exn}") from exn
    if not info.get("complete", False):
        raise ShardSetError(f"{info_path}: the build is unfinished ({len(entries)} of {info.get('num_shards')} "
                            f"shards); re-run python data_shards/build_shards.py to finish it")
    folder = info_path.parent.resolve()
    result = [ShardInfo(str(folder / name), count) for name, count in entries]
    if selection is not None:
        listed = {Path(shard.path): shard for shard in result}
        missing = [p for p in selection if p not in listed]
        if missing:
            raise ShardSetError(f"{missing[0]} is not listed in {info_path}")
        result = [listed[p] for p in selection]
    if not result or sum(shard.count for shard in result) == 0:
        raise ShardSetError(f"{spec} holds no samples")
    return result


def assign_shards(counts: Sequence[int], world_size: int, num_workers: int, seed: int,
                  epoch: int) -> list[list[list[int]]]:
    """``result[rank][worker]``: shard indices to read, in reading order (see "exact one pass").

    Deterministic in (counts, world_size, num_workers, seed, epoch) and independent of the
    rank, so all ranks agree on the split without talking to each other.
    """
    order = list(range(len(counts)))
    random.Random(f"{seed}:{epoch}:shard-order").shuffle(order)
    position = {shard: pos for pos, shard in enumerate(order)}

    def deal(shards: list[int], parts: int) -> list[list[int]]:
        loads = [0] * parts
        dealt: list[list[int]] = [[] for _ in range(parts)]
        # Largest first onto the least-loaded part. Ties go to the part first in an order
        # that rotates with the epoch, so no rank or worker always gets the extra shard.
        for shard in sorted(shards, key=lambda s: (-counts[s], position[s])):
            part = min(range(parts), key=lambda p: (loads[p], (p - epoch) % parts))
            loads[part] += counts[shard]
            dealt[part].append(shard)
        return [sorted(part, key=position.__getitem__) for part in dealt]

    return [deal(rank_shards, num_workers) for rank_shards in deal(order, world_size)]


def resample_pool(shards: Sequence[ShardInfo], world_size: int, num_workers: int, rank: int, worker: int,
                  seed: int, epoch: int) -> list[ShardInfo]:
    """The shards the resampled stream of (``rank``, ``worker``) draws from in ``epoch``: its part
    of ``assign_shards``' balanced deal, so streams read disjoint shards; the rank's part when
    there are fewer shards than ranks x workers; all of them when fewer than ranks."""
    counts = [shard.count for shard in shards]
    workers = max(1, num_workers)
    if len(shards) >= world_size * workers:
        chosen = assign_shards(counts, world_size, workers, seed, epoch)[rank][worker]
    elif len(shards) >= world_size:
        chosen = [i for part in assign_shards(counts, world_size, 1, seed, epoch)[rank] for i in part]
    else:
        return list(shards)
    return [shards[i] for i in chosen]


def _split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (part < total % parts) for part in range(parts)]


def _seed_int(*parts) -> int:
    """A stable 63-bit seed (Python's ``hash`` of strings changes between processes)."""
    text = ":".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


# ---------------------------------------------------------------------------- reading

_BLOCK = 512
_END_OF_ARCHIVE = bytes(_BLOCK)
_READ_BUFFER = 1 << 20
# Members webdataset treats as archive metadata, not sample fields (its skip_meta default).
_META_MEMBER = re.compile(r"__[^/]*__($|/)")


class _NotPlainUstar(Exception):
    """A header the fast reader leaves to tarfile (pax, GNU long names, other formats)."""


def _ustar_members(stream) -> Iterator[dict]:
    """Regular files of an uncompressed ustar tar, as ``{"fname", "data"}`` dicts.

    The same output as webdataset's ``tar_file_iterator``, but a header costs a slice and
    a checksum instead of tarfile's ~25 us of Python per member: at two members per sample
    that overhead was a third of the decode time of a 128x64 JPEG, and made shards slower
    than a plain image folder (bench/bench_shards.py). Anything it does not handle raises
    ``_NotPlainUstar`` before any of that member is consumed; damage raises ``ReadError``.
    Unlike tarfile, a file cut exactly between two members is reported (no end marker).
    """
    first = True
    while True:
        header = stream.read(_BLOCK)
        if first and (len(header) < _BLOCK or header[257:262] != b"ustar"):
            raise _NotPlainUstar  # compressed, empty, another format: tarfile knows best
        first = False
        if len(header) < _BLOCK:
            raise tarfile.ReadError("unexpected end of data" if header else "missing end-of-archive marker")
        if header == _END_OF_ARCHIVE:
            return
        if header[257:262] != b"ustar" or header[124] & 0x80:  # not ustar, or a base-256 size
            raise _NotPlainUstar
        try:
            checksum = int(header[148:156].strip(b"\0 ") or b"0", 8)
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            raise tarfile.ReadError("invalid header") from None
        # The checksum field itself counts as eight spaces (8 * 32 = 256).
        if checksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.ReadError("bad header checksum")
        kind = header[156:157]
        if kind in (b"x", b"g", b"L", b"K"):
            raise _NotPlainUstar
        data = stream.read(size)
        padding = -size % _BLOCK
        if len(data) < size or len(stream.read(padding)) < padding:
            raise tarfile.ReadError("unexpected end of data")
        if kind not in (b"0", b"\0"):
            continue  # folders, links: not sample data
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0]
        fname = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
        if _META_MEMBER.match(fname):
            continue
        yield {"fname": fname, "data": data}


def _tar_members(path: str, handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """Members via the fast reader; from the first unusual header on, via webdataset/tarfile."""
    yielded = 0
    with open(path, "rb", buffering=_READ_BUFFER) as stream:
        try:
            for member in _ustar_members(stream):
                yielded += 1
                yield member
            return
        except _NotPlainUstar:
            pass
        stream.seek(0)
        for index, member in enumerate(tar_file_iterator(stream, handler=handler)):
            if index >= yielded:
                yield member


def iter_tar_samples(path: str, errors: list[str]) -> Iterator[dict]:
    """Samples of one tar (dicts: ``__key__``, ``__url__``, field -> bytes), stopping at the first error.

    Read problems (truncated or corrupt tar, unreadable file, duplicate member) are
    appended to ``errors`` instead of raised. The last sample before an error may lack
    fields. Members are grouped into samples by webdataset's ``group_by_keys``.
    """
    def stop(exn: Exception) -> bool:
        # webdataset appends " @ <file object repr>" to the message; the caller names the shard.
        message = re.sub(r" @ <[^>]*>$", "", str(exn.args[0]) if exn.args else "")
        errors.append(f"{type(exn).__name__}: {message}")
        return False

    def with_url(files):
        for file in files:
            file["__url__"] = path
            yield file

    try:
        yield from group_by_keys(with_url(_tar_members(path, stop)), handler=stop)
    except (OSError, tarfile.TarError, EOFError, ValueError) as exn:
        errors.append(f"{type(exn).__name__}: {exn}")


class _WorkerState:
    """Counts and rate-limited logging for one worker's epoch."""

    def __init__(self, worker_label: str):
        self.label = worker_label
        self.stats = Counter({name: 0 for name in STAT_NAMES})
        self.damaged: list[str] = []
        self.logged = 0

    def problem(self, stat: str, message: str) -> None:
        self.stats[stat] += 1
        if self.logged < _LOGGED_PROBLEMS_PER_WORKER:
            self.logged += 1
            log.warning("%s: %s (skipped)", self.label, message)


def _shard_samples(shard: ShardInfo, state: _WorkerState) -> Iterator[dict]:
    """Complete samples of one shard; damage is counted once per shard."""
    errors: list[str] = []
    complete = 0
    for sample in iter_tar_samples(shard.path, errors):
        if "json" in sample and any(field in sample for field in IMAGE_FIELDS):
            complete += 1
            yield sample
        elif not errors:  # a partial sample right before a read error is part of that damage
            state.problem("corrupt_samples", f"sample {sample.get('__key__')} in {shard.path} lacks "
                                             f"its image or metadata")
    name = os.path.basename(shard.path)
    if errors or complete != shard.count:
        reason = errors[0] if errors else f"{complete} samples where {INFO_NAME} records {shard.count}"
        state.damaged.append(name)
        state.problem("damaged_shards", f"shard {name} is damaged ({reason}); read {complete} of "
                                        f"{shard.count} samples")


def _endless(shards: Iterator[ShardInfo], distinct: int, state: _WorkerState) -> Iterator[dict]:
    """Samples from an endless stream of shards drawn from ``distinct`` different shards.

    Raises once every one of them has been read without a single sample: there is nothing
    to train on, and the stream would otherwise spin forever. Once any shard has given a
    sample it will again, so the check can stop then.
    """
    fruitless: set[str] = set()
    produced_any = False
    for shard in shards:
        produced = False
        for sample in _shard_samples(shard, state):
            produced = True
            yield sample
        if produced:
            produced_any = True
        elif not produced_any:
            fruitless.add(shard.path)
            if len(fruitless) >= distinct:
                raise ShardSetError(f"{state.label}: none of its {distinct} shard(s) has a readable sample "
                                    f"(first: {shard.path}); check them with python data_shards/inspect_shards.py")


def _decode_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # the full decode: a truncated image fails here, not in the transform
        if image.mode != "RGB":
            image = image.convert("RGB")
    return image


def _decoded(samples: Iterator[dict], transform: Callable, state: _WorkerState,
             endless: bool, decode: Callable[[bytes], Any] | None = None) -> Iterator[tuple[str, Any]]:
    decode = decode or _decode_rgb
    consecutive = 0
    for sample in samples:
        key = sample["__key__"]
        data = next(sample[field] for field in IMAGE_FIELDS if field in sample)
        try:
            image = decode(data)
        except Exception as exn:  # PIL raises OSError, SyntaxError, ValueError... for bad bytes
            state.problem("corrupt_samples", f"image {key} in {os.path.basename(sample['__url__'])} does "
                                             f"not decode ({type(exn).__name__}: {exn})")
            consecutive += 1
            if endless and consecutive >= _MAX_CONSECUTIVE_CORRUPT:
                raise ShardSetError(f"{state.label}: {consecutive} undecodable images in a row; "
                                    f"check the shards with python data_shards/inspect_shards.py") from exn
            continue
        consecutive = 0
        state.stats["samples"] += 1
        # A transform error is a bug, not bad data: let it raise.
        yield key, transform(image)


@dataclass(frozen=True)
class _WorkerReport:
    """Sent after a worker's last batch: the main process sums these into ``loader.stats``."""

    stats: dict
    damaged: list


class _ShardStream(IterableDataset):
    """One rank's stream for one epoch; each DataLoader worker takes its own part."""

    def __init__(self, shards: list[ShardInfo], *, batch_size: int, transform: Callable,
                 collate_fn: Callable, resampled: bool, seed: int, epoch: int,
                 batches_per_epoch: int | None, rank: int, world_size: int, num_workers: int,
                 shuffle_buffer: int, decode: Callable[[bytes], Any] | None = None):
        super().__init__()
        self.decode = decode
        self.shards = shards
        self.batch_size = batch_size
        self.transform = transform
        self.collate_fn = collate_fn
        self.resampled = resampled
        self.seed = seed
        self.epoch = epoch
        self.batches_per_epoch = batches_per_epoch
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        workers = max(1, self.num_workers)
        state = _WorkerState(f"rank {self.rank} worker {worker} epoch {self.epoch}")
        seed_parts = (self.seed, self.epoch, self.rank, worker)
        quota = None
        if self.batches_per_epoch is not None:
            quota = _split_evenly(self.batches_per_epoch, workers)[worker]
        if quota == 0:
            samples: Iterator[dict] = iter(())
        elif self.resampled:
            samples = self._resampled_samples(worker, workers, seed_parts, state)
        else:
            samples = self._assigned_samples(worker, workers, quota is not None, state)
        if self.shuffle_buffer > 1:
            samples = wds_shuffle(self.shuffle_buffer, initial=max(1, self.shuffle_buffer // 4),
                                  rng=random.Random(_seed_int(*seed_parts, "buffer")))(samples)
        decoded = _decoded(samples, self.transform, state, endless=quota is not None, decode=self.decode)
        yield from self._batches(decoded, quota)
        yield _WorkerReport(dict(state.stats), state.damaged)

    def _resampled_samples(self, worker: int, workers: int, seed_parts, state: _WorkerState) -> Iterator[dict]:
        every = [shard for shard in self.shards if shard.count > 0]
        pool = resample_pool(every, self.world_size, workers, self.rank, worker, self.seed, self.epoch)

        def endless(shards: list[ShardInfo]) -> Iterator[dict]:
            by_path = {shard.path: shard for shard in shards}
            urls = list(by_path)
            # A fresh ResampledShards per epoch: its internal epoch counter stays 0, so the draw
            # depends only on the seed built from (seed, epoch, rank, worker).
            chooser = ResampledShards(urls, seed=_seed_int(*seed_parts, "shards"), worker_seed=lambda: 0,
                                      deterministic=True)
            return _endless((by_path[draw["url"]] for draw in chooser), len(urls), state)

        if len(pool) == len(every):
            return endless(every)

        def own_part_first() -> Iterator[dict]:
            try:
                yield from endless(pool)
            except ShardSetError:  # raised before any sample: this stream's part is all damaged
                state.problem("damaged_shards", f"none of the {len(pool)} shard(s) of this stream has a readable "
                                                "sample; drawing from all shards instead")
                yield from endless(every)

        return own_part_first()

    def _assigned_samples(self, worker: int, workers: int, fixed_length: bool,
                          state: _WorkerState) -> Iterator[dict]:
        counts = [shard.count for shard in self.shards]
        own = [self.shards[i] for i in assign_shards(counts, self.world_size, workers, self.seed,
                                                     self.epoch)[self.rank][worker]]
        if not fixed_length:
            return (sample for shard in own for sample in _shard_samples(shard, state))
        own = [shard for shard in own if shard.count > 0]
        if not own:
            # Fewer (non-empty) shards than rank x worker slots: this worker still owes its
            # batches, so it reads every shard from a slot-dependent place (samples repeat).
            pool = [shard for shard in self.shards if shard.count > 0]
            start = (self.rank * workers + worker) % len(pool)
            own = pool[start:] + pool[:start]

        def cycles() -> Iterator[ShardInfo]:
            yield from own
            for cycle in itertools.count(1):  # later passes in a new order each
                order = list(own)
                random.Random(_seed_int(self.seed, self.epoch, self.rank, worker, "cycle", cycle)).shuffle(order)
                yield from order

        return _endless(cycles(), len(own), state)

    def _batches(self, decoded: Iterator[tuple[str, Any]], quota: int | None):
        made = 0
        batch: list[tuple[str, Any]] = []
        for item in decoded:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self._collate(batch)
                made += 1
                batch = []
                if quota is not None and made >= quota:
                    return
        if batch and quota is None:
            yield self._collate(batch)

    def _collate(self, batch: list[tuple[str, Any]]):
        return self.collate_fn([output for _, output in batch]), [key for key, _ in batch]


# ---------------------------------------------------------------------------- loader

def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ShardSetError(f"environment variable {name}={value!r} is not an integer") from None


class ShardLoader:
    """Iterable over one epoch of batches per ``iter()``; see the module docstring.

    Each ``iter()`` runs epoch ``loader.epoch`` and then advances it by one, so a loop
    that never calls ``set_epoch`` still sees a new order every epoch.
    """

    def __init__(self, shards: list[ShardInfo], *, batch_size: int, transform: Callable,
                 resampled: bool, seed: int, epoch: int, batches_per_epoch: int | None,
                 num_workers: int, rank: int, world_size: int, shuffle_buffer: int,
                 collate_fn: Callable, return_keys: bool, pin_memory: bool,
                 decode: Callable[[bytes], Any] | None = None):
        self.shards = shards
        self.decode = decode
        self.num_samples = sum(shard.count for shard in shards)
        self.batch_size = batch_size
        self.transform = transform
        self.resampled = resampled
        self.seed = seed
        self.epoch = epoch
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.collate_fn = collate_fn
        self.return_keys = return_keys
        self.pin_memory = pin_memory
        if resampled and batches_per_epoch is None:
            batches_per_epoch = max(1, self.num_samples // (batch_size * world_size))
        self.batches_per_epoch = batches_per_epoch
        self.stats: dict[str, int] = {name: 0 for name in STAT_NAMES}
        self.total_stats: dict[str, int] = {name: 0 for name in STAT_NAMES}
        self.damaged_shards: list[str] = []

    @property
    def exact(self) -> bool:
        """True in the exact one-pass mode (batch counts may differ between ranks)."""
        return self.batches_per_epoch is None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches_per_rank(self, epoch: int | None = None) -> list[int]:
        """Batches each rank gets in ``epoch`` (default: the next), if no sample is damaged."""
        if not self.exact:
            return [self.batches_per_epoch] * self.world_size
        counts = [shard.count for shard in self.shards]
        plan = assign_shards(counts, self.world_size, max(1, self.num_workers), self.seed,
                             self.epoch if epoch is None else epoch)
        return [sum(-(-sum(counts[s] for s in worker) // self.batch_size) for worker in rank)
                for rank in plan]

    def __len__(self) -> int:
        return self.batches_per_rank()[self.rank]

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        if self.exact and self.world_size > 1 and len(set(self.batches_per_rank(epoch))) > 1:
            log.warning("exact one-pass mode: ranks get %s batches in epoch %d; DDP training needs "
                        "equal counts (use resampled=True or batches_per_epoch)",
                        self.batches_per_rank(epoch), epoch)
        dataset = _ShardStream(
            self.shards, batch_size=self.batch_size, transform=self.transform, collate_fn=self.collate_fn,
            resampled=self.resampled, seed=self.seed, epoch=epoch, batches_per_epoch=self.batches_per_epoch,
            rank=self.rank, world_size=self.world_size, num_workers=self.num_workers,
            shuffle_buffer=self.shuffle_buffer, decode=self.decode)
        # batch_size=None: workers already batch; persistent workers would miss the epoch.
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
                            pin_memory=self.pin_memory, persistent_workers=False)
        stats = Counter({name: 0 for name in STAT_NAMES})
        damaged: list[str] = []
        self.stats = dict(stats)
        for item in loader:
            if isinstance(item, _WorkerReport):
                stats.update(item.stats)
                damaged.extend(item.damaged)
                continue
            outputs, keys = item
            yield (outputs, keys) if self.return_keys else outputs
        self.stats = dict(stats)
        self.damaged_shards = sorted(set(damaged))
        for name, value in stats.items():
            self.total_stats[name] = self.total_stats.get(name, 0) + value
        if stats["corrupt_samples"] or stats["damaged_shards"]:
            shown = ", ".join(self.damaged_shards[:5]) + (" ..." if len(self.damaged_shards) > 5 else "")
            log.warning("epoch %d, rank %d: skipped %d undecodable or incomplete samples and %d damaged "
                        "shard reads%s; run python data_shards/inspect_shards.py on the shards",
                        epoch, self.rank, stats["corrupt_samples"], stats["damaged_shards"],
                        f" ({shown})" if shown else "")


def make_shard_loader(shards: str | os.PathLike | list[ShardInfo], batch_size: int, transform: Callable, *,
                      resampled: bool = True, seed: int = 0, epoch: int = 0,
                      batches_per_epoch: int | None = None, num_workers: int = 4,
                      rank: int | None = None, world_size: int | None = None,
                      shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                      collate_fn: Callable = default_collate, return_keys: bool = False,
                      pin_memory: bool = False, decode: Callable[[bytes], Any] | None = None) -> ShardLoader:
    """Batches of ``collate_fn([transform(image), ...])`` from shards; see the module docstring.

    ``transform`` maps an RGB ``PIL.Image`` to anything ``collate_fn`` accepts; it must be
    picklable when workers are not forked. ``decode`` replaces the decoding: it gets a sample's
    encoded image bytes and returns what ``transform`` gets (e.g. ``MultiCropAugmentation.
    decode_stream``, which plans the views first and decodes JPEGs at reduced size); an
    exception from it counts the sample as corrupt. ``return_keys=True`` yields ``(batch, keys)``.
    ``rank`` / ``world_size`` default to ``RANK`` / ``WORLD_SIZE`` from the environment.
    """
    shard_list = list(shards) if isinstance(shards, list) else load_shard_set(shards)
    if not shard_list:
        raise ShardSetError("no shards given")
    rank = _env_int("RANK", 0) if rank is None else rank
    world_size = _env_int("WORLD_SIZE", 1) if world_size is None else world_size
    def positive_int(value, allow_zero=False) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= (0 if allow_zero else 1)

    if not positive_int(batch_size):
        raise ShardSetError(f"batch_size must be a positive integer (got {batch_size!r})")
    if not positive_int(world_size):
        raise ShardSetError(f"world_size must be a positive integer (got {world_size!r})")
    if not positive_int(rank, allow_zero=True) or rank >= world_size:
        raise ShardSetError(f"rank must be in [0, world_size={world_size}) (got {rank!r})")
    if not positive_int(num_workers, allow_zero=True):
        raise ShardSetError(f"num_workers must be >= 0 (got {num_workers!r})")
    if batches_per_epoch is not None and not positive_int(batches_per_epoch):
        raise ShardSetError(f"batches_per_epoch must be a positive integer or None (got {batches_per_epoch!r})")
    if not positive_int(shuffle_buffer, allow_zero=True):
        raise ShardSetError(f"shuffle_buffer must be >= 0 (got {shuffle_buffer!r})")
    if not callable(transform):
        raise ShardSetError("transform must be callable (PIL.Image -> tensor or list of tensors)")
    if decode is not None and not callable(decode):
        raise ShardSetError("decode must be callable (image bytes -> what transform takes) or None")
    return ShardLoader(shard_list, batch_size=batch_size, transform=transform, resampled=resampled, seed=seed,
                       epoch=epoch, batches_per_epoch=batches_per_epoch, num_workers=num_workers, rank=rank,
                       world_size=world_size, shuffle_buffer=shuffle_buffer, collate_fn=collate_fn,
                       return_keys=return_keys, pin_memory=pin_memory, decode=decode)


def _as_is(item):
    return item


def _discard_image(image: Image.Image) -> int:
    return 0


def sample_keys(shards: str | os.PathLike | list[ShardInfo], *, rank: int = 0, world_size: int = 1,
                num_workers: int = 0, epochs: int = 1, start_epoch: int = 0, resampled: bool = False,
                seed: int = 0, batch_size: int = 32, batches_per_epoch: int | None = None,
                shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER) -> list[list[str]]:
    """The sample keys rank ``rank`` receives, one list per epoch, in delivery order.

    Runs the same loader training uses (images are decoded, so damaged samples are left out
    exactly as in training), with a transform that discards the pixels.
    """
    loader = make_shard_loader(shards, batch_size, _discard_image, resampled=resampled, seed=seed,
                               epoch=start_epoch, batches_per_epoch=batches_per_epoch, num_workers=num_workers,
                               rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer,
                               return_keys=True)
    return [[key for _, keys in loader for key in keys] for _ in range(epochs)]


# ---------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python data_shards/stream_shards.py",
                                     description="Write the sample keys one rank would read (check sharding).",
                                     formatter_class=HelpFormatter)
    parser.add_argument("shards", metavar="OUT_DIR", help="a build's output folder (or a shard pattern)")
    parser.add_argument("--rank", type=int, default=0, help="the rank whose share is read")
    parser.add_argument("--world-size", type=int, default=1, help="number of ranks the shards are split over")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank (default 0)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs to read")
    parser.add_argument("--start-epoch", type=int, default=0, help="first epoch (the shuffle depends on it)")
    parser.add_argument("--resampled", action="store_true", help="resampled (training) mode")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch")
    parser.add_argument("--batches-per-epoch", type=int, default=None,
                        help="fixed batches per rank and epoch (default: one pass)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    parser.add_argument("--shuffle-buffer", type=int, default=DEFAULT_SHUFFLE_BUFFER,
                        help="samples held in the shuffle buffer")
    parser.add_argument("--dump-keys", required=True, metavar="FILE", help="where to write the keys ('-': stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.epochs < 1:
        print("error: --epochs must be >= 1", file=sys.stderr)
        return 2
    try:
        loader = make_shard_loader(args.shards, args.batch_size, _discard_image, resampled=args.resampled,
                                   seed=args.seed, epoch=args.start_epoch, batches_per_epoch=args.batches_per_epoch,
                                   num_workers=args.workers, rank=args.rank, world_size=args.world_size,
                                   shuffle_buffer=args.shuffle_buffer, return_keys=True)
        lines: list[str] = []
        for epoch in range(args.start_epoch, args.start_epoch + args.epochs):
            loader.set_epoch(epoch)
            batches = 0
            lines.append(f"# epoch {epoch}")
            for _, keys in loader:
                lines.extend(keys)
                batches += 1
            print(f"epoch {epoch}: rank {args.rank}/{args.world_size} read {loader.stats['samples']} samples "
                  f"in {batches} batches; skipped {loader.stats['corrupt_samples']} samples, "
                  f"{loader.stats['damaged_shards']} damaged shard reads", file=sys.stderr)
    except ShardSetError as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    text = "\n".join(lines) + "\n"
    if args.dump_keys == "-":
        sys.stdout.write(text)
    else:
        from soliderkit.io import atomic_write_text

        atomic_write_text(args.dump_keys, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

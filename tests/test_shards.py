"""Tests for soliderkit.data.build / inspect / stream: shards of person crops, end to end.

Images are tiny JPEGs written with PIL (fast); the streaming tests run real DataLoader
worker processes, because per-worker splitting is what they check.
"""
from __future__ import annotations

import io
import json
import logging
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from soliderkit.data import build as build_module
from soliderkit.data.build import INFO_NAME, SKIPPED_NAME, ShardBuildError, build_shards, parse_size
from soliderkit.data.inspection import inspect_shards
from soliderkit.data.sources import SourceError
from soliderkit.data.stream import (
    ShardSetError,
    assign_shards,
    iter_tar_samples,
    load_shard_set,
    make_shard_loader,
    resample_pool,
    sample_keys,
)
from soliderkit.data.stream import main as stream_main

NUM_IMAGES = 45
MAXCOUNT = 8          # 45 images -> 6 shards, the last one short: uneven on purpose


def jpeg_bytes(seed: int, size=(16, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_market_tree(root: Path, count: int = NUM_IMAGES) -> list[Path]:
    """Market-style names in two folders, one nested deeper (any depth is allowed)."""
    paths = []
    for i in range(count):
        folder = root / ("bounding_box_train" if i % 3 else "extra/deeper")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i // 3 + 1:04d}_c{i % 4 + 1}s1_{i:06d}_00.jpg"
        path.write_bytes(jpeg_bytes(i))
        paths.append(path)
    return paths


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, field = member.name.split(".", 1)
            samples.setdefault(key, {})[field] = tar.extractfile(member).read()
    return samples


def all_keys(shard_dir: Path) -> list[str]:
    return [key for shard in sorted(shard_dir.glob("shard-*.tar")) for key in tar_samples(shard)]


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("source")
    write_market_tree(root)
    return root


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, source_tree) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    build_shards(source_tree, out, maxcount=MAXCOUNT, workers=2)  # the multi-process path
    return out


def copy_shards(shard_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    return copy


# ---------------------------------------------------------------------------- build

def test_build_writes_original_bytes_metadata_and_index(shard_dir, source_tree):
    info = json.loads((shard_dir / INFO_NAME).read_text())
    assert info["complete"] is True
    assert info["num_samples"] == NUM_IMAGES and info["num_skipped"] == 0
    assert [s["count"] for s in info["shards"]] == [8, 8, 8, 8, 8, 5]
    assert sorted(p.name for p in shard_dir.glob("*.tar")) == [s["name"] for s in info["shards"]]

    seen_sources = set()
    for shard in info["shards"]:
        samples = tar_samples(shard_dir / shard["name"])
        assert len(samples) == shard["count"]
        for key, fields in samples.items():
            assert "." not in key and "/" not in key
            assert set(fields) == {"jpg", "json"}
            meta = json.loads(fields["json"])
            original = (source_tree / meta["source"]).read_bytes()
            assert fields["jpg"] == original  # no re-encoding
            name = Path(meta["source"]).name
            assert meta["pid"] == int(name[:4]) and meta["camera"] == int(name[6])
            assert (meta["width"], meta["height"], meta["format"], meta["bytes"]) == (16, 32, "jpg", len(original))
            seen_sources.add(meta["source"])
    assert len(seen_sources) == NUM_IMAGES


def test_build_skips_and_reports_unreadable_images(tmp_path):
    src = tmp_path / "src"
    write_market_tree(src, 10)
    (src / "garbage.jpg").write_bytes(b"this is not a jpeg")
    good = jpeg_bytes(99)
    (src / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "empty.png").write_bytes(b"")
    (src / "notes.txt").write_text("not an image extension: never listed")

    result = build_shards(src, tmp_path / "out", maxcount=4)

    assert result.num_samples == 10 and result.num_skipped == 3
    rows = (tmp_path / "out" / SKIPPED_NAME).read_text().splitlines()
    assert rows[0] == "path\treason\tshard"
    reasons = {row.split("\t")[0]: row.split("\t")[1] for row in rows[1:]}
    assert set(reasons) == {"garbage.jpg", "truncated.jpg", "empty.png"}
    assert "truncated" in reasons["truncated.jpg"].lower()
    info = json.loads((tmp_path / "out" / INFO_NAME).read_text())
    assert info["num_samples"] == 10 and sum(s["skipped"] for s in info["shards"]) == 3


def test_build_resumes_after_interruption_without_duplicates(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_market_tree(src, 20)
    reference = tmp_path / "reference"
    build_shards(src, reference, maxcount=4)

    out = tmp_path / "out"
    real_prepare = build_module._prepare_sample
    calls = {"n": 0}

    def interrupt_in_fourth_shard(data, max_height):
        calls["n"] += 1
        if calls["n"] == 14:  # shards of 4: three finished, the fourth half written
            raise KeyboardInterrupt
        return real_prepare(data, max_height)

    monkeypatch.setattr(build_module, "_prepare_sample", interrupt_in_fourth_shard)
    with pytest.raises(KeyboardInterrupt):
        build_shards(src, out, maxcount=4)
    monkeypatch.setattr(build_module, "_prepare_sample", real_prepare)

    partial = json.loads((out / INFO_NAME).read_text())
    assert partial["complete"] is False
    assert [s["name"] for s in partial["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    # What a killed process leaves behind: a half-written temporary shard.
    (out / ".shard-000003.tar.abcd.tmp.tar").write_bytes(b"half a tar")
    finished_before = {name: (out / name).stat().st_mtime_ns for name in
                       ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar")}

    result = build_shards(src, out, maxcount=4)

    assert (result.shards_reused, result.shards_written) == (3, 2)
    assert {name: (out / name).stat().st_mtime_ns for name in finished_before} == finished_before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".build")) == \
        sorted(p.name for p in reference.iterdir() if not p.name.startswith(".build"))
    for shard in reference.glob("*.tar"):  # same plan, same bytes: nothing duplicated or reordered
        assert (out / shard.name).read_bytes() == shard.read_bytes()
    assert json.loads((out / INFO_NAME).read_text())["shards"] == \
        json.loads((reference / INFO_NAME).read_text())["shards"]
    assert len(all_keys(out)) == len(set(all_keys(out))) == 20


def test_lmdb_source(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    db = tmp_path / "lup_lmdb"
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:  # LUPerson's layout: ASCII keys, raw JPEG bytes
        for i in range(6):
            txn.put(f"00_01_{i:04d}_00000000".encode(), jpeg_bytes(i))
        txn.put(b"00_02_0000_00000000", b"\x00\x01 a record that is not an image")
        txn.put(b"__keys__", b"metadata some LMDB writers add")
    env.close()

    result = build_shards(db, tmp_path / "out", maxcount=4, workers=2)  # each worker opens its own env

    assert result.num_samples == 6 and result.num_skipped == 1
    samples = {k: v for shard in sorted((tmp_path / "out").glob("*.tar")) for k, v in tar_samples(shard).items()}
    sources = sorted(json.loads(s["json"])["source"] for s in samples.values())
    assert sources == [f"00_01_{i:04d}_00000000" for i in range(6)]
    assert sorted(s["jpg"] for s in samples.values()) == sorted(jpeg_bytes(i) for i in range(6))

    empty = tmp_path / "no_images"
    env = lmdb.open(str(empty), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"a", b"plain text")
    env.close()
    with pytest.raises(SourceError, match="holds no encoded images"):
        build_shards(empty, tmp_path / "out2")


def test_file_list_source_keeps_label_column(tmp_path):
    paths = write_market_tree(tmp_path / "images", 6)
    listing = tmp_path / "list_train.txt"
    listing.write_text("".join(f"images/{p.relative_to(tmp_path / 'images').as_posix()} {7 + i}\n"
                               for i, p in enumerate(paths)) + "images/missing.jpg 1\n")
    result = build_shards(listing, tmp_path / "out", maxcount=100)
    assert result.num_samples == 6 and result.num_skipped == 1  # the missing file is reported
    metas = [json.loads(s["json"]) for s in tar_samples(tmp_path / "out" / "shard-000000.tar").values()]
    assert sorted(m["pid"] for m in metas) == list(range(7, 13))


def test_max_height_downscales_and_records_the_original_size(tmp_path):
    write_market_tree(tmp_path / "src", 3)
    build_shards(tmp_path / "src", tmp_path / "out", max_height=16)
    for fields in tar_samples(tmp_path / "out" / "shard-000000.tar").values():
        meta = json.loads(fields["json"])
        assert (meta["width"], meta["height"], meta["resized_from"]) == (8, 16, [16, 32])
        assert Image.open(io.BytesIO(fields["jpg"])).size == (8, 16)
        assert meta["bytes"] == len(fields["jpg"])


def test_build_errors_name_the_problem(tmp_path):
    with pytest.raises(SourceError, match="SRC not found"):
        build_shards(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty source"):
        build_shards(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ShardBuildError, match="--maxcount"):
        build_shards(tmp_path / "empty", tmp_path / "out", maxcount=0)
    (tmp_path / "file").write_text("x")
    write_market_tree(tmp_path / "src", 2)
    with pytest.raises(ShardBuildError, match="OUT_DIR"):
        build_shards(tmp_path / "src", tmp_path / "file" / "out")
    assert parse_size("2GiB") == 2 * 1024 ** 3 and parse_size("500MB") == 500_000_000
    with pytest.raises(ShardBuildError, match="--maxsize"):
        parse_size("lots")


def test_maxsize_limits_shard_size(tmp_path):
    write_market_tree(tmp_path / "src", 12)
    build_shards(tmp_path / "src", tmp_path / "out", maxsize="8KiB")
    info = json.loads((tmp_path / "out" / INFO_NAME).read_text())
    assert len(info["shards"]) > 1 and info["num_samples"] == 12
    for shard in info["shards"]:
        with tarfile.open(tmp_path / "out" / shard["name"]) as tar:
            # Headers and 512-byte-padded data; tarfile pads the whole file to 10 KiB records.
            content = sum(512 + -(-member.size // 512) * 512 for member in tar.getmembers())
        assert content <= 8 * 1024


# ---------------------------------------------------------------------------- streaming

def test_assign_shards_is_an_exact_balanced_partition():
    counts = [8, 8, 8, 8, 8, 5, 3]
    plan = assign_shards(counts, world_size=2, num_workers=2, seed=0, epoch=0)
    flat = [s for rank in plan for worker in rank for s in worker]
    assert sorted(flat) == list(range(len(counts)))
    rank_totals = [sum(counts[s] for w in rank for s in w) for rank in plan]
    assert max(rank_totals) - min(rank_totals) <= max(counts)
    assert plan == assign_shards(counts, 2, 2, seed=0, epoch=0)
    orders = {tuple(s for r in assign_shards(counts, 2, 2, seed=0, epoch=e) for w in r for s in w)
              for e in range(6)}
    assert len(orders) > 1  # the deal changes from epoch to epoch


def test_exact_mode_two_ranks_two_workers_see_every_sample_once(shard_dir):
    expected = sorted(all_keys(shard_dir))
    for epoch in (0, 1):
        per_rank = [sample_keys(shard_dir, rank=rank, world_size=2, num_workers=2, batch_size=3,
                                start_epoch=epoch, shuffle_buffer=16)[0] for rank in (0, 1)]
        combined = per_rank[0] + per_rank[1]
        assert sorted(combined) == expected           # every sample, none twice
        assert not set(per_rank[0]) & set(per_rank[1])
    epoch0 = sample_keys(shard_dir, rank=0, world_size=2, num_workers=2, batch_size=3, start_epoch=0)[0]
    epoch1 = sample_keys(shard_dir, rank=0, world_size=2, num_workers=2, batch_size=3, start_epoch=1)[0]
    assert epoch0 != epoch1


def test_resampled_mode_gives_every_rank_the_same_number_of_full_batches(shard_dir):
    batches = {}
    for rank in (0, 1):
        loader = make_shard_loader(shard_dir, 4, lambda image: torch.zeros(1), resampled=True, seed=3,
                                   batches_per_epoch=5, num_workers=2, rank=rank, world_size=2,
                                   shuffle_buffer=16, return_keys=True)
        assert len(loader) == 5
        batches[rank] = [keys for _, keys in loader]
    assert [len(b) for b in batches.values()] == [5, 5]
    assert all(len(keys) == 4 for b in batches.values() for keys in b)
    assert batches[0] != batches[1]  # seeds differ by rank
    again = sample_keys(shard_dir, rank=0, world_size=2, num_workers=2, resampled=True, seed=3,
                        batch_size=4, batches_per_epoch=5, shuffle_buffer=16)[0]
    assert again == [k for keys in batches[0] for k in keys]  # (seed, epoch, rank, worker) fix the stream
    # Default length: one pass worth of batches per rank.
    assert len(make_shard_loader(shard_dir, 4, lambda image: 0, world_size=2, rank=0)) == NUM_IMAGES // 8


def test_resampled_streams_of_ranks_and_workers_read_disjoint_shards(shard_dir, tmp_path):
    shard_of = {}
    for shard in load_shard_set(shard_dir):
        for key in tar_samples(Path(shard.path)):
            shard_of[key] = shard.path
    for epoch in (0, 1):
        read = {}
        for rank in (0, 1):
            loader = make_shard_loader(shard_dir, 3, lambda image: 0, resampled=True, seed=1, epoch=epoch,
                                       batches_per_epoch=4, num_workers=2, rank=rank, world_size=2,
                                       shuffle_buffer=0, return_keys=True)
            read[rank] = {shard_of[k] for _, keys in loader for k in keys}
        assert read[0] and read[1] and not read[0] & read[1]  # 6 shards, 2 ranks x 2 workers
    # each (rank, worker) stream has its own part of the epoch's deal; the parts cover every shard
    shards = load_shard_set(shard_dir)
    parts = [resample_pool(shards, 2, 2, rank, worker, 1, 0) for rank in (0, 1) for worker in (0, 1)]
    assert sorted(s.path for part in parts for s in part) == sorted(s.path for s in shards)
    # fewer shards than ranks x workers: a rank's workers share its part; fewer than ranks: all
    assert resample_pool(shards, 2, 4, 1, 3, 1, 0) == resample_pool(shards, 2, 4, 1, 0, 1, 0)
    assert resample_pool(shards, 8, 1, 5, 0, 1, 0) == shards


def test_a_resampled_stream_whose_shards_are_all_damaged_draws_from_the_others(shard_dir, tmp_path):
    shards = copy_shards(shard_dir, tmp_path)
    own = resample_pool(load_shard_set(shards), 2, 1, 0, 0, 1, 0)
    for shard in own:
        Path(shard.path).write_bytes(b"not a tar")
    loader = make_shard_loader(shards, 3, lambda image: 0, resampled=True, seed=1, batches_per_epoch=2,
                               num_workers=0, rank=0, world_size=2, shuffle_buffer=0)
    assert len(list(loader)) == 2 and loader.stats["damaged_shards"] >= len(own)


def test_fixed_length_without_resampling_is_equal_even_with_more_slots_than_shards(shard_dir):
    # 4 ranks x 2 workers = 8 slots for 6 shards: slots without a shard must still deliver.
    counts = [len(sample_keys(shard_dir, rank=rank, world_size=4, num_workers=2, batch_size=5,
                              batches_per_epoch=7, shuffle_buffer=0)[0]) for rank in range(4)]
    assert counts == [35] * 4


def test_env_rank_and_multicrop_collate(shard_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")

    def multi_crop(image):
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
        return [tensor, tensor.clone(), tensor[:, :16, :8], tensor[:, 16:, 8:], tensor[:, :16, 8:]]

    loader = make_shard_loader(shard_dir, 4, multi_crop, batches_per_epoch=2, num_workers=0)
    assert (loader.rank, loader.world_size) == (1, 2)
    batches = list(loader)
    assert len(batches) == 2
    shapes = [tuple(t.shape) for t in batches[0]]
    assert shapes == [(4, 3, 32, 16)] * 2 + [(4, 3, 16, 8)] * 3


def damage(shard_dir: Path) -> tuple[str, str]:
    """Plant an undecodable JPEG in shard 0 and truncate shard 2; return their names."""
    first = shard_dir / "shard-000000.tar"
    samples = tar_samples(first)
    victim = sorted(samples)[3]
    samples[victim]["jpg"] = samples[victim]["jpg"][:200]  # a valid tar holding a broken image
    with tarfile.open(first, "w") as tar:
        for key in sorted(samples):
            for field in ("jpg", "json"):
                member = tarfile.TarInfo(f"{key}.{field}")
                member.size = len(samples[key][field])
                tar.addfile(member, io.BytesIO(samples[key][field]))
    truncated = shard_dir / "shard-000002.tar"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2 + 700])  # inside a member: tarfile reports it
    return victim, truncated.name


def test_corrupt_sample_and_truncated_tar_are_skipped_and_counted(shard_dir, tmp_path, caplog):
    damaged = copy_shards(shard_dir, tmp_path)
    victim, truncated = damage(damaged)
    truncated_keys = set(tar_samples(shard_dir / truncated))

    with caplog.at_level(logging.WARNING, logger="soliderkit.data.stream"):
        loader = make_shard_loader(damaged, 4, lambda image: 0, resampled=False, num_workers=0,
                                   rank=0, world_size=1, return_keys=True)
        keys = [k for _, batch_keys in loader for k in batch_keys]
    lost = truncated_keys - set(keys)
    assert victim not in keys
    assert 0 < len(lost) < len(truncated_keys)       # what precedes the cut is still read
    assert sorted(keys) == sorted(set(all_keys(shard_dir)) - {victim} - lost)
    assert loader.stats == {"samples": NUM_IMAGES - 1 - len(lost), "corrupt_samples": 1, "damaged_shards": 1}
    assert loader.damaged_shards == [truncated]
    assert any("skipped 1 undecodable" in r.message and truncated in r.message for r in caplog.records)

    # Fixed length still holds with damage, across worker processes.
    fixed = make_shard_loader(damaged, 4, lambda image: 0, resampled=True, batches_per_epoch=6,
                              num_workers=2, rank=0, world_size=1, shuffle_buffer=8)
    assert sum(1 for _ in fixed) == 6
    assert fixed.stats["corrupt_samples"] + fixed.stats["damaged_shards"] > 0
    assert fixed.total_stats == fixed.stats


def test_unreadable_shard_set_raises_instead_of_spinning(tmp_path):
    write_market_tree(tmp_path / "src", 4)
    out = tmp_path / "out"
    build_shards(tmp_path / "src", out, maxcount=2)
    for shard in out.glob("*.tar"):
        shard.write_bytes(b"\x00" * 10)
    loader = make_shard_loader(out, 2, lambda image: 0, batches_per_epoch=3, num_workers=0, rank=0, world_size=1)
    with pytest.raises(ShardSetError, match="no readable sample|has a readable sample"):
        list(loader)


def test_loader_errors_name_the_problem(tmp_path, shard_dir):
    with pytest.raises(ShardSetError, match="_info.json not found"):
        load_shard_set(tmp_path)
    with pytest.raises(ShardSetError, match="rank"):
        make_shard_loader(shard_dir, 4, lambda image: 0, rank=2, world_size=2)
    with pytest.raises(ShardSetError, match="batch_size"):
        make_shard_loader(shard_dir, 0, lambda image: 0)
    subset = load_shard_set(str(shard_dir / "shard-{000001..000002}.tar"))
    assert [Path(s.path).name for s in subset] == ["shard-000001.tar", "shard-000002.tar"]
    unfinished = copy_shards(shard_dir, tmp_path)
    info = json.loads((unfinished / INFO_NAME).read_text())
    (unfinished / INFO_NAME).write_text(json.dumps({**info, "complete": False}))
    with pytest.raises(ShardSetError, match="unfinished"):
        load_shard_set(unfinished)


def test_stream_cli_dumps_keys_per_rank(shard_dir, tmp_path):
    dumps = []
    for rank in (0, 1):
        out = tmp_path / f"rank{rank}.txt"
        assert stream_main([str(shard_dir), "--rank", str(rank), "--world-size", "2", "--workers", "2",
                            "--epochs", "2", "--batch-size", "4", "--dump-keys", str(out)]) == 0
        dumps.append(out.read_text().splitlines())
    for epoch in (0, 1):
        seen = Counter()
        for lines in dumps:
            start = lines.index(f"# epoch {epoch}") + 1
            end = lines.index(f"# epoch {epoch + 1}") if f"# epoch {epoch + 1}" in lines else len(lines)
            seen.update(lines[start:end])
        assert sorted(seen) == sorted(all_keys(shard_dir)) and set(seen.values()) == {1}


def test_fast_tar_reader_matches_tarfile_and_hands_unusual_tars_to_it(shard_dir, tmp_path):
    shard = shard_dir / "shard-000000.tar"
    errors: list[str] = []
    fast = {s["__key__"]: (s["jpg"], s["json"]) for s in iter_tar_samples(str(shard), errors)}
    assert errors == []
    assert fast == {key: (fields["jpg"], fields["json"]) for key, fields in tar_samples(shard).items()}

    # A pax header after plain members (a long key), and a compressed tar: tarfile takes over.
    long_key = "b" * 120
    members = [(f"{key}.{field}", payload) for key, payload in (("a", b"1"), (long_key, b"2"), ("c", b"3"))
               for field in ("jpg", "json")]
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz")):
        path = tmp_path / f"mixed{suffix}"
        with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
            for name, payload in members:
                member = tarfile.TarInfo(name)
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
        got = [(s["__key__"], s["jpg"]) for s in iter_tar_samples(str(path), errors)]
        assert errors == []
        assert got == [("a", b"1"), (long_key, b"2"), ("c", b"3")]


# ---------------------------------------------------------------------------- inspect, HF

def test_inspect_passes_clean_shards_and_reports_damage(shard_dir, tmp_path):
    clean = inspect_shards(shard_dir)
    assert clean.ok, clean.problems
    assert "45 read" in clean.format()

    damaged = copy_shards(shard_dir, tmp_path)
    victim, truncated = damage(damaged)
    report = inspect_shards(damaged, decode=100)
    assert not report.ok
    text = "\n".join(report.problems)
    assert f"{truncated}: truncated or corrupt tar" in text
    assert f"image {victim} does not decode" in text
    assert "bytes on disk" in text and "records 8" in text

    # Cut exactly at a member boundary (tarfile would see a normal end): the missing
    # end-of-archive marker and the count both tell.
    shard = damaged / "shard-000004.tar"
    shard.write_bytes(shard.read_bytes()[: 5 * 1024])
    problems = "\n".join(inspect_shards(damaged).problems)
    assert "shard-000004.tar: truncated or corrupt tar (ReadError: missing end-of-archive marker)" in problems
    assert re.search(r"shard-000004.tar: [0-7] samples read, _info.json records 8", problems)
    loader = make_shard_loader(damaged, 4, lambda image: 0, resampled=False, num_workers=0, rank=0, world_size=1)
    list(loader)
    assert loader.stats["damaged_shards"] == 2 and "shard-000004.tar" in loader.damaged_shards


def test_hugging_face_datasets_reads_a_shard(shard_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from datasets import load_dataset

    shard = shard_dir / "shard-000001.tar"
    dataset = load_dataset("webdataset", data_files={"train": [str(shard)]}, split="train", streaming=True)
    rows = list(dataset)
    assert [row["__key__"] for row in rows] == list(tar_samples(shard))
    first = rows[0]
    assert first["jpg"].size == (16, 32)
    assert first["json"]["source"].endswith(".jpg") and "pid" in first["json"]

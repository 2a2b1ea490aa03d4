"""The synthetic ReID world generator (soliderkit.data.synth) and the colour-histogram baseline."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from soliderkit.data import synth
from soliderkit.data.synth import SPLIT_DIRS, WorldArgumentError, generate_world
from soliderkit.reid import color_histogram
from soliderkit.reid.metrics import evaluate_ranking

MARKET_NAME = re.compile(r"^(-1|\d{4})_c(\d+)s(\d+)_(\d{6})_(\d{2})\.jpg$")
UNLABELED_NAME = re.compile(r"^u(\d{5})_(\d{3})\.jpg$")
SMALL = dict(identities=10, cameras=3, unlabeled_identities=4, min_images=3, max_images=5,
             distractors=4, junk=3, unlabeled_min_images=2, unlabeled_max_images=3)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _market_entries(folder: Path) -> list[tuple[int, int]]:
    """(pid, 1-based camera) of every file in a Market folder; fails on a malformed name."""
    entries = []
    for path in sorted(folder.iterdir()):
        match = MARKET_NAME.match(path.name)
        assert match, f"not a Market-1501 name: {path}"
        entries.append((int(match.group(1)), int(match.group(2))))
    return entries


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "world"
    manifest = generate_world(root, seed=3, **SMALL)
    return root, manifest


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path, small_world):
    root, _ = small_world
    # Same seed, drawn by two worker processes instead of in-process: byte-identical.
    generate_world(tmp_path / "again", seed=3, workers=2, **SMALL)
    assert _tree_bytes(tmp_path / "again") == _tree_bytes(root)


def test_different_seed_gives_a_different_world(tmp_path, small_world):
    root, _ = small_world
    generate_world(tmp_path / "other", seed=4, **SMALL)
    first, second = _tree_bytes(root), _tree_bytes(tmp_path / "other")
    common = set(first) & set(second)
    assert first.keys() != second.keys() or any(first[name] != second[name] for name in common)
    assert json.loads(second["world.json"])["seed"] == 4


def test_layout_names_and_market_protocol(small_world):
    root, manifest = small_world
    assert {p.name for p in root.iterdir()} == set(SPLIT_DIRS) | {"world.json"}
    train = _market_entries(root / "bounding_box_train")
    query = _market_entries(root / "query")
    gallery = _market_entries(root / "bounding_box_test")

    train_pids = {pid for pid, _ in train}
    test_pids = {pid for pid, _ in gallery if pid > 0}
    assert train_pids and test_pids and not train_pids & test_pids
    assert all(pid > 0 for pid, _ in train + query)
    assert {pid for pid, _ in query} <= test_pids
    cameras = manifest["parameters"]["cameras"]
    assert {cam for _, cam in train + query + gallery} <= set(range(1, cameras + 1))

    # Junk (-1) and distractors (0000) exist, and only in the gallery.
    counts = manifest["counts"]["bounding_box_test"]
    assert sum(pid == -1 for pid, _ in gallery) == counts["junk"] == SMALL["junk"]
    assert sum(pid == 0 for pid, _ in gallery) == counts["distractors"] == SMALL["distractors"]

    # Market convention: at most one query per identity and camera, and every query has
    # a true match under another camera (same-pid-same-camera entries are discarded).
    assert len(set(query)) == len(query)
    for pid, cam in query:
        assert any(g_pid == pid and g_cam != cam for g_pid, g_cam in gallery), (pid, cam)

    # Unlabeled people are other identities than the labelled ones.
    unlabeled_ids = set()
    for path in (root / "unlabeled").iterdir():
        match = UNLABELED_NAME.match(path.name)
        assert match, f"unexpected unlabeled name: {path}"
        unlabeled_ids.add(int(match.group(1)))
    assert len(unlabeled_ids) == SMALL["unlabeled_identities"]
    assert not unlabeled_ids & (train_pids | test_pids)

    # The manifest's counts are what is on disk.
    for split in SPLIT_DIRS:
        assert manifest["counts"][split]["images"] == len(list((root / split).iterdir())), split
    assert json.loads((root / "world.json").read_text()) == json.loads(json.dumps(manifest))


def test_images_are_128x64_rgb_jpegs(small_world):
    root, _ = small_world
    paths = [p for split in SPLIT_DIRS for p in sorted((root / split).iterdir())[:5]]
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 128)), path


@pytest.mark.parametrize("argument, value", [("identities", 1), ("cameras", 1), ("max_images", 1),
                                             ("occlusion_prob", 1.5)])
def test_bad_arguments_are_named_in_the_error(tmp_path, argument, value):
    with pytest.raises(ValueError, match=rf"{argument}.*{re.escape(repr(value))}"):
        generate_world(tmp_path / "w", **{**SMALL, argument: value})
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_cli_reports_bad_arguments_by_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synth.main([str(tmp_path / "w"), "--identities", "1"])
    assert exit_info.value.code == 2
    assert "--identities" in capsys.readouterr().err


def test_non_empty_out_dir_needs_overwrite(tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(WorldArgumentError, match="overwrite") as error:
        generate_world(out, **SMALL)
    assert error.value.argument == "out_dir" and str(out) in str(error.value)

    generate_world(out, overwrite=True, **SMALL)
    assert (out / "world.json").is_file() and (out / "notes.txt").read_text() == "keep me"


def test_interrupted_run_leaves_no_manifest(tmp_path, monkeypatch):
    out = tmp_path / "w"
    generate_world(out, **SMALL)
    drawn = []

    def failing_writer(job):
        if len(drawn) == 5:
            raise KeyboardInterrupt
        drawn.append(job)
        return job.path

    monkeypatch.setattr(synth, "_render_and_write", failing_writer)
    with pytest.raises(KeyboardInterrupt):
        generate_world(out, overwrite=True, workers=1, **SMALL)
    # The old manifest went first, and no new one claims the half-written world complete.
    assert not (out / "world.json").exists()


def test_color_histogram_features_are_unit_length(small_world):
    root, _ = small_world
    paths = sorted(str(p) for p in (root / "query").iterdir())[:3]
    features = color_histogram.color_histogram_features(paths)
    assert features.shape == (3, color_histogram.DEFAULT_STRIPES * 8 * 8 * 8)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    assert np.allclose(np.diag(color_histogram.cosine_distance(features, features)), 0.0, atol=1e-5)


@pytest.mark.slow
def test_baseline_is_informative_but_far_from_perfect(tmp_path, capsys):
    from soliderkit.reid.datasets import parse_market1501

    root = tmp_path / "baseline"
    generate_world(root, identities=40, cameras=4, seed=11, unlabeled_identities=0, distractors=10, junk=5)
    result = color_histogram.evaluate_color_histogram(str(root))

    # Chance level: mAP of random rankings of the same gallery.  With ~20 test identities,
    # ~150 gallery images and ~5 true matches per query that is about 5-6% mAP.
    splits = parse_market1501(str(root))
    ids = [np.array([getattr(r, field) for r in records])
           for field in ("pid", "camid") for records in (splits.query, splits.gallery)]
    q_pids, g_pids, q_cams, g_cams = ids
    rng = np.random.default_rng(0)
    chance = np.mean([evaluate_ranking(rng.random((len(q_pids), len(g_pids))), q_pids, g_pids,
                                       q_cams, g_cams).mAP for _ in range(10)])
    assert result.mAP > 3 * chance, (result.mAP, chance)
    assert result.mAP < 0.9, "colour histograms should not solve the synthetic world"

    assert color_histogram.main([str(root), "--max-rank", "10"]) == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "rank-10" in printed and "mINP" in printed

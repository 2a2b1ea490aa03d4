"""Tracking ground truth -> ReID crops (soliderkit.data.tracking) on procedural two-camera scenes.

The scene (soliderkit.data.tracking_synth) is written as MOTChallenge sequences (PNG frames, and
lossless FFV1 video) and as an AI City 2023 scene; the converter must recover exactly the crops,
ids and cameras the ground truth and the sampling rules call for. The expectation below restates
the documented rules on the scene's own ground truth (0-based whole-pixel boxes).
"""
from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from script_loader import load_script

from soliderkit.data import tracking
from soliderkit.data.tracking import (SamplingOptions, SplitOptions, TrackingDataError, convert_tracking,
                                      discover_sources, read_ground_truth)
from soliderkit.data.tracking_synth import render_tracking_scene, write_aicity_scene, write_mot_sequence
from soliderkit.reid.datasets import parse_folders

ROOT = Path(__file__).resolve().parents[1]
W, H = 160, 120


@pytest.fixture(scope="module")
def scene():
    return render_tracking_scene(cameras=2, identities=6, frames=16, width=W, height=H, seed=3)


@pytest.fixture(scope="module")
def data(scene, tmp_path_factory):
    """The scene on disk: MOT sequences as frames and as video, AI City scenes as mkv and mp4."""
    root = tmp_path_factory.mktemp("tracking")
    for camera in (1, 2):
        write_mot_sequence(scene, camera, root / "mot" / f"SYN-CAM{camera}")
        write_mot_sequence(scene, camera, root / "motvideo" / f"SYN-CAM{camera}", media="mkv")
    write_aicity_scene(scene, root / "aicity" / "S900", container="mkv")
    write_aicity_scene(scene, root / "aicity_mp4" / "S901")
    return root


def expected(scene, camera, *, layout, every=1, min_height=1, min_visibility=0.0, min_inside=0.6):
    """(row, clipped box) the converter must keep, by the module docstring's rules."""
    kept = []
    for r in scene.rows_of(camera):
        if r.cls != 1 or (layout == "mot" and r.flag == 0):
            continue  # MOT: class and flag filters; the AI City writer writes people only
        if (r.frame - 1) % every:
            continue
        x0, y0, x1, y1 = max(0, r.left), max(0, r.top), min(W, r.left + r.width), min(H, r.top + r.height)
        if (x1 - x0) * (y1 - y0) < min_inside * r.width * r.height or y1 - y0 < min_height:
            continue
        if layout == "mot" and r.visibility < min_visibility:
            continue
        kept.append((r, (x0, y0, x1, y1)))
    return kept


def crops_in(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())}


SAMPLING = SamplingOptions(every=2, max_per_camera=None, min_height=30, min_visibility=0.5)
UNLABELED = SplitOptions(layout="unlabeled")


def _expected_unlabeled(scene, cameras_and_seq, layout, shared_ids):
    """Market names -> expected pixels, for sources given as [(scene camera, output camera, seq)]."""
    names, pid = {}, 1
    keep = {cam: expected(scene, cam, layout=layout, every=2, min_height=30, min_visibility=0.5)
            for cam, _, _ in cameras_and_seq}
    if shared_ids:  # one source (an AI City scene): one pid per track over all cameras
        tracks = sorted({r.track for rows in keep.values() for r, _ in rows})
        pid_of = {(cam, t): i + 1 for cam in keep for i, t in enumerate(tracks)}
    else:  # one source per camera: pids continue from one source to the next
        pid_of = {}
        for cam, _, _ in cameras_and_seq:
            for t in sorted({r.track for r, _ in keep[cam]}):
                pid_of[(cam, t)] = pid
                pid += 1
    for cam, out_cam, seq in cameras_and_seq:
        frame_base = 0 if shared_ids else 1
        for r, (x0, y0, x1, y1) in keep[cam]:
            name = f"{pid_of[(cam, r.track)]:04d}_c{out_cam}s{seq}_{r.frame - 1 + frame_base:06d}_00.png"
            names[name] = scene.frames[cam][r.frame - 1][y0:y1, x0:x1]
    return names


def test_mot_frames_give_exactly_the_expected_crops_ids_and_cameras(scene, data, tmp_path):
    sources = discover_sources([data / "mot"])
    assert [(s.name, s.kind, s.synthetic) for s in sources] == [("SYN-CAM1", "motchallenge", False),
                                                                ("SYN-CAM2", "motchallenge", False)]
    result = convert_tracking(sources, tmp_path / "out", sampling=SAMPLING, split=UNLABELED, ext="png")
    got = crops_in(tmp_path / "out" / "unlabeled")
    want = _expected_unlabeled(scene, [(1, 1, 1), (2, 2, 2)], "mot", shared_ids=False)
    assert sorted(got) == sorted(want)
    for name, pixels in want.items():
        np.testing.assert_array_equal(got[name], pixels, err_msg=name)
    # Two sequences: their track ids never collide (the second source's pids follow the first's).
    with open(tmp_path / "out" / "id_map.csv") as f:
        id_map = list(csv.DictReader(f))
    assert [(int(r["pid"]), r["source"]) for r in id_map][0] == (1, "SYN-CAM1")
    assert len({r["pid"] for r in id_map}) == len(id_map)
    assert {r["source"] for r in id_map} == {"SYN-CAM1", "SYN-CAM2"}
    assert result.summary["totals"]["crops"] == len(want)


def test_video_decodes_to_the_same_crops_as_frames_in_parallel(scene, data, tmp_path):
    sources = discover_sources([data / "motvideo"])
    assert all(s.cameras[0].video is not None and s.cameras[0].frames is None for s in sources)
    convert_tracking(sources, tmp_path / "out", sampling=SAMPLING, split=UNLABELED, ext="png", workers=2)
    got = crops_in(tmp_path / "out" / "unlabeled")
    want = _expected_unlabeled(scene, [(1, 1, 1), (2, 2, 2)], "mot", shared_ids=False)
    assert sorted(got) == sorted(want)
    for name, pixels in want.items():
        np.testing.assert_array_equal(got[name], pixels, err_msg=name)


def test_aicity_scene_keeps_global_ids_across_cameras(scene, data, tmp_path):
    [source] = discover_sources([data / "aicity" / "S900"])
    assert (source.kind, source.synthetic, [c.name for c in source.cameras]) == ("aicity2023", True, ["c001", "c002"])
    convert_tracking([source], tmp_path / "out", sampling=SAMPLING, split=UNLABELED, ext="png")
    got = crops_in(tmp_path / "out" / "unlabeled")
    want = _expected_unlabeled(scene, [(1, 1, 1), (2, 2, 1)], "aicity", shared_ids=True)
    assert sorted(got) == sorted(want)
    for name, pixels in want.items():
        np.testing.assert_array_equal(got[name], pixels, err_msg=name)
    cameras_of_pid = defaultdict(set)
    for name in got:
        cameras_of_pid[name[:4]].add(name.split("_")[1][:2])
    assert any(cams == {"c1", "c2"} for cams in cameras_of_pid.values())  # one pid under both cameras
    manifest = json.loads((tmp_path / "out" / "reid_source.json").read_text())
    assert manifest["synthetic"] is True and manifest["sources"][0]["cameras"] == [1, 2]


def test_h264_video_and_jpeg_crops_stay_close_to_the_drawn_frames(scene, data, tmp_path):
    [source] = discover_sources([data / "aicity_mp4" / "S901"])
    convert_tracking([source], tmp_path / "out", sampling=SAMPLING, split=UNLABELED)
    got = crops_in(tmp_path / "out" / "unlabeled")
    want = {name.replace(".png", ".jpg"): pixels
            for name, pixels in _expected_unlabeled(scene, [(1, 1, 1), (2, 2, 1)], "aicity", shared_ids=True).items()}
    assert sorted(got) == sorted(want)
    errors = [np.abs(got[n].astype(float) - want[n]).mean() for n in want]
    assert max(errors) < 12, max(errors)  # lossy H.264 + JPEG, yet the same pixels


def test_per_camera_cap_spreads_over_the_track(scene, data, tmp_path):
    sampling = SamplingOptions(every=1, max_per_camera=3, min_height=30, min_visibility=0.0)
    result = convert_tracking(discover_sources([data / "aicity" / "S900"]), tmp_path / "out", sampling=sampling,
                              split=UNLABELED, ext="png")
    kept = defaultdict(list)
    for name in sorted(p.name for p in (tmp_path / "out" / "unlabeled").iterdir()):
        pid, camera, frame = name.split("_")[:3]
        kept[(int(pid), int(camera[1:].split("s")[0]))].append(int(frame))
    candidates = defaultdict(list)  # (track, camera) -> 0-based frames that pass every other filter
    for camera in (1, 2):
        for r, _ in expected(scene, camera, layout="aicity", min_height=30):
            candidates[(r.track, camera)].append(r.frame - 1)
    pid_of = {track: i + 1 for i, track in enumerate(sorted({t for t, _ in candidates}))}
    want = {}
    for (track, camera), frames in candidates.items():
        frames = sorted(frames)
        # three spread from the first to the last frame of the track, not the first three
        picks = sorted({round(i) for i in np.linspace(0, len(frames) - 1, min(3, len(frames)))})
        want[(pid_of[track], camera)] = [frames[i] for i in picks]
    assert dict(kept) == want
    assert any(len(f) > 3 and want[(pid_of[t], c)][-1] == max(f) for (t, c), f in candidates.items())
    assert result.summary["totals"]["dropped_per_camera_cap"] == sum(len(f) for f in candidates.values()) - sum(
        len(f) for f in want.values())


def test_summary_accounts_for_every_box(data, tmp_path):
    result = convert_tracking(discover_sources([data / "mot" / "SYN-CAM1"]), tmp_path / "out", sampling=SAMPLING,
                              split=UNLABELED)
    [source] = result.summary["sources"]
    assert source["crops"] + sum(source["dropped"].values()) == source["ground_truth_boxes"]
    assert set(source["dropped"]) >= {"ignored", "class", "frame_step", "mostly_outside", "too_small", "occluded"}
    assert "not a pedestrian class" in result.format_summary()


def test_split_by_identity_is_reproducible_and_queries_match_across_cameras(data, tmp_path):
    specs = [data / "aicity" / "S900", f"synthetic:{data / 'mot' / 'SYN-CAM1'}"]
    split = SplitOptions(test_fraction=0.5, queries_per_camera=2, gap_frames=3, seed=5)
    sampling = SamplingOptions(min_height=30)
    convert_tracking(discover_sources(specs), tmp_path / "a", sampling=sampling, split=split)
    convert_tracking(discover_sources(specs), tmp_path / "b", sampling=sampling, split=split)
    listing = {p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.jpg")}
    assert listing == {p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*.jpg")}

    def records(folder):
        return [(int(n[:4]), int(n.split("_")[1][1:].split("s")[0]), int(n.split("_")[2]))
                for n in sorted(p.name for p in (tmp_path / "a" / folder).iterdir())]

    train, query, gallery = records("bounding_box_train"), records("query"), records("bounding_box_test")
    assert not {p for p, _, _ in train} & {p for p, _, _ in query + gallery}  # split by identity
    cameras = {int(r["camera"]): r for r in csv.DictReader(open(tmp_path / "a" / "cameras.csv"))}
    for pid, cam, frame in query:
        if cameras[cam]["source"] == "S900":  # multi-camera: a match under another camera
            assert any(g_pid == pid and g_cam != cam for g_pid, g_cam, _ in gallery)
        else:  # one camera: the gallery is a later segment, filed under the virtual camera
            later = [(g_cam, g_frame) for g_pid, g_cam, g_frame in gallery if g_pid == pid]
            assert later and all(cameras[g_cam]["virtual_of"] and g_frame >= frame + 3 for g_cam, g_frame in later)
    id_map = list(csv.DictReader(open(tmp_path / "a" / "id_map.csv")))
    assert sum(r["split"] == "test" for r in id_map) == round(0.5 * len(id_map))
    manifest = json.loads((tmp_path / "a" / "reid_source.json").read_text())
    assert [s["synthetic"] for s in manifest["sources"]] == [True, True]  # synthetic: prefix on the MOT one
    # Another seed draws other test identities.
    splits = set()
    for seed in range(4):
        convert_tracking(discover_sources(specs), tmp_path / f"s{seed}", sampling=sampling,
                         split=SplitOptions(test_fraction=0.5, gap_frames=3, seed=seed))
        rows = csv.DictReader(open(tmp_path / f"s{seed}" / "id_map.csv"))
        splits.add(tuple(r["pid"] for r in rows if r["split"] == "test"))
    assert len(splits) > 1


def test_killed_run_leaves_no_output_and_the_rerun_resumes(data, tmp_path, monkeypatch):
    sources = discover_sources([data / "mot"])
    out = tmp_path / "out"
    original, calls = tracking._extract_stream, {"n": 0}

    def dies_on_the_second_stream(task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(task)

    monkeypatch.setattr(tracking, "_extract_stream", dies_on_the_second_stream)
    with pytest.raises(KeyboardInterrupt):
        convert_tracking(sources, out, sampling=SAMPLING, split=UNLABELED)
    assert not out.exists() and (tmp_path / ".out.partial").is_dir()
    monkeypatch.setattr(tracking, "_extract_stream", original)
    result = convert_tracking(sources, out, sampling=SAMPLING, split=UNLABELED)
    assert result.reused_streams == 1 and not (tmp_path / ".out.partial").exists()
    fresh = convert_tracking(sources, tmp_path / "fresh", sampling=SAMPLING, split=UNLABELED)
    assert sorted(p.name for p in (out / "unlabeled").iterdir()) == sorted(
        p.name for p in (tmp_path / "fresh" / "unlabeled").iterdir())
    assert fresh.summary["totals"] == result.summary["totals"]
    with pytest.raises(TrackingDataError, match="already exists"):
        convert_tracking(sources, out, sampling=SAMPLING, split=UNLABELED)


# --------------------------------------------------------------------------------------
# Bad input: clear errors naming the file and line
# --------------------------------------------------------------------------------------

def _copy_sequence(data: Path, tmp_path: Path, kind: str = "mot") -> Path:
    target = tmp_path / "SYN-CAM1"
    shutil.copytree(data / kind / "SYN-CAM1", target)
    return target


def test_malformed_gt_row_names_file_and_line(data, tmp_path):
    sequence = _copy_sequence(data, tmp_path)
    gt = sequence / "gt" / "gt.txt"
    lines = gt.read_text().splitlines()
    lines[2] = "3,1,12,abc,30,60,1,1,1"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrackingDataError, match=r"gt\.txt, line 3: bb_top is not a number: 'abc'"):
        convert_tracking(discover_sources([sequence]), tmp_path / "out", split=UNLABELED)
    lines[2] = "3,1,12,40"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrackingDataError, match=r"gt\.txt, line 3: expected at least 6"):
        read_ground_truth(gt)
    lines[2] = lines[3]
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrackingDataError, match=r"line 4: a second box of id \d+ in frame \d+ \(the first is on line 3\)"):
        read_ground_truth(gt)


def test_box_fully_outside_the_frame_is_an_error_or_dropped(data, tmp_path):
    sequence = _copy_sequence(data, tmp_path)
    gt = sequence / "gt" / "gt.txt"
    with gt.open("a") as f:
        f.write(f"5,99,{W + 10},20,30,60,1,1,1\n")
    number = len(gt.read_text().splitlines())
    with pytest.raises(TrackingDataError, match=rf"gt\.txt, line {number}: box .* entirely outside the 160x120 frame"):
        convert_tracking(discover_sources([sequence]), tmp_path / "out", split=UNLABELED)
    result = convert_tracking(discover_sources([sequence]), tmp_path / "out", split=UNLABELED,
                              sampling=SamplingOptions(outside="drop", min_height=30))
    assert result.summary["sources"][0]["dropped"]["outside"] == 1


def test_video_shorter_than_its_ground_truth(scene, tmp_path):
    sequence = write_mot_sequence(scene, 1, tmp_path / "SHORT", media="mkv", frames=10)
    (sequence / "seqinfo.ini").write_text((sequence / "seqinfo.ini").read_text().replace("seqLength=16", "seqLength=20"))
    with pytest.raises(TrackingDataError, match=r"SHORT\.mkv: the video has 10 frames .*gt\.txt, line \d+ refers "
                                                r"to frame 1[1-6].*shorter than its ground truth"):
        convert_tracking(discover_sources([sequence]), tmp_path / "out", split=UNLABELED,
                         sampling=SamplingOptions(min_height=30))
    assert not (tmp_path / "out").exists()


def test_unreadable_frame_names_the_file(data, tmp_path):
    sequence = _copy_sequence(data, tmp_path)
    (sequence / "img1" / "000005.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(TrackingDataError, match=r"img1/000005\.png: cannot read frame 5"):
        convert_tracking(discover_sources([sequence]), tmp_path / "out", split=UNLABELED,
                         sampling=SamplingOptions(min_height=30, min_visibility=0.0))


def test_not_a_tracking_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrackingDataError, match="not a MOTChallenge sequence"):
        discover_sources([tmp_path / "empty"])


# --------------------------------------------------------------------------------------
# Training data: real / synthetic statistics, CLI, and a fine-tune beside the synthetic world
# --------------------------------------------------------------------------------------

def test_cli_writes_reid_folders_and_mapping(data, tmp_path, capsys):
    cli = load_script("data_shards/from_tracking.py")
    out = tmp_path / "out"
    assert cli.main([str(out), str(data / "aicity" / "S900"), f"real:{data / 'mot' / 'SYN-CAM2'}", "--min-height",
                     "30", "--gap-frames", "3", "--test-fraction", "0.4", "--no-progress", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "S900 (aicity2023, synthetic, 2 camera(s)" in printed and "SYN-CAM2 (motchallenge, real" in printed
    for name in ("bounding_box_train", "query", "bounding_box_test", "id_map.csv", "cameras.csv", "summary.json",
                 "reid_source.json"):
        assert (out / name).exists(), name
    assert cli.main([str(out), str(data / "mot")]) == 2  # exists: a clear error, exit 2
    assert "already exists" in capsys.readouterr().err


def test_statistics_table_splits_real_and_synthetic(data, tiny_world, tmp_path):
    out = tmp_path / "aic"
    convert_tracking(discover_sources([data / "aicity" / "S900"]), out, sampling=SamplingOptions(min_height=30),
                     split=SplitOptions(test_fraction=0.4, seed=0))
    splits = parse_folders([tiny_world / "bounding_box_train", out / "bounding_box_train"],
                           [tiny_world / "query", out / "query"], [tiny_world / "bounding_box_test",
                                                                   out / "bounding_box_test"], name="mix")

    def count(folder: Path, distractors=False):
        names = [p.name for p in folder.iterdir() if not p.name.startswith("-1")]
        pids = {n[:4] for n in names if distractors or not n.startswith("0000")}
        return len(pids), len(names), len({n.split("_")[1].split("s")[0] for n in names})

    rows = {row["subset"]: row for row in splits.card_rows()}
    for subset, world_folder, aic_folder in (("train", "bounding_box_train", "bounding_box_train"),
                                             ("test", "bounding_box_test", "bounding_box_test"),
                                             ("query", "query", "query")):
        real, synthetic = count(tiny_world / world_folder), count(out / aic_folder)
        row = rows[subset]
        assert (row["real_identities"], row["real_images"], row["real_cameras"]) == real, subset
        assert (row["synthetic_identities"], row["synthetic_images"], row["synthetic_cameras"]) == synthetic, subset
        assert row["total_images"] == real[1] + synthetic[1]
        assert row["total_identities"] == real[0] + synthetic[0]
        assert row["total_cameras"] == real[2] + synthetic[2]
    table = splits.format_table()
    assert "class distribution (model card layout)" in table and "no. synthetic identities" in table
    # query / gallery pairs keep their pids apart; the world's distractors stay distractors
    world_max = max(r.pid for r in splits.gallery if r.source == "tiny_world" or not r.synthetic)
    assert min(r.pid for r in splits.query if r.synthetic) > world_max
    # a plain real folder prints the table it always printed
    plain = parse_folders(tiny_world / "bounding_box_train", tiny_world / "query", tiny_world / "bounding_box_test",
                          name="world")
    assert "class distribution" not in plain.format_table()


@pytest.mark.slow
def test_fine_tune_on_a_converted_tracking_set_beside_the_synthetic_world(data, tiny_world, tmp_path, capsys):
    out = tmp_path / "aic"
    convert_tracking(discover_sources([data / "aicity" / "S900"]), out, sampling=SamplingOptions(min_height=30),
                     split=SplitOptions(test_fraction=0.4, seed=0))
    run = load_script("finetune/run.py")
    results = tmp_path / "results"
    assert run.main([
        "--config", str(ROOT / "configs/finetune/synthetic_tiny.yaml"),
        f"dataset.train_dataset_dir=[{tiny_world / 'bounding_box_train'},{out / 'bounding_box_train'}]",
        f"dataset.query_dataset_dir={out / 'query'}", f"dataset.test_dataset_dir={out / 'bounding_box_test'}",
        f"results_dir={results}", "model.input_height=64", "model.input_width=32", "dataset.batch_size=8",
        "dataset.num_instances=2", "dataset.num_workers=0", "train.num_epochs=1", "train.checkpoint_interval=1",
        "train.validation_interval=1"]) == 0
    printed = capsys.readouterr().out
    assert "class distribution (model card layout)" in printed
    card = [line for line in printed.splitlines() if line.startswith("| Train")]
    world_ids = len({p.name[:4] for p in (tiny_world / "bounding_box_train").iterdir()})
    aic_ids = len({p.name[:4] for p in (out / "bounding_box_train").iterdir()})
    cells = [c.strip() for c in card[0].strip("|").split("|")]
    assert cells[1] == str(world_ids + aic_ids) and cells[4] == str(world_ids) and cells[7] == str(aic_ids)
    assert json.loads((results / "train" / "metrics.json").read_text())["num_valid_queries"] > 0

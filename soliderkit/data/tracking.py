"""Tracking ground truth -> ReID training data: Market-1501-named crops, or unlabeled crops for pretraining.

CLI::

    python data_shards/from_tracking.py OUT_DIR SOURCE [SOURCE ...] [--every N] [--max-per-camera M]
        [--min-height PX] [--min-visibility V] [--test-fraction F | --test-identities N] [--seed S] ...

Python: ``discover_sources(specs) -> [TrackingSource]``, then
``convert_tracking(sources, out_dir, sampling=SamplingOptions(...), split=SplitOptions(...))``.

Inputs (a SOURCE; several in one call; ``real:`` / ``synthetic:`` before a path sets its flag)
----------------------------------------------------------------------------------------
* **A MOTChallenge sequence** (MOT15/16/17/20, DanceTrack, MOTSynth and anything laid out the
  same): ``seqinfo.ini`` (optional: MOT15 ships without it), ``img1/`` frames (any zero padding,
  the number in the file name is the frame), ``gt/gt.txt``. A video file in the sequence folder
  (``<name>.mp4`` / ``.avi`` / ...) replaces ``img1/``; its first decoded frame is frame 1.
  ``gt.txt`` rows are ``frame, id, bb_left, bb_top, bb_width, bb_height, conf, ...``; frames, ids
  and boxes are 1-based (motchallenge.net/instructions: "All frame numbers, target IDs and
  bounding boxes are 1-based"); ``conf`` is a flag for ground truth (0: ignored). Nine columns
  (MOT16/17/20, Milan et al., "MOT16: A Benchmark for Multi-Object Tracking", arXiv:1603.00831)
  add ``class`` (1 pedestrian, 2 person on vehicle, 3 car, ... 7 static person, 8 distractor,
  ... 13 crowd) and ``visibility`` (0..1); ten columns (2D MOT 2015) add world ``x, y, z`` instead,
  and have no class or visibility (every box a pedestrian, fully visible).
* **An AI City Challenge 2023 Track 1 scene** (``AIC23_Track1_MTMC_Tracking/{train,validation}/
  S0NN/``): one folder per camera, ``c0NN/video.mp4`` (1080p, 30 fps, the scene's cameras
  synchronised) and ``c0NN/label.txt`` in the MOTChallenge layout ``frame, id, left, top, width,
  height, 1, -1, -1, -1`` with identities global across the scene's cameras (the layout of the
  dataset as unpacked by the 2023 winners, github.com/ipl-uw/AIC23_Track1_UWIPL_ETRI: README and
  ``scripts/preprocessing/``; ``label.txt`` frame ``k`` is the video's ``k``-th decoded frame
  counted from 0, as their ``extract_frame.py`` writes frames from ``start_number=0`` and names
  them by that frame id; pixel coordinates are 0-based, aicitychallenge.org/2023-data-and-evaluation).
  Columns after the box are ignored. Scenes are synthetic (NVIDIA Omniverse) except S001, the
  real warehouse; that is the default flag.
* **A folder of those** (``MOT17/train``, ``AIC23_Track1_MTMC_Tracking/train``): every sequence /
  scene in it. Sequences with the same ground truth and frames (MOT17's three detector
  variants of one sequence) are converted once.

Sampling (in this order; every box left out is counted under its reason in the summary)
-----------------------------------------------------------------------------------------
ignored by the ground truth (``conf`` 0), not a pedestrian class (``--classes``, default 1,
where the format has classes), not on the every-N frame grid (frames ``first, first+N, ...``),
mostly outside the frame (less than ``--min-inside`` of its area inside; boxes are clipped to
the frame), shorter than ``--min-height`` pixels after clipping, less visible than
``--min-visibility`` (where the format records visibility), and beyond ``--max-per-camera``
crops of one identity in one camera (the kept ones are spread evenly over the track: indices
``round(linspace(0, n - 1, M))``, not the first M). A box entirely outside the frame is an
error naming the file and line (``--outside drop`` counts it instead).

Identities, cameras and the split
----------------------------------
An identity is (source, track id): ids are global across the cameras of an AI City scene and
never shared between sources. Identities get contiguous pids, source after source in the
order given (``--pid-start``, default 1); cameras are numbered the same way over all sources'
streams. ``id_map.csv`` / ``cameras.csv`` record both mappings. With ``--layout reid``
(default) identities are split into train and test, per source in proportion (largest
remainders), shuffled by ``--seed`` and the source's name, so a split is reproducible. A test
identity's crops go to ``query`` / ``bounding_box_test`` following Market-1501: from every camera
in which it has two or more crops, up to ``--queries-per-camera`` crops (spread over the track)
become queries, the rest gallery images, so every query has its match under another camera (the
Market protocol ignores same-camera gallery images). A source with a single camera has no other
camera: its queries are the identity's first crops in time and its gallery crops start
``--gap-frames`` frames after the last query, filed under a separate *virtual* camera number
(``cameras.csv`` says which camera and segment it stands for) so that the protocol compares
them. Identities with no valid query go to the gallery only. ``--layout unlabeled`` writes
every kept crop to ``unlabeled/`` (no split) for pretraining; ``--shards DIR`` then builds
WebDataset shards from it (:mod:`soliderkit.data.build`).

Output
------
``OUT_DIR/{bounding_box_train,query,bounding_box_test}/{pid:04d}_c{camera}s{source}_{frame:06d}_00.jpg``
(``unlabeled/`` for pretraining), read as they are by the fine-tune stage; ``reid_source.json``
(per source: kind, synthetic flag and pid range, read by :mod:`soliderkit.reid.datasets` for the
model card's real / synthetic table), ``id_map.csv``, ``cameras.csv`` and ``summary.json`` (options,
and what was kept and dropped and why, per source).

Video is decoded with PyAV (FFmpeg) once, sequentially, per camera; every box of a decoded
frame is cropped from it. Camera streams are converted in parallel (``--workers``). The run
writes into a hidden ``.OUT_DIR.partial`` folder beside ``OUT_DIR`` and renames it to
``OUT_DIR`` only when complete, so a killed run never leaves an ``OUT_DIR`` that looks finished;
re-running the same command resumes it, reusing every camera stream already finished.
"""
from __future__ import annotations

import argparse
import configparser
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import queue as queue_module
import re
import shutil
import sys
import zlib
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from soliderkit.cli import HelpFormatter
from soliderkit.io import atomic_write_json, atomic_write_text

__all__ = [
    "MOT_CLASSES",
    "VIDEO_EXTENSIONS",
    "CameraStream",
    "ConversionResult",
    "GtBox",
    "SamplingOptions",
    "SplitOptions",
    "TrackingDataError",
    "TrackingSource",
    "convert_tracking",
    "discover_sources",
    "main",
    "read_ground_truth",
]

FORMAT_NAME = "soliderkit-reid-source"
FORMAT_VERSION = 1
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test",
              "unlabeled": "unlabeled"}
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# MOT16 paper, Table 2 (MOT20 adds 13, crowd).
MOT_CLASSES = {1: "pedestrian", 2: "person on vehicle", 3: "car", 4: "bicycle", 5: "motorbike",
               6: "non motorized vehicle", 7: "static person", 8: "distractor", 9: "occluder",
               10: "occluder on the ground", 11: "occluder full", 12: "reflection", 13: "crowd"}
_AICITY_CAMERA = re.compile(r"^c\d+$")
_REAL_AICITY_SCENES = frozenset({"S001"})  # the real warehouse of the 2023 set; the others are Omniverse renders

# Why a box was left out, in the order the filters run (the summary's keys).
DROP_REASONS = {
    "ignored": "ignored by the ground truth (conf/flag 0)",
    "class": "not a pedestrian class",
    "frame_step": "not on the every-N frame grid",
    "outside": "entirely outside the frame",
    "mostly_outside": "mostly outside the frame",
    "too_small": "shorter than the minimum height",
    "occluded": "less visible than the minimum visibility",
    "per_camera_cap": "beyond the per-identity per-camera cap",
    "query_gap": "between a one-camera identity's query and gallery segments",
}


class TrackingDataError(ValueError):
    """A tracking source is malformed or inconsistent; the message names the file (and line)."""


# --------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GtBox:
    """One ground-truth row, as written (``left`` / ``top`` in the file's pixel convention)."""

    frame: int
    track: int
    left: float
    top: float
    width: float
    height: float
    flag: float = 1.0
    cls: int | None = None
    visibility: float | None = None
    line: int = 0


def _number(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TrackingDataError(f"{where}: {column} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise TrackingDataError(f"{where}: {column} is not finite: {text!r}")
    return value


def _integer(text: str, where: str, column: str) -> int:
    value = _number(text, where, column)
    if value != int(value):
        raise TrackingDataError(f"{where}: {column} must be a whole number, got {text!r}")
    return int(value)


def read_ground_truth(path, *, layout: str = "mot", frame_base: int = 1) -> list[GtBox]:
    """Rows of a MOTChallenge ``gt.txt`` (``layout="mot"``) or AI City ``label.txt`` (``"aicity"``).

    MOT: the number of columns decides what follows the box (see the module docstring): 6
    (nothing), 7 (flag), 8 (flag, class), 9 (flag, class, visibility), 10 (flag, world x, y, z).
    AI City: only frame, id and box are read. Every row must have the file's column count.
    Raises :class:`TrackingDataError` naming the file and line of a malformed row, a frame
    before ``frame_base``, a negative id, a non-positive box size, a visibility outside 0..1
    or a second box of one id in one frame.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrackingDataError(f"{path}: cannot read ground truth ({exc})") from None
    boxes: list[GtBox] = []
    columns = None
    first_line_of: dict[tuple[int, int], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{path}, line {number}"
        fields = [f for f in re.split(r"\s*,\s*|\s+", line) if f != ""]
        if len(fields) < 6:
            raise TrackingDataError(f"{where}: expected at least 6 comma-separated values "
                                    f"(frame, id, left, top, width, height, ...), got {raw!r}")
        if columns is None:
            columns = len(fields)
            if layout == "mot" and columns > 10:
                raise TrackingDataError(f"{where}: {columns} values; MOTChallenge ground truth has 6 to 10")
        elif len(fields) != columns:
            raise TrackingDataError(f"{where}: {len(fields)} values, but the file's first row has {columns}")
        frame = _integer(fields[0], where, "frame")
        track = _integer(fields[1], where, "id")
        left, top, width, height = (_number(fields[i], where, name) for i, name in
                                    zip(range(2, 6), ("bb_left", "bb_top", "bb_width", "bb_height")))
        if frame < frame_base:
            raise TrackingDataError(f"{where}: frame {frame}, but frames are numbered from {frame_base} here")
        if track < 0:
            raise TrackingDataError(f"{where}: id {track}; ground truth needs track ids >= 0 "
                                    "(-1 marks a detection file, not ground truth)")
        if width <= 0 or height <= 0:
            raise TrackingDataError(f"{where}: box size {width:g} x {height:g} must be positive")
        flag, cls, visibility = 1.0, None, None
        if layout == "mot":
            if columns >= 7:
                flag = _number(fields[6], where, "conf")
            if columns in (8, 9):
                cls = _integer(fields[7], where, "class")
            if columns == 9:
                visibility = _number(fields[8], where, "visibility")
                if not 0.0 <= visibility <= 1.0:
                    raise TrackingDataError(f"{where}: visibility {visibility:g} is outside 0..1")
        key = (frame, track)
        if key in first_line_of:
            raise TrackingDataError(f"{where}: a second box of id {track} in frame {frame} "
                                    f"(the first is on line {first_line_of[key]})")
        first_line_of[key] = number
        boxes.append(GtBox(frame, track, left, top, width, height, flag, cls, visibility, number))
    if not boxes:
        raise TrackingDataError(f"{path}: no ground-truth rows")
    return boxes


# --------------------------------------------------------------------------------------
# Sources: MOTChallenge sequences, AI City 2023 scenes
# --------------------------------------------------------------------------------------

@dataclass
class CameraStream:
    """One camera of a source: its ground truth and its frames (image files or a video)."""

    name: str                        # sequence name (MOT) or camera folder (AI City, "c008")
    gt_path: Path
    layout: str                      # "mot" | "aicity": how the ground truth is read
    frame_base: int                  # ground-truth number of the first frame (MOT 1, AI City 0)
    pixel_base: int                  # box coordinate of the first pixel (MOT 1, AI City 0)
    frames: dict[int, Path] | None = None   # frame number -> image file
    video: Path | None = None
    size: tuple[int, int] | None = None     # (width, height), from seqinfo.ini or the media
    length: int | None = None               # frames in the sequence (seqinfo.ini seqLength)

    def media(self) -> str:
        return str(self.video) if self.video is not None else str(self.gt_path.parent.parent / "img1")

    def probe_size(self) -> tuple[int, int]:
        """(width, height) of the frames, read from the first image or the video stream."""
        if self.video is not None:
            av = _import_av()
            try:
                with av.open(str(self.video)) as container:
                    if not container.streams.video:
                        raise TrackingDataError(f"{self.video}: no video stream")
                    stream = container.streams.video[0]
                    return int(stream.codec_context.width), int(stream.codec_context.height)
            except TrackingDataError:
                raise
            except Exception as exc:  # PyAV raises its own FFmpeg error classes
                raise TrackingDataError(f"{self.video}: cannot open the video ({exc})") from None
        first = self.frames[min(self.frames)]
        try:
            with Image.open(first) as image:
                return image.size
        except Exception as exc:
            raise TrackingDataError(f"{first}: cannot read frame image ({exc})") from None


@dataclass
class TrackingSource:
    """A MOTChallenge sequence (one camera) or an AI City scene (synchronised cameras whose
    track ids name the same person in every camera)."""

    name: str
    path: Path
    kind: str                        # "motchallenge" | "aicity2023"
    synthetic: bool
    cameras: list[CameraStream] = field(default_factory=list)


def _read_seqinfo(folder: Path) -> dict:
    path = folder / "seqinfo.ini"
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
        section = parser["Sequence"]
    except (configparser.Error, KeyError, UnicodeDecodeError) as exc:
        raise TrackingDataError(f"{path}: not a MOTChallenge seqinfo.ini with a [Sequence] section ({exc})") from None
    info = dict(section)
    for key in ("seqlength", "imwidth", "imheight"):
        if key in info:
            try:
                info[key] = int(info[key])
            except ValueError:
                raise TrackingDataError(f"{path}: {key}={info[key]!r} is not a whole number") from None
    return info


def _frame_files(folder: Path, extension: str | None) -> dict[int, Path]:
    frames = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if extension and entry.suffix.lower() != extension.lower():
            continue
        if entry.stem.isdigit():
            frames[int(entry.stem)] = entry
    return frames


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _mot_sequence(folder: Path) -> CameraStream:
    info = _read_seqinfo(folder)
    name = info.get("name") or folder.name
    image_dir = folder / info.get("imdir", "img1")
    frames = _frame_files(image_dir, info.get("imext")) if image_dir.is_dir() else {}
    video = None
    if not frames:
        videos = _videos_in(folder)
        named = [v for v in videos if v.stem == name]
        if len(named) == 1 or len(videos) == 1:
            video = (named or videos)[0]
        elif videos:
            raise TrackingDataError(f"{folder}: no frames in {image_dir.name}/ and several videos "
                                    f"({', '.join(v.name for v in videos)}); keep one, or name it {name}.<ext>")
        else:
            raise TrackingDataError(f"{folder}: no frames in {image_dir}/ and no video file "
                                    f"({', '.join(VIDEO_EXTENSIONS)}) in the sequence folder")
    size = (info["imwidth"], info["imheight"]) if "imwidth" in info and "imheight" in info else None
    return CameraStream(name=name, gt_path=folder / "gt" / "gt.txt", layout="mot", frame_base=1, pixel_base=1,
                        frames=frames or None, video=video, size=size, length=info.get("seqlength"))


def _aicity_scene(folder: Path) -> list[CameraStream]:
    cameras = []
    for camera_dir in sorted(p for p in folder.iterdir() if p.is_dir() and _AICITY_CAMERA.match(p.name)):
        label = camera_dir / "label.txt"
        if not label.is_file():
            raise TrackingDataError(f"{camera_dir}: no label.txt (AI City test scenes ship without ground truth)")
        videos = _videos_in(camera_dir)
        named = [v for v in videos if v.name == "video.mp4"]
        if not (named or len(videos) == 1):
            raise TrackingDataError(f"{camera_dir}: expected video.mp4 beside label.txt"
                                    + (f", found {', '.join(v.name for v in videos)}" if videos else ""))
        cameras.append(CameraStream(name=camera_dir.name, gt_path=label, layout="aicity", frame_base=0,
                                    pixel_base=0, video=(named or videos)[0]))
    return cameras


def _is_mot(folder: Path) -> bool:
    return (folder / "gt" / "gt.txt").is_file()


def _is_aicity(folder: Path) -> bool:
    return any(p.is_dir() and _AICITY_CAMERA.match(p.name) and (p / "label.txt").is_file() for p in folder.iterdir())


def _open_one(folder: Path, synthetic: bool | None) -> TrackingSource | None:
    if _is_mot(folder):
        stream = _mot_sequence(folder)
        return TrackingSource(stream.name, folder, "motchallenge", bool(synthetic), [stream])
    if _is_aicity(folder):
        flag = synthetic if synthetic is not None else folder.name not in _REAL_AICITY_SCENES
        return TrackingSource(folder.name, folder, "aicity2023", flag, _aicity_scene(folder))
    return None


def _content_key(source: TrackingSource) -> str:
    digest = hashlib.sha1()
    for camera in source.cameras:
        digest.update(camera.gt_path.read_bytes())
        digest.update(str(len(camera.frames or ())).encode())
        if camera.video is not None:
            digest.update(str(camera.video.stat().st_size).encode())
    return digest.hexdigest()


def discover_sources(specs, *, log=print) -> list[TrackingSource]:
    """Open every SOURCE: a MOTChallenge sequence, an AI City 2023 scene, or a folder of them.

    A spec may start with ``real:`` or ``synthetic:`` to set the flag of everything under it
    (defaults: MOTChallenge real; AI City synthetic except the real scene S001).
    """
    sources: list[TrackingSource] = []
    seen_paths: set[Path] = set()
    seen_content: dict[str, str] = {}
    for spec in specs:
        spec = str(spec)
        synthetic = None
        for prefix, flag in (("real:", False), ("synthetic:", True)):
            if spec.startswith(prefix):
                spec, synthetic = spec[len(prefix):], flag
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise TrackingDataError(f"source not found (expected a folder): {folder}")
        one = _open_one(folder, synthetic)
        if one is not None:
            found = [one]
        else:
            found = [s for s in (_open_one(child, synthetic) for child in sorted(folder.iterdir()) if child.is_dir())
                     if s is not None]
            if not found:
                raise TrackingDataError(
                    f"{folder}: not a MOTChallenge sequence (no gt/gt.txt), not an AI City 2023 scene "
                    "(no c*/label.txt), and no such folder inside it")
        for source in found:
            resolved = source.path.resolve()
            if resolved in seen_paths:
                raise TrackingDataError(f"{source.path}: given twice")
            seen_paths.add(resolved)
            key = _content_key(source)
            if key in seen_content:
                log(f"skipping {source.path}: same ground truth and frames as {seen_content[key]}")
                continue
            seen_content[key] = str(source.path)
            sources.append(source)
    names = Counter(s.name for s in sources)
    counts: Counter = Counter()
    for source in sources:  # two scenes called S002 (train/ and validation/ of two releases) stay apart
        if names[source.name] > 1:
            counts[source.name] += 1
            source.name = f"{source.name}#{counts[source.name]}"
    return sources


# --------------------------------------------------------------------------------------
# Options and the plan
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingOptions:
    every: int = 1                   # keep frames first, first + every, ...
    max_per_camera: int | None = 30  # crops per identity per camera, spread over the track (None: all)
    min_height: int = 40             # pixels, after clipping to the frame
    min_visibility: float = 0.3      # where the ground truth records visibility
    min_inside: float = 0.6          # share of a box's area that must lie inside the frame
    outside: str = "error"           # a box entirely outside the frame: "error" or "drop"
    classes: tuple[int, ...] = (1,)  # MOT classes kept where the ground truth has classes

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise TrackingDataError(message)
        need(self.every >= 1, f"--every must be >= 1 (got {self.every})")
        need(self.max_per_camera is None or self.max_per_camera >= 1,
             f"--max-per-camera must be >= 1, or 0 for no cap (got {self.max_per_camera})")
        need(self.min_height >= 1, f"--min-height must be >= 1 pixel (got {self.min_height})")
        need(0.0 <= self.min_visibility <= 1.0, f"--min-visibility must be in 0..1 (got {self.min_visibility})")
        need(0.0 < self.min_inside <= 1.0, f"--min-inside must be in (0, 1] (got {self.min_inside})")
        need(self.outside in ("error", "drop"), f"--outside must be error or drop (got {self.outside!r})")
        need(len(self.classes) > 0, "--classes names no class")


@dataclass(frozen=True)
class SplitOptions:
    layout: str = "reid"             # "reid": train / query / gallery; "unlabeled": one folder
    test_fraction: float = 0.5       # share of identities held out for query / gallery
    test_identities: int | None = None  # or exactly this many (overrides test_fraction)
    queries_per_camera: int = 2
    gap_frames: int = 30             # one-camera sources: frames between query and gallery
    seed: int = 0
    pid_start: int = 1

    def validate(self) -> None:
        if self.layout not in ("reid", "unlabeled"):
            raise TrackingDataError(f"--layout must be reid or unlabeled (got {self.layout!r})")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise TrackingDataError(f"--test-fraction must be in [0, 1] (got {self.test_fraction})")
        if self.test_identities is not None and self.test_identities < 0:
            raise TrackingDataError(f"--test-identities must be >= 0 (got {self.test_identities})")
        if self.queries_per_camera < 1:
            raise TrackingDataError(f"--queries-per-camera must be >= 1 (got {self.queries_per_camera})")
        if self.gap_frames < 0:
            raise TrackingDataError(f"--gap-frames must be >= 0 (got {self.gap_frames})")
        if self.pid_start < 1:
            raise TrackingDataError(f"--pid-start must be >= 1: pid 0 marks distractors (got {self.pid_start})")


@dataclass
class Crop:
    frame: int
    track: int
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 in 0-based pixels, clipped to the frame
    line: int
    split: str = ""
    camera: int = 0                  # output camera number (1-based)
    pid: int = 0
    file: str = ""                   # path relative to the output folder


def _spread(count: int, keep: int) -> list[int]:
    """``keep`` indices out of ``count``, evenly spread from the first to the last."""
    if keep >= count:
        return list(range(count))
    if keep == 1:
        return [0]
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, keep)})


def _sample_stream(stream: CameraStream, sampling: SamplingOptions,
                   drops: Counter) -> tuple[dict[int, list[Crop]], int]:
    """Kept crops of one camera by track id, and the number of ground-truth boxes; every
    left-out box is counted in ``drops`` under its reason."""
    boxes = read_ground_truth(stream.gt_path, layout=stream.layout, frame_base=stream.frame_base)
    width, height = stream.size or stream.probe_size()
    stream.size = (width, height)
    frames = stream.frames
    by_track: dict[int, list[Crop]] = defaultdict(list)
    classes = set(sampling.classes)
    for box in boxes:
        where = f"{stream.gt_path}, line {box.line}"
        if stream.length is not None and box.frame > stream.frame_base + stream.length - 1:
            raise TrackingDataError(f"{where}: frame {box.frame}, but seqinfo.ini says the sequence has "
                                    f"{stream.length} frames")
        if frames is not None and box.frame not in frames:
            raise TrackingDataError(f"{where}: frame {box.frame} has no image in {stream.media()}")
        if box.flag == 0:
            drops["ignored"] += 1
            continue
        if box.cls is not None and box.cls not in classes:
            drops["class"] += 1
            continue
        if (box.frame - stream.frame_base) % sampling.every:
            drops["frame_step"] += 1
            continue
        left, top = box.left - stream.pixel_base, box.top - stream.pixel_base
        inside_w = min(left + box.width, width) - max(left, 0.0)
        inside_h = min(top + box.height, height) - max(top, 0.0)
        if inside_w <= 0 or inside_h <= 0:
            if sampling.outside == "error":
                raise TrackingDataError(
                    f"{where}: box (left {box.left:g}, top {box.top:g}, {box.width:g} x {box.height:g}) lies "
                    f"entirely outside the {width}x{height} frame (pass --outside drop to skip such boxes)")
            drops["outside"] += 1
            continue
        if inside_w * inside_h < sampling.min_inside * box.width * box.height:
            drops["mostly_outside"] += 1
            continue
        x0, y0 = max(0, round(left)), max(0, round(top))
        x1, y1 = min(width, round(left + box.width)), min(height, round(top + box.height))
        if y1 - y0 < sampling.min_height or x1 <= x0:
            drops["too_small"] += 1
            continue
        if box.visibility is not None and box.visibility < sampling.min_visibility:
            drops["occluded"] += 1
            continue
        by_track[box.track].append(Crop(box.frame, box.track, (x0, y0, x1, y1), box.line))
    capped: dict[int, list[Crop]] = {}
    for track, crops in by_track.items():
        crops.sort(key=lambda c: c.frame)
        if sampling.max_per_camera is not None and len(crops) > sampling.max_per_camera:
            keep = _spread(len(crops), sampling.max_per_camera)
            drops["per_camera_cap"] += len(crops) - len(keep)
            crops = [crops[i] for i in keep]
        capped[track] = crops
    return capped, len(boxes)


def _test_quotas(counts: list[int], split: SplitOptions) -> list[int]:
    """Test identities per source: the total (fraction or count) shared in proportion,
    rounding by largest remainders so the quotas add up to it exactly."""
    total = sum(counts)
    if total == 0:
        return [0] * len(counts)
    wanted = split.test_identities if split.test_identities is not None else round(split.test_fraction * total)
    if wanted > total:
        raise TrackingDataError(f"--test-identities {wanted}, but the sources have only {total} identities "
                                "with crops left after sampling")
    exact = [wanted * c / total for c in counts]
    quotas = [int(math.floor(e)) for e in exact]
    order = sorted(range(len(counts)), key=lambda i: (quotas[i] - exact[i], i))
    for i in order[: wanted - sum(quotas)]:
        quotas[i] += 1
    return quotas


def _source_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


@dataclass
class _Plan:
    streams: list[tuple[CameraStream, int, list[Crop]]]  # stream, output camera, crops to write
    sources: list[dict]
    cameras: list[dict]
    identities: list[dict]
    drops: dict[str, Counter]


def _plan(sources: list[TrackingSource], sampling: SamplingOptions, split: SplitOptions, ext: str) -> _Plan:
    kept: list[dict[str, dict[int, list[Crop]]]] = []   # per source: camera name -> track -> crops
    drops: dict[str, Counter] = {}
    gt_boxes: dict[str, int] = {}
    for source in sources:
        drop = Counter()
        cameras = {}
        gt_boxes[source.name] = 0
        for stream in source.cameras:
            cameras[stream.name], count = _sample_stream(stream, sampling, drop)
            gt_boxes[source.name] += count
        drops[source.name] = drop
        kept.append(cameras)

    tracks_per_source = [sorted({t for per in cams.values() for t, crops in per.items() if crops}) for cams in kept]
    quotas = (_test_quotas([len(t) for t in tracks_per_source], split) if split.layout == "reid"
              else [0] * len(sources))

    plan = _Plan([], [], [], [], drops)
    next_pid, next_camera = split.pid_start, 1
    for index, (source, cameras, tracks, quota) in enumerate(zip(sources, kept, tracks_per_source, quotas)):
        seq = index + 1
        rng = _source_rng(split.seed, source.name)
        test_tracks = set(rng.permutation(np.array(tracks, dtype=np.int64))[:quota].tolist()) if quota else set()
        pid_of = {track: next_pid + i for i, track in enumerate(tracks)}
        camera_of = {}
        for stream in source.cameras:
            camera_of[stream.name] = next_camera
            plan.cameras.append({"camera": next_camera, "source": source.name, "stream": stream.name,
                                 "synthetic": source.synthetic, "virtual_of": ""})
            next_camera += 1
        one_camera = len(source.cameras) == 1
        virtual = None
        if one_camera and test_tracks:
            virtual = next_camera
            plan.cameras.append({"camera": virtual, "source": source.name, "stream": source.cameras[0].name,
                                 "synthetic": source.synthetic,
                                 "virtual_of": f"c{camera_of[source.cameras[0].name]}: gallery segment, "
                                               f"{split.gap_frames}+ frames after the identity's queries"})
            next_camera += 1

        assign: dict[str, list[Crop]] = {stream.name: [] for stream in source.cameras}
        per_track_splits: dict[int, Counter] = defaultdict(Counter)
        per_track_cameras: dict[int, set] = defaultdict(set)
        for track in tracks:
            per_camera = {name: cams[track] for name, cams in cameras.items() if cams.get(track)}
            if split.layout == "unlabeled":
                for name, crops in per_camera.items():
                    for crop in crops:
                        crop.split = "unlabeled"
            elif track not in test_tracks:
                for crops in per_camera.values():
                    for crop in crops:
                        crop.split = "train"
            elif one_camera:
                [(name, crops)] = per_camera.items()
                queries = min(split.queries_per_camera, len(crops))
                start = crops[queries - 1].frame + split.gap_frames  # the gallery segment's first frame
                if not any(c.frame >= start for c in crops[queries:]):
                    queries, start = 0, -math.inf  # too short for both segments: gallery only
                for i, crop in enumerate(crops):
                    crop.split = "query" if i < queries else ("gallery" if crop.frame >= start else "")
                drops[source.name]["query_gap"] += sum(not c.split for c in crops)
                cameras[name][track] = [c for c in crops if c.split]
            else:
                query_cameras = {name for name, crops in per_camera.items() if len(crops) >= 2}
                if len(per_camera) >= 2 and not query_cameras:
                    query_cameras = {sorted(per_camera)[0]}
                if len(per_camera) < 2:
                    query_cameras = set()
                for name, crops in per_camera.items():
                    if name in query_cameras:
                        take = min(split.queries_per_camera, max(1, len(crops) - 1))
                        chosen = set(_spread(len(crops), take))
                    else:
                        chosen = set()
                    for i, crop in enumerate(crops):
                        crop.split = "query" if i in chosen else "gallery"
            for name in per_camera:
                for crop in cameras[name].get(track, []):
                    camera = virtual if (virtual is not None and crop.split == "gallery") else camera_of[name]
                    crop.camera, crop.pid = camera, pid_of[track]
                    crop.file = (f"{SPLIT_DIRS[crop.split]}/{crop.pid:04d}_c{camera}s{seq}_"
                                 f"{crop.frame:06d}_00.{ext}")
                    assign[name].append(crop)
                    per_track_splits[track][crop.split] += 1
                    per_track_cameras[track].add(camera)
        for track in tracks:
            counts = per_track_splits[track]
            plan.identities.append({
                "pid": pid_of[track], "source": source.name, "track_id": track,
                "split": "unlabeled" if split.layout == "unlabeled" else ("test" if track in test_tracks else "train"),
                "synthetic": source.synthetic, "train": counts["train"], "query": counts["query"],
                "gallery": counts["gallery"], "unlabeled": counts["unlabeled"],
                "cameras": " ".join(f"c{camera}" for camera in sorted(per_track_cameras[track])),
            })
        for stream in source.cameras:
            crops = sorted(assign[stream.name], key=lambda c: (c.frame, c.track))
            plan.streams.append((stream, camera_of[stream.name], crops))
        plan.sources.append({
            "name": source.name, "kind": source.kind, "path": str(source.path), "synthetic": source.synthetic,
            "seq": seq, "pid_first": next_pid, "pid_last": next_pid + len(tracks) - 1,
            "cameras": [camera_of[s.name] for s in source.cameras], "virtual_cameras": [virtual] if virtual else [],
            "ground_truth_boxes": gt_boxes[source.name],
            "identities": len(tracks), "test_identities": len(test_tracks),
        })
        next_pid += len(tracks)
    return plan


# --------------------------------------------------------------------------------------
# Extraction: decode each frame once, crop every box of it
# --------------------------------------------------------------------------------------

def _import_av():
    try:
        import av
    except ImportError:  # pragma: no cover - declared dependency
        raise TrackingDataError("video input needs PyAV: pip install av") from None
    return av


def _video_frames(stream: CameraStream, wanted: list[int], lines: dict[int, int]):
    """(frame number, RGB array) for each wanted frame, decoding the video once in order."""
    av = _import_av()
    path = stream.video
    targets = iter(wanted)
    target = next(targets, None)
    decoded = 0
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise TrackingDataError(f"{path}: cannot open the video ({exc})") from None
    with container:
        if not container.streams.video:
            raise TrackingDataError(f"{path}: no video stream")
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        try:
            for frame in container.decode(video):
                number = stream.frame_base + decoded
                decoded += 1
                if number == target:
                    yield number, frame.to_ndarray(format="rgb24")
                    target = next(targets, None)
                    if target is None:
                        return
        except TrackingDataError:
            raise
        except Exception as exc:
            raise TrackingDataError(f"{path}: decoding failed after {decoded} frames ({exc})") from None
    if target is not None:
        raise TrackingDataError(
            f"{path}: the video has {decoded} frames (numbered {stream.frame_base}..{stream.frame_base + decoded - 1} "
            f"in the ground truth), but {stream.gt_path}, line {lines[target]} refers to frame {target}: "
            "the video is shorter than its ground truth")


def _image_frames(stream: CameraStream, wanted: list[int], lines: dict[int, int]):
    for number in wanted:
        path = stream.frames[number]
        try:
            with Image.open(path) as image:
                image.load()
                yield number, np.asarray(image.convert("RGB"))
        except Exception as exc:
            raise TrackingDataError(f"{path}: cannot read frame {number} "
                                    f"({stream.gt_path}, line {lines[number]} has a box in it): {exc}") from None


def _encode(crop: np.ndarray, ext: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(crop)
    if ext == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


_PROGRESS_QUEUE = None


def _init_worker(progress_queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = progress_queue


def _extract_stream(task: tuple) -> tuple[int, int]:
    """Write one camera stream's crops into the staging folder; returns (task index, crops)."""
    index, stream, crops, staging, ext, quality = task
    staging = Path(staging)
    by_frame: dict[int, list[Crop]] = defaultdict(list)
    for crop in crops:
        by_frame[crop.frame].append(crop)
    wanted = sorted(by_frame)
    lines = {frame: by_frame[frame][0].line for frame in wanted}
    reader = _video_frames if stream.video is not None else _image_frames
    width, height = stream.size
    written = pending = 0
    for number, pixels in reader(stream, wanted, lines):
        if pixels.shape[1] != width or pixels.shape[0] != height:
            source = stream.video or stream.frames[number]
            raise TrackingDataError(f"{source}: frame {number} is {pixels.shape[1]}x{pixels.shape[0]}, but the "
                                    f"sequence is {width}x{height} (seqinfo.ini or its first frame)")
        for crop in by_frame[number]:
            x0, y0, x1, y1 = crop.box
            target = staging / crop.file
            target.write_bytes(_encode(pixels[y0:y1, x0:x1], ext, quality))
            written += 1
            pending += 1
        if _PROGRESS_QUEUE is not None and pending >= 16:
            _PROGRESS_QUEUE.put(pending)
            pending = 0
    if _PROGRESS_QUEUE is not None and pending:
        _PROGRESS_QUEUE.put(pending)
    atomic_write_json(staging / "_done" / f"{index:05d}.json", {"stream": stream.name, "crops": written})
    return index, written


# --------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------

@dataclass
class ConversionResult:
    out_dir: Path
    summary: dict
    reused_streams: int

    def format_summary(self) -> str:
        return format_summary(self.summary)


def _fingerprint(plan: _Plan, ext: str, quality: int) -> str:
    digest = hashlib.sha256(json.dumps({"ext": ext, "quality": quality, "version": FORMAT_VERSION}).encode())
    for stream, camera, crops in plan.streams:
        digest.update(f"{stream.media()}|{camera}|{len(crops)}\n".encode())
        for crop in crops:
            digest.update(f"{crop.file}|{crop.box}\n".encode())
    return digest.hexdigest()


def _write_tables(staging: Path, plan: _Plan, summary: dict) -> None:
    def write_csv(name: str, rows: list[dict], columns: list[str]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(staging / name, buffer.getvalue())

    write_csv("id_map.csv", plan.identities, ["pid", "source", "track_id", "split", "synthetic", "cameras", "train",
                                              "query", "gallery", "unlabeled"])
    write_csv("cameras.csv", plan.cameras, ["camera", "source", "stream", "synthetic", "virtual_of"])
    atomic_write_json(staging / "summary.json", summary)
    flags = {s["synthetic"] for s in plan.sources}
    atomic_write_json(staging / "reid_source.json", {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "synthetic": flags == {True},
        "sources": [{k: s[k] for k in ("name", "kind", "path", "synthetic", "pid_first", "pid_last", "cameras",
                                       "virtual_cameras")} for s in plan.sources],
    })


def _summary(plan: _Plan, sampling: SamplingOptions, split: SplitOptions, ext: str, quality: int) -> dict:
    per_source = []
    totals: Counter = Counter()
    all_crops = [c for _, _, crops in plan.streams for c in crops]
    for source in plan.sources:
        crops = [c for c in all_crops if source["pid_first"] <= c.pid <= source["pid_last"]]
        by_split = Counter(c.split for c in crops)
        ids_by_split = {name: len({c.pid for c in crops if c.split == name}) for name in by_split}
        drops = {reason: count for reason, count in plan.drops[source["name"]].items() if count}
        entry = {**source, "crops": len(crops), "crops_by_split": dict(by_split),
                 "identities_by_split": ids_by_split, "dropped": drops,
                 "identities_with_crops": len({c.pid for c in crops})}
        per_source.append(entry)
        totals["ground_truth_boxes"] += source["ground_truth_boxes"]
        totals["crops"] += len(crops)
        for name, count in by_split.items():
            totals[f"crops_{name}"] += count
        for reason, count in drops.items():
            totals[f"dropped_{reason}"] += count
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "options": {"sampling": asdict(sampling), "split": asdict(split), "ext": ext, "quality": quality},
        "sources": per_source, "totals": dict(totals),
        "identities": len(plan.identities), "cameras": len(plan.cameras),
        "drop_reasons": DROP_REASONS,
    }


def format_summary(summary: dict) -> str:
    """What was kept and what was dropped, and why, per source."""
    lines = []
    for s in summary["sources"]:
        flag = "synthetic" if s["synthetic"] else "real"
        splits = ", ".join(f"{name} {count} crops / {s['identities_by_split'].get(name, 0)} ids"
                           for name, count in sorted(s["crops_by_split"].items()))
        lines.append(f"{s['name']} ({s['kind']}, {flag}, {len(s['cameras'])} camera(s), pids "
                     f"{s['pid_first']}-{s['pid_last']}): {s['ground_truth_boxes']} ground-truth boxes -> "
                     f"{s['crops']} crops of {s['identities_with_crops']} identities ({splits or 'none'})")
        for reason, count in sorted(s["dropped"].items(), key=lambda item: -item[1]):
            lines.append(f"    dropped {count:>7}  {DROP_REASONS.get(reason, reason)}")
    t = summary["totals"]
    lines.append(f"total: {t.get('ground_truth_boxes', 0)} boxes -> {t.get('crops', 0)} crops, "
                 f"{summary['identities']} identities, {summary['cameras']} cameras")
    return "\n".join(lines)


def _run(tasks: list[tuple], workers: int, bar) -> None:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            _extract_stream(task)
            bar.update(len(task[2]))
        return
    context = multiprocessing.get_context("spawn")  # independent of the parent's threads (torch, tqdm)
    progress = context.Queue()
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context,
                             initializer=_init_worker, initargs=(progress,)) as pool:
        pending = {pool.submit(_extract_stream, task) for task in tasks}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # re-raises a worker's TrackingDataError
                while True:
                    try:
                        bar.update(progress.get_nowait())
                    except queue_module.Empty:
                        break
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def convert_tracking(sources: list[TrackingSource], out_dir, *, sampling: SamplingOptions = SamplingOptions(),
                     split: SplitOptions = SplitOptions(), ext: str = "jpg", quality: int = 95, workers: int = 1,
                     overwrite: bool = False, progress: bool = False, log=print) -> ConversionResult:
    """Convert ``sources`` into ``out_dir`` (see the module docstring); returns the summary.

    Nothing appears at ``out_dir`` until every crop is written: the run works in
    ``.<name>.partial`` beside it and renames that at the end. A re-run of the same plan
    (same sources and options) reuses the camera streams a killed run had finished.
    """
    sampling.validate()
    split.validate()
    if ext not in ("jpg", "png"):
        raise TrackingDataError(f"--ext must be jpg or png (got {ext!r})")
    if not 1 <= quality <= 100:
        raise TrackingDataError(f"--quality must be in 1..100 (got {quality})")
    if not sources:
        raise TrackingDataError("no sources to convert")
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not overwrite:
        raise TrackingDataError(f"{out_dir} already exists; pass --overwrite to replace it")
    plan = _plan(sources, sampling, split, ext)
    if not any(crops for _, _, crops in plan.streams):
        raise TrackingDataError("every box was dropped: nothing to write (see the reasons with --dry-run)")

    staging = out_dir.parent / f".{out_dir.name}.partial"
    fingerprint = _fingerprint(plan, ext, quality)
    marker = staging / "_plan.json"
    if staging.exists():
        try:
            same = json.loads(marker.read_text())["fingerprint"] == fingerprint
        except (OSError, ValueError, KeyError):
            same = False
        if not same:
            log(f"removing {staging}: left by an interrupted run with other sources or options")
            shutil.rmtree(staging)
    for folder in ({SPLIT_DIRS[c.split] for _, _, crops in plan.streams for c in crops} | {"_done"}):
        (staging / folder).mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"fingerprint": fingerprint})

    tasks, reused, total = [], 0, 0
    for index, (stream, _camera, crops) in enumerate(plan.streams):
        if not crops:
            continue
        total += len(crops)
        if (staging / "_done" / f"{index:05d}.json").is_file():
            reused += 1
            continue
        tasks.append((index, stream, crops, str(staging), ext, quality))
    tasks.sort(key=lambda task: -len(task[2]))  # longest first: better balance over workers
    if reused:
        log(f"resuming {staging}: {reused} camera stream(s) already written")

    from tqdm import tqdm

    done_crops = total - sum(len(t[2]) for t in tasks)
    with tqdm(total=total, initial=done_crops, unit="crop", desc="cropping", disable=not progress,
              dynamic_ncols=True) as bar:
        _run(tasks, workers, bar)

    summary = _summary(plan, sampling, split, ext, quality)
    _write_tables(staging, plan, summary)
    shutil.rmtree(staging / "_done")
    marker.unlink()
    if out_dir.exists():  # --overwrite: swap, then remove the old output
        old = out_dir.parent / f".{out_dir.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(staging, out_dir)
    return ConversionResult(out_dir, summary, reused)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    s, p = SamplingOptions(), SplitOptions()
    parser = argparse.ArgumentParser(
        prog="python data_shards/from_tracking.py",
        description="Turn tracking ground truth (MOTChallenge sequences, AI City Challenge 2023 Track 1 "
                    "scenes) into Market-1501-named ReID crops (train / query / gallery) or unlabeled "
                    "crops for pretraining.",
        formatter_class=HelpFormatter,
        epilog="SOURCE: a MOTChallenge sequence folder (seqinfo.ini, img1/ or a video, gt/gt.txt), an AI City "
               "2023 scene folder (c0NN/video.mp4 + c0NN/label.txt), or a folder of either; prefix real: or "
               "synthetic: to set its flag (default: MOTChallenge real, AI City synthetic except S001).")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("sources", metavar="SOURCE", nargs="+", help="sequences / scenes to convert")
    group = parser.add_argument_group("sampling")
    group.add_argument("--every", type=int, default=s.every, help="keep every N-th frame (default %(default)s)")
    group.add_argument("--max-per-camera", type=int, default=s.max_per_camera,
                       help="at most M crops per identity per camera, spread over the track; 0 = no cap "
                            "(default %(default)s)")
    group.add_argument("--min-height", type=int, default=s.min_height,
                       help="minimum box height in pixels after clipping (default %(default)s)")
    group.add_argument("--min-visibility", type=float, default=s.min_visibility,
                       help="minimum visibility where gt.txt has it (default %(default)s)")
    group.add_argument("--min-inside", type=float, default=s.min_inside,
                       help="share of a box that must lie inside the frame (default %(default)s)")
    group.add_argument("--outside", choices=("error", "drop"), default=s.outside,
                       help="a box entirely outside the frame: stop with an error, or drop it (default %(default)s)")
    group.add_argument("--classes", default=",".join(map(str, s.classes)),
                       help="MOT classes to keep where gt.txt has classes, e.g. 1,7 (default %(default)s: pedestrian)")
    group = parser.add_argument_group("identities and split")
    group.add_argument("--layout", choices=("reid", "unlabeled"), default=p.layout,
                       help="reid: bounding_box_train / query / bounding_box_test; unlabeled: one folder of "
                            "crops for pretraining (default %(default)s)")
    group.add_argument("--test-fraction", type=float, default=p.test_fraction,
                       help="share of identities held out for query / gallery; 0 = all train, 1 = all "
                            "query / gallery, e.g. to split by scene over two runs (default %(default)s)")
    group.add_argument("--test-identities", type=int, default=None,
                       help="hold out exactly N identities instead (e.g. 50 as the model card's AI City test; "
                            "default: none, --test-fraction decides)")
    group.add_argument("--queries-per-camera", type=int, default=p.queries_per_camera,
                       help="query crops per test identity and camera (default %(default)s)")
    group.add_argument("--gap-frames", type=int, default=p.gap_frames,
                       help="one-camera sources: frames between an identity's queries and its gallery "
                            "(default %(default)s)")
    group.add_argument("--seed", type=int, default=p.seed, help="split seed (default %(default)s)")
    group.add_argument("--pid-start", type=int, default=p.pid_start, help="first person id (default %(default)s)")
    group = parser.add_argument_group("output")
    group.add_argument("--ext", choices=("jpg", "png"), default="jpg", help="crop format (default %(default)s)")
    group.add_argument("--quality", type=int, default=95, help="JPEG quality (default %(default)s)")
    group.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                       help="camera streams converted in parallel (default %(default)s)")
    group.add_argument("--shards", metavar="DIR", default=None,
                       help="then build WebDataset shards for pretraining into DIR from unlabeled/ "
                            "(--layout unlabeled) or bounding_box_train/ (default: no shards)")
    group.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    group.add_argument("--dry-run", action="store_true", help="plan and print the summary; write nothing")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        classes = tuple(int(c) for c in args.classes.split(",") if c.strip())
    except ValueError:
        parser.error(f"argument --classes: expected comma-separated class numbers, got {args.classes!r}")
    sampling = SamplingOptions(every=args.every, max_per_camera=args.max_per_camera or None,
                               min_height=args.min_height, min_visibility=args.min_visibility,
                               min_inside=args.min_inside, outside=args.outside, classes=classes)
    split = SplitOptions(layout=args.layout, test_fraction=args.test_fraction, test_identities=args.test_identities,
                         queries_per_camera=args.queries_per_camera, gap_frames=args.gap_frames, seed=args.seed,
                         pid_start=args.pid_start)
    try:
        sources = discover_sources(args.sources)
        if args.dry_run:
            sampling.validate()
            split.validate()
            plan = _plan(sources, sampling, split, args.ext)
            print(format_summary(_summary(plan, sampling, split, args.ext, args.quality)))
            return 0
        result = convert_tracking(sources, args.out_dir, sampling=sampling, split=split, ext=args.ext,
                                  quality=args.quality, workers=max(1, args.workers), overwrite=args.overwrite,
                                  progress=not args.no_progress)
    except TrackingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.format_summary())
    print(f"wrote {result.out_dir}")
    if args.shards:
        from soliderkit.data.build import build_shards

        folder = result.out_dir / SPLIT_DIRS["unlabeled" if args.layout == "unlabeled" else "train"]
        built = build_shards(folder, args.shards, workers=max(1, args.workers), progress=not args.no_progress)
        print(f"shards: {built.num_samples} crops in {built.num_shards} shard(s) in {args.shards}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

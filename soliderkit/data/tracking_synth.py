"""Procedural multi-camera tracking sequences: the synthetic world's people walking past fixed cameras.

For tests and demos of the tracking converter (:mod:`soliderkit.data.tracking`) without any
downloaded footage. :func:`render_tracking_scene` draws a short sequence per camera -- the
camera's backdrop from :mod:`soliderkit.data.synth`, that world's pedestrians
(:func:`~soliderkit.data.synth.identity_person`, drawn by its renderer) walking across it,
nearer people drawn over farther ones -- and records the ground truth of every frame:
identities are shared across cameras, boxes are whole pixels, visibility is the share of a
box not covered by the boxes of people in front of it. The ground truth deliberately holds
what the converter has to filter: people entering the frame (partly outside), a person too
far away (small), occlusions, a parked car (MOT class 3) and one ignored box (flag 0).

Writers put a scene on disk in the layouts the converter reads: MOTChallenge sequences
(:func:`write_mot_sequence`, frames in ``img1/`` or one video file, 9-column ``gt.txt``) and
an AI City Challenge 2023 scene (:func:`write_aicity_scene`: ``c001/video.mp4`` +
``c001/label.txt``, 0-based frames and pixels). Videos are written with PyAV; ``.mkv`` uses the
lossless FFV1 codec, so frames decode to exactly the pixels drawn; ``.mp4`` uses H.264.

CLI (a scene to look at): ``python -m soliderkit.data.tracking_synth OUT_DIR [--cameras 2] [--frames 24]``
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from soliderkit.cli import HelpFormatter
from soliderkit.data.synth import camera_backdrop, camera_rig, identity_person, person_sprite

__all__ = ["GtRow", "TrackingScene", "render_tracking_scene", "write_aicity_scene", "write_mot_sequence",
           "write_video"]

PEDESTRIAN, CAR = 1, 3
_STREAM = 71  # random stream of this module (synth.py uses 11..53)


@dataclass(frozen=True)
class GtRow:
    """One ground-truth box: 1-based frame, 0-based whole-pixel box (it may extend past the frame)."""

    camera: int
    frame: int
    track: int
    left: int
    top: int
    width: int
    height: int
    flag: int = 1
    cls: int = PEDESTRIAN
    visibility: float = 1.0


@dataclass
class TrackingScene:
    """Frames (uint8 RGB, index 0 = frame 1) per camera, and the ground truth of all cameras."""

    frames: dict[int, list[np.ndarray]]
    rows: list[GtRow]
    width: int
    height: int
    fps: int
    seed: int

    def rows_of(self, camera: int) -> list[GtRow]:
        return [r for r in self.rows if r.camera == camera]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([*key, len(key)])


def render_tracking_scene(cameras: int = 2, identities: int = 5, frames: int = 16, width: int = 160,
                          height: int = 120, seed: int = 0, fps: int = 10) -> TrackingScene:
    """Draw ``frames`` frames per camera of ``identities`` people (the synthetic world's people of
    ``seed``), most of them seen by every camera. Deterministic for given arguments."""
    if cameras < 1 or identities < 2 or frames < 4:
        raise ValueError("need at least 1 camera, 2 identities and 4 frames")
    rig = camera_rig(seed, cameras)
    # Who is seen where: everyone by camera 1; by the others, all but every third identity.
    seen_by = {pid: [c for c in range(1, cameras + 1) if c == 1 or pid % 3 != 0] for pid in range(1, identities + 1)}
    far = identities  # the last identity walks far away: too small to keep at usual thresholds
    rows: list[GtRow] = []
    all_frames: dict[int, list[np.ndarray]] = {}
    for camera in range(1, cameras + 1):
        cam = rig[camera - 1]
        backdrop = camera_backdrop(cam, _rng(seed, _STREAM, camera), width, height)
        gains = np.array(cam.channel_gains, dtype=np.float32) * cam.brightness
        tracks = []
        for pid, cams in seen_by.items():
            if camera not in cams:
                continue
            rng = _rng(seed, _STREAM, camera, pid)
            box_h = int(rng.integers(22, 27)) if pid == far else int(rng.integers(44, 66))
            box_w = max(8, box_h // 2)
            direction = 1 if rng.uniform() < 0.5 else -1
            start = int(rng.integers(1, max(2, frames // 4)))
            end = int(rng.integers(max(start + 3, 3 * frames // 4), frames + 1))
            # Enter partly outside the frame (a third to two thirds of the box) and walk across.
            enter = -int(box_w * rng.uniform(0.3, 0.7))
            leave = width - box_w - int(rng.integers(0, max(1, width // 4)))
            x0, x1 = (enter, leave) if direction > 0 else (width - box_w - enter, width - box_w - leave)
            foot = int(rng.integers(box_h + 2, height + 1))
            sprite_rgb, sprite_alpha = person_sprite(identity_person(seed, pid), "right" if direction > 0 else "left",
                                                     box_w, box_h, rng, cam.light_side)
            tracks.append((pid, start, end, x0, x1, foot, box_w, box_h, sprite_rgb, sprite_alpha))
        car = None
        if camera == 1:  # a parked car, annotated as MOT class 3
            car = (int(width * 0.55), int(height * 0.55), int(width * 0.3), int(height * 0.25))
        camera_frames = []
        for frame in range(1, frames + 1):
            image = backdrop.copy()
            if car is not None:
                cx, cy, cw, ch = car
                image[cy:cy + ch, cx:cx + cw] = (0.25, 0.27, 0.32)
                rows.append(GtRow(camera, frame, identities + 1, cx, cy, cw, ch, 1, CAR, 1.0))
            present = []
            for pid, start, end, x0, x1, foot, box_w, box_h, rgb, alpha in tracks:
                if not start <= frame <= end:
                    continue
                t = (frame - start) / max(1, end - start)
                left = int(round(x0 + t * (x1 - x0)))
                present.append((foot, pid, left, foot - box_h, box_w, box_h, rgb, alpha, frame == start + 1))
            present.sort(key=lambda p: (p[0], p[1]))  # farther (higher foot) first, nearer drawn over it
            for index, (foot, pid, left, top, box_w, box_h, rgb, alpha, second) in enumerate(present):
                xa, xb = max(0, left), min(width, left + box_w)
                ya, yb = max(0, top), min(height, top + box_h)
                if xa < xb and ya < yb:
                    sa, sb = xa - left, xb - left
                    ta, tb = ya - top, yb - top
                    a = alpha[ta:tb, sa:sb, None]
                    image[ya:yb, xa:xb] = image[ya:yb, xa:xb] * (1 - a) + rgb[ta:tb, sa:sb]
                covered = np.zeros((box_h, box_w), dtype=bool)
                for _, _, other_left, other_top, other_w, other_h, *_ in present[index + 1:]:
                    covered[max(0, other_top - top):max(0, other_top + other_h - top),
                            max(0, other_left - left):max(0, other_left + other_w - left)] = True
                visibility = round(1.0 - float(covered.mean()), 3)
                flag = 0 if (camera == 1 and pid == 1 and second) else 1  # one ignored box
                rows.append(GtRow(camera, frame, pid, left, top, box_w, box_h, flag, PEDESTRIAN, visibility))
            pixels = np.clip(image * gains, 0.0, 1.0)
            camera_frames.append((pixels * 255 + 0.5).astype(np.uint8))
        all_frames[camera] = camera_frames
    return TrackingScene(all_frames, rows, width, height, fps, seed)


def write_video(frames: list[np.ndarray], path, fps: int = 10) -> Path:
    """Encode RGB frames with PyAV: ``.mkv`` FFV1 (lossless), ``.mp4`` H.264, ``.avi`` MPEG-4."""
    import av

    path = Path(path)
    codec, pix_fmt, options = {".mkv": ("ffv1", "bgr0", {}), ".mp4": ("libx264", "yuv420p", {"crf": "12"}),
                               ".avi": ("mpeg4", "yuv420p", {"qscale": "2"})}[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_mot_sequence(scene: TrackingScene, camera: int, folder, *, media: str = "frames", name: str | None = None,
                       frames: int | None = None) -> Path:
    """Camera ``camera`` of ``scene`` as a MOTChallenge sequence in ``folder``: ``seqinfo.ini``,
    ``gt/gt.txt`` (9 columns, 1-based frames and pixels) and ``img1/NNNNNN.png`` (``media="frames"``)
    or ``<name>.mkv`` / ``.mp4`` (``media="mkv"`` / ``"mp4"``). ``frames`` writes only the first
    frames of the media (a video shorter than its ground truth)."""
    folder = Path(folder)
    name = name or folder.name
    pictures = scene.frames[camera][:frames]
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    (folder / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate={scene.fps}\nseqLength={len(scene.frames[camera])}\n"
        f"imWidth={scene.width}\nimHeight={scene.height}\nimExt=.png\n")
    lines = [f"{r.frame},{r.track},{r.left + 1},{r.top + 1},{r.width},{r.height},{r.flag},{r.cls},{r.visibility:g}"
             for r in sorted(scene.rows_of(camera), key=lambda r: (r.track, r.frame))]
    (folder / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    if media == "frames":
        (folder / "img1").mkdir(exist_ok=True)
        for index, pixels in enumerate(pictures, start=1):
            Image.fromarray(pixels).save(folder / "img1" / f"{index:06d}.png")
    else:
        write_video(pictures, folder / f"{name}.{media}", scene.fps)
    return folder


def write_aicity_scene(scene: TrackingScene, folder, *, container: str = "mp4") -> Path:
    """``scene`` as an AI City Challenge 2023 Track 1 scene: ``c001/video.mp4`` and ``c001/label.txt``
    per camera (``frame,id,left,top,width,height,1,-1,-1,-1``, frames and pixels 0-based, people
    only: the AI City ground truth has no other classes). ``container="mkv"`` writes a lossless
    ``video.mkv`` instead."""
    folder = Path(folder)
    for camera, pictures in scene.frames.items():
        camera_dir = folder / f"c{camera:03d}"
        camera_dir.mkdir(parents=True, exist_ok=True)
        rows = sorted((r for r in scene.rows_of(camera) if r.cls == PEDESTRIAN), key=lambda r: (r.frame, r.track))
        (camera_dir / "label.txt").write_text(
            "".join(f"{r.frame - 1},{r.track},{r.left},{r.top},{r.width},{r.height},1,-1,-1,-1\n" for r in rows))
        write_video(pictures, camera_dir / f"video.{container}", scene.fps)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soliderkit.data.tracking_synth",
                                     description="Write a procedural multi-camera tracking scene "
                                                 "(MOTChallenge sequences and an AI City 2023 scene).",
                                     formatter_class=HelpFormatter)
    parser.add_argument("out_dir", help="folder to write mot/ and aicity/ into")
    parser.add_argument("--cameras", type=int, default=2, help="cameras filming the scene")
    parser.add_argument("--identities", type=int, default=6, help="people walking through it")
    parser.add_argument("--frames", type=int, default=24, help="frames per camera")
    parser.add_argument("--width", type=int, default=320, help="frame width in pixels")
    parser.add_argument("--height", type=int, default=240, help="frame height in pixels")
    parser.add_argument("--seed", type=int, default=0, help="scene seed")
    args = parser.parse_args(argv)
    scene = render_tracking_scene(args.cameras, args.identities, args.frames, args.width, args.height, args.seed)
    out = Path(args.out_dir)
    for camera in scene.frames:
        write_mot_sequence(scene, camera, out / "mot" / f"SYN-CAM{camera}")
    write_aicity_scene(scene, out / "aicity" / "S900")
    print(f"wrote {out}/mot (one MOTChallenge sequence per camera) and {out}/aicity/S900 "
          f"({len(scene.rows)} ground-truth boxes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

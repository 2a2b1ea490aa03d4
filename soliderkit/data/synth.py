"""A procedural stand-in for Market-1501: a synthetic person re-identification world.

Real ReID benchmarks cannot be downloaded here, so this module draws a small world of
pedestrians seen by several cameras and writes it in the Market-1501 on-disk layout
(``bounding_box_train``, ``bounding_box_test``, ``query`` with names such as
``0001_c1s1_000151_00.jpg``), plus an ``unlabeled`` folder of other people for
self-supervised pretraining and a ``world.json`` manifest.  Every tool that reads
Market-1501 can therefore be exercised end to end on it.

What is modelled, and why
-------------------------
The world is built so that identity is recoverable from *shape and layout* while raw
colour statistics are unreliable across cameras -- the situation that makes real ReID
hard and that defeats a colour-histogram baseline.

* Identity (fixed per person, the signal): upper garment colour and pattern (solid,
  horizontal or vertical stripes, checks, colour block), sleeve length, garment length,
  lower garment (trousers / shorts / skirt) and its colour, shoes, a chest logo seen only
  from the front, hair colour and style, skin tone, bag (none / backpack seen mostly from
  behind / shoulder bag with a strap), body proportions (height, shoulder width, waist,
  leg length, head size).  Garment colours come from a street-clothing palette in which
  neutrals are common (plus some free colours), so many people share colours and the
  other cues have to be used.
* Camera (fixed per camera, the nuisance): white balance (per-channel colour cast),
  brightness, gamma and a coloured haze; background scene (layout and texture, built
  from the site's muted materials shared by all cameras); optical blur, resolution
  (downscale then upscale) and sensor noise; the preferred walking directions through
  the view (hence which viewpoints it sees: front/back or sides), the light direction
  and the typical person scale in the detector crop.
* Image (random per image): viewpoint (front / back / left / right, persistent along a
  tracklet within one camera), pose (stride, arm swing), scale and crop jitter,
  background pan and clutter objects, passers-by at the crop border, a partial occluder,
  and small illumination jitter.

Calibration: the strength of the camera factors (``CAMERA_SPREAD``, scaled by
``--nuisance``) is set so that the no-training colour-histogram baseline
(``soliderkit.reid.color_histogram``) scores roughly 25-30% mAP on the default world: clearly
above chance, far from solved.  Removing the camera factors (``--nuisance 0``) lifts it
to about 50%, and so does showing people only from the front: colour casts and viewpoint
changes are what defeat colour statistics here.

Evaluation-protocol details follow Market-1501 (Zheng et al., "Scalable Person
Re-identification: A Benchmark", ICCV 2015): identities are split in half into
disjoint train and test sets; for each test identity the query holds one image per
camera (taken only from cameras that keep at least one more image in the gallery, so
every query has a true match under another camera); the gallery also holds distractors
(pid ``0000``, badly cropped detections) and junk (pid ``-1``, background or hopeless
crops that the protocol ignores).

Determinism: each identity, camera and image draws from its own ``numpy`` Generator
seeded by ``(seed, stream, index...)``, so the output is byte-identical for a given seed
regardless of how work is spread across processes.  ``world.json`` is written last and
atomically; its presence means the world is complete.

CLI: ``python data_shards/synth.py OUT_DIR [--identities N] [--cameras C] [--seed S] ...``
"""
from __future__ import annotations

import argparse
import io
import math
import multiprocessing
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from soliderkit.cli import HelpFormatter
from soliderkit.io import atomic_write_json

IMAGE_HEIGHT, IMAGE_WIDTH = 128, 64
# Shapes are drawn at twice the output size and box-filtered down, for anti-aliased edges.
SUPERSAMPLE = 2
CANVAS_HEIGHT, CANVAS_WIDTH = IMAGE_HEIGHT * SUPERSAMPLE, IMAGE_WIDTH * SUPERSAMPLE

SPLIT_DIRS = ("bounding_box_train", "bounding_box_test", "query", "unlabeled")
MANIFEST_NAME = "world.json"
FORMAT_VERSION = 1

VIEWS = ("front", "back", "left", "right")

# Independent random streams: an identity's look never depends on how many images,
# cameras or other identities the world has.
_STREAM_PLAN, _STREAM_IDENTITY, _STREAM_CAMERA, _STREAM_IMAGE = 11, 23, 37, 53
_KIND_CODES = {"person": 0, "distractor": 1, "junk": 2, "unlabeled": 3}


def _generator(*key: int) -> np.random.Generator:
    """The random stream named by ``key``.  The key's length is appended because numpy's
    SeedSequence ignores trailing zeros ([1, 2] and [1, 2, 0] would be the same stream)."""
    return np.random.default_rng([*key, len(key)])

# Grid of pixel-centre coordinates on the supersampled canvas, shared by all masks.
_YY, _XX = np.mgrid[0:CANVAS_HEIGHT, 0:CANVAS_WIDTH].astype(np.float32) + 0.5


class WorldArgumentError(ValueError):
    """A generation argument is out of range; ``argument`` names it (e.g. ``identities``)."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


# --------------------------------------------------------------------------- palettes

def _rgb(hex_code: str) -> tuple[float, float, float]:
    return tuple(int(hex_code[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


# (colour, weight): street clothing, with neutrals common (most of all for trousers).
UPPER_PALETTE = [
    ("101012", 1.0), ("3a3a3e", 0.7), ("808085", 0.6), ("e8e8e4", 1.0), ("1c2a4a", 0.8),
    ("4a6a9a", 1.0), ("c8b48c", 1.0), ("6b4a32", 0.8), ("b02020", 1.0), ("6a1420", 0.8),
    ("2f7a3a", 0.9), ("5a6a2a", 0.7), ("e0c030", 0.8), ("e07020", 0.7), ("e07aa0", 0.8),
    ("6a3a8a", 0.8), ("8ab8e0", 0.9), ("208080", 0.7),
]
LOWER_PALETTE = [
    ("101012", 2.0), ("3a3a3e", 1.2), ("808085", 0.9), ("2a3c62", 1.6), ("4a6a9a", 1.4),
    ("c8b48c", 1.2), ("6b4a32", 0.8), ("e8e8e4", 0.6), ("5a6a2a", 0.7), ("6a1420", 0.5),
    ("b02020", 0.4), ("2f7a3a", 0.4),
]
SHOE_PALETTE = [("101010", 3.0), ("f0f0f0", 2.0), ("5a3a20", 1.0), ("707070", 1.0), ("c03030", 0.3)]
SKIN_TONES = ["f1d2b6", "e0ac8a", "c68e6a", "a36b4a", "7a4a30", "4e2f20"]
HAIR_PALETTE = [("141010", 3.0), ("3a2416", 2.0), ("6a4426", 1.2), ("c8a060", 0.8),
                ("a0a0a0", 0.5), ("8a3a1a", 0.4)]
ACCENT_PALETTE = [("f0f0f0", 2.0), ("e0c030", 1.0), ("c02020", 1.0), ("2050c0", 1.0),
                  ("20a050", 0.7), ("f08020", 0.6), ("101010", 1.0)]

# Share of tops (and, halved, bottoms) in a colour outside the palette.
ANY_COLOUR_PROB = 0.3

UPPER_PATTERNS = ("solid", "solid", "hstripes", "vstripes", "checks", "block")
HAIR_STYLES = ("short", "short", "long", "bun", "cap")
LOWER_KINDS = ("trousers", "trousers", "trousers", "shorts", "skirt")
BAG_KINDS = ("none", "none", "backpack", "shoulder")
LOGO_SHAPES = ("circle", "square", "diamond", "triangle", "bar")
BACKGROUND_STYLES = ("pillars", "windows", "foliage", "gradient", "shopfront")
FLOOR_STYLES = ("plain", "paving", "crossing", "planks")


def _pick_colour(rng: np.random.Generator, palette, jitter: float = 1.0, any_colour: float = 0.0) -> np.ndarray:
    """A palette colour, or with probability ``any_colour`` a free saturated colour."""
    if rng.uniform() < any_colour:
        return _random_colour(rng, (0.45, 0.9), (0.35, 0.95))
    colours = [c for c, _ in palette]
    weights = np.array([w for _, w in palette], dtype=np.float64)
    base = np.array(_rgb(colours[rng.choice(len(colours), p=weights / weights.sum())]))
    # Per-person shade variation: real "blue jeans" are never quite the same blue.
    shade = math.exp(rng.normal(0.0, 0.12 * jitter))
    tint = rng.normal(0.0, 0.035 * jitter, 3)
    return np.clip(base * shade + tint, 0.0, 1.0).astype(np.float32)


def _random_colour(rng: np.random.Generator, saturation=(0.1, 0.7), value=(0.2, 0.9)) -> np.ndarray:
    """Any colour, for backgrounds and clutter (HSV sampled, converted to RGB)."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32)


# --------------------------------------------------------------------------- identities

@dataclass(frozen=True)
class Person:
    """Everything that makes one pedestrian recognisable (colours are RGB in 0..1)."""

    skin: np.ndarray
    hair: np.ndarray
    hair_style: str
    hat: np.ndarray
    upper: np.ndarray
    upper_secondary: np.ndarray
    upper_pattern: str
    pattern_period: float     # stripe / check period, as a fraction of body height
    sleeve: float             # 0.35 short sleeves .. 1.0 long sleeves (fraction of arm)
    upper_length: float       # how far the top reaches below the hip (fraction of height)
    lower: np.ndarray
    lower_kind: str
    legwear: np.ndarray       # skin, or tights under shorts / skirt
    shoes: np.ndarray
    logo_shape: str | None
    logo: np.ndarray
    logo_size: float
    logo_offset: float        # -1 (wearer's right chest) .. 1 (left chest)
    bag: str
    bag_colour: np.ndarray
    bag_side: float           # which shoulder the shoulder bag hangs from: -1 or 1
    height: float             # 0 short .. 1 tall: nudges how much of the crop height the body fills
    shoulder_width: float
    waist_ratio: float
    leg_fraction: float
    build: float
    head_scale: float


def sample_person(rng: np.random.Generator) -> Person:
    """Draw a random pedestrian; the same generator state always gives the same person."""
    skin = np.array(_rgb(SKIN_TONES[rng.integers(len(SKIN_TONES))]), dtype=np.float32)
    upper = _pick_colour(rng, UPPER_PALETTE, any_colour=ANY_COLOUR_PROB)
    secondary = _pick_colour(rng, UPPER_PALETTE, any_colour=ANY_COLOUR_PROB)
    # A pattern needs visible contrast, otherwise it would silently collapse to "solid".
    if np.abs(secondary - upper).sum() < 0.45:
        secondary = np.clip(1.0 - upper * 0.9, 0, 1).astype(np.float32)
    lower_kind = LOWER_KINDS[rng.integers(len(LOWER_KINDS))]
    bare_legs = lower_kind != "trousers" and rng.uniform() < 0.6
    has_logo = rng.uniform() < 0.6
    return Person(
        skin=skin,
        hair=_pick_colour(rng, HAIR_PALETTE, jitter=0.5),
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        hat=_pick_colour(rng, UPPER_PALETTE),
        upper=upper,
        upper_secondary=secondary,
        upper_pattern=UPPER_PATTERNS[rng.integers(len(UPPER_PATTERNS))],
        pattern_period=float(rng.uniform(0.035, 0.07)),
        sleeve=float(rng.choice([0.35, 1.0], p=[0.4, 0.6])),
        upper_length=float(rng.uniform(0.0, 0.1)),
        lower=_pick_colour(rng, LOWER_PALETTE, any_colour=ANY_COLOUR_PROB / 2),
        lower_kind=lower_kind,
        legwear=skin if bare_legs else _pick_colour(rng, LOWER_PALETTE, jitter=0.5),
        shoes=_pick_colour(rng, SHOE_PALETTE, jitter=0.5),
        logo_shape=LOGO_SHAPES[rng.integers(len(LOGO_SHAPES))] if has_logo else None,
        logo=_pick_colour(rng, ACCENT_PALETTE, jitter=0.5),
        logo_size=float(rng.uniform(0.03, 0.05)),
        logo_offset=float(rng.choice([-1.0, 0.0, 0.0, 1.0])),
        bag=BAG_KINDS[rng.integers(len(BAG_KINDS))],
        bag_colour=_pick_colour(rng, UPPER_PALETTE + ACCENT_PALETTE),
        bag_side=float(rng.choice([-1.0, 1.0])),
        height=float(rng.uniform(0.0, 1.0)),
        shoulder_width=float(rng.uniform(0.25, 0.32)),
        waist_ratio=float(rng.uniform(0.78, 1.0)),
        leg_fraction=float(rng.uniform(0.44, 0.53)),
        build=float(rng.uniform(0.85, 1.25)),
        head_scale=float(rng.uniform(0.9, 1.1)),
    )


def identity_person(seed: int, identity_id: int) -> Person:
    return sample_person(_generator(seed, _STREAM_IDENTITY, identity_id))


# --------------------------------------------------------------------------- cameras

@dataclass(frozen=True)
class Camera:
    """The nuisance factors one camera applies to every image it takes."""

    index: int                     # 1-based, as in Market names
    channel_gains: tuple           # white balance / colour cast, multiplies R, G, B
    brightness: float
    gamma: float
    haze: float                    # blend weight towards haze_colour
    haze_colour: tuple
    downscale: float               # resolution loss factor (1 = full resolution)
    blur_radius: float             # Gaussian blur radius in output pixels
    noise_sigma: float             # sensor noise, in 0..255 units
    view_probs: tuple              # probabilities of front/back/left/right
    person_scale: float            # typical fraction of the crop height a body fills
    light_side: float              # -1 lit from the left .. 1 lit from the right
    background_style: str
    floor_style: str
    wall_colour: tuple
    accent_colour: tuple
    floor_colour: tuple
    horizon: float                 # fraction of crop height where wall meets floor
    texture_period: float          # background pattern period in canvas pixels


# How far cameras spread apart at nuisance=1.0.  Values are spread evenly over these
# ranges across a world's cameras (stratified, not i.i.d.), so every world has both mild
# and strong cameras and the baseline's score varies little from seed to seed.
# Calibrated so the colour-histogram baseline lands in the 15-45% mAP band.
CAMERA_SPREAD = {
    "white_balance": 0.035,      # typical length of the log channel-gain cast vector
    "exposure": (-0.1, 0.08),    # range of the log brightness
    "gamma": 0.05,               # largest |log gamma|
    "haze": 0.05,                # largest blend weight towards a coloured haze
    "downscale": 1.2,            # largest extra resolution-loss factor
    "blur": 0.7,                 # largest Gaussian blur radius, output pixels
    "noise": 2.0,                # largest extra sensor noise sigma, 0..255 units
}

# Unit vectors spanning log-RGB directions that change colour but not overall brightness.
_CAST_AXES = np.array([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]) / np.array([[math.sqrt(2)], [math.sqrt(6)]])


@lru_cache(maxsize=None)
def _scene_palette(seed: int) -> tuple:
    """The site's muted building and paving colours (urban scenes are mostly greys)."""
    rng = _generator(seed, _STREAM_CAMERA, 0)
    return tuple(tuple(float(c) for c in _random_colour(rng, (0.0, 0.12), (0.4, 0.75))) for _ in range(6))


def _stratified(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` values in [0, 1), one in each of ``count`` equal slices, in random order."""
    return (rng.permutation(count) + rng.uniform(0.0, 1.0, count)) / count


@lru_cache(maxsize=None)
def camera_rig(seed: int, cameras: int, nuisance: float = 1.0) -> tuple[Camera, ...]:
    """The ``cameras`` cameras of the world with this ``seed`` (camera k is ``rig[k - 1]``).
    ``nuisance`` scales how strongly cameras disagree in colour and quality (1.0 is the
    calibrated default, 0 makes them photometrically identical)."""
    spread = CAMERA_SPREAD
    rig_rng = _generator(seed, _STREAM_CAMERA, 0, cameras)
    cast_angle = 2 * math.pi * _stratified(rig_rng, cameras)
    exposure, gamma, haze, downscale, blur, noise = (_stratified(rig_rng, cameras) for _ in range(6))
    styles = rig_rng.permutation(np.resize(np.arange(len(BACKGROUND_STYLES)), cameras))
    lateral_first = rig_rng.integers(2)
    scene_palette = _scene_palette(seed)

    rig = []
    for k in range(cameras):
        rng = _generator(seed, _STREAM_CAMERA, k + 1)
        cast_length = spread["white_balance"] * rng.uniform(0.7, 1.3) * nuisance
        log_gains = cast_length * (math.cos(cast_angle[k]) * _CAST_AXES[0] + math.sin(cast_angle[k]) * _CAST_AXES[1])
        low, high = spread["exposure"]
        # Cameras alternate between looking along a walkway (mostly front/back views)
        # and across it (mostly side views).
        alpha = [0.8, 0.8, 2.5, 2.5] if (k + lateral_first) % 2 else [3.0, 3.0, 0.7, 0.7]
        # All cameras overlook the same site, so they share its materials; what differs
        # is which materials are where and how the scene is laid out.
        wall, accent, floor = (int(i) for i in rng.choice(len(scene_palette), 3, replace=False))
        rig.append(Camera(
            index=k + 1,
            channel_gains=tuple(float(g) for g in np.exp(log_gains)),
            brightness=float(math.exp((low + (high - low) * exposure[k]) * nuisance)),
            gamma=float(math.exp(spread["gamma"] * (2 * gamma[k] - 1) * nuisance)),
            haze=float(spread["haze"] * haze[k] * nuisance),
            haze_colour=tuple(float(c) for c in _random_colour(rng, (0.2, 0.6), (0.4, 0.9))),
            downscale=float(1.0 + spread["downscale"] * downscale[k] * nuisance),
            blur_radius=float(spread["blur"] * blur[k] * nuisance),
            noise_sigma=float(1.0 + spread["noise"] * noise[k] * nuisance),
            view_probs=tuple(float(p) for p in rng.dirichlet(alpha)),
            person_scale=float(rng.uniform(0.9, 0.97)),
            light_side=float(rng.uniform(-1.0, 1.0)),
            background_style=BACKGROUND_STYLES[int(styles[k])],
            floor_style=FLOOR_STYLES[rng.integers(len(FLOOR_STYLES))],
            wall_colour=scene_palette[wall],
            accent_colour=scene_palette[accent],
            floor_colour=scene_palette[floor],
            horizon=float(rng.uniform(0.45, 0.75)),
            texture_period=float(rng.uniform(18.0, 60.0)),
        ))
    return tuple(rig)


# --------------------------------------------------------------------------- drawing

def _ellipse(cy, cx, ry, rx) -> np.ndarray:
    return ((_YY - cy) / ry) ** 2 + ((_XX - cx) / rx) ** 2 <= 1.0


def _band(y0, y1, cx0, cx1, hw0, hw1) -> np.ndarray:
    """Rows ``y0..y1`` of a quad whose centre and half-width move linearly from
    (``cx0``, ``hw0``) at the top to (``cx1``, ``hw1``) at the bottom: limbs, torso, straps."""
    t = np.clip((_YY - y0) / max(y1 - y0, 1e-6), 0.0, 1.0)
    centre = cx0 + t * (cx1 - cx0)
    half_width = hw0 + t * (hw1 - hw0)
    return (_YY >= y0) & (_YY < y1) & (np.abs(_XX - centre) <= half_width)


def _box(y0, y1, x0, x1) -> np.ndarray:
    return (_YY >= y0) & (_YY < y1) & (_XX >= x0) & (_XX < x1)


def _smooth_noise(rng: np.random.Generator, cells_y: int, cells_x: int,
                  size: tuple[int, int] = (CANVAS_HEIGHT, CANVAS_WIDTH)) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of shape ``size`` (bicubic-upsampled random cells)."""
    cells = rng.uniform(-1.0, 1.0, (cells_y, cells_x)).astype(np.float32)
    image = Image.fromarray(cells, mode="F").resize((size[1], size[0]), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32)


class _Painter:
    """Paints flat colours or patterns into a canvas, tracking which pixels are the person."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        if not pixels.flags.c_contiguous:
            raise ValueError("the canvas must be C-contiguous so its flat view writes through")
        # Writing through flat pixel indices is ~2x faster than boolean-mask assignment.
        self.flat_pixels = pixels.reshape(-1, 3)
        self.person = np.zeros(pixels.shape[:2], dtype=bool)

    def fill(self, mask: np.ndarray, colour) -> None:
        self.flat_pixels[np.flatnonzero(mask)] = colour
        self.person |= mask

    def fill_pattern(self, mask, person: Person, origin_y, origin_x, unit, x_scale) -> None:
        """Fill ``mask`` with the person's upper-garment pattern, laid out in body
        coordinates so stripes keep their spacing whatever the crop scale."""
        rows = (_YY[mask] - origin_y) / unit
        cols = (_XX[mask] - origin_x) / (unit * x_scale)
        period = person.pattern_period
        kind = person.upper_pattern
        if kind == "hstripes":
            secondary = np.floor(rows / period) % 2 == 1
        elif kind == "vstripes":
            secondary = np.floor(cols / period + 0.5) % 2 == 1
        elif kind == "checks":
            secondary = (np.floor(rows / period) + np.floor(cols / period + 0.5)) % 2 == 1
        elif kind == "block":
            secondary = rows > 0.13
        else:
            secondary = np.zeros(rows.shape, dtype=bool)
        self.flat_pixels[np.flatnonzero(mask)] = np.where(secondary[:, None], person.upper_secondary, person.upper)
        self.person |= mask


def _draw_person(painter: _Painter, person: Person, view: str, height: float, cx: float,
                 foot_y: float, rng: np.random.Generator, light_side: float) -> None:
    """Draw ``person`` seen from ``view``; ``height`` is the body height in canvas pixels."""
    h = height
    top = foot_y - h
    side_view = view in ("left", "right")
    facing = {"left": -1.0, "right": 1.0}.get(view, 0.0)
    # Seen from behind, the wearer's left is on the image's left.
    mirror = -1.0 if view == "back" else 1.0
    # A body seen from the side is ~55% as wide, but the detector box hugs it and is then
    # resized to 128x64 (as in Market-1501), which stretches it back to ~80%.
    squash = 0.8 if side_view else 1.0

    head_ry = 0.062 * h * person.head_scale
    head_rx = 0.047 * h * person.head_scale * (0.92 if side_view else 1.0)
    head_cy = top + head_ry
    head_cx = cx + facing * 0.012 * h
    shoulder_y = top + 2 * head_ry + 0.02 * h
    hip_y = top + h * (1.0 - person.leg_fraction)
    ankle_y = foot_y - 0.035 * h
    knee_y = hip_y + 0.45 * (ankle_y - hip_y)
    shoulder_hw = 0.5 * h * person.shoulder_width * squash
    waist_hw = shoulder_hw * person.waist_ratio
    limb_hw = 0.025 * h * person.build
    hand_y = hip_y + 0.07 * h
    upper_bottom = hip_y + person.upper_length * h
    pack_top, pack_bottom = shoulder_y + 0.02 * h, min(hip_y, upper_bottom) - 0.01 * h

    # --- behind the body: a backpack seen from the side sticks out at the back.
    if person.bag == "backpack" and side_view:
        pack_cx = cx - facing * (shoulder_hw + 0.035 * h)
        painter.fill(_band(pack_top, pack_bottom, pack_cx, pack_cx, 0.04 * h, 0.05 * h),
                     person.bag_colour)

    # --- legs and shoes
    if side_view:
        stride = 0.1 * h * rng.uniform(-1.0, 1.0)
        leg_ends = [cx + stride, cx - stride]
        leg_tops = [cx, cx]
        top_hw = waist_hw * 0.75
    else:
        sep = waist_hw * 0.5
        leg_ends = [cx - sep - 0.01 * h, cx + sep + 0.01 * h]
        leg_tops = [cx - sep, cx + sep]
        top_hw = waist_hw * 0.5
    for x_top, x_end in zip(leg_tops, leg_ends):
        leg = _band(hip_y, ankle_y, x_top, x_end, top_hw, limb_hw)
        if person.lower_kind == "trousers":
            painter.fill(leg, person.lower)
        else:
            painter.fill(leg, person.legwear)
            if person.lower_kind == "shorts":
                painter.fill(leg & (_YY < knee_y), person.lower)
        shoe_cx = x_end + facing * 0.02 * h
        shoe_hw = limb_hw * (1.7 if side_view else 1.2)
        painter.fill(_box(ankle_y - 0.005 * h, foot_y, shoe_cx - shoe_hw, shoe_cx + shoe_hw),
                     person.shoes)

    # --- hips (and skirt)
    if person.lower_kind == "skirt":
        painter.fill(_band(hip_y - 0.01 * h, knee_y + 0.04 * h, cx, cx, waist_hw, waist_hw * 1.35),
                     person.lower)
    else:
        painter.fill(_band(hip_y - 0.01 * h, hip_y + 0.06 * h, cx, cx, waist_hw, waist_hw),
                     person.lower)

    # --- arms hanging at the sides (front / back views)
    arm_top = shoulder_y + 0.01 * h
    sleeve_end = arm_top + person.sleeve * (hand_y - arm_top - 0.035 * h)
    if not side_view:
        for sign in (-1.0, 1.0):
            x0 = cx + sign * (shoulder_hw + limb_hw * 0.5)
            x1 = cx + sign * (shoulder_hw + limb_hw + 0.012 * h)
            arm = _band(arm_top, hand_y, x0, x1, limb_hw * 1.1, limb_hw * 0.9)
            painter.fill(arm, person.skin)
            painter.fill(arm & (_YY < sleeve_end), person.upper)

    # --- torso: upper garment with its pattern, rounded shoulders
    torso = _band(shoulder_y + 0.02 * h, upper_bottom, cx, cx, shoulder_hw, waist_hw * 1.04)
    torso |= _ellipse(shoulder_y + 0.03 * h, cx, 0.035 * h, shoulder_hw) & (_YY >= shoulder_y - 0.01 * h)
    painter.fill_pattern(torso, person, shoulder_y, cx, h, mirror * squash)

    # --- neck, head, hair
    painter.fill(_box(head_cy, shoulder_y + 0.01 * h, head_cx - head_rx * 0.45, head_cx + head_rx * 0.45),
                 person.hair if (view == "back" and person.hair_style == "long") else person.skin)
    head = _ellipse(head_cy, head_cx, head_ry, head_rx)
    painter.fill(head, person.skin)
    crown = head & (_YY < head_cy - 0.3 * head_ry)
    cap_colour = person.hat if person.hair_style == "cap" else person.hair
    if view == "back":
        painter.fill(head, person.hair)
    elif side_view:
        back_of_head = head & ((_XX - head_cx) * facing < -0.15 * head_rx)
        painter.fill(back_of_head | crown, person.hair)
    else:
        painter.fill(crown, person.hair)
    if person.hair_style == "long":
        hang = _band(head_cy, shoulder_y + 0.1 * h, head_cx - facing * 0.3 * head_rx,
                     head_cx - facing * 0.3 * head_rx, head_rx * 1.1, head_rx * 1.05)
        if view == "front":
            hang &= np.abs(_XX - head_cx) > head_rx * 0.72
        elif side_view:
            hang &= (_XX - head_cx) * facing < 0.0
        painter.fill(hang, person.hair)
    elif person.hair_style == "bun":
        bun_cx = head_cx - facing * 0.8 * head_rx
        bun_cy = head_cy - (0.95 if view == "front" else 0.75) * head_ry
        painter.fill(_ellipse(bun_cy, bun_cx, 0.35 * head_ry, 0.4 * head_rx), person.hair)
    elif person.hair_style == "cap":
        painter.fill(head & (_YY < head_cy - 0.1 * head_ry), cap_colour)
        brim_cx = head_cx + facing * 0.7 * head_rx
        brim_hw = head_rx * (0.6 if side_view else 1.05)
        if view != "back":
            painter.fill(_box(head_cy - 0.15 * head_ry, head_cy + 0.05 * head_ry,
                              brim_cx - brim_hw, brim_cx + brim_hw), cap_colour)

    # --- chest logo: only ever visible from the front
    if view == "front" and person.logo_shape is not None:
        ly = shoulder_y + 0.085 * h
        lx = cx + person.logo_offset * shoulder_hw * 0.45
        r = person.logo_size * h
        dy, dx = np.abs(_YY - ly), np.abs(_XX - lx)
        shape = {
            "circle": dy ** 2 + dx ** 2 <= r ** 2,
            "square": (dy <= r * 0.85) & (dx <= r * 0.85),
            "diamond": dy + dx <= r * 1.1,
            "triangle": (_YY - ly >= -r) & (_YY - ly <= r * 0.7) & (dx <= (_YY - ly + r) * 0.6),
            "bar": (dy <= r * 0.35) & (dx <= r * 1.5),
        }[person.logo_shape]
        painter.fill(shape & torso, person.logo)

    # --- bags
    if person.bag == "backpack":
        if view == "back":
            pack = _band(pack_top, pack_bottom, cx, cx, shoulder_hw * 0.62, shoulder_hw * 0.72)
            painter.fill(pack, person.bag_colour)
            pocket_top = pack_top + 0.6 * (pack_bottom - pack_top)
            painter.fill(pack & (_YY > pocket_top) & (np.abs(_XX - cx) < shoulder_hw * 0.5),
                         person.bag_colour * 0.7)
        elif view == "front":
            for sign in (-1.0, 1.0):
                sx = cx + sign * shoulder_hw * 0.55
                painter.fill(_band(shoulder_y, shoulder_y + 0.2 * h, sx, sx, 0.013 * h, 0.013 * h),
                             person.bag_colour)
    elif person.bag == "shoulder":
        bag_side = person.bag_side * mirror
        if side_view:
            strap = _band(shoulder_y, hip_y - 0.02 * h, cx, cx + facing * 0.02 * h, 0.009 * h, 0.009 * h)
            bag_cx = cx + (0.01 if person.bag_side * facing > 0 else -0.04) * h * facing
        else:
            strap = _band(shoulder_y, hip_y - 0.02 * h, cx - bag_side * shoulder_hw * 0.6,
                          cx + bag_side * waist_hw * 0.9, 0.011 * h, 0.011 * h)
            bag_cx = cx + bag_side * (waist_hw + 0.03 * h)
        painter.fill(strap & torso, person.bag_colour)
        painter.fill(_box(hip_y - 0.06 * h, hip_y + 0.06 * h, bag_cx - 0.045 * h, bag_cx + 0.045 * h),
                     person.bag_colour)

    # --- an arm swinging in front of the body (side views)
    if side_view:
        swing = 0.07 * h * rng.uniform(-1.0, 1.0)
        arm = _band(arm_top, hand_y, cx, cx + swing, limb_hw * 1.15, limb_hw * 0.9)
        painter.fill(arm, person.skin)
        painter.fill(arm & (_YY < sleeve_end), person.upper)

    # Simple cylinder shading: bodies are darker at their edges and lit from one side.
    mask = painter.person
    rel = (_XX[mask] - cx) / (shoulder_hw * 1.4)
    shade = np.clip(1.0 - 0.25 * rel ** 2 + 0.1 * light_side * rel, 0.55, 1.15)
    painter.flat_pixels[np.flatnonzero(mask)] *= shade[:, None]


def _draw_background(camera: Camera, rng: np.random.Generator, clutter: bool = True) -> np.ndarray:
    """The camera's scene behind a person: the same style and colours in every image of
    a camera, panned and lit slightly differently each time, plus random clutter."""
    # Each frame's scene colours drift a little (time of day, passing shadows).
    drift = lambda colour: np.clip(np.array(colour, dtype=np.float32) * np.exp(rng.normal(0, 0.1, 3)), 0, 1)
    wall, accent, floor = drift(camera.wall_colour), drift(camera.accent_colour), drift(camera.floor_colour)
    period = camera.texture_period
    pan = rng.uniform(0.0, 4.0 * period)
    horizon = (camera.horizon + rng.normal(0.0, 0.04)) * CANVAS_HEIGHT
    # The scene is blurred by the camera anyway, so it is drawn at output resolution
    # (every other canvas pixel) and upsampled: a quarter of the work.
    xs, ys = _XX[::SUPERSAMPLE, ::SUPERSAMPLE] + pan, _YY[::SUPERSAMPLE, ::SUPERSAMPLE]
    half_size = (IMAGE_HEIGHT, IMAGE_WIDTH)

    style = camera.background_style
    if style == "pillars":
        accent_weight = ((xs % period) < 0.3 * period).astype(np.float32)
    elif style == "windows":
        accent_weight = (((xs % period) < 0.6 * period) & ((ys % (period * 1.3)) < 0.7 * period)).astype(np.float32)
    elif style == "foliage":
        accent_weight = np.clip(_smooth_noise(rng, 12, 6, half_size) * 1.5 + 0.2, 0.0, 1.0)
    elif style == "shopfront":
        accent_weight = ((ys < horizon * 0.35) | ((xs % period) < 0.08 * period)).astype(np.float32)
    else:  # gradient
        accent_weight = np.clip(ys / max(horizon, 1.0), 0.0, 1.0)
    pixels = wall + 0.6 * accent_weight[..., None] * (accent - wall)

    floor_style = camera.floor_style
    if floor_style == "paving":
        floor_shade = 1.0 + 0.12 * ((np.floor(xs / 24) + np.floor(ys / 16)) % 2)
    elif floor_style == "crossing":
        floor_shade = 1.0 + 0.8 * ((xs % 40) < 16)
    elif floor_style == "planks":
        floor_shade = 1.0 + 0.1 * np.sin(ys / 3.0)
    else:
        floor_shade = np.ones_like(ys)
    floor_shade = floor_shade.astype(np.float32)
    floor_pixels = floor * floor_shade[..., None]
    pixels = np.where((ys >= horizon)[..., None], floor_pixels, pixels)
    pixels = pixels * (1.0 + 0.12 * _smooth_noise(rng, 6, 3, half_size))[..., None]
    pixels = np.repeat(np.repeat(pixels.astype(np.float32), SUPERSAMPLE, axis=0), SUPERSAMPLE, axis=1)

    if clutter:
        for _ in range(rng.poisson(1.0)):
            colour = _random_colour(rng)
            kind = rng.integers(3)
            if kind == 0:  # pole or post
                x0 = rng.uniform(0, CANVAS_WIDTH)
                pixels[_box(0, horizon + rng.uniform(0, 60), x0, x0 + rng.uniform(4, 12))] = colour
            elif kind == 1:  # sign, poster or window
                y0, x0 = rng.uniform(0, horizon), rng.uniform(-20, CANVAS_WIDTH)
                pixels[_box(y0, y0 + rng.uniform(15, 60), x0, x0 + rng.uniform(15, 60))] = colour
            else:  # bench, bin or parked vehicle on the ground
                y0, x0 = horizon + rng.uniform(-40, 20), rng.uniform(-40, CANVAS_WIDTH)
                pixels[_box(y0, y0 + rng.uniform(20, 70), x0, x0 + rng.uniform(30, 90))] = colour
    return pixels


def _draw_occluder(pixels: np.ndarray, rng: np.random.Generator) -> None:
    """Something between the camera and the person: a car or barrier at the bottom, or a
    pole / bystander at one side."""
    colour = _random_colour(rng, (0.0, 0.6), (0.1, 0.8))
    texture = (1.0 + 0.15 * _smooth_noise(rng, 4, 2))[..., None]
    if rng.uniform() < 0.5:
        y0 = CANVAS_HEIGHT * rng.uniform(0.6, 0.8)
        mask = _box(y0, CANVAS_HEIGHT, -1, CANVAS_WIDTH + 1)
    else:
        width = CANVAS_WIDTH * rng.uniform(0.2, 0.4)
        x0 = -1 if rng.uniform() < 0.5 else CANVAS_WIDTH - width
        mask = _box(CANVAS_HEIGHT * rng.uniform(0.0, 0.3), CANVAS_HEIGHT, x0, x0 + width)
    pixels[mask] = (colour * texture)[mask]


def _apply_camera(pixels: np.ndarray, camera: Camera, rng: np.random.Generator) -> Image.Image:
    """Turn the supersampled scene into what this camera records, as a 128x64 RGB image."""
    scene = Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")
    image = np.asarray(scene.resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.BOX), dtype=np.float32) / 255.0

    # Photometric response: gamma, white balance, exposure (with a little per-frame
    # flicker), then atmospheric / lens haze in the camera's tint.
    image = image ** camera.gamma
    exposure = camera.brightness * math.exp(rng.normal(0.0, 0.08))
    image = image * np.array(camera.channel_gains, dtype=np.float32) * exposure
    image = image * (1 - camera.haze) + camera.haze * np.array(camera.haze_colour, dtype=np.float32)
    recorded = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")

    # Optics and resolution: low-resolution sensors, then the detector's resize to 128x64.
    if camera.downscale > 1.05:
        small = (max(8, round(IMAGE_WIDTH / camera.downscale)), max(16, round(IMAGE_HEIGHT / camera.downscale)))
        recorded = recorded.resize(small, Image.BILINEAR).resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.BILINEAR)
    blur = camera.blur_radius * rng.uniform(0.7, 1.3)
    if blur > 0.05:
        recorded = recorded.filter(ImageFilter.GaussianBlur(blur))
    noisy = np.asarray(recorded, dtype=np.float32) + rng.normal(0.0, camera.noise_sigma, (IMAGE_HEIGHT, IMAGE_WIDTH, 3))
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8), mode="RGB")


# --------------------------------------------------------------------------- rendering jobs

@dataclass(frozen=True)
class RenderJob:
    """One image to draw: everything needed travels in this small picklable record."""

    path: str               # absolute output path
    kind: str               # person | unlabeled | distractor | junk
    identity: int           # identity id for person/unlabeled, 0 otherwise
    camera: int             # 1-based camera index
    cameras: int            # cameras in the world (the rig is drawn as a whole)
    view: str
    image_key: tuple        # unique per image: seeds its random stream
    seed: int
    nuisance: float
    occlusion_prob: float
    jpeg_quality: int


def render_image(job: RenderJob) -> Image.Image:
    """Draw the image described by ``job`` (pure function of the job)."""
    rng = _generator(job.seed, _STREAM_IMAGE, _KIND_CODES[job.kind], *job.image_key)
    camera = camera_rig(job.seed, job.cameras, job.nuisance)[job.camera - 1]
    painter = _Painter(_draw_background(camera, rng))

    # A passer-by cut by the crop border, behind the subject (common in detector crops).
    if rng.uniform() < 0.1:
        side = rng.choice([-1.0, 1.0])
        _draw_person(_Painter(painter.pixels), sample_person(rng), VIEWS[rng.integers(4)],
                     CANVAS_HEIGHT * rng.uniform(0.7, 0.95), CANVAS_WIDTH * (0.5 + side * rng.uniform(0.6, 0.8)),
                     CANVAS_HEIGHT * rng.uniform(0.9, 1.0), rng, camera.light_side)

    if job.kind in ("person", "unlabeled"):
        person = identity_person(job.seed, job.identity)
        body = CANVAS_HEIGHT * (camera.person_scale + 0.05 * (person.height - 0.5)) * rng.uniform(0.94, 1.06)
        cx = CANVAS_WIDTH * (0.5 + rng.normal(0.0, 0.05))
        foot_y = CANVAS_HEIGHT * rng.uniform(0.95, 1.01)
        _draw_person(painter, person, job.view, body, cx, foot_y, rng, camera.light_side)
        if rng.uniform() < job.occlusion_prob:
            _draw_occluder(painter.pixels, rng)
    elif job.kind == "distractor":
        # Market distractors are poor detections: a body part, or a person mostly off-crop.
        person = sample_person(rng)
        if rng.uniform() < 0.5:
            body = CANVAS_HEIGHT * rng.uniform(1.4, 2.2)
            foot_y = CANVAS_HEIGHT * rng.uniform(1.0, 2.0)
            cx = CANVAS_WIDTH * rng.uniform(0.3, 0.7)
        else:
            body = CANVAS_HEIGHT * rng.uniform(0.8, 0.95)
            foot_y = CANVAS_HEIGHT * rng.uniform(0.95, 1.0)
            cx = CANVAS_WIDTH * (0.5 + rng.choice([-1.0, 1.0]) * rng.uniform(0.35, 0.55))
        _draw_person(painter, person, job.view, body, cx, foot_y, rng, camera.light_side)
    else:  # junk: empty background, a far-away figure, or a nearly fully occluded one
        choice = rng.integers(3)
        if choice == 1:
            body = CANVAS_HEIGHT * rng.uniform(0.25, 0.45)
            _draw_person(painter, sample_person(rng), job.view, body, CANVAS_WIDTH * rng.uniform(0.2, 0.8),
                         CANVAS_HEIGHT * rng.uniform(0.5, 0.9), rng, camera.light_side)
        elif choice == 2:
            _draw_person(painter, sample_person(rng), job.view, CANVAS_HEIGHT * 0.9, CANVAS_WIDTH * 0.5,
                         CANVAS_HEIGHT * 0.98, rng, camera.light_side)
            painter.pixels[_box(CANVAS_HEIGHT * rng.uniform(0.05, 0.25), CANVAS_HEIGHT, -1, CANVAS_WIDTH + 1)] = \
                _random_colour(rng, (0.0, 0.5), (0.1, 0.7))
    return _apply_camera(painter.pixels, camera, rng)


def person_sprite(person: Person, view: str, width: int, height: int, rng: np.random.Generator,
                  light_side: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The pedestrian alone, ``width`` x ``height`` pixels, to composite into larger frames
    (the procedural tracking sequences of :mod:`soliderkit.data.tracking_synth`).

    Returns ``(premultiplied RGB float32 (height, width, 3) in 0..1, alpha float32
    (height, width))``: blend with ``frame * (1 - alpha) + rgb``. Drawn by the same
    renderer as the world's crops, on the supersampled canvas, then box-filtered down.
    """
    painter = _Painter(np.zeros((CANVAS_HEIGHT, CANVAS_WIDTH, 3), dtype=np.float32))
    _draw_person(painter, person, view, CANVAS_HEIGHT * 0.96, CANVAS_WIDTH * 0.5, CANVAS_HEIGHT * 0.98,
                 rng, light_side)
    alpha = painter.person.astype(np.float32)
    rgb = np.clip(painter.pixels, 0.0, 1.0) * alpha[..., None]
    planes = [Image.fromarray(np.ascontiguousarray(plane), mode="F").resize((width, height), Image.BOX)
              for plane in (*np.moveaxis(rgb, -1, 0), alpha)]
    out = np.stack([np.asarray(plane, dtype=np.float32) for plane in planes], axis=-1)
    return np.clip(out[..., :3], 0.0, 1.0), np.clip(out[..., 3], 0.0, 1.0)


def camera_backdrop(camera: Camera, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The camera's empty scene (its background style, colours and floor, no clutter) as a
    float32 (height, width, 3) image in 0..1, for whole frames rather than person crops."""
    pixels = _draw_background(camera, rng, clutter=False)
    planes = [Image.fromarray(np.ascontiguousarray(plane), mode="F").resize((width, height), Image.BILINEAR)
              for plane in np.moveaxis(pixels, -1, 0)]
    return np.clip(np.stack([np.asarray(p, dtype=np.float32) for p in planes], axis=-1), 0.0, 1.0)


def _render_and_write(job: RenderJob) -> str:
    buffer = io.BytesIO()
    render_image(job).save(buffer, format="JPEG", quality=job.jpeg_quality)
    Path(job.path).write_bytes(buffer.getvalue())
    return job.path


# --------------------------------------------------------------------------- world plan

@dataclass(frozen=True)
class WorldConfig:
    identities: int = 200
    cameras: int = 6
    seed: int = 0
    unlabeled_identities: int = 400
    min_images: int = 6                 # per labelled identity
    max_images: int = 12
    min_cameras: int = 2                # cameras each labelled identity walks past
    max_cameras: int = 6
    unlabeled_min_images: int = 6
    unlabeled_max_images: int = 10
    distractors: int = 60
    junk: int = 60
    nuisance: float = 1.0
    occlusion_prob: float = 0.2
    jpeg_quality: int = 90

    def validate(self) -> None:
        def need(ok: bool, argument: str, message: str) -> None:
            if not ok:
                raise WorldArgumentError(argument, f"{argument} {message} (got {getattr(self, argument)!r})")

        for name, field in self.__dataclass_fields__.items():
            value = getattr(self, name)
            if field.type == "int":
                need(isinstance(value, (int, np.integer)) and not isinstance(value, bool), name, "must be an integer")
            else:
                need(isinstance(value, (int, float, np.number)) and not isinstance(value, bool), name,
                     "must be a number")
        # Market-1501 names hold a 4-digit person id and a 1-digit camera; common parsers
        # (e.g. torchreid's "([-\d]+)_c(\d)") read no more.
        need(2 <= self.identities <= 9999, "identities", "must be in 2..9999: half train, half test, 4-digit ids")
        need(2 <= self.cameras <= 9, "cameras",
             "must be in 2..9: queries need a match under another camera, and names hold one digit")
        need(self.seed >= 0, "seed", "must be >= 0")
        need(self.unlabeled_identities >= 0, "unlabeled_identities", "must be >= 0")
        need(self.min_cameras >= 2, "min_cameras", "must be at least 2")
        need(self.max_cameras >= self.min_cameras, "max_cameras", f"must be >= min_cameras={self.min_cameras}")
        need(self.min_images >= self.min_cameras, "min_images",
             f"must be >= min_cameras={self.min_cameras} (one image per camera at least)")
        need(self.max_images >= self.min_images, "max_images", f"must be >= min_images={self.min_images}")
        need(self.unlabeled_min_images >= 1, "unlabeled_min_images", "must be at least 1")
        need(self.unlabeled_max_images >= self.unlabeled_min_images, "unlabeled_max_images",
             f"must be >= unlabeled_min_images={self.unlabeled_min_images}")
        need(self.distractors >= 0, "distractors", "must be >= 0")
        need(self.junk >= 0, "junk", "must be >= 0")
        need(self.nuisance >= 0, "nuisance", "must be >= 0")
        need(0.0 <= self.occlusion_prob <= 1.0, "occlusion_prob", "must be in [0, 1]")
        need(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in [1, 100]")


def market_name(pid: int, camera: int, seq: int, frame: int, det: int) -> str:
    """Market-1501 file name; pid -1 (junk) is written without zero padding, as in Market."""
    pid_text = "-1" if pid == -1 else f"{pid:04d}"
    return f"{pid_text}_c{camera}s{seq}_{frame:06d}_{det:02d}.jpg"


def _walk_views(rng: np.random.Generator, camera: Camera, count: int) -> list[str]:
    """Viewpoints along one tracklet: people keep walking the same way, mostly."""
    probs = np.array(camera.view_probs)
    views = [VIEWS[rng.choice(4, p=probs)]]
    for _ in range(count - 1):
        views.append(views[-1] if rng.uniform() < 0.75 else VIEWS[rng.choice(4, p=probs)])
    return views


def _plan_jobs(config: WorldConfig, out_dir: Path) -> tuple[list[RenderJob], dict]:
    """Decide every image of the world (split, name, camera, view) without drawing any."""
    seed = config.seed
    split_rng = _generator(seed, _STREAM_PLAN)
    pids = split_rng.permutation(np.arange(1, config.identities + 1))
    train_pids = set(int(p) for p in pids[: config.identities // 2])
    cameras = camera_rig(seed, config.cameras, config.nuisance)
    max_cameras = min(config.max_cameras, config.cameras)
    min_cameras = min(config.min_cameras, max_cameras)

    common = dict(seed=seed, cameras=config.cameras, nuisance=config.nuisance, occlusion_prob=config.occlusion_prob,
                  jpeg_quality=config.jpeg_quality)
    jobs: list[RenderJob] = []
    counts = {split: {"identities": 0, "images": 0} for split in SPLIT_DIRS}
    used_names: set[str] = set()

    def add(split: str, name: str, **fields) -> None:
        used_names.add(name)
        counts[split]["images"] += 1
        jobs.append(RenderJob(path=str(out_dir / split / name), **fields, **common))

    for pid in range(1, config.identities + 1):
        rng = _generator(seed, _STREAM_PLAN, _KIND_CODES["person"], pid)
        n_cams = int(rng.integers(min_cameras, max_cameras + 1))
        n_images = max(int(rng.integers(config.min_images, config.max_images + 1)), n_cams)
        cams = sorted(int(c) for c in rng.choice(config.cameras, n_cams, replace=False) + 1)
        per_camera = np.ones(n_cams, dtype=int) + rng.multinomial(n_images - n_cams, rng.dirichlet(np.ones(n_cams)))
        is_train = pid in train_pids
        # Query: one image per camera that keeps at least one image in the gallery, so
        # each query has a true match under another camera (all cameras keep one).
        query_cams = set() if is_train else {c for c, n in zip(cams, per_camera) if n >= 2}
        if not is_train and not query_cams:
            query_cams = {cams[0]}
        for cam, n in zip(cams, per_camera):
            seq = int(rng.integers(1, 7))
            frame = int(rng.integers(100, 150_000))
            views = _walk_views(rng, cameras[cam - 1], int(n))
            query_index = int(rng.integers(n)) if cam in query_cams else -1
            for k in range(int(n)):
                frame += int(rng.integers(5, 40))
                name = market_name(pid, cam, seq, frame, 0)
                split = "bounding_box_train" if is_train else ("query" if k == query_index else "bounding_box_test")
                add(split, name, kind="person", identity=pid, camera=cam, view=views[k], image_key=(pid, cam, k))
        if is_train:
            counts["bounding_box_train"]["identities"] += 1
        else:
            counts["bounding_box_test"]["identities"] += 1
            counts["query"]["identities"] += 1

    # Distractors (pid 0000) and junk (pid -1) live in the gallery only.
    for kind, pid, total in (("distractor", 0, config.distractors), ("junk", -1, config.junk)):
        for index in range(total):
            rng = _generator(seed, _STREAM_PLAN, _KIND_CODES[kind], index)
            cam = int(rng.integers(1, config.cameras + 1))
            seq, frame, det = int(rng.integers(1, 7)), int(rng.integers(100, 150_000)), 0
            while market_name(pid, cam, seq, frame, det) in used_names:
                det += 1
            add("bounding_box_test", market_name(pid, cam, seq, frame, det), kind=kind, identity=0, camera=cam,
                view=VIEWS[int(rng.integers(4))], image_key=(index,))
    counts["bounding_box_test"]["distractors"] = config.distractors
    counts["bounding_box_test"]["junk"] = config.junk

    # Unlabeled people for self-supervised pretraining: ids after the labelled ones.
    for uid in range(config.identities + 1, config.identities + config.unlabeled_identities + 1):
        rng = _generator(seed, _STREAM_PLAN, _KIND_CODES["unlabeled"], uid)
        n_images = int(rng.integers(config.unlabeled_min_images, config.unlabeled_max_images + 1))
        for k in range(n_images):
            cam = int(rng.integers(1, config.cameras + 1))
            view = VIEWS[rng.choice(4, p=np.array(cameras[cam - 1].view_probs))]
            add("unlabeled", f"u{uid:05d}_{k:03d}.jpg", kind="unlabeled", identity=uid, camera=cam, view=view,
                image_key=(uid, k))
        counts["unlabeled"]["identities"] += 1
    return jobs, counts


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise WorldArgumentError("out_dir", f"out_dir {str(out_dir)!r} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise WorldArgumentError(
                "out_dir", f"out_dir {str(out_dir)!r} exists and is not empty; pass --overwrite "
                           "(overwrite=True) to replace the world in it")
        # Drop the completeness marker first, so an interrupted rewrite is never mistaken
        # for a finished world; then only the folders this generator owns.
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
        for split in SPLIT_DIRS:
            shutil.rmtree(out_dir / split, ignore_errors=True)
    for split in SPLIT_DIRS:
        (out_dir / split).mkdir(parents=True, exist_ok=True)


def _camera_summary(camera: Camera) -> dict:
    summary = asdict(camera)
    for key, value in summary.items():
        if isinstance(value, float):
            summary[key] = round(value, 4)
        elif isinstance(value, tuple):
            summary[key] = [round(v, 4) for v in value]
    return summary


def generate_world(out_dir: str | os.PathLike, identities: int = 200, cameras: int = 6, seed: int = 0,
                   unlabeled_identities: int = 400, *, overwrite: bool = False, workers: int | None = None,
                   progress: bool = False, **options) -> dict:
    """Write a synthetic Market-1501-style world into ``out_dir`` and return its manifest.

    ``options`` are the other :class:`WorldConfig` fields (``min_images``, ``max_images``,
    ``min_cameras``, ``max_cameras``, ``unlabeled_min_images``, ``unlabeled_max_images``,
    ``distractors``, ``junk``, ``nuisance``, ``occlusion_prob``, ``jpeg_quality``).
    ``workers``: processes used to draw (default: up to 2; small worlds are drawn in-process).
    Raises :class:`WorldArgumentError` (a ``ValueError``) naming any bad argument.
    """
    unknown = set(options) - set(WorldConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"generate_world() got unknown option(s): {', '.join(sorted(unknown))}")
    config = WorldConfig(identities=identities, cameras=cameras, seed=seed,
                         unlabeled_identities=unlabeled_identities, **options)
    config.validate()
    if workers is not None and workers < 1:
        raise WorldArgumentError("workers", f"workers must be at least 1 (got {workers!r})")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    jobs, counts = _plan_jobs(config, out_dir)

    if workers is None:
        workers = 1 if len(jobs) < 400 else min(2, os.cpu_count() or 1)
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc="drawing world", unit="img", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                _render_and_write(job)
                bar.update()
        else:
            # "spawn" keeps workers independent of whatever threads the parent runs (torch).
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_render_and_write, jobs, chunksize=32):
                    bar.update()

    manifest = {
        "format": "market1501",
        "generator": "soliderkit.data.synth",
        "version": FORMAT_VERSION,
        "seed": config.seed,
        "image_size": [IMAGE_HEIGHT, IMAGE_WIDTH],
        "parameters": asdict(config),
        "counts": counts,
        "cameras": [_camera_summary(camera) for camera in camera_rig(config.seed, config.cameras, config.nuisance)],
    }
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)  # last: marks the world complete
    return manifest


# --------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    defaults = WorldConfig()
    parser = argparse.ArgumentParser(
        prog="python data_shards/synth.py", formatter_class=HelpFormatter,
        description="Draw a synthetic person-ReID world in the Market-1501 layout "
                    "(bounding_box_train, bounding_box_test, query, unlabeled, world.json).")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (must be empty unless --overwrite)")
    parser.add_argument("--identities", type=int, default=defaults.identities,
                        help="labelled identities, split in half into train and test (default %(default)s)")
    parser.add_argument("--cameras", type=int, default=defaults.cameras, help="cameras (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="world seed (default %(default)s)")
    parser.add_argument("--unlabeled-identities", type=int, default=defaults.unlabeled_identities,
                        help="extra people for self-supervised pretraining (default %(default)s)")
    parser.add_argument("--min-images", type=int, default=defaults.min_images,
                        help="images per labelled identity, at least (default %(default)s)")
    parser.add_argument("--max-images", type=int, default=defaults.max_images,
                        help="images per labelled identity, at most (default %(default)s)")
    parser.add_argument("--min-cameras", type=int, default=defaults.min_cameras,
                        help="cameras each labelled identity is seen by, at least (default %(default)s)")
    parser.add_argument("--max-cameras", type=int, default=defaults.max_cameras,
                        help="cameras each labelled identity is seen by, at most (default %(default)s)")
    parser.add_argument("--unlabeled-min-images", type=int, default=defaults.unlabeled_min_images,
                        help="images per unlabeled identity, at least (default %(default)s)")
    parser.add_argument("--unlabeled-max-images", type=int, default=defaults.unlabeled_max_images,
                        help="images per unlabeled identity, at most (default %(default)s)")
    parser.add_argument("--distractors", type=int, default=defaults.distractors,
                        help="pid-0000 distractor crops in the gallery (default %(default)s)")
    parser.add_argument("--junk", type=int, default=defaults.junk,
                        help="pid -1 junk crops in the gallery (default %(default)s)")
    parser.add_argument("--nuisance", type=float, default=defaults.nuisance,
                        help="strength of per-camera colour casts and degradations; 1.0 is "
                             "calibrated, 0 gives identical cameras (default %(default)s)")
    parser.add_argument("--occlusion-prob", type=float, default=defaults.occlusion_prob,
                        help="chance an image has an occluder in front of the person (default %(default)s)")
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality,
                        help="JPEG quality (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="drawing processes (default: up to 2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the world in a non-empty OUT_DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items()
               if k not in ("out_dir", "identities", "cameras", "seed", "unlabeled_identities",
                            "overwrite", "workers")}
    try:
        manifest = generate_world(args.out_dir, args.identities, args.cameras, args.seed,
                                  args.unlabeled_identities, overwrite=args.overwrite, workers=args.workers,
                                  progress=True, **options)
    except WorldArgumentError as error:
        flag = "OUT_DIR" if error.argument == "out_dir" else "--" + error.argument.replace("_", "-")
        parser.error(f"argument {flag}: {error}")
    counts = manifest["counts"]
    gallery = counts["bounding_box_test"]
    print(f"wrote {args.out_dir}: train {counts['bounding_box_train']['identities']} ids / "
          f"{counts['bounding_box_train']['images']} images; query {counts['query']['images']}; "
          f"gallery {gallery['images']} (incl. {gallery['distractors']} distractors, {gallery['junk']} junk); "
          f"unlabeled {counts['unlabeled']['identities']} ids / {counts['unlabeled']['images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Multi-crop views of a person image for DINO/SOLIDER pretraining.

Two global views (``global_size``, area scale 0.8-1.0 in the ReID recipe) and N local views
(``local_size``, 0.05-0.8), each a random-resized crop whose width/height ratio is drawn
(log-uniformly) around the view's *own* ratio: ``crop_aspect_ratio_scale`` multiplies
``width / height`` of the output, so 256x128 and 128x64 views both get 0.4-0.6, which is
SOLIDER's hand-written choice for 256x128, and any other size from the config gets the
matching range instead of a lookup table.

Photometric recipe as DINO's ``DataAugmentationDINO`` (the defaults): horizontal flip (p 0.5),
colour jitter (p 0.8; brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in random order),
grayscale (p 0.2) -- jitter and grayscale strengths are arguments; then Gaussian blur with radius 0.1-2 px on global view 1 always, on
global view 2 with p 0.1 and on local views with p 0.5; solarisation (p 0.2) on global
view 2 only; finally ToTensor and normalisation.

Every random number comes from a ``random.Random`` handed in (``crops(image, rng)``), never
from the global RNGs, so a view is a pure function of (image, seed): a folder dataset
seeds each sample from (seed, epoch, position), and resumed runs see the same views. When
used as a shard-stream transform (``__call__(image)``), the generator is a per-process
stream seeded from (seed, epoch, rank, DataLoader worker); call ``set_epoch`` before each
epoch.

Plan, then pixels. ``plan(width, height, rng)`` draws every random number of all views
(boxes, flip, jitter factors and order, grayscale, blur radius, solarisation) from the image
size alone, in the order the views are made, so planning first changes no draw. That allows:

* **Draft decoding** (``decode_draft=True``): a JPEG is decoded at 1/2, 1/4 or 1/8 size
  (libjpeg's DCT scaling, ``PIL.Image.draft``) when every planned crop still has at least
  its output's pixels at that size, i.e. no view is upsampled more than at full size. Boxes
  are mapped to the smaller image; the crop is then resized from it as usual.
* **Device-side augmentation**: ``device_sample`` returns the decoded uint8 pixels and the
  plan as numbers; ``soliderkit.pretrain.device_multicrop.DeviceMultiCrop`` makes the views
  from a batch of them on the training device. Both paths read the same plan, so for the
  same seed they give the same views (the device path reproduces PIL's arithmetic).
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from typing import Any, BinaryIO, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode

from soliderkit.run_control import derive_seed

__all__ = ["DecodedImage", "MultiCropAugmentation", "ViewPlan", "pil_box_blur_weights", "PARAM_NAMES"]

# Columns of a view's row in ``device_sample(...)["params"]`` (float32; integers are exact).
PARAM_NAMES = ("top", "left", "height", "width", "flip", "jitter", "brightness", "contrast", "saturation",
               "hue_shift", "order0", "order1", "order2", "order3", "grayscale", "blur", "blur_radius",
               "blur_ww", "blur_fw", "solarize")
P = {name: i for i, name in enumerate(PARAM_NAMES)}
DRAFT_FACTORS = (8, 4, 2)


def random_resized_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: random.Random, attempts: int = 10) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a box covering ``scale`` of the area with w/h in ``ratio``.

    Same distribution as torchvision's RandomResizedCrop (area uniform, ratio log-uniform,
    up to ten tries, then the largest centred box whose ratio is clamped into range), drawn
    from ``rng``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    own = width / height
    if own < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif own > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class ViewPlan:
    """Everything random about one view, drawn before any pixel is touched."""

    top: int  # crop box in the full-size image
    left: int
    height: int
    width: int
    size: tuple[int, int]  # output (height, width)
    flip: bool
    jitter: tuple[tuple[float, float, float, float], tuple[int, int, int, int]] | None  # factors b, c, s, h; op order
    grayscale: bool
    blur_radius: float | None
    solarize: bool


@dataclass
class DecodedImage:
    """An RGB image decoded for its plan; box coordinates divide by ``scale`` (x, y) in it."""

    image: Image.Image
    plans: list[ViewPlan]
    scale: tuple[float, float] = (1.0, 1.0)


def pil_box_blur_weights(radius: float, passes: int = 3) -> tuple[int, int, int]:
    """(integer box radius, inner weight, edge weight) of one pass of PIL's Gaussian blur.

    Pillow approximates a Gaussian of standard deviation ``radius`` by ``passes`` box blurs of
    a fractional radius (BoxBlur.c: ``_gaussian_blur_radius``, then ``ImagingHorizontalBoxBlur``'s
    24-bit fixed-point weights), computed here in the same float32 arithmetic.
    """
    f32 = np.float32
    r = f32(radius)
    sigma2 = f32(r * r / f32(passes))
    length = f32(math.sqrt(12.0 * float(sigma2) + 1.0))
    whole = f32(math.floor((float(length) - 1.0) / 2.0))
    frac = f32(f32(2) * whole + f32(1)) * f32(whole * f32(whole + f32(1)) - f32(3) * sigma2)
    frac = f32(frac / f32(f32(6) * f32(sigma2 - f32(whole + f32(1)) * f32(whole + f32(1)))))
    box = f32(whole + frac)
    box_int = int(box)
    inner = int(f32(1 << 24) / f32(box * f32(2) + f32(1)))
    edge = ((1 << 24) - (box_int * 2 + 1) * inner) // 2
    return box_int, inner, edge


class MultiCropAugmentation:
    """``crops(image, rng) -> [global_1, global_2, local_1, ..., local_N]`` normalised tensors."""

    def __init__(self, global_size: Sequence[int] = (256, 128), local_size: Sequence[int] = (128, 64), *,
                 global_scale: Sequence[float] = (0.8, 1.0), local_scale: Sequence[float] = (0.05, 0.8),
                 local_number: int = 8, aspect_ratio_scale: Sequence[float] = (0.8, 1.2),
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 color_jitter_prob: float = 0.8, color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                 grayscale_prob: float = 0.2, seed: int = 0, rank: int = 0, decode_draft: bool = False):
        self.global_size = (int(global_size[0]), int(global_size[1]))
        self.local_size = (int(local_size[0]), int(local_size[1]))
        self.global_scale = (float(global_scale[0]), float(global_scale[1]))
        self.local_scale = (float(local_scale[0]), float(local_scale[1]))
        self.local_number = int(local_number)
        self.aspect_ratio_scale = (float(aspect_ratio_scale[0]), float(aspect_ratio_scale[1]))
        self.mean, self.std = list(mean), list(std)
        self.color_jitter_prob, self.grayscale_prob = float(color_jitter_prob), float(grayscale_prob)
        self.color_jitter = tuple(float(x) for x in color_jitter)  # brightness, contrast, saturation, hue
        self.decode_draft = bool(decode_draft)
        self.seed, self.rank, self.epoch = seed, rank, 0
        self._stream: tuple[tuple, random.Random] | None = None

    @property
    def num_crops(self) -> int:
        return 2 + self.local_number

    def ratio_range(self, size: tuple[int, int]) -> tuple[float, float]:
        own = size[1] / size[0]
        return own * self.aspect_ratio_scale[0], own * self.aspect_ratio_scale[1]

    # -- the plan: every random number, from the image size alone ------------------------------

    def _plan_view(self, width: int, height: int, rng: random.Random, size: tuple[int, int],
                   scale: tuple[float, float], blur_prob: float, solarize_prob: float) -> ViewPlan:
        top, left, h, w = random_resized_box(width, height, scale, self.ratio_range(size), rng)
        flip = rng.random() < 0.5
        jitter = None
        if rng.random() < self.color_jitter_prob:
            # torchvision's ColorJitter(b, c, s, h) (DINO: 0.4, 0.4, 0.2, 0.1): factors drawn
            # first, applied in random order
            b, c, s, hue = self.color_jitter
            factors = (rng.uniform(max(0.0, 1 - b), 1 + b), rng.uniform(max(0.0, 1 - c), 1 + c),
                       rng.uniform(max(0.0, 1 - s), 1 + s), rng.uniform(-hue, hue))
            order = list(range(4))
            rng.shuffle(order)
            jitter = (factors, tuple(order))
        grayscale = rng.random() < self.grayscale_prob
        blur_radius = rng.uniform(0.1, 2.0) if rng.random() < blur_prob else None
        solarize = solarize_prob > 0 and rng.random() < solarize_prob
        return ViewPlan(top, left, h, w, size, flip, jitter, grayscale, blur_radius, solarize)

    def plan(self, width: int, height: int, rng: random.Random) -> list[ViewPlan]:
        """The views of a ``width`` x ``height`` image: global 1 (always blurred), global 2
        (blur p 0.1, solarisation p 0.2), then the local views (blur p 0.5)."""
        plans = [self._plan_view(width, height, rng, self.global_size, self.global_scale, 1.0, 0.0),
                 self._plan_view(width, height, rng, self.global_size, self.global_scale, 0.1, 0.2)]
        plans += [self._plan_view(width, height, rng, self.local_size, self.local_scale, 0.5, 0.0)
                  for _ in range(self.local_number)]
        return plans

    @staticmethod
    def draft_factor(plans: Sequence[ViewPlan]) -> int:
        """The largest of 8, 4, 2 (else 1) by which the image can shrink while every planned
        crop keeps at least its output's height and width in pixels."""
        room = min(min(p.height / p.size[0], p.width / p.size[1]) for p in plans)
        return next((f for f in DRAFT_FACTORS if room >= f), 1)

    # -- decoding -------------------------------------------------------------------------------

    def decode(self, source: str | bytes | BinaryIO | Any, rng: random.Random) -> DecodedImage:
        """Open ``source`` (a path, the encoded bytes or a file object), plan its views with
        ``rng`` and decode it, at reduced size when ``decode_draft`` allows. On failure ``rng``
        is left as it was (a skipped image draws nothing)."""
        state = rng.getstate()
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source) \
                    as image:
                width, height = image.size
                plans = self.plan(width, height, rng)
                if self.decode_draft:
                    factor = self.draft_factor(plans)
                    if factor > 1:
                        image.draft(None, (width // factor, height // factor))
                image.load()
                scale = (1.0, 1.0)
                if image.size != (width, height):
                    # libjpeg scales by exactly 1/factor, the last partial block rounded up
                    factor = round(width / image.width)
                    exact = image.size == (-(-width // factor), -(-height // factor))
                    scale = (float(factor), float(factor)) if exact else (width / image.width, height / image.height)
                if image.mode != "RGB":
                    image = image.convert("RGB")
        except BaseException:
            rng.setstate(state)
            raise
        return DecodedImage(image, plans, scale)

    # -- pixels on the CPU (PIL) ------------------------------------------------------------------

    def _view(self, image: Image.Image, plan: ViewPlan, scale: tuple[float, float]) -> torch.Tensor:
        out_h, out_w = plan.size
        if scale == (1.0, 1.0):
            view = TF.resized_crop(image, plan.top, plan.left, plan.height, plan.width, [out_h, out_w],
                                   interpolation=InterpolationMode.BICUBIC)
        else:
            # the box in the smaller image; crop to the whole pixels it touches, then resize from
            # the fractional box inside them (PIL's resize box)
            top, left = plan.top / scale[1], plan.left / scale[0]
            bottom, right = (plan.top + plan.height) / scale[1], (plan.left + plan.width) / scale[0]
            y0, x0 = math.floor(top), math.floor(left)
            y1, x1 = min(math.ceil(bottom), image.height), min(math.ceil(right), image.width)
            view = image.crop((x0, y0, x1, y1)).resize((out_w, out_h), Image.Resampling.BICUBIC,
                                                       box=(left - x0, top - y0, right - x0, bottom - y0))
        if plan.flip:
            view = TF.hflip(view)
        if plan.jitter is not None:
            factors, order = plan.jitter
            ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
            for i in order:
                view = ops[i](view, factors[i])
        if plan.grayscale:
            view = TF.rgb_to_grayscale(view, num_output_channels=3)
        if plan.blur_radius is not None:
            view = view.filter(ImageFilter.GaussianBlur(radius=plan.blur_radius))
        if plan.solarize:
            view = ImageOps.solarize(view)
        return TF.normalize(TF.to_tensor(view), self.mean, self.std)

    def apply(self, decoded: DecodedImage) -> list[torch.Tensor]:
        """The views of a decoded image, made on the CPU with PIL."""
        return [self._view(decoded.image, plan, decoded.scale) for plan in decoded.plans]

    def crops(self, image: Image.Image, rng: random.Random) -> list[torch.Tensor]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        return self.apply(DecodedImage(image, self.plan(image.width, image.height, rng)))

    # -- pixels on the device: what a DataLoader worker hands over ------------------------------

    @staticmethod
    def view_params(plans: Sequence[ViewPlan], scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """One row of ``PARAM_NAMES`` per view (float32): the box in the decoded image and the
        photometric draws, in the numbers PIL computes with (float32 factors, the integer hue
        shift, the blur's fixed-point box weights)."""
        rows = np.zeros((len(plans), len(PARAM_NAMES)), dtype=np.float32)
        for row, plan in zip(rows, plans):
            row[P["top"]], row[P["height"]] = plan.top / scale[1], plan.height / scale[1]
            row[P["left"]], row[P["width"]] = plan.left / scale[0], plan.width / scale[0]
            row[P["flip"]] = plan.flip
            if plan.jitter is not None:
                (b, c, s, h), order = plan.jitter
                row[P["jitter"]] = 1
                row[P["brightness"]], row[P["contrast"]], row[P["saturation"]] = b, c, s
                row[P["hue_shift"]] = int(np.int32(h * 255))  # torchvision's adjust_hue on PIL images
                row[P["order0"]:P["order3"] + 1] = order
            row[P["grayscale"]] = plan.grayscale
            if plan.blur_radius is not None:
                row[P["blur"]] = 1
                row[P["blur_radius"]:P["blur_fw"] + 1] = pil_box_blur_weights(plan.blur_radius)
            row[P["solarize"]] = plan.solarize
        return torch.from_numpy(rows)

    def device_sample(self, decoded: DecodedImage) -> dict[str, torch.Tensor]:
        """``{"image": uint8 HxWx3, "params": float32 views x len(PARAM_NAMES)}`` for
        ``soliderkit.pretrain.device_multicrop`` (collate with its ``collate_device_samples``)."""
        return {"image": torch.from_numpy(np.array(decoded.image, dtype=np.uint8)),
                "params": self.view_params(decoded.plans, decoded.scale)}

    # -- shard streams ------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the stream generator used by ``__call__`` (set before each shard epoch)."""
        self.epoch = int(epoch)

    def stream_rng(self) -> random.Random:
        """This process's generator for shard streams, seeded from (seed, epoch, rank, worker)."""
        info = torch.utils.data.get_worker_info()
        key = (self.seed, self.epoch, self.rank, info.id if info is not None else -1)
        if self._stream is None or self._stream[0] != key:
            self._stream = (key, random.Random(derive_seed("multicrop-stream", *key)))
        return self._stream[1]

    def decode_stream(self, data: bytes) -> DecodedImage:
        """A shard sample's image bytes, planned with the stream generator (``decode`` of
        ``soliderkit.data.stream.make_shard_loader``)."""
        return self.decode(data, self.stream_rng())

    def __call__(self, image: Image.Image | DecodedImage) -> list[torch.Tensor]:
        if isinstance(image, DecodedImage):
            return self.apply(image)
        return self.crops(image, self.stream_rng())

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
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode

from soliderkit.run_control import derive_seed

__all__ = ["MultiCropAugmentation"]


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


class MultiCropAugmentation:
    """``crops(image, rng) -> [global_1, global_2, local_1, ..., local_N]`` normalised tensors."""

    def __init__(self, global_size: Sequence[int] = (256, 128), local_size: Sequence[int] = (128, 64), *,
                 global_scale: Sequence[float] = (0.8, 1.0), local_scale: Sequence[float] = (0.05, 0.8),
                 local_number: int = 8, aspect_ratio_scale: Sequence[float] = (0.8, 1.2),
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 color_jitter_prob: float = 0.8, color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                 grayscale_prob: float = 0.2, seed: int = 0, rank: int = 0):
        self.global_size = (int(global_size[0]), int(global_size[1]))
        self.local_size = (int(local_size[0]), int(local_size[1]))
        self.global_scale = (float(global_scale[0]), float(global_scale[1]))
        self.local_scale = (float(local_scale[0]), float(local_scale[1]))
        self.local_number = int(local_number)
        self.aspect_ratio_scale = (float(aspect_ratio_scale[0]), float(aspect_ratio_scale[1]))
        self.mean, self.std = list(mean), list(std)
        self.color_jitter_prob, self.grayscale_prob = float(color_jitter_prob), float(grayscale_prob)
        self.color_jitter = tuple(float(x) for x in color_jitter)  # brightness, contrast, saturation, hue
        self.seed, self.rank, self.epoch = seed, rank, 0
        self._stream: tuple[tuple, random.Random] | None = None

    @property
    def num_crops(self) -> int:
        return 2 + self.local_number

    def ratio_range(self, size: tuple[int, int]) -> tuple[float, float]:
        own = size[1] / size[0]
        return own * self.aspect_ratio_scale[0], own * self.aspect_ratio_scale[1]

    # -- one view ---------------------------------------------------------------------------

    def _view(self, image: Image.Image, rng: random.Random, size: tuple[int, int], scale: tuple[float, float],
              blur_prob: float, solarize_prob: float) -> torch.Tensor:
        top, left, h, w = random_resized_box(image.width, image.height, scale, self.ratio_range(size), rng)
        view = TF.resized_crop(image, top, left, h, w, list(size), interpolation=InterpolationMode.BICUBIC)
        if rng.random() < 0.5:
            view = TF.hflip(view)
        if rng.random() < self.color_jitter_prob:
            view = self._color_jitter(view, rng)
        if rng.random() < self.grayscale_prob:
            view = TF.rgb_to_grayscale(view, num_output_channels=3)
        if rng.random() < blur_prob:
            view = view.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
        if solarize_prob > 0 and rng.random() < solarize_prob:
            view = ImageOps.solarize(view)
        return TF.normalize(TF.to_tensor(view), self.mean, self.std)

    def _color_jitter(self, view: Image.Image, rng: random.Random) -> Image.Image:
        # torchvision's ColorJitter(b, c, s, h) (DINO: 0.4, 0.4, 0.2, 0.1): factors drawn first,
        # applied in random order
        b, c, s, h = self.color_jitter
        factors = [rng.uniform(max(0.0, 1 - b), 1 + b), rng.uniform(max(0.0, 1 - c), 1 + c),
                   rng.uniform(max(0.0, 1 - s), 1 + s), rng.uniform(-h, h)]
        ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
        order = list(range(4))
        rng.shuffle(order)
        for i in order:
            view = ops[i](view, factors[i])
        return view

    # -- all views --------------------------------------------------------------------------

    def crops(self, image: Image.Image, rng: random.Random) -> list[torch.Tensor]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        views = [
            self._view(image, rng, self.global_size, self.global_scale, blur_prob=1.0, solarize_prob=0.0),
            self._view(image, rng, self.global_size, self.global_scale, blur_prob=0.1, solarize_prob=0.2),
        ]
        views += [self._view(image, rng, self.local_size, self.local_scale, blur_prob=0.5, solarize_prob=0.0)
                  for _ in range(self.local_number)]
        return views

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the stream generator used by ``__call__`` (set before each shard epoch)."""
        self.epoch = int(epoch)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        key = (self.seed, self.epoch, self.rank, info.id if info is not None else -1)
        if self._stream is None or self._stream[0] != key:
            self._stream = (key, random.Random(derive_seed("multicrop-stream", *key)))
        return self.crops(image, self._stream[1])

"""Images and augmentation for fine-tuning and feature extraction.

Training augmentation as SOLIDER-REID / TAO: resize (bicubic) -> horizontal flip ->
pad -> random crop back to size -> normalise -> random erasing (timm, per-pixel noise,
one box). Test images are only resized and normalised; the test resize filter is a choice
(``interpolation``): both references resize test images bilinearly (torchvision's default)
while training bicubically; the library default stays bicubic and the fine-tune config picks
(``dataset.test_interpolation``, default the references' bilinear).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from timm.data.random_erasing import RandomErasing
from torch.utils.data import Dataset
from torchvision import transforms as T

from soliderkit.reid.datasets import ImageRecord
from soliderkit.run_control import seeded


def train_transform(size: tuple[int, int], mean: Sequence[float], std: Sequence[float], *,
                    flip_prob: float = 0.5, padding: int = 10, erase_prob: float = 0.5,
                    color_jitter_prob: float = 0.0,
                    color_jitter: Sequence[float] = (0.2, 0.15, 0.1, 0.0)) -> Callable:
    """``color_jitter_prob`` > 0 adds torchvision's ``ColorJitter(*color_jitter)`` (brightness,
    contrast, saturation, hue) to that share of images, after the flip; neither reference has it."""
    photometric = [T.RandomApply([T.ColorJitter(*color_jitter)], p=color_jitter_prob)] if color_jitter_prob > 0 else []
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=flip_prob),
        *photometric,
        T.Pad(padding),
        T.RandomCrop(size),
        T.ToTensor(),
        T.Normalize(mean=mean, std=std),
        RandomErasing(probability=erase_prob, mode="pixel", max_count=1, device="cpu"),
    ])


TEST_INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def test_transform(size: tuple[int, int], mean: Sequence[float], std: Sequence[float], *,
                   interpolation: str = "bicubic") -> Callable:
    if interpolation not in TEST_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(TEST_INTERPOLATIONS)}, got {interpolation!r}")
    return T.Compose([
        T.Resize(size, interpolation=TEST_INTERPOLATIONS[interpolation]),
        T.ToTensor(),
        T.Normalize(mean=mean, std=std),
    ])


class ImageDataset(Dataset):
    """(image tensor, pid, camid, index) for each record.

    ``dataset[i]`` transforms with the global RNGs; ``dataset[(i, seed)]`` draws the
    augmentation from ``seed`` alone (and leaves the global RNGs as they were), which is what
    makes a resumed or multi-worker run see the same images as an uninterrupted one.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]):
        index, seed = item if isinstance(item, tuple) else (item, None)
        record = self.records[index]
        try:
            with Image.open(record.path) as image:
                image = image.convert("RGB")
        except OSError as exc:
            raise OSError(f"cannot read image {record.path}: {exc}") from exc
        if seed is None:
            return self.transform(image), record.pid, record.camid, index
        with seeded(seed):
            return self.transform(image), record.pid, record.camid, index


def collate(batch):
    images, pids, camids, indices = zip(*batch)
    return (torch.stack(images), torch.tensor(pids), torch.tensor(camids), torch.tensor(indices))

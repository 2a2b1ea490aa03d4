"""The one embedding path: images -> test transform -> model (eval mode, optional flip average) -> rows.

Every tool that embeds images goes through :func:`iter_embeddings`: validation during training
and ``finetune/evaluate.py`` (through ``soliderkit.reid.evaluation.extract_embeddings``),
``finetune/inference.py`` (``soliderkit.finetune.inference.embed_images``), the Python
``FeatureExtractor`` and the match demo (``soliderkit.finetune.extractor``), and the kNN probe.

:class:`Preprocessing` is what a model needs its input to look like: input size, pixel mean and
std, the resize filter, test-time flip averaging and the λ the model runs at. The toolkit's
fine-tuned checkpoints store it in their metadata (key ``preprocessing``), so embedding a
checkpoint never depends on re-typing these numbers in a config.

Inputs (:func:`load_image`): file paths, PIL images, numpy arrays (H x W x 3 RGB, or H x W
grayscale; uint8 0-255, or float 0-1) and torch tensors (3 x H x W float 0-1, torchvision's
layout). Arrays from OpenCV are BGR: convert them (``image[..., ::-1]``) first.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from soliderkit.reid.transforms import collate, test_transform

__all__ = ["PREPROCESSING_KEY", "Preprocessing", "ImageInputs", "load_image", "flip_averaged_embedding",
           "iter_embeddings"]

# The safetensors metadata key of a checkpoint's preprocessing record (a JSON object).
PREPROCESSING_KEY = "preprocessing"
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a model, and how its embedding is taken."""

    input_size: tuple[int, int]  # (height, width) the images are resized to
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, 0-1 scale
    pixel_std: tuple[float, float, float] = (0.226, 0.226, 0.226)  # RGB, 0-1 scale
    interpolation: str = "bilinear"  # resize filter: "bilinear" (the references' test resize) or "bicubic"
    flip: bool = False  # average the embeddings of the image and its mirror image
    semantic_weight: float | None = None  # λ the model's backbone runs at (None: no controller / unknown)
    extra: dict = field(default_factory=dict, compare=False)  # anything else a newer writer recorded

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.input_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"input_size must be (height, width) > 0, got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        for key in ("pixel_mean", "pixel_std"):
            values = tuple(float(v) for v in getattr(self, key))
            if len(values) != 3:
                raise ValueError(f"{key} needs 3 values (RGB), got {getattr(self, key)!r}")
            object.__setattr__(self, key, values)
        if min(self.pixel_std) <= 0:
            raise ValueError(f"pixel_std must be positive, got {self.pixel_std!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        object.__setattr__(self, "flip", bool(self.flip))

    def transform(self):
        """The test transform: resize to ``input_size``, to tensor, normalise."""
        return test_transform(self.input_size, self.pixel_mean, self.pixel_std, interpolation=self.interpolation)

    def replace(self, **changes: Any) -> "Preprocessing":
        values = {**self.as_dict(), **{k: v for k, v in changes.items() if v is not None}}
        return Preprocessing.from_dict(values)

    def as_dict(self) -> dict:
        values = asdict(self)
        extra = values.pop("extra")
        values = {**extra, **values}
        values["input_size"], values["pixel_mean"], values["pixel_std"] = (
            list(self.input_size), list(self.pixel_mean), list(self.pixel_std))
        return values

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Preprocessing":
        known = {"input_size", "pixel_mean", "pixel_std", "interpolation", "flip", "semantic_weight"}
        missing = {"input_size"} - set(values)
        if missing:
            raise ValueError(f"preprocessing record lacks {', '.join(sorted(missing))}: {dict(values)!r}")
        extra = {k: v for k, v in values.items() if k not in known and k != "extra"}
        return cls(**{k: v for k, v in values.items() if k in known}, extra=extra)

    @classmethod
    def from_json(cls, text: str) -> "Preprocessing":
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """One line, e.g. ``input 256x128, mean [0.5, 0.5, 0.5], std [...], bilinear, flip, λ=0.2``."""
        def numbers(values):
            return "[" + ", ".join(f"{v:g}" for v in values) + "]"
        parts = [f"input {self.input_size[0]}x{self.input_size[1]}", f"mean {numbers(self.pixel_mean)}",
                 f"std {numbers(self.pixel_std)}", self.interpolation, "flip" if self.flip else "no flip"]
        if self.semantic_weight is not None:
            parts.append(f"λ={self.semantic_weight:g}")
        return ", ".join(parts)


# --- inputs ----------------------------------------------------------------------------------------

def load_image(item: Any) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, a numpy array or a torch tensor (see the module doc)."""
    if isinstance(item, (str, os.PathLike)):
        try:
            with Image.open(item) as image:
                return image.convert("RGB")
        except OSError as exc:
            raise OSError(f"cannot read image {item}: {exc}") from exc
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, torch.Tensor):
        tensor = item.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3):
            tensor = tensor.permute(1, 2, 0)
        elif tensor.ndim != 2:
            raise ValueError(f"a tensor image must be C x H x W (C = 1 or 3) or H x W, got shape {tuple(item.shape)}")
        item = tensor.numpy()
    if isinstance(item, np.ndarray):
        array = item
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
            raise ValueError(f"an array image must be H x W x 3 (RGB), H x W x 4 or H x W, got shape {item.shape}")
        if np.issubdtype(array.dtype, np.floating):
            array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        elif array.dtype == np.bool_:
            array = array.astype(np.uint8) * 255
        elif array.dtype != np.uint8:
            if array.min() < 0 or array.max() > 255:
                raise ValueError(f"an integer array image must hold 0-255 values, got {array.dtype} "
                                 f"in [{array.min()}, {array.max()}]")
            array = array.astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    raise TypeError(f"cannot embed a {type(item).__name__}: give a file path, a PIL image, a numpy array "
                    "(H x W x 3 RGB) or a torch tensor (3 x H x W)")


class ImageInputs(Dataset):
    """(image tensor, -1, -1, index) per input, the item layout of ``soliderkit.reid.transforms.ImageDataset``."""

    def __init__(self, items: Sequence[Any], transform):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.transform(load_image(self.items[index])), -1, -1, index


# --- the model side ----------------------------------------------------------------------------------

def flip_averaged_embedding(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean of the embeddings of the images and their mirror images (``with_flip_feature``)."""
    return 0.5 * (model(images) + model(torch.flip(images, dims=[3])))


@torch.no_grad()
def iter_embeddings(model: torch.nn.Module, dataset: Dataset, *, batch_size: int,
                    device: torch.device | str, flip: bool = False, num_workers: int = 0,
                    progress: bool = True, desc: str = "embeddings"
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (dataset indices, float32 CPU embeddings) one batch at a time, in dataset order.

    ``dataset`` items are (image tensor, pid, camid, index), as ``ImageDataset`` and
    :class:`ImageInputs` give them. ``model`` must already be on ``device``; it runs in eval
    mode and is put back in its previous mode afterwards. ``num_workers`` is capped at the number
    of CPUs and of batches.
    """
    # More loading processes than CPUs only adds start-up time (TAO's default is 8 per process).
    workers = max(0, min(num_workers, -(-len(dataset) // batch_size), os.cpu_count() or 1))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    was_training = model.training
    model.eval()
    try:
        for images, _, _, indices in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            images = images.to(device)
            embedding = flip_averaged_embedding(model, images) if flip else model(images)
            yield indices, embedding.float().cpu()
    finally:
        model.train(was_training)

"""Embeddings from Python: load any supported ReID checkpoint and embed images with its own preprocessing.

    from soliderkit.finetune import FeatureExtractor

    extractor = FeatureExtractor("results/finetune/synthetic_tiny/train/model.safetensors", device="cpu")
    embeddings = extractor(["a.jpg", pil_image, numpy_rgb_array])   # torch.float32, (3, D), on the CPU

The toolkit's own checkpoints (``model.safetensors`` from ``finetune/run.py``) rebuild their
network from their metadata and carry their preprocessing (input size, pixel mean / std, resize
filter, flip averaging, λ: :class:`soliderkit.reid.embedding.Preprocessing`), so nothing is
re-typed from a config. SOLIDER-REID ``.pth`` and TAO ReIdentificationNet checkpoints do not
record how they were built: pass ``config=`` (a TAO experiment YAML, a ``FinetuneConfig`` or a
``ModelConfig``); their preprocessing then comes from its ``model`` and ``dataset`` sections.
Toolkit checkpoints written before the preprocessing was recorded take the mean / std / resize
filter from ``config`` too (or the TAO defaults), with a note.

:func:`load_for_embedding` is the same resolution for the command-line tools (``evaluate.py``,
``inference.py``, ``export.py``, ``match.py``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from soliderkit.backbone import CheckpointError
from soliderkit.config import ConfigError, load_config
from soliderkit.finetune.config import NECK_FEATS, DatasetConfig, FinetuneConfig, ModelConfig
from soliderkit.finetune.model import MODEL_FORMAT, ReidModel, load_reid_model, preprocessing_for
from soliderkit.reid.embedding import PREPROCESSING_KEY, ImageInputs, Preprocessing, iter_embeddings

log = logging.getLogger(__name__)

__all__ = ["FeatureExtractor", "LoadedModel", "load_for_embedding", "load_for_cli", "config_given", "resolve_checkpoint",
           "default_device"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a folder holding ``model.safetensors`` (a run's ``train/`` folder)."""
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    return path


@dataclass
class LoadedModel:
    model: ReidModel  # eval mode, on the CPU
    model_config: ModelConfig
    preprocessing: Preprocessing
    info: dict  # the checkpoint's metadata (toolkit) or format / load report (foreign)
    checkpoint: Path
    notes: list[str] = field(default_factory=list)  # where settings came from, when it is worth saying

    @property
    def format(self) -> str:
        return "toolkit" if self.info.get("format") == MODEL_FORMAT else str(self.info.get("format"))


def _as_sections(config) -> tuple[ModelConfig | None, DatasetConfig | None]:
    if config is None:
        return None, None
    if isinstance(config, (str, os.PathLike)):
        try:
            config = load_config(FinetuneConfig, config)
        except ConfigError as exc:
            raise ValueError(f"config {config}: {exc}") from None
    if isinstance(config, FinetuneConfig):
        return config.model, config.dataset
    if isinstance(config, ModelConfig):
        return config, None
    raise TypeError(f"config must be a YAML path, a FinetuneConfig or a ModelConfig, not {type(config).__name__}")


# Model fields that change a toolkit checkpoint's embedding; the checkpoint's own values are used
# (it records its model section), so a config that says otherwise gets a note, not silence.
EMBEDDING_FIELDS = ("backbone", "neck", "neck_feat", "reduce_feat_dim", "feat_dim", "semantic_weight")


def load_for_embedding(checkpoint: str | os.PathLike, config=None, *, allow_partial: bool = False,
                       flip: bool | None = None, interpolation: str | None = None,
                       neck_feat: str | None = None) -> LoadedModel:
    """Load a ReID checkpoint and the preprocessing it needs (see the module docstring).

    ``config`` describes foreign checkpoints and fills in what old toolkit checkpoints lack; for
    a toolkit checkpoint that records its preprocessing, settings of ``config`` that disagree are
    named in ``notes`` and not used. ``flip`` / ``interpolation`` override the resolved values;
    ``neck_feat`` ("before" / "after") the BNNeck side the embedding is taken from (SOLIDER-REID's
    ``TEST.NECK_FEAT``: a test-time choice, the weights are the same).
    Raises ``soliderkit.backbone.CheckpointError`` for unreadable or mismatched checkpoints.
    """
    if neck_feat is not None and neck_feat not in NECK_FEATS:
        raise ValueError(f"neck_feat must be one of {list(NECK_FEATS)}, got {neck_feat!r}")
    path = resolve_checkpoint(checkpoint)
    model_section, dataset_section = _as_sections(config)
    model, model_cfg, info = load_reid_model(path, model_section, allow_partial=allow_partial)
    notes: list[str] = []
    if info.get(PREPROCESSING_KEY):
        pre = Preprocessing.from_json(info[PREPROCESSING_KEY])
        if model_section is not None or dataset_section is not None:
            notes += _disagreements(pre, preprocessing_for(model_section or model_cfg, dataset_section),
                                    dataset_given=dataset_section is not None, model_given=model_section is not None)
    else:
        pre = preprocessing_for(model_cfg, dataset_section)
        origin = "the config's dataset section" if dataset_section is not None else "the TAO defaults"
        what = ("this toolkit checkpoint was written before checkpoints recorded their preprocessing"
                if info.get("format") == MODEL_FORMAT else f"a {info.get('format')} checkpoint records no preprocessing")
        notes.append(f"{what}: pixel mean {list(pre.pixel_mean)}, std {list(pre.pixel_std)} and the "
                     f"{pre.interpolation} resize come from {origin}")
    if model_section is not None and model_cfg is not model_section:  # the checkpoint rebuilt itself
        notes += [f"the checkpoint's model.{key} {_show(getattr(model_cfg, key))} is used, not the config's "
                  f"{_show(getattr(model_section, key))}" for key in EMBEDDING_FIELDS
                  if getattr(model_cfg, key) != getattr(model_section, key)
                  and not (key == "neck_feat" and neck_feat is not None)]
    if neck_feat is not None and neck_feat != model_cfg.neck_feat:
        notes.append(f"the embedding is taken {neck_feat} the BNNeck as asked, not {model_cfg.neck_feat} "
                     "as the checkpoint's model.neck_feat says")
        model.neck_feat = neck_feat
        model_cfg = dataclasses.replace(model_cfg, neck_feat=neck_feat)
    backbone = model.backbone
    pre = pre.replace(flip=flip, interpolation=interpolation,
                      semantic_weight=backbone.semantic_weight if backbone.controller is not None else None)
    return LoadedModel(model, model_cfg, pre, info, path, notes)


def config_given(args) -> bool:
    """Whether a command line describes the model or its data: a ``--config`` file, or overrides of
    the ``model`` / ``dataset`` sections (others, e.g. ``evaluate.results_dir=...``, do not count)."""
    return bool(getattr(args, "config", None)) or any(
        text.partition("=")[0].strip().startswith(("model.", "dataset.", "model=", "dataset="))
        for text in getattr(args, "overrides", None) or ())


def load_for_cli(checkpoint: str | os.PathLike, cfg: FinetuneConfig, *, config_given: bool, config_key: str,
                 allow_partial: bool = False, flip: bool | None = None, neck_feat: str | None = None) -> LoadedModel:
    """:func:`load_for_embedding` for the command-line tools: ``cfg`` is used only when the user gave
    a config or overrides (``config_given``); a bad checkpoint exits with one line naming
    ``config_key``; the key report of a partial load and the notes are printed."""
    try:
        loaded = load_for_embedding(checkpoint, cfg if config_given else None, allow_partial=allow_partial,
                                    flip=flip, neck_feat=neck_feat)
    except CheckpointError as exc:
        raise SystemExit(f"{config_key}: {exc}") from None
    if loaded.info.get("load_report"):
        print(f"loaded {loaded.info['load_report']}")
    for note in loaded.notes:
        print(f"note: {note}")
    return loaded


def _disagreements(used: Preprocessing, configured: Preprocessing, *, dataset_given: bool,
                   model_given: bool) -> list[str]:
    checks = []
    if model_given:
        checks += [("input size", "model.input_height/input_width", "input_size"),
                   ("flip averaging", "model.with_flip_feature", "flip")]
    if dataset_given:
        checks += [("pixel mean", "dataset.pixel_mean", "pixel_mean"), ("pixel std", "dataset.pixel_std", "pixel_std"),
                   ("resize filter", "dataset.test_interpolation", "interpolation")]
    notes = []
    for label, key, attribute in checks:
        mine, theirs = getattr(used, attribute), getattr(configured, attribute)
        if mine != theirs:
            notes.append(f"the checkpoint's {label} {_show(mine)} is used, not the config's {key} {_show(theirs)}")
    return notes


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


class FeatureExtractor:
    """Embed images with a fine-tuned ReID checkpoint, as torchreid's ``FeatureExtractor``.

    ``FeatureExtractor(checkpoint, config=None, device=None, batch_size=32, ...)``; calling it
    on a list of images (file paths, PIL images, H x W x 3 RGB numpy arrays, 3 x H x W tensors;
    one image or an N x H x W x 3 array also work) returns a float32 torch tensor (N, D) on the
    CPU, in input order: the model's eval-mode embedding (BNNeck output when ``neck_feat:
    after``), flip-averaged when the checkpoint says so, L2-normalised only with
    ``normalize=True``. ``.numpy()`` gives a numpy array.

    Arguments: ``checkpoint`` (a ``.safetensors`` / ``.pth`` file or a folder holding
    ``model.safetensors``); ``config`` (needed for SOLIDER-REID / TAO checkpoints: a YAML path, a
    ``FinetuneConfig`` or a ``ModelConfig``); ``device`` ("cpu", "cuda", "cuda:1", a
    ``torch.device``; default CUDA when available); ``batch_size``; ``num_workers`` (image
    loading processes; 0 = in this process); ``flip`` (override the stored flip averaging);
    ``neck_feat`` ("before" / "after": the BNNeck side of the embedding, default the checkpoint's);
    ``normalize``; ``progress`` (a progress bar per call); ``allow_partial`` (load a checkpoint
    whose keys do not all match).

    Attributes: ``model``, ``model_config``, ``preprocessing``, ``embedding_dim``, ``device``,
    ``notes`` (where settings came from, for checkpoints that do not record them).
    """

    def __init__(self, checkpoint: str | os.PathLike, config=None, *, device: str | torch.device | None = None,
                 batch_size: int = 32, num_workers: int = 0, flip: bool | None = None, normalize: bool = False,
                 progress: bool = False, allow_partial: bool = False, neck_feat: str | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        loaded = load_for_embedding(checkpoint, config, allow_partial=allow_partial, flip=flip, neck_feat=neck_feat)
        for note in loaded.notes:
            log.warning("%s: %s", loaded.checkpoint, note)
        self.checkpoint = loaded.checkpoint
        self.device = torch.device(device) if device is not None else default_device()
        self.model = loaded.model.to(self.device).eval()
        self.model_config = loaded.model_config
        self.preprocessing = loaded.preprocessing
        self.notes = loaded.notes
        self.embedding_dim = int(self.model.embedding_dim)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.normalize, self.progress = normalize, progress
        self._transform = self.preprocessing.transform()

    def __repr__(self) -> str:
        return (f"FeatureExtractor({str(self.checkpoint)!r}, device={str(self.device)!r}, "
                f"{self.preprocessing.describe()}, dim {self.embedding_dim})")

    def __call__(self, images: Any) -> torch.Tensor:
        items = _as_list(images)
        out = torch.empty(len(items), self.embedding_dim, dtype=torch.float32)
        if items:
            batches = iter_embeddings(self.model, ImageInputs(items, self._transform), batch_size=self.batch_size,
                                      device=self.device, flip=self.preprocessing.flip, num_workers=self.num_workers,
                                      progress=self.progress)
            for indices, embedding in batches:
                out[indices] = embedding
        return F.normalize(out, dim=1) if self.normalize else out


def _as_list(images: Any) -> list:
    """One image or a collection of them -> a list of single images."""
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence) or hasattr(images, "__iter__") and not hasattr(images, "convert"):
        return list(images)
    return [images]  # a PIL image

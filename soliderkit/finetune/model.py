"""The ReID network: shared Swin backbone -> [Linear to feat_dim] -> BNNeck -> identity classifier.

Layout as SOLIDER-REID's ``build_transformer`` and TAO's ReIdentificationNet Transformer:
the pooled backbone feature is optionally projected to ``feat_dim`` (no bias), passed
through a BatchNorm1d whose bias is frozen (the "BNNeck" of bag-of-tricks), then a
bias-free linear classifier. The triplet and center losses see the feature before the
BNNeck; the embedding used at test time is taken before or after it (``neck_feat``).
"""
from __future__ import annotations

import json
import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from soliderkit.backbone import (
    IMAGENET_FORMATS,
    SwinBackbone,
    build_backbone,
    convert_checkpoint,
    detect_format,
    load_converted,
    load_state,
    read_checkpoint,
)
from soliderkit.backbone.adapters import TOOLKIT_REID_FORMAT
from soliderkit.backbone.checkpoint import CheckpointError
from soliderkit.config import config_from_dict, config_to_dict
from soliderkit.finetune.config import DatasetConfig, ModelConfig
from soliderkit.io import atomic_path
from soliderkit.reid.embedding import PREPROCESSING_KEY, Preprocessing

log = logging.getLogger(__name__)


class ReidOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_classes) identity scores
    features: torch.Tensor  # (B, D) before the BNNeck: triplet / center loss input
    embedding: torch.Tensor  # (B, D) the test-time embedding (neck_feat)


class MarginClassifier(nn.Module):
    """Cosine classifier with an additive margin on the true class (CosFace/AM-Softmax or ArcFace)."""

    def __init__(self, in_dim: int, num_classes: int, kind: str, scale: float, margin: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.xavier_uniform_(self.weight)
        self.kind, self.scale, self.margin = kind, scale, margin

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        cosine = F.linear(F.normalize(x.float()), F.normalize(self.weight.float()))
        if labels is None:
            return cosine * self.scale
        target = F.one_hot(labels, cosine.shape[1]).bool()
        if self.kind == "arcface":
            theta = torch.acos(cosine.clamp(-1 + 1e-7, 1 - 1e-7))
            with_margin = torch.cos(theta + self.margin)
        else:  # cosface / amsoftmax: cos(theta) - m
            with_margin = cosine - self.margin
        return torch.where(target, with_margin, cosine) * self.scale


class ReidModel(nn.Module):
    def __init__(self, backbone: SwinBackbone, num_classes: int, *, reduce_feat_dim: bool = True,
                 feat_dim: int = 256, neck: str = "bnneck", neck_feat: str = "after",
                 dropout_rate: float = 0.0, id_loss_type: str = "softmax",
                 cosine_scale: float = 30.0, cosine_margin: float = 0.5):
        super().__init__()
        self.backbone = backbone
        dim = backbone.num_features
        self.reduction = None
        if reduce_feat_dim:
            self.reduction = nn.Linear(dim, feat_dim, bias=False)
            nn.init.xavier_uniform_(self.reduction.weight)
            dim = feat_dim
        self.embedding_dim = dim
        self.neck_feat = neck_feat
        self.bottleneck = None
        if neck == "bnneck":
            self.bottleneck = nn.BatchNorm1d(dim)
            self.bottleneck.bias.requires_grad_(False)  # bag-of-tricks: BNNeck without shift
        self.dropout = nn.Dropout(dropout_rate)
        if id_loss_type == "softmax":
            self.classifier = nn.Linear(dim, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)
        elif id_loss_type in ("arcface", "cosface", "amsoftmax"):
            self.classifier = MarginClassifier(dim, num_classes, id_loss_type, cosine_scale, cosine_margin)
        else:
            raise ValueError(f"model.id_loss_type={id_loss_type!r} is not supported "
                             "(softmax, arcface, cosface, amsoftmax)")

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        """Training: ``ReidOutput``; evaluation: the embedding tensor only (what ONNX exports)."""
        features = self.backbone(images).pooled
        if self.reduction is not None:
            features = self.reduction(features)
        normed = self.bottleneck(features) if self.bottleneck is not None else features
        embedding = normed if self.neck_feat == "after" else features
        if not self.training:
            return embedding
        scores_in = self.dropout(normed)
        if isinstance(self.classifier, MarginClassifier):
            logits = self.classifier(scores_in, labels)
        else:
            logits = self.classifier(scores_in)
        return ReidOutput(logits, features, embedding)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())




def build_reid_model(cfg: ModelConfig, num_classes: int, *, cosine_scale: float = 30.0,
                     cosine_margin: float = 0.5, load_pretrained: bool = True,
                     allow_partial: bool = False) -> ReidModel:
    """The network a TAO ``model`` section describes; the backbone starts from
    ``pretrained_model_path`` when ``load_pretrained`` (and the path is set).

    The checkpoint's format is detected from the file (toolkit, SOLIDER, SOLIDER-REID, TAO,
    timm, Microsoft: ``soliderkit.backbone.adapters``); ``pretrain_choice`` only documents which kind is
    expected, and a mismatch is logged, not fatal.
    """
    checkpoint = cfg.pretrained_model_path if load_pretrained else None
    backbone = build_backbone(cfg.backbone, img_size=(cfg.input_height, cfg.input_width),
                              checkpoint=checkpoint, semantic_weight=cfg.semantic_weight,
                              drop_path_rate=cfg.drop_path, grad_checkpointing=cfg.grad_checkpointing,
                              allow_partial=allow_partial)
    if backbone.controller is not None and not cfg.train_semantic_controller:
        # SOLIDER-REID / TAO build semantic_embed_w/b with requires_grad=False: the controller
        # keeps its pretrained values (model.train_semantic_controller: true trains it).
        backbone.controller.requires_grad_(False)
    report = backbone.checkpoint_report
    if report is not None:
        imagenet = report.format in IMAGENET_FORMATS
        if imagenet != (cfg.pretrain_choice == "imagenet"):
            log.warning("model.pretrain_choice=%s, but %s is a %s checkpoint; it was loaded as such",
                        cfg.pretrain_choice, checkpoint, report.format)
    return ReidModel(backbone, num_classes, reduce_feat_dim=cfg.reduce_feat_dim, feat_dim=cfg.feat_dim,
                     neck=cfg.neck, neck_feat=cfg.neck_feat, dropout_rate=cfg.dropout_rate,
                     id_loss_type=cfg.id_loss_type, cosine_scale=cosine_scale, cosine_margin=cosine_margin)


# --- saving / loading a trained ReID model ------------------------------------------------

MODEL_FORMAT = TOOLKIT_REID_FORMAT


def save_reid_model(model: ReidModel, path, model_config: ModelConfig, num_classes: int, *,
                    cosine_scale: float = 30.0, cosine_margin: float = 0.5,
                    preprocessing: Preprocessing | None = None, **extra) -> None:
    """Weights + how to rebuild them (the ``model`` config section) in one safetensors file.

    ``preprocessing`` (input size, pixel mean / std, resize filter, flip, λ; see
    :func:`preprocessing_for`) is stored under the metadata key ``preprocessing`` so that
    the file embeds images on its own (``soliderkit.finetune.FeatureExtractor``)."""
    metadata = {"format": MODEL_FORMAT, "model_config": json.dumps(config_to_dict(model_config)),
                "num_classes": str(num_classes), "embedding_dim": str(model.embedding_dim),
                "cosine_scale": str(cosine_scale), "cosine_margin": str(cosine_margin)}
    if preprocessing is not None:
        metadata[PREPROCESSING_KEY] = preprocessing.to_json()
    metadata.update({k: json.dumps(v) for k, v in extra.items()})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def preprocessing_for(model_config: ModelConfig, dataset_config: DatasetConfig | None = None) -> Preprocessing:
    """The preprocessing a model trained with these config sections expects at test time: input
    size, flip and λ from ``model``; mean, std and resize filter from ``dataset`` (its defaults
    when None)."""
    dataset_config = dataset_config or DatasetConfig()
    return Preprocessing(input_size=(model_config.input_height, model_config.input_width),
                         pixel_mean=tuple(dataset_config.pixel_mean), pixel_std=tuple(dataset_config.pixel_std),
                         interpolation=getattr(dataset_config, "test_interpolation", "bilinear"),
                         flip=model_config.with_flip_feature, semantic_weight=model_config.semantic_weight)


def load_reid_model(path, model_config: ModelConfig | None = None, *, allow_partial: bool = False,
                    cosine_scale: float = 30.0, cosine_margin: float = 0.5
                    ) -> tuple[ReidModel, ModelConfig, dict[str, str]]:
    """Rebuild a fine-tuned ReID model, strict unless ``allow_partial``.

    Files written by :func:`save_reid_model` carry their model config and rebuild themselves.
    SOLIDER-REID and TAO fine-tuned checkpoints (``base.`` / ``model.base.`` mmcv Swin, fcneck,
    BNNeck, classifier) do not: they need ``model_config`` (the experiment's ``model``
    section); the number of identities is read from the classifier. Returns the model in
    eval mode, its config and metadata (``format``, ``num_classes``, ``embedding_dim``, ...).
    """
    state, metadata = read_checkpoint(path)
    try:
        fmt = detect_format(state, metadata)
    except ValueError as exc:
        raise CheckpointError(f"model checkpoint {path}: {exc}") from None
    if fmt == "toolkit-reid" and metadata.get("format") == MODEL_FORMAT:
        cfg = config_from_dict(ModelConfig, json.loads(metadata["model_config"]), source=f"{path} (metadata)")
        model = build_reid_model(cfg, int(metadata["num_classes"]), cosine_scale=float(metadata["cosine_scale"]),
                                 cosine_margin=float(metadata["cosine_margin"]), load_pretrained=False)
        load_state(model, state, source=str(path), strict=not allow_partial)
        return model.eval(), cfg, metadata
    if fmt not in ("toolkit-reid", "solider-reid", "tao"):
        raise CheckpointError(f"{path} is a {fmt} backbone checkpoint without a ReID head; fine-tune from it "
                              "(model.pretrained_model_path) instead of loading it as a ReID model")
    if model_config is None:
        raise CheckpointError(f"{path} is a {fmt} checkpoint, which does not record the model config: "
                              "give the experiment's model section (--config) to rebuild it")
    conversion = convert_checkpoint(state, metadata, fmt)
    classifier = conversion.head.get("classifier.weight")
    if classifier is None:
        raise CheckpointError(f"{path} ({fmt}) has no classifier weight, so the number of identities is unknown")
    num_classes = int(classifier.shape[0])
    model = build_reid_model(model_config, num_classes, cosine_scale=cosine_scale, cosine_margin=cosine_margin,
                             load_pretrained=False)
    report = load_converted(model, conversion, str(path), strict=not allow_partial, prefix="backbone.",
                            with_head=True, placeholders=json.loads(metadata.get("placeholders", "[]")))
    log.info("%s", report.summary())
    info = {"format": fmt, "num_classes": str(num_classes), "embedding_dim": str(model.embedding_dim),
            "load_report": report.summary()}
    return model.eval(), model_config, info

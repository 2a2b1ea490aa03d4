"""The one Swin backbone both stages use, and its checkpoint I/O (any supported format)."""
from __future__ import annotations

import os
from typing import Sequence

from .adapters import FORMATS, IMAGENET_FORMATS, Conversion, convert_checkpoint, detect_format
from .checkpoint import (
    CheckpointError,
    LoadReport,
    load_checkpoint,
    load_converted,
    load_state,
    read_checkpoint,
    save_backbone,
)
from .registry import ARCH_NAMES, ARCHS, INPUT_MULTIPLE, ArchName
from .swin import BackboneOutput, SwinBackbone

__all__ = ["ARCHS", "ARCH_NAMES", "INPUT_MULTIPLE", "ArchName", "FORMATS", "IMAGENET_FORMATS", "BackboneOutput", "CheckpointError", "Conversion",
           "LoadReport", "SwinBackbone", "build_backbone", "convert_checkpoint", "detect_format",
           "load_checkpoint", "load_converted", "load_state", "read_checkpoint", "save_backbone"]


def build_backbone(
    arch: str,
    img_size: Sequence[int] = (256, 128),
    checkpoint: str | os.PathLike | None = None,
    *,
    semantic_weight: float = 0.2,
    with_controller: bool = True,
    drop_path_rate: float = 0.1,
    out_indices: Sequence[int] = (3,),
    grad_checkpointing: bool = False,
    allow_partial: bool = False,
    checkpoint_branch: str = "teacher",
) -> SwinBackbone:
    """Build a Swin backbone and, if ``checkpoint`` is given, load it (strict unless ``allow_partial``).

    The checkpoint may be any format :mod:`soliderkit.backbone.adapters` knows (toolkit safetensors,
    SOLIDER, SOLIDER-REID, TAO, timm, Microsoft); its format is detected from its keys and
    metadata. ``checkpoint_branch`` picks ``teacher`` or ``student`` in SOLIDER training
    checkpoints. What loading did (dropped, fresh, resized keys) is kept in
    ``model.checkpoint_report`` (a :class:`LoadReport`) and logged.
    """
    model = SwinBackbone(arch, img_size=tuple(img_size), semantic_weight=semantic_weight,
                         with_controller=with_controller, drop_path_rate=drop_path_rate,
                         out_indices=out_indices, grad_checkpointing=grad_checkpointing)
    model.checkpoint_report = None
    if checkpoint is not None:
        model.checkpoint_report = load_checkpoint(model, checkpoint, strict=not allow_partial,
                                                  branch=checkpoint_branch)
    return model

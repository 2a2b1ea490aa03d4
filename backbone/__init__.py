"""The one Swin backbone both stages use, and its checkpoint I/O."""
from __future__ import annotations

import os
from typing import Sequence

from .checkpoint import CheckpointError, load_state, read_checkpoint, save_backbone
from .swin import ARCHS, BackboneOutput, SwinBackbone

__all__ = ["ARCHS", "BackboneOutput", "CheckpointError", "SwinBackbone", "build_backbone",
           "load_state", "read_checkpoint", "save_backbone"]


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
) -> SwinBackbone:
    """Build a Swin backbone and, if ``checkpoint`` is given, load it (strict unless ``allow_partial``)."""
    model = SwinBackbone(arch, img_size=tuple(img_size), semantic_weight=semantic_weight,
                         with_controller=with_controller, drop_path_rate=drop_path_rate,
                         out_indices=out_indices, grad_checkpointing=grad_checkpointing)
    if checkpoint is not None:
        state, metadata = read_checkpoint(checkpoint)
        saved_arch = metadata.get("arch")
        if saved_arch and saved_arch != arch:
            raise CheckpointError(f"checkpoint {checkpoint} holds a {saved_arch} backbone, "
                                  f"but the config asks for {arch}")
        load_state(model, state, source=str(checkpoint), strict=not allow_partial)
    return model

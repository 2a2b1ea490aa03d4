"""The backbone registry: every architecture name the toolkit knows, in one place.

Configs of both stages validate ``arch`` / ``backbone`` against :data:`ARCH_NAMES`, and
:func:`soliderkit.backbone.build_backbone` builds from :data:`ARCHS`. Kept free of torch so a
config can be checked without importing the model. Add a Swin variant here and every
config, adapter and CLI knows it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SwinArch:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 7
    patch_size: int = 4


# Names follow timm/TAO so configs written for TAO (`model.backbone`) work unchanged.
ARCHS: dict[str, SwinArch] = {
    "swin_tiny_patch4_window7_224": SwinArch(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small_patch4_window7_224": SwinArch(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_base_patch4_window7_224": SwinArch(128, (2, 2, 18, 2), (4, 8, 16, 32)),
    # A few-hundred-k-parameter Swin for tests and the CPU demo; same window/shift logic.
    "swin_pico_patch4_window7": SwinArch(32, (1, 1, 2, 1), (1, 2, 4, 8)),
}

# The input must survive 4x patching and three 2x merges without padding.
INPUT_MULTIPLE = 32

# A config field type that accepts exactly the registered names (checked by soliderkit.config).
ArchName = Literal[tuple(ARCHS)]  # type: ignore[valid-type]
ARCH_NAMES: tuple[str, ...] = tuple(ARCHS)

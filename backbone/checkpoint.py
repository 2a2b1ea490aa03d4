"""Backbone weights on disk: safetensors + JSON metadata, strict key reports.

The toolkit's own format is a safetensors file whose metadata records how the backbone
was built (``format``, ``arch``, ``img_size``, ...), so a checkpoint can be checked
against the model it is loaded into. Foreign layouts (SOLIDER mmcv-style keys, timm /
Microsoft ImageNet, TAO and SOLIDER-REID fine-tuned models) are converted by adapters at
this edge, never inside the model (the deployment issue adds them).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from common.io import atomic_path

FORMAT_NAME = "solider-reid-toolkit/backbone"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def save_backbone(model: nn.Module, path: str | os.PathLike, **extra: object) -> None:
    """Write ``model``'s weights and build arguments to ``path`` atomically."""
    metadata = {
        "format": FORMAT_NAME,
        "arch": getattr(model, "arch", ""),
        "img_size": json.dumps(list(getattr(model, "img_size", ()))),
        "with_controller": json.dumps(getattr(model, "controller", None) is not None),
        "out_indices": json.dumps(list(getattr(model, "out_indices", ()))),
        "semantic_weight": json.dumps(getattr(model, "semantic_weight", None)),
    }
    metadata.update({k: json.dumps(v) for k, v in extra.items()})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (state dict, metadata) of a toolkit safetensors checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"checkpoint {path}: only the toolkit's .safetensors backbones are readable so far; "
            "adapters for SOLIDER / timm / TAO .pth files are not implemented yet")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several exception types for bad files
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from exc
    return state, metadata


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
               strict: bool = True) -> tuple[list[str], list[str]]:
    """Copy ``state`` into ``model``; name every missing, unexpected or mis-shaped key.

    With ``strict`` any mismatch raises; otherwise the matching keys load and the lists
    of missing and unexpected keys are returned for the caller to report.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if mis_shaped:
        raise CheckpointError(f"{source}: shapes differ for {len(mis_shaped)} keys: "
                              + _listing(mis_shaped))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{source} does not match the model: missing {len(missing)} keys {_listing(missing)}; "
            f"unexpected {len(unexpected)} keys {_listing(unexpected)} (allow_partial loads the rest)")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing, unexpected


def _listing(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    more = f", ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"[{shown}{more}]"

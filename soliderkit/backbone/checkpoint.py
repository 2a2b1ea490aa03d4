"""Backbone weights on disk: safetensors + JSON metadata, foreign formats, strict key reports.

The toolkit's own format is a safetensors file whose metadata records how the backbone
was built (``format``, ``arch``, ``img_size``, ...), so a checkpoint can be checked
against the model it is loaded into. Foreign layouts (SOLIDER mmcv-style keys, timm /
Microsoft ImageNet, TAO and SOLIDER-REID fine-tuned models) are read here and converted by
the adapters in :mod:`soliderkit.backbone.adapters`, never inside the model.

PyTorch pickles (.pth / .pt / .ckpt / .tlt / .bin / .tar) are read with
``torch.load(weights_only=True)`` only: torch's restricted unpickler builds tensors and plain
containers and refuses everything else. Training checkpoints also pickle non-tensor objects
(SOLIDER's ``argparse.Namespace``, the OmegaConf config in a Lightning checkpoint's
``hyper_parameters``); each such global is allow-listed as an inert placeholder class defined
here, so nothing named by the file is imported or called, and the names are reported.
Globals from the modules torch blocks outright (``os``, ``sys``, ...) still refuse the file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from soliderkit.io import atomic_path

from .adapters import TOOLKIT_BACKBONE_FORMAT, Conversion, convert_checkpoint, infer_arch

log = logging.getLogger(__name__)

FORMAT_NAME = TOOLKIT_BACKBONE_FORMAT


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


TORCH_SUFFIXES = frozenset({".pth", ".pt", ".ckpt", ".tlt", ".bin", ".tar"})


def read_checkpoint(path: str | os.PathLike, *, branch: str = "teacher"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (state dict, metadata) of a checkpoint file.

    ``.safetensors``: the tensors and the file's metadata. PyTorch pickles: the tensors of
    the state dict inside the file (``teacher``/``student`` -> ``branch``; ``state_dict``
    (Lightning, mmcv), ``model`` (Microsoft Swin), ``module``: unwrapped), with metadata
    ``container`` (the path taken) and ``placeholders`` (JSON list of the non-tensor globals
    that were replaced by inert placeholders).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several exception types for bad files
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from exc
        return state, metadata
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"checkpoint {path}: unknown file type {path.suffix!r} (expected .safetensors "
                              f"or a PyTorch file: {', '.join(sorted(TORCH_SUFFIXES))})")
    obj, placeholders = load_torch_weights_only(path)
    state, container = select_state(obj, branch=branch, source=str(path))
    return state, {"container": container, "placeholders": json.dumps(placeholders)}


class _Placeholder(list):
    """Inert stand-in for a pickled object whose class is never imported.

    It accepts whatever the pickle hands it (constructor arguments, state, list items) and
    keeps it as plain data; it is a list subclass only so that torch's unpickler may append
    to it. Subclasses are made per global name by :func:`load_torch_weights_only`.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = list.__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # list.__init__ would consume args
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder for {self.global_name}>"


_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def load_torch_weights_only(path: str | os.PathLike, max_placeholders: int = 256) -> tuple[Any, list[str]]:
    """``torch.load(path, weights_only=True)`` with inert placeholders for non-tensor globals.

    Returns (object, sorted names of the globals replaced). Never imports or calls anything
    the file names; a global from a module torch blocks raises :class:`CheckpointError`.
    """
    path = str(path)
    names: set[str] = set()
    try:  # statically listed globals first (zip checkpoints), so one load usually suffices
        names.update(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) files: found one by one below
        pass
    for _ in range(max_placeholders):
        stubs = [(type(f"Placeholder[{n}]", (_Placeholder,), {"global_name": n}), n) for n in sorted(names)]
        try:
            with torch.serialization.safe_globals(stubs):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            return obj, sorted(names)
        except pickle.UnpicklingError as exc:
            message = str(exc)
            match = _UNSUPPORTED_GLOBAL.search(message)
            if match is None:
                raise CheckpointError(f"checkpoint {path} cannot be read with weights_only=True (this "
                                      f"loader never runs pickled code): {message.splitlines()[0]}") from None
            name = match.group(1)
            if "." not in name:
                name = f"builtins.{name}"  # torch's message drops the builtins. prefix
            if name in names:
                raise CheckpointError(f"checkpoint {path}: the pickled object {name} cannot be replaced by "
                                      f"a placeholder: {message.splitlines()[0]}") from None
            names.add(name)
        except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError) as exc:
            # a file that is not a pickle at all (a text file named .pth) fails in the unpickler
            # with whatever its bytes happen to mean (KeyError: 101 for "hello")
            raise CheckpointError(f"checkpoint {path} is not a readable PyTorch file ({type(exc).__name__}: {exc}); "
                                  "encrypted TAO .tlt files must be decrypted first") from None
    raise CheckpointError(f"checkpoint {path} names more than {max_placeholders} non-tensor globals")


_CONTAINER_KEYS = ("state_dict", "model", "module", "model_state_dict", "net")


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def select_state(obj: Any, *, branch: str = "teacher", source: str = "checkpoint"
                 ) -> tuple[dict[str, torch.Tensor], str]:
    """The tensor state dict inside a loaded checkpoint object, and the path of keys taken."""
    taken = []
    while isinstance(obj, Mapping) and not _is_state(obj):
        if "teacher" in obj or "student" in obj:  # SOLIDER / DINO training checkpoints
            if branch not in obj:
                raise CheckpointError(f"{source} has no {branch!r} entry (it has {sorted(map(str, obj))})")
            key = branch
        else:
            key = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if key is None:
                break
        taken.append(key)
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if not state:
        raise CheckpointError(f"{source} holds no tensors at {'/'.join(taken) or 'the top level'} "
                              f"(keys: {sorted(map(str, obj))[:10]})")
    return state, "/".join(taken)


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


# --- foreign checkpoints into a model -------------------------------------------------------

@dataclass
class LoadReport:
    """What loading one checkpoint did, key by key (toolkit names unless stated)."""

    source: str
    format: str
    loaded: int = 0
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> reason (known-unused)
    fresh: list[str] = field(default_factory=list)  # model keys the format cannot supply (kept init)
    missing: list[str] = field(default_factory=list)  # model keys absent from the checkpoint (not fresh)
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys without a place in the model
    resized: list[str] = field(default_factory=list)  # relative-position tables interpolated
    placeholders: list[str] = field(default_factory=list)  # pickled non-tensor globals not imported

    def summary(self) -> str:
        parts = [f"{self.source} ({self.format}): loaded {self.loaded} tensors"]
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} known-unused keys {_listing(sorted(self.dropped))}")
        if self.fresh:
            parts.append(f"{len(self.fresh)} keys the format cannot hold keep their initialisation "
                         f"{_listing(self.fresh)}")
        if self.resized:
            parts.append(f"resized {len(self.resized)} relative-position tables {_listing(self.resized)}")
        if self.missing:
            parts.append(f"MISSING {len(self.missing)} {_listing(self.missing)}")
        if self.unexpected:
            parts.append(f"UNEXPECTED {len(self.unexpected)} {_listing(self.unexpected)}")
        if self.placeholders:
            parts.append(f"non-tensor objects not imported: {', '.join(self.placeholders)}")
        return "; ".join(parts)


def resize_relative_position_table(table: torch.Tensor, rows: int) -> torch.Tensor:
    """Bicubic resize of a (2W-1)^2 x heads relative-position bias table to ``rows`` rows."""
    size_in, size_out = math.isqrt(table.shape[0]), math.isqrt(rows)
    if size_in ** 2 != table.shape[0] or size_out ** 2 != rows:
        raise CheckpointError(f"relative-position tables must be square grids, got {table.shape[0]} -> {rows} rows")
    heads = table.shape[1]
    grid = table.detach().float().t().reshape(1, heads, size_in, size_in)
    grid = F.interpolate(grid, size=(size_out, size_out), mode="bicubic", align_corners=False)
    return grid.reshape(heads, rows).t().contiguous().to(table.dtype)


def load_converted(model: nn.Module, conversion: Conversion, source: str, *, strict: bool = True,
                   prefix: str = "", with_head: bool = False, placeholders: list[str] | None = None
                   ) -> LoadReport:
    """Load a converted checkpoint into ``model`` and report every key by name.

    ``prefix`` is where the backbone sits inside ``model`` ("" for a backbone, "backbone." for
    a ReidModel); ``with_head`` also loads the ReID head (otherwise it is dropped by name).
    Dropped keys (known-unused) and fresh keys (the format cannot hold them) never fail;
    with ``strict`` any other missing or unexpected key raises :class:`CheckpointError`.
    Tensors of a different shape always raise.
    """
    own = model.state_dict()
    report = LoadReport(source=source, format=conversion.format, dropped=dict(conversion.dropped),
                        placeholders=list(placeholders or []))
    state: dict[str, torch.Tensor] = {}
    for key, value in conversion.state.items():
        full = prefix + key
        if key in conversion.optional and full not in own:
            index = key.split(".")[1]
            report.dropped[conversion.optional[key]] = (
                f"stage-{index} output norm; this backbone was built without stage {index} in out_indices")
            continue
        state[full] = value
    head_reason = "ReID head (reduction / BNNeck / classifier): not part of a backbone"
    for key, value in conversion.head.items():
        if with_head:
            state[key] = value
        else:
            report.dropped[conversion.source_names.get(key, key)] = head_reason

    for key, value in list(state.items()):
        if key.endswith("relative_position_bias_table") and key in own:
            want = own[key].shape
            if value.shape != want and value.ndim == 2 and value.shape[1] == want[1]:
                state[key] = resize_relative_position_table(value, want[0])
                report.resized.append(f"{key} {value.shape[0]}->{want[0]} rows")

    mis_shaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if mis_shaped:
        backbone_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        raise CheckpointError(f"{source} ({conversion.format}) holds {infer_arch(backbone_state)}; shapes "
                              f"differ for {len(mis_shaped)} keys: " + _listing(mis_shaped))
    fresh_prefixes = tuple(prefix + p for p in conversion.fresh)
    absent = sorted(set(own) - set(state))
    report.fresh = [k for k in absent if k.startswith(fresh_prefixes)]
    report.missing = [k for k in absent if not k.startswith(fresh_prefixes)]
    report.unexpected = sorted(set(state) - set(own))
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(
            f"{source} ({conversion.format}) does not match the model: missing {len(report.missing)} keys "
            f"{_listing(report.missing)}; unexpected {len(report.unexpected)} keys "
            f"{_listing(_with_sources(report.unexpected, conversion, prefix))} "
            "(allow_partial / --allow-partial loads the rest)")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    report.loaded = len(set(state) & set(own))
    return report


def _with_sources(keys: list[str], conversion: Conversion, prefix: str) -> list[str]:
    out = []
    for key in keys:
        source = conversion.source_names.get(key[len(prefix):] if key.startswith(prefix) else key)
        out.append(key if source is None or source == key else f"{key} (from {source})")
    return out


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                    branch: str = "teacher", fmt: str | None = None) -> LoadReport:
    """Read any supported checkpoint, convert it and load its backbone into ``model``."""
    state, metadata = read_checkpoint(path, branch=branch)
    try:
        conversion = convert_checkpoint(state, metadata, fmt)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    if conversion.format == "toolkit":
        saved_arch = metadata.get("arch")
        arch = getattr(model, "arch", None)
        if saved_arch and arch and saved_arch != arch:
            raise CheckpointError(f"checkpoint {path} holds a {saved_arch} backbone, "
                                  f"but the config asks for {arch}")
    report = load_converted(model, conversion, str(path), strict=strict,
                            placeholders=json.loads(metadata.get("placeholders", "[]")))
    log.info("%s", report.summary())
    return report

"""Foreign checkpoint layouts -> the toolkit's Swin keys, one adapter per format.

Every checkpoint a user may point ``build_backbone(checkpoint=...)`` or
``load_reid_model`` at is first recognised (:func:`detect_format`) and then converted by
that format's adapter into the key names of :class:`soliderkit.backbone.swin.SwinBackbone` (plus, for
fine-tuned ReID models, the head names of ``soliderkit.finetune.model.ReidModel``). The model itself
never knows about foreign layouts.

Formats
-------
``toolkit``       this toolkit's backbone (``save_backbone``), keys as the model.
``toolkit-reid``  this toolkit's fine-tuned ReID model (``save_reid_model``): ``backbone.*`` + head.
``solider``       SOLIDER pretraining (mmcv-style Swin under ``backbone.``; the DINO ``head.*``
                  is not part of the backbone). Released ``*_tea.pth`` files are the teacher dict;
                  full training checkpoints hold ``teacher`` and ``student`` (teacher by default).
``solider-reid``  SOLIDER-REID fine-tuned models: mmcv Swin under ``base.``, ``fcneck`` (the
                  reduction Linear), ``bottleneck`` (BNNeck), ``classifier``.
``tao``           TAO ReIdentificationNet (Swin) Lightning checkpoints: the same under ``model.``.
``timm``          timm >= 0.9 Swin (downsample at the start of stages 1..3, ``head.fc``).
``microsoft``     the original Microsoft Swin release (and timm < 0.9): downsample at the end
                  of stages 0..2, ``head``, persistent ``relative_position_index`` / ``attn_mask``.

What an adapter does with each key is one of: rename it (values unchanged, except the
patch-merging permutation below), mark it *optional* (loaded only where the model has a
place for it), or *drop* it with a reason (a key the format holds but no backbone uses).
Keys the format cannot contain by construction (the semantic controller and the extra
stage norms of an ImageNet checkpoint) are *fresh*: the model keeps its initialisation.
Dropped and fresh keys are reported by name and do not fail strict loading; anything else
that does not match fails it (see ``soliderkit.backbone.checkpoint.load_converted``).

SOLIDER specifics: ``norm3`` is our final ``norm``; ``norm0..2`` (SOLIDER builds all four stage
outputs) load into ``out_norms.{i}`` when the backbone was built with that stage in
``out_indices`` and are otherwise dropped by name, so a model that only needs the pooled
feature loads a SOLIDER checkpoint strictly. ``semantic_embed_{w,b}.{0,1,2}`` become
``controller.{scale,shift}.{i}``; the fourth pair (``.3``) is dropped on purpose (its output
is never used). The ``relative_position_index`` / ``attn_mask`` buffers of mmcv and
Microsoft checkpoints are dropped (the model rebuilds them); relative-position bias tables
of another window size are resized bicubically when loaded.

Patch merging. mmcv's ``PatchMerging`` gathers each 2x2 neighbourhood with ``nn.Unfold``,
whose output channel index is ``c * 4 + kh * 2 + kw`` (channel-major). timm (and the
Microsoft original, which concatenates x0 = (kh 0, kw 0), x1 = (1, 0), x2 = (0, 1),
x3 = (1, 1)) orders it ``kw * 2C + kh * C + c``. The norm weight/bias and the columns of
the reduction weight are permuted accordingly (:func:`unfold_to_timm_order`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

__all__ = [
    "FORMATS", "Conversion", "convert_checkpoint", "detect_format", "infer_arch",
    "timm_to_unfold_order", "unfold_to_timm_order",
]

# Written by save_backbone / save_reid_model (kept equal to soliderkit.finetune.model.MODEL_FORMAT;
# a test checks it). Spelled out here so the backbone package does not import finetune.
TOOLKIT_BACKBONE_FORMAT = "solider-reid-toolkit/backbone"
TOOLKIT_REID_FORMAT = "solider-reid-toolkit/reid-model"

# Keys of ReidModel's head, as soliderkit.finetune.model names them.
HEAD_PREFIXES = ("reduction.", "bottleneck.", "classifier.")

_BUFFER_REASON = "buffer rebuilt from the window size (not a parameter of this backbone)"


@dataclass
class Conversion:
    """A checkpoint rewritten into toolkit key names (see the module docstring)."""

    format: str
    state: dict[str, torch.Tensor]  # backbone keys, as SwinBackbone.state_dict() names them
    head: dict[str, torch.Tensor] = field(default_factory=dict)  # ReidModel head keys (fine-tuned formats)
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> why it is not loaded
    optional: dict[str, str] = field(default_factory=dict)  # toolkit key -> source key, if the model has it
    fresh: tuple[str, ...] = ()  # toolkit key prefixes this format cannot supply
    source_names: dict[str, str] = field(default_factory=dict)  # toolkit key -> source key


# --- detection ------------------------------------------------------------------------

_MMCV_MARK = re.compile(r"(^|\.)stages\.\d+\.blocks\.\d+\.attn\.w_msa\.")
_TIMM_MARK = re.compile(r"(^|\.)layers\.\d+\.blocks\.\d+\.attn\.qkv\.weight$")


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DistributedDataParallel's ``module.`` prefix when every key has it."""
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _mmcv_prefix(state: Mapping[str, torch.Tensor]) -> str | None:
    """The prefix in front of an mmcv Swin's ``patch_embed.projection.weight``, if any."""
    for key in state:
        if key.endswith("patch_embed.projection.weight"):
            return key[: -len("patch_embed.projection.weight")]
    return None


def detect_format(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """Name of the layout of ``state`` (one of :data:`FORMATS`); raises ValueError if unknown."""
    metadata = metadata or {}
    declared = metadata.get("format")
    if declared == TOOLKIT_BACKBONE_FORMAT:
        return "toolkit"
    if declared == TOOLKIT_REID_FORMAT:
        return "toolkit-reid"
    state = strip_module_prefix(state)
    if any(_MMCV_MARK.search(k) for k in state):
        prefix = _mmcv_prefix(state)
        if prefix in ("", "backbone."):
            return "solider"
        if prefix == "base.":
            return "solider-reid"
        if prefix == "model.base.":
            return "tao"
        raise ValueError(f"an mmcv-style Swin under the unknown prefix {prefix!r}")
    if any(_TIMM_MARK.search(k) for k in state):
        if any(k.startswith("backbone.layers.") for k in state):
            return "toolkit-reid"  # a toolkit ReidModel state dict saved without metadata
        if "layers.0.downsample.reduction.weight" in state:
            return "microsoft"
        if any(k.startswith("controller.") for k in state):
            return "toolkit"  # a toolkit backbone saved without metadata (torch.save of state_dict)
        return "timm"
    raise ValueError("no Swin layout recognised (neither mmcv 'stages.*.attn.w_msa' nor "
                     "timm/Microsoft 'layers.*.attn.qkv' keys)")


# --- the patch-merging permutation ------------------------------------------------------

def unfold_to_timm_order(t: torch.Tensor) -> torch.Tensor:
    """Reorder the last dim from nn.Unfold's (c, kh, kw) to timm's / Microsoft's (kw, kh, c)."""
    *lead, n = t.shape
    return t.reshape(*lead, n // 4, 2, 2).transpose(-1, -3).reshape(*lead, n).contiguous()


def timm_to_unfold_order(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`unfold_to_timm_order`: (kw, kh, c) -> (c, kh, kw)."""
    *lead, n = t.shape
    return t.reshape(*lead, 2, 2, n // 4).transpose(-1, -3).reshape(*lead, n).contiguous()


# --- mmcv (SOLIDER / SOLIDER-REID / TAO) ------------------------------------------------

_MMCV_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")
_MMCV_DOWN = re.compile(r"^stages\.(\d+)\.downsample\.(norm|reduction)\.(weight|bias)$")
_MMCV_NORM = re.compile(r"^norm(\d+)\.(weight|bias)$")
_MMCV_SEMANTIC = re.compile(r"^semantic_embed_([wb])\.(\d+)\.(weight|bias)$")
_MMCV_BLOCK_PARTS = {
    "norm1.": "norm1.", "norm2.": "norm2.",
    "attn.w_msa.qkv.": "attn.qkv.", "attn.w_msa.proj.": "attn.proj.",
    "ffn.layers.0.0.": "mlp.fc1.", "ffn.layers.1.": "mlp.fc2.",
}


def _convert_mmcv_backbone(state: Mapping[str, torch.Tensor], prefix: str, out: Conversion,
                           exclude: tuple[str, ...] = ()) -> set[str]:
    """Convert the mmcv Swin keys under ``prefix`` (but not under ``exclude``); return the keys consumed."""
    body = {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and not k.startswith(exclude)}
    stages = {int(m.group(1)) for k in body if (m := re.match(r"^stages\.(\d+)\.", k))}
    last = max(stages) if stages else 3

    def put(key: str, value: torch.Tensor, source: str) -> None:
        out.state[key] = value
        out.source_names[key] = prefix + source

    for key, value in body.items():
        source = prefix + key
        if key.startswith("patch_embed.projection."):
            put("patch_embed.proj." + key[len("patch_embed.projection."):], value, key)
        elif key.startswith("patch_embed.norm."):
            put(key, value, key)
        elif m := _MMCV_BLOCK.match(key):
            stage, block, rest = m.groups()
            if rest == "attn.w_msa.relative_position_index":
                out.dropped[source] = _BUFFER_REASON
                continue
            if rest == "attn.w_msa.relative_position_bias_table":
                put(f"layers.{stage}.blocks.{block}.attn.relative_position_bias_table", value, key)
                continue
            for old, new in _MMCV_BLOCK_PARTS.items():
                if rest.startswith(old):
                    put(f"layers.{stage}.blocks.{block}.{new}{rest[len(old):]}", value, key)
                    break
            else:
                put(key, value, key)  # unknown: reported as unexpected under its own name
        elif m := _MMCV_DOWN.match(key):
            stage, part, kind = int(m.group(1)), m.group(2), m.group(3)
            # mmcv merges at the end of stage i, timm at the start of stage i + 1.
            put(f"layers.{stage + 1}.downsample.{part}.{kind}", unfold_to_timm_order(value), key)
        elif m := _MMCV_NORM.match(key):
            index, kind = int(m.group(1)), m.group(2)
            if index == last:
                put(f"norm.{kind}", value, key)
            else:
                out.optional[f"out_norms.{index}.{kind}"] = source
                put(f"out_norms.{index}.{kind}", value, key)
        elif m := _MMCV_SEMANTIC.match(key):
            which, index, kind = m.group(1), int(m.group(2)), m.group(3)
            if index >= last:
                out.dropped[source] = ("SOLIDER's fourth semantic-embedding pair: applied after the "
                                       "last stage, its output is never used")
                continue
            put(f"controller.{'scale' if which == 'w' else 'shift'}.{index}.{kind}", value, key)
        else:
            put(key, value, key)  # e.g. absolute_pos_embed: reported as unexpected
    return {prefix + k for k in body}


def _take_head(state: Mapping[str, torch.Tensor], names: Mapping[str, str], out: Conversion) -> set[str]:
    """Copy head keys (source prefix -> ReidModel prefix); return the source keys consumed."""
    used = set()
    for key, value in state.items():
        for old, new in names.items():
            if key.startswith(old):
                out.head[new + key[len(old):]] = value
                out.source_names[new + key[len(old):]] = key
                used.add(key)
                break
    return used


def _leftovers(state: Mapping[str, torch.Tensor], used: set[str], out: Conversion,
               known: Mapping[str, str]) -> None:
    """Keys no rule took: drop the known ones with their reason, keep the rest (unexpected)."""
    for key, value in state.items():
        if key in used:
            continue
        reason = next((why for prefix, why in known.items() if key.startswith(prefix)), None)
        if reason is not None:
            out.dropped[key] = reason
        else:
            out.state[key] = value  # reported as unexpected under its own name
            out.source_names[key] = key


def convert_solider(state: Mapping[str, torch.Tensor]) -> Conversion:
    """SOLIDER pretraining teacher/student: mmcv Swin under ``backbone.`` (or bare)."""
    state = strip_module_prefix(state)
    out = Conversion("solider", {})
    prefix = _mmcv_prefix(state) or ""
    # The DINO projection head (and, in a student, the part classifier) belong to pretraining.
    pretraining = {"head.": "DINO projection head of pretraining (not part of the backbone)",
                   "part_classifier.": "SOLIDER part classifier of pretraining (not part of the backbone)"}
    used = _convert_mmcv_backbone(state, prefix, out, exclude=tuple(pretraining))
    _leftovers(state, used, out, pretraining)
    return out


def _convert_reid_model(state: Mapping[str, torch.Tensor], source: str, prefix: str,
                        dropped: Mapping[str, str]) -> Conversion:
    """The SOLIDER-REID layout under ``prefix``: ``base.`` (mmcv Swin), ``fcneck``, ``bottleneck``, ``classifier``."""
    state = strip_module_prefix(state)
    out = Conversion(source, {})
    used = _convert_mmcv_backbone(state, prefix + "base.", out)
    used |= _take_head(state, {prefix + "fcneck.": "reduction.", prefix + "bottleneck.": "bottleneck.",
                               prefix + "classifier.": "classifier."}, out)
    _leftovers(state, used, out, dropped)
    return out


def convert_solider_reid(state: Mapping[str, torch.Tensor]) -> Conversion:
    """SOLIDER-REID fine-tuned model: ``base.`` (mmcv Swin), ``fcneck``, ``bottleneck``, ``classifier``."""
    return _convert_reid_model(state, "solider-reid", "", {})


def convert_tao(state: Mapping[str, torch.Tensor]) -> Conversion:
    """TAO ReIdentificationNet (Swin) Lightning ``state_dict``: the SOLIDER-REID layout under ``model.``."""
    training = "TAO training-only state (metrics / center-loss centres)"
    return _convert_reid_model(state, "tao", "model.", {"center_criterion.": training, "train_accuracy.": training,
                                                        "val_accuracy.": training})


# --- timm / Microsoft (ImageNet) --------------------------------------------------------

_IMAGENET_FRESH = ("controller.", "out_norms.")
_IMAGENET_HEAD = "ImageNet classification head (not part of the backbone)"


def _convert_timm_like(state: Mapping[str, torch.Tensor], name: str, shift_downsample: bool) -> Conversion:
    state = strip_module_prefix(state)
    out = Conversion(name, {}, fresh=_IMAGENET_FRESH)
    for key, value in state.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            out.dropped[key] = _BUFFER_REASON
        elif key.startswith("head."):
            out.dropped[key] = _IMAGENET_HEAD
        else:
            new = key
            if shift_downsample:  # end of stage i (Microsoft) -> start of stage i + 1 (timm)
                new = re.sub(r"^layers\.(\d+)\.downsample\.",
                             lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
            out.state[new] = value
            out.source_names[new] = key
    return out


def convert_timm(state: Mapping[str, torch.Tensor]) -> Conversion:
    """timm >= 0.9 Swin: same names as ours; buffers and the classifier are dropped."""
    return _convert_timm_like(state, "timm", shift_downsample=False)


def convert_microsoft(state: Mapping[str, torch.Tensor]) -> Conversion:
    """Microsoft's original Swin (and timm < 0.9): patch merging moves one stage up."""
    return _convert_timm_like(state, "microsoft", shift_downsample=True)


# --- the toolkit's own files ---------------------------------------------------------------

def convert_toolkit(state: Mapping[str, torch.Tensor]) -> Conversion:
    """The toolkit's backbone: keys are already the model's."""
    return Conversion("toolkit", dict(strip_module_prefix(state)))


def convert_toolkit_reid(state: Mapping[str, torch.Tensor]) -> Conversion:
    """The toolkit's ReID model: ``backbone.*`` plus the head (reduction / bottleneck / classifier)."""
    state = strip_module_prefix(state)
    out = Conversion("toolkit-reid", {})
    for key, value in state.items():
        if key.startswith("backbone."):
            out.state[key[len("backbone."):]] = value
            out.source_names[key[len("backbone."):]] = key
        elif key.startswith(HEAD_PREFIXES):
            out.head[key] = value
            out.source_names[key] = key
        else:
            out.state[key] = value
            out.source_names[key] = key
    return out


FORMATS: dict[str, Callable[[Mapping[str, torch.Tensor]], Conversion]] = {
    "toolkit": convert_toolkit,
    "toolkit-reid": convert_toolkit_reid,
    "solider": convert_solider,
    "solider-reid": convert_solider_reid,
    "tao": convert_tao,
    "timm": convert_timm,
    "microsoft": convert_microsoft,
}

# Formats that start from ImageNet classification weights (model.pretrain_choice: imagenet).
IMAGENET_FORMATS = frozenset({"timm", "microsoft"})


def convert_checkpoint(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                       fmt: str | None = None) -> Conversion:
    """Detect (unless ``fmt`` is given) and convert ``state`` into toolkit key names."""
    fmt = fmt or detect_format(state, metadata)
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; known: {sorted(FORMATS)}")
    return FORMATS[fmt](state)


# --- architecture of a converted state (for error messages) ------------------------------

def infer_arch(state: Mapping[str, torch.Tensor]) -> str:
    """Describe the Swin a converted backbone state holds, naming the known arch if one fits."""
    from .registry import ARCHS

    proj = state.get("patch_embed.proj.weight")
    if proj is None:
        return "an unknown backbone (no patch_embed.proj.weight)"
    depths, heads = [], []
    for i in range(8):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"^layers\.{i}\.blocks\.(\d+)\.", k))}
        if not blocks:
            break
        depths.append(max(blocks) + 1)
        table = state.get(f"layers.{i}.blocks.0.attn.relative_position_bias_table")
        heads.append(int(table.shape[1]) if table is not None else -1)
    embed = int(proj.shape[0])
    for name, spec in ARCHS.items():
        if spec.embed_dim == embed and tuple(depths) == spec.depths and tuple(heads) == spec.num_heads:
            return name
    return f"a Swin with embed_dim {embed}, depths {tuple(depths)}, heads {tuple(heads)}"

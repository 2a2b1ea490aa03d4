"""Swin Transformer with SOLIDER's semantic controller, built from timm's modules.

One backbone for both stages (pretraining and ReID fine-tuning). It keeps timm's
parameter names (``patch_embed``, ``layers.{i}.downsample``, ``layers.{i}.blocks.{j}``,
``norm``) so timm / Microsoft ImageNet checkpoints map one to one, and differs from
stock timm in the two places where timm is not the same function as the Swin that
SOLIDER (and TAO's ReIdentificationNet Transformer) trained at 256x128:

* Windows are never clipped to the feature map. timm clips the 7x7 window to 7x4 on the
  8x4 last stage (a 91-row relative-position table instead of 169); SOLIDER pads to a
  multiple of 7 instead. We build timm blocks with ``always_partition=True``.
* Pad first, then shift. SOLIDER's mmcv-style ``ShiftWindowMSA`` pads the map to a
  multiple of the window and then rolls it, with the shift mask computed on the padded
  map; timm rolls the unpadded map and pads afterwards. 64x32, 32x16 and 16x8 maps are
  not multiples of 7, so the two orders give different features.
  ``PadThenShiftBlock`` restores SOLIDER's order.

The semantic controller (SOLIDER, Chen et al. CVPR 2023, ``swin_transformer.py``):
lambda is encoded as ``s = [lambda, 1 - lambda]`` and the tokens entering stage i+1, right
after patch merging, become ``x * softplus(W_i s) + B_i s`` (a per-channel scale and
shift broadcast over tokens). SOLIDER also builds a fourth pair after the last stage
whose output is never used (so it never gets a gradient); we do not create it.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models._manipulate import checkpoint_seq
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformerBlock,
    WindowAttention,
    get_relative_position_index,
    window_partition,
    window_reverse,
)
from torch import nn

from soliderkit.backbone.registry import ARCHS, INPUT_MULTIPLE


class BackboneOutput(NamedTuple):
    pooled: torch.Tensor  # (B, C_last): mean of the normalised last-stage tokens
    feature_maps: list[torch.Tensor]  # one (B, C_i, H_i, W_i) map per requested stage


# Shifted-window masks (and the packed attention's window plans, below) depend only on the map
# size, the window and the shift: every block of a stage (and every step) reuses one, built on
# first use. Bounded so that a model fed many input sizes cannot grow them without end.
_SHIFT_MASKS: dict[tuple, torch.Tensor] = {}
_CACHE_MAX = 64


def _remember(cache: dict, key: tuple, value) -> None:
    """Insert into a per-input-size cache, dropping the oldest entry beyond ``_CACHE_MAX``."""
    if len(cache) >= _CACHE_MAX:
        cache.pop(next(iter(cache)))
    cache[key] = value


def shifted_window_mask(block: SwinTransformerBlock, padded: torch.Tensor) -> torch.Tensor:
    """timm's mask for ``block`` on the padded, rolled map ``padded`` (B, Hp, Wp, C), built once per
    (Hp, Wp, window, shift, device, dtype). While tracing (ONNX) or compiling it is built inline,
    so graphs never capture a cached tensor."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return block.get_attn_mask(padded)
    key = (padded.shape[1], padded.shape[2], tuple(block.window_size), tuple(block.shift_size),
           padded.device, padded.dtype)
    mask = _SHIFT_MASKS.get(key)
    if mask is None:
        # A plain tensor even when first built under inference_mode (evaluation before training).
        with torch.inference_mode(False), torch.no_grad():
            mask = block.get_attn_mask(padded)
        _remember(_SHIFT_MASKS, key, mask)
    return mask


def set_fused_attention(module: nn.Module, enabled: bool = True) -> None:
    """Window attention through ``F.scaled_dot_product_attention`` (fused kernels: flash /
    memory-efficient / cuDNN on GPUs, the fused CPU kernel) or timm's explicit softmax(QK^T)V.
    timm leaves it off for Swin (``use_fused_attn(experimental=True)``); our blocks turn it on.
    The relative-position bias and the shifted-window mask go in as ``attn_mask``."""
    for sub in module.modules():
        if isinstance(sub, WindowAttention):
            sub.fused_attn = enabled


def set_window_packing(module: nn.Module, enabled: bool = True) -> None:
    """Attention over the real tokens only (default; ``packed_window_attention``) or over SOLIDER's
    padded windows as built (``PadThenShiftBlock._attn_padded``): the same function, so this only
    changes speed (``bench/bench_attention.py`` measures both on a device)."""
    for sub in module.modules():
        if isinstance(sub, PadThenShiftBlock):
            sub.pack_windows = enabled


class PadThenShiftBlock(SwinTransformerBlock):
    """timm's Swin block with SOLIDER's window order: pad, then shift, mask on the padded map.

    The padded tokens are never computed: SOLIDER pads the normalised map with zeros before the
    qkv projection, so a padded token's key and value are the projection's bias, and its output
    is cropped away. ``_attn`` therefore attends with the real tokens only (``packed_window_attention``:
    each window's padded keys folded into one key, exactly); ``_attn_padded`` is the literal
    construction (used when attention dropout is on, where the fold does not hold). Attention runs
    through PyTorch's scaled-dot-product path where it has a fused kernel (``set_fused_attention``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attn.fused_attn = True
        self.pack_windows = True  # set_window_packing

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        if not self.pack_windows or (attn.training and attn.attn_drop.p > 0):
            return self._attn_padded(x)
        _, height, width, _ = x.shape
        plan = window_plan(self, height, width, x.device)
        return attn.proj_drop(attn.proj(packed_window_attention(attn, x, plan)))

    def _attn_padded(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = x.shape
        attn = self.attn
        win_h, win_w = self.window_size
        pad_h, pad_w = (-height) % win_h, (-width) % win_w
        padded_h, padded_w = height + pad_h, width + pad_w
        # The padded tokens' q, k and v are the projection's bias (see the class docstring).
        qkv = F.pad(F.linear(x, attn.qkv.weight), (0, 0, 0, pad_w, 0, pad_h))
        if attn.qkv.bias is not None:
            qkv = qkv + attn.qkv.bias

        shift_h, shift_w = self.shift_size
        shifted = shift_h > 0 or shift_w > 0
        if shifted:
            qkv = torch.roll(qkv, shifts=(-shift_h, -shift_w), dims=(1, 2))
            # timm's mask builder labels regions of whatever map it is given; giving it
            # the padded map is exactly the mmcv construction.
            mask = shifted_window_mask(self, qkv)
        else:
            mask = None

        windows = window_partition(qkv, self.window_size).view(-1, self.window_area, qkv.shape[-1])
        windows = window_attention(attn, windows, mask)
        x = window_reverse(windows.view(-1, win_h, win_w, windows.shape[-1]), self.window_size,
                           padded_h, padded_w)
        if shifted:
            x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
        # The output projection, too, only for the real tokens (the padded ones are dropped).
        return attn.proj_drop(attn.proj(x[:, :height, :width, :]))


def _use_sdpa(attn: WindowAttention, bias: torch.Tensor) -> bool:
    """SDPA where PyTorch has a fused kernel for it. On the CPU a bias that needs a gradient sends
    SDPA to its unfused fallback, which is slower than the explicit softmax (pico, 128x64, batch
    32, forward + backward: 10%, ``bench/bench_attention.py``); inference keeps the fused kernel."""
    if not attn.fused_attn:
        return False
    return not (bias.device.type == "cpu" and bias.requires_grad and torch.is_grad_enabled())


def _attend(attn: WindowAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over the last two dims (any leading batch dims)."""
    if _use_sdpa(attn, bias):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                              dropout_p=attn.attn_drop.p if attn.training else 0.0)
    weights = attn.attn_drop(attn.softmax((q * attn.scale) @ k.transpose(-2, -1) + bias))
    return weights @ v


def window_attention(attn: WindowAttention, qkv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """timm's ``WindowAttention.forward`` between its two projections: ``qkv`` (windows, N, 3C)
    already projected, returns the heads' concatenated outputs (windows, N, C) before ``proj``."""
    windows, tokens, _ = qkv.shape
    q, k, v = qkv.reshape(windows, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = attn._get_rel_pos_bias()
    if mask is not None:  # (num_win, N, N) shifted-window mask, repeated over the batch
        num_win = mask.shape[0]
        bias = (bias.view(1, 1, attn.num_heads, tokens, tokens) + mask.view(1, num_win, 1, tokens, tokens)) \
            .expand(windows // num_win, -1, -1, -1, -1).reshape(windows, attn.num_heads, tokens, tokens)
    return _attend(attn, q, k, v, bias).transpose(1, 2).reshape(windows, tokens, -1)


# --- attention over the real tokens only ------------------------------------------------------
#
# In a padded window every padded key is the same vector (the qkv bias's k, v), and only its
# logit bias differs (relative position + shift mask). Their share of query i's softmax is
#   sum_j exp(q.k_b * scale + b_ij) v_b = exp(q.k_b * scale + logsumexp_j b_ij) v_b,
# so one key (k_b, v_b) with logit bias logsumexp_j b_ij stands for all of them, exactly. Padded
# queries are never needed (their outputs are cropped). Windows are grouped by how many real
# tokens they hold, so each group is one batched attention over real tokens plus that one key:
# the four stages' unshifted blocks attend with 78 / 60 / 36 / 17 % of the padded windows'
# query-key pairs at 256x128 (128x64: 60 / 36 / 17 / 3 %), the shifted ones with fewer.

class WindowPlan(NamedTuple):
    """Where the real tokens of one (H, W) map sit in a block's padded, shifted windows, grouped
    by the number n of real tokens per window (one entry per group in each list)."""
    order: torch.Tensor  # (H*W,) flat map index of every real token, group after group
    inverse: torch.Tensor  # (H*W,) puts the groups' outputs back in map order
    sizes: list[tuple[int, int]]  # (windows G, real tokens n) per group
    table_real: list[torch.Tensor]  # (G, n, n) relative-position-table rows, real query x real key
    table_pad: list[torch.Tensor | None]  # (G, n, P) the same for the P padded keys (None: P = 0)
    mask_real: list[torch.Tensor | None]  # (G, n, n) shifted-window mask (0 / -100); None unshifted
    mask_pad: list[torch.Tensor | None]  # (G, n, P)


_WINDOW_PLANS: dict[tuple, WindowPlan] = {}


def window_plan(block: SwinTransformerBlock, height: int, width: int, device: torch.device) -> WindowPlan:
    """The block's :class:`WindowPlan` for an (H, W) map, built once per (H, W, window, shift, device)."""
    return _cached_window_plan(height, width, tuple(block.window_size), tuple(block.shift_size), device)


@torch.compiler.assume_constant_result
def _cached_window_plan(height: int, width: int, window: tuple[int, int], shift: tuple[int, int],
                        device: torch.device) -> WindowPlan:
    # torch.compile calls this at trace time and keeps its tensors as constants; it is built with
    # numpy, so an ONNX trace records constants too, never the construction.
    key = (height, width, window, shift, device)
    plan = _WINDOW_PLANS.get(key)
    if plan is None:
        with torch.inference_mode(False):
            plan = _build_window_plan(height, width, window, shift, device)
        _remember(_WINDOW_PLANS, key, plan)
    return plan


def _shift_regions(size: int, window: int, shift: int) -> np.ndarray:
    """Region label of each place along one padded axis for the shifted-window mask: the three
    slices (0, -window), (-window, -shift), (-shift, end) of timm's / mmcv's construction."""
    labels = np.zeros(size, dtype=np.int64)
    labels[size - window:size - shift] = 1
    labels[size - shift:] = 2
    return labels


def _build_window_plan(height: int, width: int, window: tuple[int, int], shift: tuple[int, int],
                       device: torch.device) -> WindowPlan:
    win_h, win_w = window
    area = win_h * win_w
    padded_h, padded_w = height + (-height) % win_h, width + (-width) % win_w
    # Each padded-map place holds its token's flat index, or -1 for padding; shifted as the map is.
    ids = np.full((padded_h, padded_w), -1, dtype=np.int64)
    ids[:height, :width] = np.arange(height * width).reshape(height, width)
    shifted = any(s > 0 for s in shift)
    regions = None
    if shifted:
        ids = np.roll(ids, shift=(-shift[0], -shift[1]), axis=(0, 1))
        # the mask labels regions of the rolled, padded map (not rolled themselves)
        regions = (_shift_regions(padded_h, win_h, shift[0])[:, None] * 3
                   + _shift_regions(padded_w, win_w, shift[1])[None, :])

    def windows_of(grid: np.ndarray) -> np.ndarray:  # (padded_h, padded_w) -> (windows, area)
        return grid.reshape(padded_h // win_h, win_h, padded_w // win_w, win_w).transpose(0, 2, 1, 3).reshape(-1, area)

    ids = windows_of(ids)
    regions = windows_of(regions) if shifted else None
    table_index = get_relative_position_index(win_h, win_w).numpy()  # timm's (area, area) table rows

    def const(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    real = ids >= 0
    counts = real.sum(1)
    order, plan = [], WindowPlan(None, None, [], [], [], [], [])
    for n in sorted(set(counts.tolist()), reverse=True):
        windows = np.flatnonzero(counts == n)
        slots = np.nonzero(real[windows])[1].reshape(len(windows), n)
        pad_slots = np.nonzero(~real[windows])[1].reshape(len(windows), area - n)
        order.append(np.take_along_axis(ids[windows], slots, axis=1).ravel())
        plan.sizes.append((len(windows), n))
        plan.table_real.append(const(table_index[slots[:, :, None], slots[:, None, :]]))
        plan.table_pad.append(const(table_index[slots[:, :, None], pad_slots[:, None, :]]) if area > n else None)
        if shifted:
            labels = regions[windows]
            query = np.take_along_axis(labels, slots, axis=1)[:, :, None]

            def mask(keys: np.ndarray) -> torch.Tensor:
                return const(np.where(query != np.take_along_axis(labels, keys, axis=1)[:, None, :],
                                      np.float32(-100.0), np.float32(0.0)))
            plan.mask_real.append(mask(slots))
            plan.mask_pad.append(mask(pad_slots) if area > n else None)
        else:
            plan.mask_real.append(None)
            plan.mask_pad.append(None)
    order = np.concatenate(order)
    return plan._replace(order=const(order), inverse=const(np.argsort(order)))


def packed_window_attention(attn: WindowAttention, x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """SOLIDER's padded, shifted window attention of the normalised map ``x`` (B, H, W, C) computed
    over its real tokens only (see the note above); returns (B, H, W, C) before ``proj``."""
    batch, height, width, channels = x.shape
    heads = attn.num_heads
    head_dim = channels // heads
    qkv = permute_tokens(F.linear(x, attn.qkv.weight, attn.qkv.bias).flatten(1, 2), plan.order, plan.inverse)
    if attn.qkv.bias is not None:  # a padded token's key and value
        pad_k, pad_v = attn.qkv.bias[channels:].view(2, 1, 1, heads, 1, head_dim).unbind(0)
    else:
        pad_k = pad_v = qkv.new_zeros(1, 1, heads, 1, head_dim)
    table = attn.relative_position_bias_table  # (rows, heads)
    outputs, start = [], 0
    for g, (groups, n) in enumerate(plan.sizes):
        part = qkv[:, start:start + groups * n].view(batch, groups, n, 3, heads, head_dim)
        start += groups * n
        q, k, v = part.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, G, heads, n, head_dim)
        bias = _table_rows(table, plan.table_real[g])  # (G, heads, n, n)
        if plan.mask_real[g] is not None:
            bias = bias + plan.mask_real[g][:, None]
        if plan.table_pad[g] is not None:
            pad_bias = _table_rows(table, plan.table_pad[g])  # (G, heads, n, P)
            if plan.mask_pad[g] is not None:
                pad_bias = pad_bias + plan.mask_pad[g][:, None]
            bias = torch.cat([bias, pad_bias.logsumexp(-1, keepdim=True)], dim=-1)
            k = torch.cat([k, pad_k.to(k.dtype).expand(batch, groups, -1, -1, -1)], dim=3)
            v = torch.cat([v, pad_v.to(v.dtype).expand(batch, groups, -1, -1, -1)], dim=3)
        out = _attend(attn, q, k, v, bias)  # (B, G, heads, n, head_dim)
        outputs.append(out.permute(0, 1, 3, 2, 4).reshape(batch, groups * n, channels))
    out = permute_tokens(torch.cat(outputs, dim=1), plan.inverse, plan.order)
    return out.view(batch, height, width, channels)


def _table_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of the (rows, heads) position table at ``index`` (G, n, m), as (G, heads, n, m). A flat
    ``index_select`` exports to ONNX as one Gather (advanced indexing as several ops, with a warning)."""
    return table.index_select(0, index.flatten()).view(*index.shape, -1).permute(0, 3, 1, 2)


class _PermuteTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def permute_tokens(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``x[:, order]`` for a permutation ``order`` (``inverse`` its inverse). Its gradient is the
    inverse gather, not the scatter-add autograd would use for a general index (3x slower on the CPU)."""
    if torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing():
        return _PermuteTokens.apply(x, order, inverse)
    return x.index_select(1, order)


class SwinStage(nn.Module):
    """Patch merging (except for the first stage) followed by Swin blocks, NHWC tokens."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, window_size: int,
                 resolution: tuple[int, int], drop_path: Sequence[float], downsample: bool):
        super().__init__()
        self.downsample = PatchMerging(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            PadThenShiftBlock(
                dim=dim,
                input_resolution=resolution,
                num_heads=num_heads,
                window_size=window_size,
                shift_size=0 if j % 2 == 0 else window_size // 2,
                always_partition=True,
                dynamic_mask=True,
                drop_path=drop_path[j],
            )
            for j in range(depth)
        ])
        self.grad_checkpointing = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class SemanticController(nn.Module):
    """Per-channel scale and shift of the tokens entering stages 2..N, driven by lambda."""

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.scale = nn.ModuleList(nn.Linear(2, d) for d in dims)
        self.shift = nn.ModuleList(nn.Linear(2, d) for d in dims)

    def forward(self, x: torch.Tensor, index: int, encoded: torch.Tensor,
                active: torch.Tensor | None) -> torch.Tensor:
        # x: (B, H, W, C); encoded: (B, 2) = [lambda, 1 - lambda]
        scale = F.softplus(self.scale[index](encoded))
        shift = self.shift[index](encoded)
        if active is not None:
            # Samples with lambda < 0 get scale 1 and shift 0, i.e. x unchanged (exactly: x * 1 + 0
            # is x), and give the controller no gradient; chosen on (B, C), not on the whole map.
            scale = torch.where(active[:, None], scale, torch.ones_like(scale))
            shift = torch.where(active[:, None], shift, torch.zeros_like(shift))
        return x * scale[:, None, None, :] + shift[:, None, None, :]


class SwinBackbone(nn.Module):
    """Swin-T/S/B (or pico) at any HxW multiple of 32, with SOLIDER's semantic controller.

    ``forward(images, semantic_weight=None)`` returns ``BackboneOutput(pooled, feature_maps)``.
    ``semantic_weight`` is lambda: a float for the whole batch or a tensor with one value
    per sample; ``None`` uses the value given at construction. lambda < 0 switches the
    controller off (for the whole batch, or for those samples).
    """

    def __init__(
        self,
        arch: str = "swin_tiny_patch4_window7_224",
        img_size: tuple[int, int] = (256, 128),
        semantic_weight: float = 0.2,
        with_controller: bool = True,
        drop_path_rate: float = 0.1,
        out_indices: Sequence[int] = (3,),
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown backbone arch {arch!r}; known: {sorted(ARCHS)}")
        spec = ARCHS[arch]
        num_stages = len(spec.depths)
        img_size = tuple(int(s) for s in img_size)
        _check_input_size(img_size, what="img_size")
        out_indices = tuple(sorted({int(i) % num_stages for i in out_indices}))
        if not out_indices:
            raise ValueError("out_indices must name at least one stage")

        self.arch = arch
        self.img_size = img_size
        # Without a controller there is nothing for a default lambda to drive.
        self.semantic_weight = float(semantic_weight) if with_controller else -1.0
        self.out_indices = out_indices
        self.dims = [spec.embed_dim * 2 ** i for i in range(num_stages)]
        self.num_features = self.dims[-1]

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=spec.patch_size, in_chans=3,
            embed_dim=spec.embed_dim, norm_layer=nn.LayerNorm,
            strict_img_size=False, output_fmt="NHWC",
        )
        rates = torch.linspace(0, drop_path_rate, sum(spec.depths)).tolist()
        grid = (img_size[0] // spec.patch_size, img_size[1] // spec.patch_size)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(spec.depths):
            start = sum(spec.depths[:i])
            self.layers.append(SwinStage(
                in_dim=self.dims[max(i - 1, 0)], dim=self.dims[i], depth=depth,
                num_heads=spec.num_heads[i], window_size=spec.window_size,
                resolution=(grid[0] // 2 ** i, grid[1] // 2 ** i),
                drop_path=rates[start:start + depth], downsample=i > 0,
            ))
        # The last stage's norm keeps timm's name; earlier stages get one only when asked for.
        self.norm = nn.LayerNorm(self.num_features)
        self.out_norms = nn.ModuleDict(
            {str(i): nn.LayerNorm(self.dims[i]) for i in out_indices if i != num_stages - 1})
        self.controller = SemanticController(self.dims[1:]) if with_controller else None

        self.apply(_init_weights)
        self.set_grad_checkpointing(grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names that optimizers should not decay (position tables)."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def forward(self, images: torch.Tensor,
                semantic_weight: float | torch.Tensor | None = None) -> BackboneOutput:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        _check_input_size(tuple(images.shape[-2:]), what="input image size")
        x = self.patch_embed(images)
        encoded, active = self._encode_lambda(semantic_weight, x)

        feature_maps = []
        last = len(self.layers) - 1
        for i, stage in enumerate(self.layers):
            x = stage.downsample(x)
            if i > 0 and encoded is not None:
                x = self.controller(x, i - 1, encoded, active)
            x = stage.forward_blocks(x)
            if i in self.out_indices:
                norm = self.norm if i == last else self.out_norms[str(i)]
                feature_maps.append(norm(x).permute(0, 3, 1, 2))
        pooled = feature_maps[-1].mean(dim=(2, 3)) if last in self.out_indices \
            else self.norm(x).mean(dim=(1, 2))
        return BackboneOutput(pooled, feature_maps)

    def _encode_lambda(self, semantic_weight, x: torch.Tensor):
        """Return ([lambda, 1 - lambda] per sample, mask of samples with lambda >= 0).

        (None, None) means no sample is modulated; a mask of None means every sample is. A
        tensor lambda never reads its values on the host (no device sync in a training step):
        its mask is applied on the device, and a batch with every lambda < 0 gives the unchanged
        tokens through the controller (the same values as skipping it, zero controller gradient).
        """
        if semantic_weight is None:
            semantic_weight = self.semantic_weight
        batch = x.shape[0]
        tracing = torch.jit.is_tracing()  # ONNX export: keep a graph that does not branch on data
        if torch.is_tensor(semantic_weight):
            lam = semantic_weight.to(device=x.device, dtype=x.dtype).reshape(-1)
            if lam.numel() == 1:
                lam = lam.expand(batch)
            if lam.shape[0] != batch:
                raise ValueError(f"semantic_weight has {lam.shape[0]} values for a batch of {batch}")
            active = lam >= 0
            if self.controller is None and not tracing and not bool(active.any()):
                return None, None  # no controller and nothing to modulate (the check syncs; no hot path has it)
        else:
            if semantic_weight < 0:
                return None, None
            lam, active = x.new_full((batch,), float(semantic_weight)), None
        if self.controller is None:
            if tracing:
                return None, None
            raise ValueError(f"semantic_weight={semantic_weight!r} needs the semantic controller, but "
                             "this backbone was built with with_controller=False (use lambda < 0)")
        return torch.stack([lam, 1 - lam], dim=1), active


def _check_input_size(size: tuple[int, ...], what: str) -> None:
    if len(size) != 2 or any(s <= 0 or s % INPUT_MULTIPLE for s in size):
        raise ValueError(f"{what} must be (H, W) with both multiples of {INPUT_MULTIPLE}, got {size}")


def _init_weights(module: nn.Module) -> None:
    # Swin/SOLIDER initialisation: truncated normal (std 0.02) for linear layers, zero bias.
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

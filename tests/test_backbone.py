"""The shared Swin backbone: semantic controller, gradients, and SOLIDER's window order."""
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock

from soliderkit.backbone import CheckpointError, build_backbone, save_backbone
from soliderkit.backbone.swin import PadThenShiftBlock

PICO = "swin_pico_patch4_window7"


def _pico(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("drop_path_rate", 0.0)
    return build_backbone(PICO, img_size=(256, 128), **kwargs).eval()


def _images(batch=3, size=(256, 128), seed=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_shapes_at_reid_and_local_crop_sizes():
    model = _pico(out_indices=(0, 1, 2, 3))
    out = model(_images(size=(256, 128)))
    assert out.pooled.shape == (3, 256)
    assert [tuple(f.shape[1:]) for f in out.feature_maps] == [
        (32, 64, 32), (64, 32, 16), (128, 16, 8), (256, 8, 4)]
    # 128x64 local crops go through the same backbone (last stage 4x2, padded to one 7x7 window).
    assert model(_images(size=(128, 64))).feature_maps[-1].shape == (3, 256, 4, 2)


def test_bad_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"multiples of 32.*\(250, 128\)"):
        _pico()(torch.randn(1, 3, 250, 128))
    with pytest.raises(ValueError, match="unknown backbone arch"):
        build_backbone("swin_huge")


def test_lambda_changes_the_output_and_negative_lambda_equals_no_controller():
    model = _pico()
    x = _images()
    with torch.no_grad():
        out_0 = model(x, semantic_weight=0.0).pooled
        out_1 = model(x, semantic_weight=1.0).pooled
        out_off = model(x, semantic_weight=-1.0).pooled
        plain = _pico(with_controller=False)
        # Same weights apart from the controller, which the plain model does not have.
        plain.load_state_dict({k: v for k, v in model.state_dict().items()
                               if not k.startswith("controller.")})
        out_plain = plain(x).pooled  # a backbone without controller defaults to lambda = -1
    assert (out_0 - out_1).abs().max() > 1e-3
    assert (out_0 - out_off).abs().max() > 1e-3
    torch.testing.assert_close(out_off, out_plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="with_controller=False"):
        plain(x, semantic_weight=0.5)


def test_per_sample_lambda_matches_one_lambda_per_forward():
    model = _pico()
    x = _images(batch=4)
    lambdas = torch.tensor([0.0, 1.0, 0.3, -1.0])
    with torch.no_grad():
        batched = model(x, semantic_weight=lambdas).pooled
        one_by_one = torch.cat([model(x[i:i + 1], semantic_weight=float(lam)).pooled
                                for i, lam in enumerate(lambdas)])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3 values for a batch of 4"):
        model(x, semantic_weight=torch.zeros(3))


@pytest.mark.parametrize("out_indices", [(3,), (0, 1, 2, 3)])
def test_every_parameter_gets_a_gradient(out_indices):
    model = _pico(out_indices=out_indices).train()
    out = model(_images(batch=2), semantic_weight=torch.tensor([0.2, 0.9]))
    loss = out.pooled.pow(2).sum() + sum(f.pow(2).mean() for f in out.feature_maps)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    assert any(n.startswith("controller.") for n, _ in model.named_parameters())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    x = _images(batch=2)
    grads = []
    for checkpointing in (False, True):
        model = _pico(grad_checkpointing=checkpointing).train()
        model(x).pooled.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# --- fidelity to SOLIDER's (mmcv-style) Swin ---------------------------------------------
# An independent re-implementation of mmcv's ShiftWindowMSA order: pad the map to a multiple
# of the window, then roll it, with the region mask built on the padded map.

def _relative_index(window):
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def _reference_window_attention(attn, x, window, shift):
    batch, height, width, channels = x.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = height + pad_h, width + pad_w
    mask = None
    if shift:
        x = torch.roll(x, (-shift, -shift), dims=(1, 2))
        region = torch.zeros(hp, wp)
        bounds_h = [(0, hp - window), (hp - window, hp - shift), (hp - shift, hp)]
        bounds_w = [(0, wp - window), (wp - window, wp - shift), (wp - shift, wp)]
        for r, (h0, h1) in enumerate(bounds_h):
            for c, (w0, w1) in enumerate(bounds_w):
                region[h0:h1, w0:w1] = r * 3 + c
        region = region.view(hp // window, window, wp // window, window).permute(0, 2, 1, 3)
        region = region.reshape(-1, window * window)
        mask = (region[:, :, None] != region[:, None, :]).float() * -100.0
    windows = x.view(batch, hp // window, window, wp // window, window, channels)
    windows = windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)
    heads = attn.num_heads
    qkv = attn.qkv(windows).view(windows.shape[0], window * window, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q * attn.scale) @ k.transpose(-1, -2)
    bias = attn.relative_position_bias_table[_relative_index(window).flatten()]
    logits = logits + bias.view(window * window, window * window, heads).permute(2, 0, 1)
    if mask is not None:
        n_win = mask.shape[0]
        logits = logits.view(-1, n_win, heads, window * window, window * window) + mask[None, :, None]
        logits = logits.view(-1, heads, window * window, window * window)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(windows.shape[0], window * window, channels)
    out = attn.proj(out)
    out = out.view(batch, hp // window, wp // window, window, window, channels)
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(batch, hp, wp, channels)
    if shift:
        out = torch.roll(out, (shift, shift), dims=(1, 2))
    return out[:, :height, :width]


def _reference_block(block, x):
    window, shift = block.window_size[0], block.shift_size[0]
    x = x + _reference_window_attention(block.attn, block.norm1(x), window, shift)
    return x + block.mlp(block.norm2(x))


def _reference_forward(model, images, lam):
    """SOLIDER's forward order with this model's weights: blocks, merge, modulate, ..."""
    x = model.patch_embed(images)
    encoded = torch.tensor([[lam, 1 - lam]]).expand(images.shape[0], 2)
    for i, stage in enumerate(model.layers):
        if i > 0:
            x = stage.downsample(x)
            scale = F.softplus(model.controller.scale[i - 1](encoded))[:, None, None]
            x = x * scale + model.controller.shift[i - 1](encoded)[:, None, None]
        for block in stage.blocks:
            x = _reference_block(block, x)
    return model.norm(x).mean(dim=(1, 2))


@pytest.mark.parametrize("size,shift", [((64, 32), 3), ((16, 8), 3), ((8, 4), 3), ((8, 4), 0),
                                        ((14, 7), 3)])
def test_block_matches_mmcv_pad_then_shift(size, shift):
    torch.manual_seed(0)
    block = PadThenShiftBlock(dim=32, input_resolution=size, num_heads=2, window_size=7,
                              shift_size=shift, always_partition=True, dynamic_mask=True).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(std=0.5)  # make position bias matter
        x = torch.randn(2, *size, 32)
        torch.testing.assert_close(block(x), _reference_block(block, x), rtol=1e-5, atol=1e-5)


def test_stock_timm_order_differs_from_solider():
    """Why PadThenShiftBlock exists: timm shifts before padding (and clips windows)."""
    torch.manual_seed(0)
    stock = SwinTransformerBlock(dim=32, input_resolution=(64, 32), num_heads=2, window_size=7,
                                 shift_size=3, always_partition=True, dynamic_mask=True).eval()
    x = torch.randn(2, 64, 32, 32)
    with torch.no_grad():
        diff = (stock(x) - _reference_block(stock, x)).abs().max()
    assert diff > 1e-3


def test_whole_backbone_matches_solider_order_at_256x128():
    model = _pico()
    x = _images(batch=2)
    with torch.no_grad():
        for stage in model.layers:
            for block in stage.blocks:
                block.attn.relative_position_bias_table.normal_(std=0.5)
        torch.testing.assert_close(model(x, semantic_weight=0.7).pooled,
                                   _reference_forward(model, x, 0.7), rtol=1e-4, atol=1e-5)


def test_stages_use_full_7x7_windows():
    model = _pico()
    tables = {tuple(b.attn.relative_position_bias_table.shape[:1])
              for s in model.layers for b in s.blocks}
    assert tables == {(169,)}


# --- attention path ------------------------------------------------------------------------

def _output_and_grads(model, x):
    model.zero_grad()
    out = model(x, semantic_weight=0.3).pooled
    out.pow(2).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_same_function(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    for ga, gb in zip(a[1], b[1]):  # float32 rounding, relative to each gradient's scale
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-4 * gb.abs().max().item())


@pytest.mark.parametrize("size", [(256, 128), (128, 64)])
def test_packed_windows_equal_the_padded_windows_with_gradients(size):
    """Attention over the real tokens with each window's padded keys folded into one is the same
    function as SOLIDER's padded windows (which test_block_matches_mmcv_pad_then_shift pins to an
    independent construction), values and gradients, at the ReID size and the demo's."""
    from soliderkit.backbone.swin import set_window_packing

    model = _pico().train()
    with torch.no_grad():
        for s in model.layers:
            for b in s.blocks:
                b.attn.relative_position_bias_table.normal_(std=0.5)
                b.attn.qkv.bias.normal_(std=0.5)  # the padded tokens' key and value matter
    x = _images(batch=2, size=size)
    torch.manual_seed(1)  # the same drop-path draws for both
    packed = _output_and_grads(model, x)
    set_window_packing(model, False)
    torch.manual_seed(1)
    padded = _output_and_grads(model, x)
    _assert_same_function(packed, padded)


def test_attention_dropout_falls_back_to_the_padded_windows():
    """Dropout on attention weights drops padded keys one by one, which one folded key cannot do."""
    block = PadThenShiftBlock(dim=32, input_resolution=(16, 8), num_heads=2, window_size=7, shift_size=3,
                              always_partition=True, dynamic_mask=True, attn_drop=0.5).train()
    calls = []
    block._attn_padded = lambda x: calls.append(x.shape) or torch.zeros_like(x)
    block(torch.randn(1, 16, 8, 32))
    assert calls == [(1, 16, 8, 32)]
    block.eval()(torch.randn(1, 16, 8, 32))  # no dropout at evaluation: packed
    assert len(calls) == 1


def test_attention_goes_through_sdpa_and_equals_the_explicit_softmax():
    """Our blocks turn timm's fused_attn on (timm leaves it off for Swin); the relative-position
    bias and the shifted-window masks go into scaled_dot_product_attention as attn_mask, except
    for a CPU backward, where SDPA has no fused kernel for a bias with a gradient."""
    from soliderkit.backbone import swin

    model = _pico().train()
    attns = [b.attn for s in model.layers for b in s.blocks]
    assert attns and all(a.fused_attn for a in attns)
    assert any(b.shift_size[0] for s in model.layers for b in s.blocks)  # masked windows are covered
    with torch.no_grad():
        for a in attns:
            a.relative_position_bias_table.normal_(std=0.5)
    bias = attns[0].relative_position_bias_table
    assert not swin._use_sdpa(attns[0], bias)  # CPU, bias needs a gradient: the explicit softmax
    with torch.no_grad():
        assert swin._use_sdpa(attns[0], bias)
    x = _images(batch=2)
    results = []
    original = swin._use_sdpa
    for forced in (True, False):
        swin._use_sdpa = lambda attn, bias, forced=forced: forced
        try:
            results.append(_output_and_grads(model, x))
        finally:
            swin._use_sdpa = original
    _assert_same_function(results[0], results[1])


def test_window_plans_and_masks_are_built_once_per_input_size():
    """The packed attention's plans (index tables and shift masks) and the padded path's shift masks
    are built once per map size and window / shift, not in every block call."""
    from soliderkit.backbone import swin

    swin._SHIFT_MASKS.clear()
    swin._WINDOW_PLANS.clear()
    built, plans = [], []
    original, build_plan = PadThenShiftBlock.get_attn_mask, swin._build_window_plan

    def counting(self, x=None, device=None, dtype=None):
        built.append(tuple(x.shape[1:3]))
        return original(self, x, device, dtype)

    model = _pico()
    shifted_stages = sum(any(b.shift_size[0] for b in s.blocks) for s in model.layers)
    block_kinds = sum(len({b.shift_size for b in s.blocks}) for s in model.layers)  # (stage, shift) pairs
    PadThenShiftBlock.get_attn_mask = counting
    swin._build_window_plan = lambda *args: plans.append(args[:4]) or build_plan(*args)
    try:
        with torch.inference_mode():  # a plan first built under inference_mode still trains
            model(_images(batch=1))
        assert len(plans) == block_kinds and built == []  # packed: plans only, no timm masks
        model.train()
        model(_images(batch=2)).pooled.sum().backward()  # same size, other batch: nothing rebuilt
        model(_images(batch=1, size=(96, 64)))  # a new size (no map shared with 256x128): its own plans
        assert len(plans) == 2 * block_kinds
        swin.set_window_packing(model, False)  # SOLIDER's padded windows: timm's masks, cached
        with torch.inference_mode():
            model(_images(batch=1))
        first = len(built)
        model(_images(batch=2)).pooled.sum().backward()
        model(_images(batch=1, size=(96, 64)))
    finally:
        PadThenShiftBlock.get_attn_mask = original
        swin._build_window_plan = build_plan
    assert len(plans) == 2 * block_kinds
    assert first == shifted_stages  # one per stage with shifted blocks, not one per block call
    assert len(built) == 2 * shifted_stages
    for (hp, wp, *_), mask in swin._SHIFT_MASKS.items():  # the cached masks are timm's construction
        block = next(b for s in model.layers for b in s.blocks if b.shift_size[0])
        torch.testing.assert_close(mask, original(block, torch.zeros(1, hp, wp, 1)), rtol=0, atol=0)


# --- checkpoint I/O ---------------------------------------------------------------------

def test_safetensors_round_trip_and_strict_key_report(tmp_path):
    model = _pico()
    path = tmp_path / "backbone.safetensors"
    save_backbone(model, path)
    loaded = build_backbone(PICO, checkpoint=path, drop_path_rate=0.0).eval()
    x = _images(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x).pooled, loaded(x).pooled, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"unexpected 12 keys \[controller\.scale\.0\.bias"):
        build_backbone(PICO, checkpoint=path, with_controller=False)
    partial = build_backbone(PICO, checkpoint=path, with_controller=False, allow_partial=True)
    assert partial.controller is None
    with pytest.raises(CheckpointError, match="holds a swin_pico_patch4_window7 backbone"):
        build_backbone("swin_tiny_patch4_window7_224", checkpoint=path)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_backbone(PICO, checkpoint=tmp_path / "missing.safetensors")


def test_no_device_is_hard_coded():
    root = Path(__file__).resolve().parents[1]
    offenders = [str(p) for pkg in ("backbone", "common", "data_shards", "pretrain", "finetune")
                 for p in (root / pkg).rglob("*.py") if re.search(r"\.cuda\(", p.read_text())]
    assert offenders == []

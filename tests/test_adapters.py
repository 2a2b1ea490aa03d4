"""Checkpoint adapters: SOLIDER (mmcv keys), SOLIDER-REID, TAO, timm, Microsoft, the toolkit's own.

The SOLIDER test builds a random state dict in mmcv's names and shapes and runs a forward
written here directly from those tensors (patch embedding, pad-then-shift window attention,
FFN, unfold patch merging, semantic modulation, norm3 + average pool); the toolkit backbone
loaded through the adapter must give the same features.
"""
import argparse
import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import PatchMerging, SwinTransformer

from soliderkit.backbone import CheckpointError, build_backbone, detect_format, save_backbone
from soliderkit.backbone.adapters import timm_to_unfold_order, unfold_to_timm_order
from soliderkit.backbone.checkpoint import read_checkpoint, resize_relative_position_table
from soliderkit.finetune.config import ModelConfig
from soliderkit.finetune.model import build_reid_model, load_reid_model, save_reid_model
from script_loader import load_script

PICO = "swin_pico_patch4_window7"
EMBED, DEPTHS, HEADS, WINDOW = 32, (1, 1, 2, 1), (1, 2, 4, 8), 7
DIMS = [EMBED * 2 ** i for i in range(4)]


# --- a SOLIDER checkpoint in mmcv names, built from nothing ------------------------------

def _mmcv_relative_index(window):
    # Flattened (2w-1) x (2w-1) table index for every (query, key) pair of a w x w window,
    # built as mmcv builds it: a strided sequence plus its transpose, flipped.
    row = torch.arange(0, (2 * window - 1) * window, 2 * window - 1)
    coords = (row[:, None] + torch.arange(window)[None, :]).reshape(1, -1)
    return (coords + coords.T).flip(1)


def _solider_state(seed=0, prefix="backbone.", dino_head=True):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.05, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    sd = {"patch_embed.projection.weight": rnd(EMBED, 3, 4, 4, std=0.2),
          "patch_embed.projection.bias": rnd(EMBED),
          "patch_embed.norm.weight": rnd(EMBED, mean=1.0), "patch_embed.norm.bias": rnd(EMBED)}
    for i, (depth, heads, dim) in enumerate(zip(DEPTHS, HEADS, DIMS)):
        for j in range(depth):
            b = f"stages.{i}.blocks.{j}."
            sd.update({
                b + "norm1.weight": rnd(dim, mean=1.0), b + "norm1.bias": rnd(dim),
                b + "attn.w_msa.relative_position_bias_table": rnd((2 * WINDOW - 1) ** 2, heads, std=0.5),
                b + "attn.w_msa.relative_position_index": _mmcv_relative_index(WINDOW),
                b + "attn.w_msa.qkv.weight": rnd(3 * dim, dim, std=0.2), b + "attn.w_msa.qkv.bias": rnd(3 * dim),
                b + "attn.w_msa.proj.weight": rnd(dim, dim, std=0.1), b + "attn.w_msa.proj.bias": rnd(dim),
                b + "norm2.weight": rnd(dim, mean=1.0), b + "norm2.bias": rnd(dim),
                b + "ffn.layers.0.0.weight": rnd(4 * dim, dim, std=0.1), b + "ffn.layers.0.0.bias": rnd(4 * dim),
                b + "ffn.layers.1.weight": rnd(dim, 4 * dim, std=0.05), b + "ffn.layers.1.bias": rnd(dim),
            })
        if i < 3:
            d = f"stages.{i}.downsample."
            sd.update({d + "norm.weight": rnd(4 * dim, mean=1.0), d + "norm.bias": rnd(4 * dim, std=0.2),
                       d + "reduction.weight": rnd(2 * dim, 4 * dim, std=0.1)})
        sd[f"norm{i}.weight"], sd[f"norm{i}.bias"] = rnd(dim, mean=1.0), rnd(dim)
        out = DIMS[min(i + 1, 3)]  # SOLIDER's 4th (dead) pair has the last stage's width
        for w in "wb":
            sd[f"semantic_embed_{w}.{i}.weight"] = rnd(out, 2, std=0.5)
            sd[f"semantic_embed_{w}.{i}.bias"] = rnd(out, std=0.2)
    sd = {prefix + k: v for k, v in sd.items()}
    if dino_head:
        sd.update({"head.mlp.0.weight": rnd(64, DIMS[-1]), "head.mlp.0.bias": rnd(64),
                   "head.last_layer.weight_g": rnd(16, 1), "head.last_layer.weight_v": rnd(16, 64)})
    return sd


def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)


def _linear(x, sd, name):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def _partition(x, window):
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _mmcv_window_msa(x, sd, name, heads, window, shift):
    batch, height, width, channels = x.shape
    pad_r, pad_b = (window - width % window) % window, (window - height % window) % window
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = x.shape[1:3]
    mask = None
    if shift:
        x = torch.roll(x, (-shift, -shift), dims=(1, 2))
        img_mask = torch.zeros(1, hp, wp, 1)
        slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        count = 0
        for hs in slices:
            for ws in slices:
                img_mask[:, hs, ws, :] = count
                count += 1
        regions = _partition(img_mask, window).squeeze(-1)
        diff = regions[:, None, :] - regions[:, :, None]
        mask = torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))
    windows = _partition(x, window)
    n, tokens, _ = windows.shape
    qkv = _linear(windows, sd, name + ".qkv").reshape(n, tokens, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (channels // heads) ** -0.5, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    table = sd[name + ".relative_position_bias_table"]
    bias = table[_mmcv_relative_index(window).reshape(-1)].view(tokens, tokens, -1).permute(2, 0, 1)
    attn = attn + bias[None]
    if mask is not None:
        n_win = mask.shape[0]
        attn = (attn.view(n // n_win, n_win, heads, tokens, tokens) + mask[None, :, None]).view(-1, heads, tokens,
                                                                                                tokens)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(n, tokens, channels)
    out = _linear(out, sd, name + ".proj")
    out = out.view(batch, hp // window, wp // window, window, window, channels).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(batch, hp, wp, channels)
    if shift:
        out = torch.roll(out, (shift, shift), dims=(1, 2))
    return out[:, :height, :width]


def _mmcv_patch_merging(x, sd, name):
    batch, height, width, channels = x.shape
    cols = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2)  # (B, 4C, L), channel-major
    cols = _ln(cols.transpose(1, 2), sd, name + ".norm")
    out = F.linear(cols, sd[name + ".reduction.weight"])
    return out.view(batch, height // 2, width // 2, -1)


def _solider_forward(sd, images, lam, prefix="backbone."):
    """SOLIDER's Swin forward from raw mmcv-layout tensors: (pooled, [normed stage maps])."""
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    lam = torch.as_tensor(lam, dtype=images.dtype).reshape(-1).expand(images.shape[0])
    encoded = torch.stack([lam, 1 - lam], dim=1)
    x = F.conv2d(images, sd["patch_embed.projection.weight"], sd["patch_embed.projection.bias"], stride=4)
    x = _ln(x.permute(0, 2, 3, 1), sd, "patch_embed.norm")
    maps = []
    for i, depth in enumerate(DEPTHS):
        for j in range(depth):
            b = f"stages.{i}.blocks.{j}"
            x = x + _mmcv_window_msa(_ln(x, sd, b + ".norm1"), sd, b + ".attn.w_msa", HEADS[i], WINDOW,
                                     0 if j % 2 == 0 else WINDOW // 2)
            x = x + _linear(F.gelu(_linear(_ln(x, sd, b + ".norm2"), sd, b + ".ffn.layers.0.0")), sd,
                            b + ".ffn.layers.1")
        out = x
        if i < 3:
            x = _mmcv_patch_merging(x, sd, f"stages.{i}.downsample")
        scale = F.softplus(_linear(encoded, sd, f"semantic_embed_w.{i}"))[:, None, None]
        x = x * scale + _linear(encoded, sd, f"semantic_embed_b.{i}")[:, None, None]
        maps.append(_ln(out, sd, f"norm{i}").permute(0, 3, 1, 2))
    return maps[-1].mean(dim=(2, 3)), maps


def _images(batch=2, size=(256, 128), seed=3):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def solider_file(tmp_path_factory):
    sd = _solider_state()
    path = tmp_path_factory.mktemp("solider") / "swin_pico_tea.pth"
    torch.save(sd, path)
    return sd, path


# --- SOLIDER ------------------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.2, 1.0])
def test_solider_checkpoint_is_numerically_solider(solider_file, lam):
    sd, path = solider_file
    model = build_backbone(PICO, checkpoint=path, drop_path_rate=0.0, out_indices=(0, 1, 2, 3)).eval()
    x = _images()
    with torch.no_grad():
        ours = model(x, semantic_weight=lam)
        pooled, _ = _solider_forward(sd, x, lam)
        assert (ours.pooled - pooled).abs().max() <= 1e-5
        # In float64 the two computations agree to rounding, stage by stage
        # (norm0..2 -> out_norms, norm3 -> norm).
        ours = model.double()(x.double(), semantic_weight=lam)
        _, maps = _solider_forward({k: v.double() if v.is_floating_point() else v for k, v in sd.items()},
                                   x.double(), lam)
    for mine, ref in zip(ours.feature_maps, maps):
        assert (mine - ref).abs().max() <= 1e-10


def test_solider_per_sample_lambda(solider_file):
    sd, path = solider_file
    model = build_backbone(PICO, checkpoint=path, drop_path_rate=0.0).eval()
    x, lam = _images(batch=3), torch.tensor([0.0, 0.2, 1.0])
    with torch.no_grad():
        assert (model(x, semantic_weight=lam).pooled - _solider_forward(sd, x, lam)[0]).abs().max() <= 1e-5


def test_patch_merging_permutation_matches_mmcv_unfold():
    torch.manual_seed(0)
    dim = 8
    sd = {"m.norm.weight": torch.randn(4 * dim), "m.norm.bias": torch.randn(4 * dim),
          "m.reduction.weight": torch.randn(2 * dim, 4 * dim)}
    ours = PatchMerging(dim, 2 * dim).eval()
    ours.load_state_dict({"norm.weight": unfold_to_timm_order(sd["m.norm.weight"]),
                          "norm.bias": unfold_to_timm_order(sd["m.norm.bias"]),
                          "reduction.weight": unfold_to_timm_order(sd["m.reduction.weight"])})
    x = torch.randn(2, 6, 4, dim)
    with torch.no_grad():
        assert (ours(x) - _mmcv_patch_merging(x, sd, "m")).abs().max() <= 1e-5
    t = torch.randn(3, 4 * dim)
    assert torch.equal(timm_to_unfold_order(unfold_to_timm_order(t)), t)


def test_solider_key_report_and_strictness(solider_file, tmp_path):
    sd, path = solider_file
    model = build_backbone(PICO, checkpoint=path)  # strict, pooled feature only: out_indices (3,)
    report = model.checkpoint_report
    assert report.format == "solider" and not report.missing and not report.unexpected and not report.fresh
    dropped = set(report.dropped)
    assert {f"backbone.norm{i}.weight" for i in range(3)} <= dropped
    assert "backbone.norm3.weight" not in dropped
    assert {"backbone.semantic_embed_w.3.weight", "backbone.semantic_embed_b.3.bias"} <= dropped
    assert "backbone.semantic_embed_w.2.weight" not in dropped
    assert {k for k in sd if k.endswith("relative_position_index")} <= dropped
    assert {k for k in sd if k.startswith("head.")} <= dropped
    assert "out_indices" in report.dropped["backbone.norm0.bias"]
    assert report.loaded == len(model.state_dict())
    # Built with every stage's output, the extra norms are loaded rather than dropped.
    full = build_backbone(PICO, checkpoint=path, out_indices=(0, 1, 2, 3))
    assert "backbone.norm1.weight" not in full.checkpoint_report.dropped
    assert torch.equal(full.out_norms["1"].weight, sd["backbone.norm1.weight"])

    broken = dict(sd)
    del broken["backbone.stages.2.blocks.1.ffn.layers.1.bias"]
    broken["backbone.absolute_pos_embed"] = torch.zeros(1, 2048, 32)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing 1 keys \[layers\.2\.blocks\.1\.mlp\.fc2\.bias\].*"
                                              r"unexpected 1 keys \[absolute_pos_embed \(from backbone\."
                                              r"absolute_pos_embed\)\]"):
        build_backbone(PICO, checkpoint=tmp_path / "broken.pth")
    partial = build_backbone(PICO, checkpoint=tmp_path / "broken.pth", allow_partial=True).checkpoint_report
    assert partial.missing == ["layers.2.blocks.1.mlp.fc2.bias"] and partial.unexpected == ["absolute_pos_embed"]
    with pytest.raises(CheckpointError, match="holds swin_pico_patch4_window7"):
        build_backbone("swin_tiny_patch4_window7_224", checkpoint=path)


class _FakeDictConfig:
    """Stands for a class (e.g. OmegaConf's) the loader must not import."""

    def __init__(self, content):
        self.content = content


def _write_marker(path):
    Path(path).write_text("code from the checkpoint ran")


class _Sneaky:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return _write_marker, (self.path,)


class _Shell:
    def __reduce__(self):
        return os.system, ("true",)


def test_solider_training_checkpoint_teacher_student_and_no_code_runs(tmp_path):
    teacher, student = _solider_state(seed=1), _solider_state(seed=2)
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint0100.pth"
    torch.save({"teacher": teacher, "student": {"module." + k: v for k, v in student.items()},
                "epoch": 100, "args": argparse.Namespace(arch="swin_tiny", lr=5e-4),
                "sneaky": _Sneaky(str(marker))}, path)
    model = build_backbone(PICO, checkpoint=path)
    assert torch.equal(model.patch_embed.proj.weight, teacher["backbone.patch_embed.projection.weight"])
    assert {"argparse.Namespace"} <= set(model.checkpoint_report.placeholders)
    assert any(name.endswith("_write_marker") for name in model.checkpoint_report.placeholders)
    assert not marker.exists()
    taught = build_backbone(PICO, checkpoint=path, checkpoint_branch="student")
    assert torch.equal(taught.patch_embed.proj.weight, student["backbone.patch_embed.projection.weight"])
    torch.save({"teacher": teacher, "shell": _Shell()}, tmp_path / "shell.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        build_backbone(PICO, checkpoint=tmp_path / "shell.pth")


def test_finetuning_from_a_solider_checkpoint(solider_file, tiny_world, tmp_path, capsys):
    sd, path = solider_file
    cfg = ModelConfig(backbone=PICO, pretrain_choice="self", pretrained_model_path=str(path),
                      reduce_feat_dim=True, feat_dim=16)
    model = build_reid_model(cfg, num_classes=5)
    assert torch.equal(model.backbone.controller.scale[2].weight, sd["backbone.semantic_embed_w.2.weight"])
    run = load_script("finetune/run.py")
    config = str(Path(__file__).resolve().parents[1] / "configs/finetune/synthetic_tiny.yaml")
    assert run.main(["--config", config, "--dry-run", f"dataset.train_dataset_dir={tiny_world}/bounding_box_train",
                     f"dataset.query_dataset_dir={tiny_world}/query",
                     f"dataset.test_dataset_dir={tiny_world}/bounding_box_test", f"results_dir={tmp_path}/r",
                     "model.pretrain_choice=self", f"model.pretrained_model_path={path}"]) == 0
    assert "model:" in capsys.readouterr().out


# --- SOLIDER-REID and TAO fine-tuned models ----------------------------------------------

def _unfold_from_timm(t):
    """timm (kw, kh, c) channel order -> nn.Unfold (c, kh, kw), by explicit index arithmetic."""
    c = t.shape[-1] // 4
    out = torch.empty_like(t)
    for ch in range(c):
        for kh in range(2):
            for kw in range(2):
                out[..., ch * 4 + kh * 2 + kw] = t[..., kw * 2 * c + kh * c + ch]
    return out


_TO_MMCV_BLOCK = {"attn.qkv.": "attn.w_msa.qkv.", "attn.proj.": "attn.w_msa.proj.",
                  "attn.relative_position_bias_table": "attn.w_msa.relative_position_bias_table",
                  "mlp.fc1.": "ffn.layers.0.0.", "mlp.fc2.": "ffn.layers.1.", "norm1.": "norm1.", "norm2.": "norm2."}


def _toolkit_to_mmcv(state):
    """A toolkit backbone state written in SOLIDER's mmcv layout (the inverse of the adapter)."""
    out = {}
    for key, value in state.items():
        if key.startswith("patch_embed.proj."):
            out["patch_embed.projection." + key[len("patch_embed.proj."):]] = value
        elif key.startswith("patch_embed.norm."):
            out[key] = value
        elif m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", key):
            stage, block, rest = m.groups()
            new = next(n + rest[len(o):] for o, n in _TO_MMCV_BLOCK.items() if rest.startswith(o))
            out[f"stages.{stage}.blocks.{block}.{new}"] = value
            out[f"stages.{stage}.blocks.{block}.attn.w_msa.relative_position_index"] = _mmcv_relative_index(WINDOW)
        elif m := re.match(r"layers\.(\d+)\.downsample\.(norm|reduction)\.(\w+)", key):
            out[f"stages.{int(m.group(1)) - 1}.downsample.{m.group(2)}.{m.group(3)}"] = _unfold_from_timm(value)
        elif key.startswith("norm."):
            out["norm3." + key[len("norm."):]] = value
        elif m := re.match(r"controller\.(scale|shift)\.(\d+)\.(\w+)", key):
            w = "w" if m.group(1) == "scale" else "b"
            out[f"semantic_embed_{w}.{m.group(2)}.{m.group(3)}"] = value
            if m.group(2) == "2":  # the dead fourth pair SOLIDER also saves
                out[f"semantic_embed_{w}.3.{m.group(3)}"] = value.clone()
        else:
            raise AssertionError(f"unmapped toolkit key {key}")
    return out


def _reid_source(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=PICO, reduce_feat_dim=True, feat_dim=16, pretrained_model_path=None,
                      drop_path=0.0)
    model = build_reid_model(cfg, num_classes=7)
    with torch.no_grad():  # make the BNNeck statistics matter
        model.bottleneck.running_mean.normal_()
        model.bottleneck.running_var.uniform_(0.5, 2.0)
    return model.eval(), cfg


def _foreign_reid_state(model, backbone_prefix, head_prefix):
    own = model.state_dict()
    backbone = _toolkit_to_mmcv({k[len("backbone."):]: v for k, v in own.items() if k.startswith("backbone.")})
    state = {backbone_prefix + k: v for k, v in backbone.items()}
    state[head_prefix + "fcneck.weight"] = own["reduction.weight"]
    for key, value in own.items():
        if key.startswith(("bottleneck.", "classifier.")):
            state[head_prefix + key] = value
    return state


@pytest.mark.parametrize("layout", ["solider-reid", "solider-reid-ddp", "tao"])
def test_fine_tuned_checkpoints_round_trip(layout, tmp_path):
    source, cfg = _reid_source()
    path = tmp_path / "model.pth"
    if layout == "tao":
        state = _foreign_reid_state(source, "model.base.", "model.")
        torch.save({"epoch": 120, "global_step": 9000, "pytorch-lightning_version": "2.0.9", "state_dict": state,
                    "hyper_parameters": {"experiment_spec": _FakeDictConfig({"model": {"backbone": "swin"}})}},
                   path)
    else:
        state = _foreign_reid_state(source, "base.", "")
        if layout.endswith("ddp"):
            state = {"module." + k: v for k, v in state.items()}
        torch.save(state, path)
    expected = "tao" if layout == "tao" else "solider-reid"
    assert detect_format(read_checkpoint(path)[0]) == expected
    model, _, info = load_reid_model(path, cfg)
    assert info["format"] == expected and info["num_classes"] == "7"
    x = _images(batch=2)
    with torch.no_grad():
        assert (model(x) - source(x)).abs().max() <= 1e-6
    # Starting a new fine-tune from it takes the backbone and names the head it leaves out.
    backbone = build_backbone(PICO, checkpoint=path).checkpoint_report
    assert {k for k in backbone.dropped if "fcneck" in k or "classifier" in k}
    with pytest.raises(CheckpointError, match="does not record the model config"):
        load_reid_model(path)


def test_toolkit_reid_model_as_pretrained_backbone(tmp_path):
    source, cfg = _reid_source(seed=1)
    save_reid_model(source, tmp_path / "model.safetensors", cfg, num_classes=7)
    model = build_backbone(PICO, checkpoint=tmp_path / "model.safetensors")
    report = model.checkpoint_report
    assert report.format == "toolkit-reid"
    assert set(report.dropped) == {"reduction.weight", "classifier.weight", "bottleneck.weight",
                                   "bottleneck.bias", "bottleneck.running_mean", "bottleneck.running_var",
                                   "bottleneck.num_batches_tracked"}
    assert torch.equal(model.norm.weight, source.backbone.norm.weight)
    loaded, _, _ = load_reid_model(tmp_path / "model.safetensors")
    x = _images(batch=1)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_toolkit_plain_state_dict(tmp_path):
    torch.manual_seed(0)
    model = build_backbone(PICO, drop_path_rate=0.0).eval()
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "plain.pth")
    loaded = build_backbone(PICO, checkpoint=tmp_path / "plain.pth", drop_path_rate=0.0).eval()
    assert loaded.checkpoint_report.format == "toolkit"
    save_backbone(model, tmp_path / "b.safetensors")
    assert build_backbone(PICO, checkpoint=tmp_path / "b.safetensors").checkpoint_report.format == "toolkit"
    x = _images(batch=1)
    with torch.no_grad():
        assert torch.equal(model(x).pooled, loaded(x).pooled)


# --- ImageNet: timm and Microsoft -----------------------------------------------------------

@pytest.fixture(scope="module")
def timm_pico():
    torch.manual_seed(0)
    model = SwinTransformer(img_size=224, embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, window_size=WINDOW,
                            num_classes=10).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(std=0.5)
    return model


def _to_microsoft(state):
    out = {}
    for key, value in state.items():
        key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
        out[key.replace("head.fc.", "head.")] = value
        if key.endswith("attn.relative_position_bias_table"):
            out[key.replace("bias_table", "index")] = torch.zeros(WINDOW ** 2, WINDOW ** 2, dtype=torch.long)
    out["layers.2.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)  # the shifted block's persistent mask
    return out


@pytest.mark.parametrize("layout", ["timm", "microsoft"])
def test_imagenet_checkpoints_match_timm_at_224(layout, timm_pico, tmp_path):
    state = timm_pico.state_dict()
    path = tmp_path / f"{layout}.pth"
    torch.save({"model": _to_microsoft(state)} if layout == "microsoft" else state, path)
    model = build_backbone(PICO, img_size=(224, 224), checkpoint=path, drop_path_rate=0.0).eval()
    report = model.checkpoint_report
    assert report.format == layout
    assert report.fresh and all(k.startswith("controller.") for k in report.fresh)
    assert any(k.startswith("head.") for k in report.dropped)
    x = _images(batch=2, size=(224, 224))
    with torch.no_grad():  # 56/28/14/7 maps are multiples of 7: no padding, so timm's order is SOLIDER's
        reference = timm_pico.forward_head(timm_pico.forward_features(x), pre_logits=True)
        assert (model(x, semantic_weight=-1).pooled - reference).abs().max() <= 1e-5


def test_pretrain_choice_imagenet_builds(timm_pico, tmp_path):
    torch.save(timm_pico.state_dict(), tmp_path / "swin_imagenet.pth")
    cfg = ModelConfig(backbone=PICO, pretrain_choice="imagenet",
                      pretrained_model_path=str(tmp_path / "swin_imagenet.pth"), input_height=224, input_width=224)
    model = build_reid_model(cfg, num_classes=3)
    assert torch.equal(model.backbone.layers[1].downsample.reduction.weight,
                       timm_pico.layers[1].downsample.reduction.weight)


def test_relative_position_tables_are_resized(timm_pico, tmp_path):
    state = dict(timm_pico.state_dict())
    for key in [k for k in state if k.endswith("relative_position_bias_table")]:
        state[key] = torch.ones(23 * 23, state[key].shape[1]) * 0.5  # a window-12 table
    torch.save(state, tmp_path / "w12.pth")
    model = build_backbone(PICO, checkpoint=tmp_path / "w12.pth")
    assert len(model.checkpoint_report.resized) == sum(DEPTHS)
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (169, 1) and torch.allclose(table, torch.full_like(table, 0.5))
    t = torch.randn(169, 3)
    assert torch.allclose(resize_relative_position_table(t, 169), t, atol=1e-6)
    grown = resize_relative_position_table(t, 23 * 23)
    assert grown.shape == (529, 3) and math.isfinite(grown.abs().max().item())


def test_unknown_layouts_are_named(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="no Swin layout recognised"):
        build_backbone(PICO, checkpoint=tmp_path / "resnet.pth")
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown file type"):
        build_backbone(PICO, checkpoint=tmp_path / "x.onnx")

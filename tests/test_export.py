"""finetune/export.py: ONNX interface, dynamic batch, onnxruntime parity, fp16, overwrite refusal, DeepStream."""
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from PIL import Image

from soliderkit.backbone import build_backbone
from soliderkit.finetune import export
from soliderkit.finetune.config import ModelConfig
from soliderkit.reid.transforms import test_transform as eval_transform
from soliderkit.finetune.model import build_reid_model, save_reid_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/finetune/synthetic_tiny.yaml")
SIZE = (256, 128)
MEAN, STD = [0.485, 0.456, 0.406], [0.226, 0.226, 0.226]


def _model(size=SIZE, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="swin_pico_patch4_window7", input_height=size[0], input_width=size[1],
                      reduce_feat_dim=True, feat_dim=32, pretrained_model_path=None, drop_path=0.0)
    model = build_reid_model(cfg, num_classes=6)
    with torch.no_grad():
        model.bottleneck.running_mean.normal_()
        model.bottleneck.running_var.uniform_(0.5, 2.0)
        for stage in model.backbone.layers:
            for block in stage.blocks:
                block.attn.relative_position_bias_table.normal_(std=0.5)
    return model.eval(), cfg


def _args(world, out, checkpoint, *extra, size=SIZE):
    return ["--config", CONFIG, "--checkpoint", str(checkpoint), "--onnx-file", str(out),
            f"dataset.query_dataset_dir={world}/query", f"model.input_height={size[0]}",
            f"model.input_width={size[1]}", f"dataset.pixel_mean={MEAN}", f"dataset.pixel_std={STD}", *extra]


def _real_images(world, count):
    transform = eval_transform(SIZE, MEAN, STD)
    files = sorted((world / "query").glob("*.jpg"))[:count]
    out = []
    for f in files:
        with Image.open(f) as image:
            out.append(transform(image.convert("RGB")))
    return torch.stack(out)


@pytest.fixture(scope="module")
def exported(tiny_world, tmp_path_factory):
    model, cfg = _model()
    folder = tmp_path_factory.mktemp("export")
    checkpoint = folder / "model.safetensors"
    save_reid_model(model, checkpoint, cfg, num_classes=6)
    onnx_file = folder / "deploy/reid.onnx"
    assert export.main(_args(tiny_world, onnx_file, checkpoint)) == 0
    return model, checkpoint, onnx_file


@pytest.mark.slow
def test_onnx_interface_and_checker(exported):
    model, _, onnx_file = exported
    interface = export.check_onnx(onnx_file)  # runs onnx.checker
    assert interface["inputs"] == {"input": ["batch", 3, 256, 128]}
    assert interface["outputs"] == {"fc_pred": ["batch", 32]}
    assert interface["opset"] >= 17
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["embedding_dim"] == "32" and props["color_order"] == "RGB"


@pytest.mark.slow
def test_onnxruntime_matches_pytorch_on_random_and_real_images(exported, tiny_world):
    model, _, onnx_file = exported
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    real = _real_images(tiny_world, 8)
    generator = torch.Generator().manual_seed(5)
    batches = [torch.randn(1, 3, *SIZE, generator=generator), torch.randn(8, 3, *SIZE, generator=generator),
               real[:1], real, real[:3]]  # 3: any batch size, not only the ones checked at export
    for images in batches:
        with torch.no_grad():
            expected = model(images).numpy()
        got = session.run(["fc_pred"], {"input": images.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.slow
def test_refuses_to_overwrite_without_force(exported, tiny_world):
    _, checkpoint, onnx_file = exported
    before = onnx_file.read_bytes()
    with pytest.raises(SystemExit, match=r"reid.onnx.*already exist\(s\); pass --overwrite"):
        export.main(_args(tiny_world, onnx_file, checkpoint))
    assert onnx_file.read_bytes() == before
    snippet = export.snippet_path(onnx_file)
    onnx_file.rename(onnx_file.with_suffix(".moved"))
    try:  # the DeepStream snippet alone also blocks
        with pytest.raises(SystemExit, match=r"reid_nvdcf_reid.yml already exist\(s\); pass --overwrite"):
            export.main(_args(tiny_world, onnx_file, checkpoint))
    finally:
        onnx_file.with_suffix(".moved").rename(onnx_file)
    assert snippet.is_file()


@pytest.mark.slow
def test_deepstream_snippet(exported):
    _, _, onnx_file = exported
    text = export.snippet_path(onnx_file).read_text()
    reid = yaml.safe_load(text)["ReID"]
    assert reid["reidFeatureSize"] == 32 and reid["inferDims"] == [3, 256, 128]
    assert reid["colorFormat"] == 0 and reid["inputOrder"] == 0 and reid["onnxFile"] == "reid.onnx"
    assert reid["offsets"] == pytest.approx([255 * m for m in MEAN], abs=1e-4)
    assert reid["netScaleFactor"] == pytest.approx(1 / (255 * 0.226), rel=1e-6)
    assert "WARNING" not in text
    uneven = export.deepstream_preprocessing([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert uneven["net_scale_factor"] == pytest.approx(1 / (255 * np.mean([0.229, 0.224, 0.225])))
    assert uneven["max_relative_scale_error"] == pytest.approx(0.229 / np.mean([0.229, 0.224, 0.225]) - 1)
    assert "differs per channel" in uneven["warning"]


@pytest.mark.slow
def test_fp16_export_and_force(tiny_world, tmp_path, exported, capsys):
    _, checkpoint, fp32_file = exported
    out = tmp_path / "reid16.onnx"
    out.write_bytes(b"old")
    assert export.main(_args(tiny_world, out, checkpoint, "--fp16", "--force")) == 0
    printed = capsys.readouterr().out
    assert "real batch 8" in printed and "onnx.checker passed" in printed
    assert os.path.getsize(out) < 0.7 * os.path.getsize(fp32_file)  # half-size weights
    assert export.check_onnx(out)["inputs"] == {"input": ["batch", 3, 256, 128]}
    assert "networkMode: 1" in export.snippet_path(out).read_text()
    assert [p.read_bytes() for p in tmp_path.glob("reid16.onnx.replaced-*")] == [b"old"]  # moved aside, not lost


def test_per_sample_lambda_branch_traces_cleanly(tmp_path):
    """The controller's per-sample path (lambda < 0 switches a sample off) exports without data-dependent branches."""
    torch.manual_seed(0)
    backbone = build_backbone("swin_pico_patch4_window7", img_size=(64, 32), drop_path_rate=0.0).eval()

    class WithLambda(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone

        def forward(self, images, lam):
            return self.backbone(images, semantic_weight=lam).pooled

    path = tmp_path / "lambda.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithLambda().eval(), (torch.randn(2, 3, 64, 32), torch.tensor([0.2, 0.2])), str(path),
                          input_names=["input", "lam"], output_names=["pooled"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "lam": {0: "batch"}, "pooled": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(4, 3, 64, 32)
    for lam in ([0.0, 1.0, 0.3, -1.0], [-1.0, -1.0, -1.0, -1.0], [0.2, 0.2, 0.2, 0.2]):
        lam = torch.tensor(lam)
        with torch.no_grad():
            expected = backbone(images, semantic_weight=lam).pooled.numpy()
        got = session.run(["pooled"], {"input": images.numpy(), "lam": lam.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4

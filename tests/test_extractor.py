"""FeatureExtractor: any supported checkpoint, paths / PIL / arrays, the checkpoint's own preprocessing;
the tools that take --checkpoint alone; the README's Python example, run as written."""
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from script_loader import load_script
from test_adapters import _foreign_reid_state

from soliderkit.backbone import CheckpointError
from soliderkit.finetune import FeatureExtractor, export, inference
from soliderkit.finetune.config import DatasetConfig, ModelConfig
from soliderkit.finetune.extractor import load_for_embedding
from soliderkit.finetune.model import build_reid_model, preprocessing_for, save_reid_model
from soliderkit.reid.embedding import Preprocessing, load_image
from soliderkit.reid.transforms import test_transform as eval_transform

ROOT = Path(__file__).resolve().parents[1]
PICO = "swin_pico_patch4_window7"
SIZE = (64, 32)
# Deliberately not the TAO defaults, so a test fails if anything re-types them from a config.
PRE = Preprocessing(input_size=SIZE, pixel_mean=(0.4, 0.5, 0.6), pixel_std=(0.3, 0.2, 0.25),
                    interpolation="bicubic", flip=True, semantic_weight=0.2)


def _model(seed=0, flip=True):
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=PICO, input_height=SIZE[0], input_width=SIZE[1], reduce_feat_dim=True, feat_dim=24,
                      pretrained_model_path=None, drop_path=0.0, semantic_weight=0.2, with_flip_feature=flip)
    model = build_reid_model(cfg, num_classes=5)
    with torch.no_grad():  # make the BNNeck statistics matter
        model.bottleneck.running_mean.normal_()
        model.bottleneck.running_var.uniform_(0.5, 2.0)
    return model.eval(), cfg


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, cfg = _model()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_reid_model(model, path, cfg, num_classes=5, preprocessing=PRE)
    return path, model


def _expected(model, items, pre=PRE):
    transform = eval_transform(pre.input_size, pre.pixel_mean, pre.pixel_std, interpolation=pre.interpolation)
    images = torch.stack([transform(load_image(i)) for i in items])
    with torch.no_grad():
        out = model(images)
        if pre.flip:
            out = 0.5 * (out + model(torch.flip(images, dims=[3])))
    return out


def _paths(world, count):
    return sorted(str(p) for p in (world / "query").glob("*.jpg"))[:count]


def test_checkpoint_records_its_preprocessing(checkpoint):
    path, _ = checkpoint
    with safe_open(str(path), framework="pt") as f:
        record = json.loads(f.metadata()["preprocessing"])
    assert record == {"input_size": [64, 32], "pixel_mean": [0.4, 0.5, 0.6], "pixel_std": [0.3, 0.2, 0.25],
                      "interpolation": "bicubic", "flip": True, "semantic_weight": 0.2}
    # what finetune/run.py stores: size / flip / λ from the model section, the rest from the dataset section
    _, cfg = _model()
    assert preprocessing_for(cfg, DatasetConfig(pixel_mean=[0.4, 0.5, 0.6], pixel_std=[0.3, 0.2, 0.25],
                                                test_interpolation="bicubic")) == PRE


def test_paths_pil_and_arrays_batched_in_order(checkpoint, tiny_world):
    path, model = checkpoint
    extractor = FeatureExtractor(path, device="cpu", batch_size=3)
    assert extractor.preprocessing == PRE and extractor.embedding_dim == 24 and extractor.notes == []
    paths = _paths(tiny_world, 5)
    pil = Image.open(paths[1]).convert("RGB")
    array = np.asarray(pil)
    inputs = [paths[0], pil, array, array.astype(np.float32) / 255.0, torch.tensor(array).permute(2, 0, 1) / 255.0,
              Path(paths[2]), paths[3], paths[4]]
    got = extractor(inputs)
    assert got.dtype == torch.float32 and got.shape == (8, 24) and got.device.type == "cpu"
    expected = _expected(model, [paths[0], paths[1], paths[2], paths[3], paths[4]])
    torch.testing.assert_close(got[[0, 1, 5, 6, 7]], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[2], got[1], atol=1e-6, rtol=0)  # the array is the PIL image
    torch.testing.assert_close(got[3], got[1], atol=1e-6, rtol=0)  # float 0-1 array
    torch.testing.assert_close(got[4], got[1], atol=1e-6, rtol=0)  # 3 x H x W tensor
    # one image, an N x H x W x 3 array, an empty list; normalised rows; torch.device
    assert extractor(paths[0]).shape == (1, 24)
    assert extractor(np.stack([array, array])).shape == (2, 24)
    assert extractor([]).shape == (0, 24)
    unit = FeatureExtractor(path, device=torch.device("cpu"), normalize=True)(paths[:2])
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2))
    assert "input 64x32" in repr(extractor) and "flip" in repr(extractor)


def test_flip_override_and_bad_inputs(checkpoint, tiny_world):
    path, model = checkpoint
    paths = _paths(tiny_world, 2)
    plain = FeatureExtractor(path, device="cpu", flip=False)
    assert plain.preprocessing.flip is False
    torch.testing.assert_close(plain(paths), _expected(model, paths, PRE.replace(flip=False)), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="cannot embed a dict"):
        plain([{}])
    with pytest.raises(ValueError, match="H x W x 3"):
        plain([np.zeros((4, 5, 6), np.uint8)])
    with pytest.raises(OSError, match="cannot read image"):
        plain([str(tiny_world / "nope.jpg")])


def test_old_toolkit_checkpoint_takes_the_config_with_a_note(tmp_path, tiny_world):
    model, cfg = _model(flip=False)
    path = tmp_path / "old.safetensors"
    save_reid_model(model, path, cfg, num_classes=5)  # no preprocessing record (as before this change)
    loaded = load_for_embedding(path)
    assert loaded.preprocessing.pixel_mean == tuple(DatasetConfig().pixel_mean)
    assert "written before checkpoints recorded their preprocessing" in loaded.notes[0]
    assert "the TAO defaults" in loaded.notes[0]
    config = tmp_path / "spec.yaml"
    config.write_text("dataset:\n  pixel_mean: [0.4, 0.5, 0.6]\n  pixel_std: [0.3, 0.2, 0.25]\n"
                      "  test_interpolation: bicubic\n")
    extractor = FeatureExtractor(path, config, device="cpu")
    assert extractor.preprocessing == PRE.replace(flip=False)
    assert "the config's dataset section" in extractor.notes[0]
    paths = _paths(tiny_world, 2)
    torch.testing.assert_close(extractor(paths), _expected(model, paths, PRE.replace(flip=False)), atol=1e-5, rtol=0)


def test_config_that_disagrees_with_the_checkpoint_is_named_not_used(checkpoint, tmp_path):
    path, _ = checkpoint
    config = tmp_path / "spec.yaml"
    config.write_text("model:\n  input_height: 256\n  input_width: 128\n  neck_feat: before\n"
                      "dataset:\n  pixel_mean: [0.5, 0.5, 0.5]\n")
    loaded = load_for_embedding(path, config)
    assert loaded.preprocessing == PRE
    assert loaded.model.neck_feat == "after"  # the checkpoint's model section, named in a note
    assert any("model.neck_feat after is used, not the config's before" in n for n in loaded.notes)
    assert any("input size [64, 32] is used, not the config's model.input_height/input_width [256, 128]" in n
               for n in loaded.notes)
    assert any("pixel mean [0.4, 0.5, 0.6] is used, not the config's dataset.pixel_mean [0.5, 0.5, 0.5]" in n
               for n in loaded.notes)


def test_neck_feat_is_a_test_time_choice(checkpoint, tmp_path, tiny_world):
    """SOLIDER-REID tests before the BNNeck, TAO after it: the same weights give either embedding."""
    import copy

    path, model = checkpoint
    assert model.neck_feat == "after"
    paths = _paths(tiny_world, 3)
    extractor = FeatureExtractor(path, device="cpu", neck_feat="before", flip=False)
    before = copy.deepcopy(model).eval()
    before.neck_feat = "before"
    torch.testing.assert_close(extractor(paths), _expected(before, paths, PRE.replace(flip=False)), atol=1e-5, rtol=0)
    assert not torch.allclose(extractor(paths), _expected(model, paths, PRE.replace(flip=False)), atol=1e-3)
    assert extractor.model_config.neck_feat == "before"
    assert any("taken before the BNNeck as asked" in n for n in extractor.notes)
    config = tmp_path / "spec.yaml"  # a config that says before, and the choice before: no disagreement
    config.write_text("model:\n  neck_feat: before\n")
    assert not any("neck_feat" in n and "config" in n for n in load_for_embedding(path, config, neck_feat="before").notes)
    with pytest.raises(ValueError, match="neck_feat must be one of"):
        load_for_embedding(path, neck_feat="middle")


def test_solider_reid_checkpoint_needs_a_model_description(tmp_path, tiny_world):
    model, cfg = _model(seed=3, flip=False)
    path = tmp_path / "solider_reid.pth"
    torch.save(_foreign_reid_state(model, "base.", ""), path)
    with pytest.raises(CheckpointError, match="does not record the model config"):
        FeatureExtractor(path, device="cpu")
    extractor = FeatureExtractor(path, cfg, device="cpu")  # a ModelConfig; mean / std: the TAO defaults
    assert "a solider-reid checkpoint records no preprocessing" in extractor.notes[0]
    paths = _paths(tiny_world, 3)
    pre = preprocessing_for(cfg)
    torch.testing.assert_close(extractor(paths), _expected(model, paths, pre), atol=1e-5, rtol=0)


def test_inference_takes_the_checkpoint_alone(checkpoint, tiny_world, tmp_path, capsys):
    path, model = checkpoint
    npy = tmp_path / "emb.npy"
    assert inference.main(["--checkpoint", str(path.parent), "--image-dir", str(tiny_world / "query"),
                           "--output-file", str(npy), "--no-progress"]) == 0
    assert "input 64x32, mean [0.4, 0.5, 0.6]" in capsys.readouterr().out
    paths = json.loads((tmp_path / "emb.index.json").read_text())["img_path"]
    np.testing.assert_allclose(np.load(npy)[:3], _expected(model, paths[:3]).numpy(), atol=1e-5)


@pytest.mark.slow
def test_export_takes_the_checkpoint_alone(checkpoint, tiny_world, tmp_path):
    path, _ = checkpoint
    onnx_file = tmp_path / "reid.onnx"
    assert export.main(["--checkpoint", str(path), "--onnx-file", str(onnx_file), "--verify-images",
                        str(tiny_world / "query")]) == 0
    snippet = export.snippet_path(onnx_file).read_text()
    assert "inferDims: [3, 64, 32]" in snippet and "offsets: [102.0000, 127.5000, 153.0000]" in snippet


@pytest.mark.slow
def test_a_trained_model_embeds_without_its_config(tiny_world, tmp_path):
    run = load_script("finetune/run.py")
    w = tiny_world
    assert run.main(["--config", str(ROOT / "configs/finetune/synthetic_tiny.yaml"),
                     f"dataset.train_dataset_dir={w}/bounding_box_train", f"dataset.query_dataset_dir={w}/query",
                     f"dataset.test_dataset_dir={w}/bounding_box_test", f"results_dir={tmp_path}",
                     "model.input_height=64", "model.input_width=32", "dataset.batch_size=8",
                     "dataset.num_instances=2", "train.num_epochs=1", "dataset.pixel_mean=[0.4,0.5,0.6]"]) == 0
    extractor = FeatureExtractor(tmp_path / "train", device="cpu")
    assert extractor.notes == []
    assert extractor.preprocessing.input_size == (64, 32) and extractor.preprocessing.pixel_mean == (0.4, 0.5, 0.6)
    assert extractor(_paths(w, 2)).shape == (2, extractor.embedding_dim)


def _readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_readme_python_example_runs(checkpoint, tiny_world, tmp_path, monkeypatch, capsys):
    """The README's example, unchanged, in a folder laid out as after `make demo`."""
    path, model = checkpoint
    (tmp_path / "results/demo/finetune/train").mkdir(parents=True)
    shutil.copy(path, tmp_path / "results/demo/finetune/train/model.safetensors")
    (tmp_path / "data").mkdir()
    os.symlink(tiny_world, tmp_path / "data/synthetic")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_block("Embeddings from Python"), "README.md", "exec"), namespace)  # noqa: S102
    embeddings = namespace["embeddings"]
    assert embeddings.shape == (4, 24) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings, _expected(model, namespace["paths"]), atol=1e-5, rtol=0)
    assert "input 64x32" in capsys.readouterr().out

"""finetune/inference.py: every image gets exactly one embedding, in JSON, .npy + index and Parquet."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from soliderkit.finetune import inference
from soliderkit.finetune.config import ModelConfig
from soliderkit.reid.transforms import test_transform as eval_transform
from soliderkit.finetune.model import build_reid_model, save_reid_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/finetune/synthetic_tiny.yaml")
SIZE = (64, 32)
MEAN = STD = [0.5, 0.5, 0.5]  # synthetic_tiny.yaml


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="swin_pico_patch4_window7", input_height=SIZE[0], input_width=SIZE[1],
                      reduce_feat_dim=True, feat_dim=24, pretrained_model_path=None)
    model = build_reid_model(cfg, num_classes=5).eval()
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_reid_model(model, path, cfg, num_classes=5)
    return path, model


def _args(world, results, *extra):
    return ["--config", CONFIG, "--no-progress", f"dataset.query_dataset_dir={world}/query",
            f"dataset.test_dataset_dir={world}/bounding_box_test", f"results_dir={results}",
            f"model.input_height={SIZE[0]}", f"model.input_width={SIZE[1]}", *extra]


def _files(*folders):
    return sorted(str(Path(f) / n) for f in folders for n in os.listdir(f) if n.endswith((".jpg", ".png")))


def _embed(model, paths):
    transform = eval_transform(SIZE, MEAN, STD)
    images = []
    for p in paths:
        with Image.open(p) as image:
            images.append(transform(image.convert("RGB")))
    with torch.no_grad():
        return model(torch.stack(images)).numpy()


def test_json_covers_query_and_gallery(tiny_world, tmp_path, checkpoint):
    path, model = checkpoint
    # A batch size that does not divide the image count: TAO keeps only the last batch.
    assert inference.main(_args(tiny_world, tmp_path, "--checkpoint", str(path), "--batch-size", "7")) == 0
    out = tmp_path / "inference/embeddings.json"
    records = json.loads(out.read_text())
    expected = sorted(_files(tiny_world / "query")) + sorted(_files(tiny_world / "bounding_box_test"))
    assert len(expected) % 7 != 0
    assert [r["img_path"] for r in records] == expected  # query first, then gallery, each sorted
    assert all(len(r["embedding"]) == 24 for r in records)
    picked = [0, len(records) // 2, len(records) - 1]
    direct = _embed(model, [records[i]["img_path"] for i in picked])
    np.testing.assert_allclose(np.array([records[i]["embedding"] for i in picked]), direct, atol=1e-5)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_any_folder_to_npy_and_parquet(tiny_world, tmp_path, checkpoint):
    path, _ = checkpoint
    folder = tmp_path / "crops"
    shutil.copytree(tiny_world / "query", folder / "cam_a")
    shutil.copy(next((tiny_world / "bounding_box_test").glob("*.jpg")), folder / "no market name.jpg")
    (folder / "notes.txt").write_text("not an image")
    expected = _files(folder, folder / "cam_a")
    npy = tmp_path / "out/emb.npy"
    assert inference.main(_args(tiny_world, tmp_path, "--checkpoint", str(path), "--image-dir", str(folder),
                                "--output-file", str(npy), "--batch-size", "5")) == 0
    array = np.load(npy)
    index = json.loads((tmp_path / "out/emb.index.json").read_text())
    assert array.shape == (len(expected), 24) and array.dtype == np.float32
    assert sorted(index["img_path"]) == expected and index["rows"] == len(expected)

    parquet = tmp_path / "out/emb.parquet"
    assert inference.main(_args(tiny_world, tmp_path, "--checkpoint", str(path), "--image-dir", str(folder),
                                "--output-file", str(parquet), "--batch-size", "4")) == 0
    import pyarrow.parquet as pq
    table = pq.read_table(parquet)
    assert table.num_rows == len(expected)
    assert table.column("img_path").to_pylist() == index["img_path"]
    # batches of 4 vs 5: the float32 forward rounds differently with the batch shape (1.5e-6 seen on AVX2)
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist(), dtype=np.float32), array, atol=1e-5)


def test_format_and_config_errors(tiny_world, tmp_path, checkpoint):
    path, _ = checkpoint
    with pytest.raises(SystemExit, match="does not match the output file"):
        inference.main(_args(tiny_world, tmp_path, "--checkpoint", str(path), "--output-file",
                             str(tmp_path / "e.json"), "--format", "npy"))
    with pytest.raises(SystemExit, match="inference.checkpoint is not set"):
        inference.main(_args(tiny_world, tmp_path))
    with pytest.raises(SystemExit, match="image folder not found"):
        inference.main(_args(tiny_world, tmp_path, "--checkpoint", str(path), "--image-dir", str(tmp_path / "nope")))


def test_write_embeddings_refuses_a_short_count(tmp_path):
    chunks = [(["a.jpg", "b.jpg"], np.zeros((2, 3), np.float32))]
    with pytest.raises(RuntimeError, match="wrote 2 embeddings for 3 images"):
        inference.write_embeddings(tmp_path / "x.json", "json", chunks, total=3)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_images_existing_outputs_and_unwritable_folders(tiny_world, tmp_path, checkpoint):
    path, _ = checkpoint
    images = tmp_path / "crops"
    shutil.copytree(tiny_world / "query", images)
    bad = sorted(images.glob("*.jpg"))[2]
    bad.write_bytes(b"\x89PNG broken")
    out = tmp_path / "out/emb.npy"
    base = ["--checkpoint", str(path), "--no-progress", "--image-dir", str(images), "--output-file", str(out)]
    with pytest.raises(SystemExit, match=r"(?s)1 unreadable image\(s\).*" + bad.name + ".*pass --skip-unreadable"):
        inference.main(base)
    assert not out.exists()
    assert inference.main([*base, "--skip-unreadable"]) == 0
    names = json.loads(inference.index_path(out).read_text())["img_path"]
    assert len(np.load(out)) == len(names) == len(list(images.glob("*.jpg"))) - 1 and str(bad) not in names

    with pytest.raises(SystemExit, match=r"emb.npy.*already exist\(s\); pass --overwrite"):
        inference.main([*base, "--skip-unreadable"])
    assert inference.main([*base, "--skip-unreadable", "--overwrite"]) == 0
    assert len(list(out.parent.glob("emb.npy.replaced-*"))) == 1

    if os.geteuid() != 0:  # root writes anywhere; the check below needs an ordinary user
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(SystemExit, match="cannot write to"):
            inference.main(["--checkpoint", str(path), "--image-dir", str(images), "--skip-unreadable",
                            "--output-file", str(locked / "e.json")])
    with pytest.raises(SystemExit, match="cannot write to .*not_a_folder"):  # a file where the folder should be
        (tmp_path / "not_a_folder").write_text("x")
        inference.main(["--checkpoint", str(path), "--image-dir", str(images), "--skip-unreadable",
                        "--output-file", str(tmp_path / "not_a_folder/e.json")])

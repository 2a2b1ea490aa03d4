"""Bad input and faults give one clear message, a non-zero exit and nothing written (issue #17's sweep)."""
import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate import Accelerator

from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
finetune_run = load_script("finetune/run.py")
pretrain_run = load_script("pretrain/run.py")
FT_CONFIG = str(ROOT / "configs/finetune/synthetic_tiny.yaml")
PT_CONFIG = str(ROOT / "configs/pretrain/synthetic_tiny.yaml")


def _ft(train, query, gallery, results, *extra):
    return ["--config", FT_CONFIG, f"dataset.train_dataset_dir={train}", f"dataset.query_dataset_dir={query}",
            f"dataset.test_dataset_dir={gallery}", f"results_dir={results}", "model.input_height=64",
            "model.input_width=32", "dataset.batch_size=8", "dataset.num_instances=2", "dataset.num_workers=0",
            "train.num_epochs=1", *extra]


def _copy_world(world, dest):
    import shutil
    shutil.copytree(world, dest)
    return dest


@pytest.fixture
def broken(tmp_path):
    """Folders a user gets wrong: empty, badly named, a corrupt image, a text file as checkpoint."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "badly_named").mkdir()
    (tmp_path / "badly_named/person_a.jpg").write_bytes(b"not looked at")
    (tmp_path / "notes.pth").write_text("hello\n")
    return tmp_path


FINETUNE_CASES = {
    "missing train folder": (lambda w, b: _ft(b / "missing", w / "query", w / "bounding_box_test", b / "r"),
                             r"^dataset error: image folder not found: .*missing"),
    "empty train folder": (lambda w, b: _ft(b / "empty", w / "query", w / "bounding_box_test", b / "r"),
                           r"^dataset error: no images .* in folder: .*empty"),
    "badly named images": (lambda w, b: _ft(b / "badly_named", w / "query", w / "bounding_box_test", b / "r"),
                           r"^dataset error: .*person_a.jpg"),
    "batch needs more identities": (lambda w, b: _ft(w / "bounding_box_train", w / "query", w / "bounding_box_test",
                                                     b / "r", "dataset.batch_size=128"),
                                    r"^config error: dataset.batch_size=128 with dataset.num_instances=2 on 1 "
                                    r"process\(es\): 12 identities cannot fill a step of 64"),
    "text file as pretrained model": (lambda w, b: _ft(w / "bounding_box_train", w / "query", w / "bounding_box_test",
                                                       b / "r", f"model.pretrained_model_path={b / 'notes.pth'}",
                                                       "model.pretrain_choice=self"),
                                      r"^model.pretrained_model_path: checkpoint .*notes.pth is not a readable "
                                      r"PyTorch file"),
    "unknown key": (lambda w, b: _ft(w / "bounding_box_train", w / "query", w / "bounding_box_test", b / "r",
                                     "train.num_epoch=3"),
                    r"train.num_epoch"),
}


@pytest.mark.parametrize("case", sorted(FINETUNE_CASES))
def test_finetune_bad_input_is_one_clear_error_and_writes_nothing(case, tiny_world, broken):
    argv, pattern = FINETUNE_CASES[case]
    with pytest.raises(SystemExit) as exc:
        finetune_run.main(argv(tiny_world, broken))
    message = str(exc.value.code)
    assert exc.value.code not in (0, None)
    assert __import__("re").search(pattern, message), message
    assert not (broken / "r").exists()


@pytest.mark.slow
def test_unreadable_images_are_listed_or_left_out(tiny_world, tmp_path, capsys):
    world = _copy_world(tiny_world, tmp_path / "world")
    corrupt = sorted((world / "bounding_box_train").glob("*.jpg"))[3]
    corrupt.write_bytes(b"\xff\xd8 truncated")
    gallery_bad = sorted((world / "bounding_box_test").glob("*.jpg"))[5]
    gallery_bad.write_bytes(b"")
    args = _ft(world / "bounding_box_train", world / "query", world / "bounding_box_test", tmp_path / "r")
    with pytest.raises(SystemExit, match=r"(?s)2 unreadable image\(s\).*" + corrupt.name + ".*" + gallery_bad.name
                       + ".*dataset.skip_unreadable_images=true"):
        finetune_run.main(args)
    assert not (tmp_path / "r").exists()
    assert finetune_run.main([*args, "dataset.skip_unreadable_images=true"]) == 0
    assert "left out 2 unreadable image(s)" in capsys.readouterr().err
    assert json.loads((tmp_path / "r/train/metrics.json").read_text())["mAP"] >= 0


def test_each_process_checks_its_share_of_the_images_and_all_drop_the_same(tmp_path):
    """Two processes of a run: each reads every second file's header, the pooled result (what
    accelerate's gather_object returns on both) is the same set of files to drop on each."""
    from PIL import Image

    from soliderkit.reid import image_check

    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (8, 16)).save(path)
        paths.append(str(path))
    Path(paths[1]).write_bytes(b"")  # rank 1's share: 1, 3, 5
    Path(paths[4]).write_bytes(b"not an image")  # rank 0's share: 0, 2, 4
    shares = {rank: image_check.find_unreadable(paths[rank::2], progress=False) for rank in (0, 1)}
    assert [p for p, _ in shares[0]] == [paths[4]] and [p for p, _ in shares[1]] == [paths[1]]
    checked = []
    original = image_check.find_unreadable
    try:
        image_check.find_unreadable = lambda share, progress: checked.append(list(share)) or original(share, progress=False)
        dropped = [image_check.readable_only(paths, skip=True, what="w", fix="f", progress=False, rank=rank,
                                             world_size=2, gather=lambda _: shares[0] + shares[1])
                   for rank in (0, 1)]
        with pytest.raises(SystemExit, match=r"(?s)2 unreadable image\(s\) in w:.*1\.jpg.*4\.jpg"):
            image_check.readable_only(paths, skip=False, what="w", fix="f", rank=1, world_size=2,
                                      gather=lambda _: shares[0] + shares[1])
    finally:
        image_check.find_unreadable = original
    assert checked[:2] == [paths[0::2], paths[1::2]]
    assert dropped == [{paths[1], paths[4]}] * 2


def test_pretrain_folder_with_a_corrupt_image(tiny_world, tmp_path):
    world = _copy_world(tiny_world / "unlabeled", tmp_path / "unlabeled")
    bad = sorted(world.rglob("*.jpg"))[0]
    bad.write_text("not an image")
    with pytest.raises(SystemExit, match=r"(?s)1 unreadable image\(s\) in data.path=.*" + bad.name):
        pretrain_run.main(["--config", PT_CONFIG, f"results_dir={tmp_path / 'r'}", "data.kind=folder",
                           f"data.path={world}", "knn_eval.dataset_dir=null"])
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_failed_checkpoint_write_keeps_the_previous_one(tiny_world, tmp_path, monkeypatch):
    results = tmp_path / "r"
    original = Accelerator.save_state
    calls = {"n": 0}

    def disk_full_on_second(self, output_dir=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", disk_full_on_second)
    args = _ft(tiny_world / "bounding_box_train", tiny_world / "query", tiny_world / "bounding_box_test", results,
               "train.num_epochs=2", "train.checkpoint_interval=1")
    with pytest.raises(SystemExit, match=r"could not write checkpoint .*No space left on device.*newest complete "
                                         r"checkpoint is .*step_"):
        finetune_run.main(args)
    folders = sorted(p.name for p in (results / "train/checkpoints").iterdir())
    assert len(folders) == 1 and folders[0].startswith("step_")  # the first survives, no partial folder left


@pytest.mark.slow
def test_a_script_error_is_one_line_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "finetune/run.py"), "--config", FT_CONFIG,
                           f"dataset.train_dataset_dir={tmp_path / 'missing'}", f"results_dir={tmp_path / 'r'}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("dataset error: image folder not found")

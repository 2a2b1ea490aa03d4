"""finetune/evaluate.py with several targets: one folder per target named from the data, one summary
table, nothing overwritten by a later call; the TAO evaluate section still works."""
import json
import shutil
import typing

import pytest

from soliderkit.finetune import evaluate
from soliderkit.finetune.config import DatasetConfig

HIST = ["--model", "color-histogram", "--num-samples", "0"]


@pytest.fixture(scope="module")
def checkpoint(tiny_reid_checkpoint):
    return tiny_reid_checkpoint


@pytest.fixture(scope="module")
def second(tiny_world, tmp_path_factory):
    """A second, smaller dataset: half of the world's identities, in folders named otherwise."""
    root = tmp_path_factory.mktemp("second")
    keep = sorted({p.name.split("_")[0] for p in (tiny_world / "query").glob("*.jpg")})[::2]
    for src, dst in (("query", "probe"), ("bounding_box_test", "pool")):
        (root / dst).mkdir()
        for p in (tiny_world / src).glob("*.jpg"):
            if p.name.split("_")[0] in keep or p.name.startswith(("0000_", "-1_")):
                shutil.copy(p, root / dst / p.name)
    return root


def _metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow
def test_several_targets_in_one_call(checkpoint, tiny_world, second, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--target", str(tiny_world),
                          "--target", f"small={second}/probe,{second}/pool", "--num-samples", "3",
                          f"evaluate.results_dir={out}"]) == 0
    printed = capsys.readouterr().out
    world, small = out / tiny_world.name, out / "small"
    for folder in (world, small):
        assert {p.name for p in folder.iterdir()} == {"metrics.json", "config.yaml", "cmc_curve.png",
                                                      "sampled_matches.png"}
    a, b = _metrics(world), _metrics(small)
    assert a["target"] == tiny_world.name and a["data"] == {"root": str(tiny_world), "kind": "market1501"}
    assert b["data"] == {"query": f"{second}/probe", "gallery": f"{second}/pool"}
    assert a["num_query"] > b["num_query"] and a["preprocessing"]["input_size"] == [64, 32]
    summary = json.loads((out / "summary.json").read_text())
    assert [t["target"] for t in summary["targets"]] == sorted([tiny_world.name, "small"])
    table = (out / "summary.md").read_text()
    assert "| target " in table and f"| {tiny_world.name} " in table and "| small " in table
    assert "summary of this call (2 targets; percent):" in printed
    # The same target alone gives the same numbers (the model is shared, not the results).
    alone = tmp_path / "alone"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--query", f"{second}/probe", "--gallery", f"{second}/pool",
                          "--num-samples", "0", f"evaluate.results_dir={alone}"]) == 0
    assert _metrics(alone / second.name)["mAP"] == pytest.approx(b["mAP"], abs=1e-9)  # named from the data


def test_a_later_call_keeps_earlier_targets(tiny_world, second, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate.main([*HIST, "--target", f"first={tiny_world}", f"evaluate.results_dir={out}"]) == 0
    before = (out / "first/metrics.json").read_bytes()
    assert evaluate.main([*HIST, "--target", f"second={second}/probe,{second}/pool",
                          f"evaluate.results_dir={out}"]) == 0
    assert (out / "first/metrics.json").read_bytes() == before
    assert "2 target(s), 1 from earlier calls" in capsys.readouterr().out
    assert [t["target"] for t in json.loads((out / "summary.json").read_text())["targets"]] == ["first", "second"]


def test_tao_evaluate_section_and_config_targets(tiny_world, second, tmp_path):
    out = tmp_path / "eval"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"evaluate:\n  query_dataset: {tiny_world}/query\n  test_dataset: {tiny_world}/bounding_box_test\n"
                    f"  results_dir: {out}\n  output_cmc_curve_plot: {tmp_path}/plots/cmc.png\n"
                    f"  output_sampled_matches_plot: {tmp_path}/plots/grid.png\n")
    assert evaluate.main(["--model", "color-histogram", "--config", str(spec), "--num-samples", "2"]) == 0
    assert (tmp_path / "plots/cmc.png").is_file() and (tmp_path / "plots/grid.png").is_file()  # one target: as named
    assert (out / tiny_world.name / "metrics.json").is_file()
    shutil.rmtree(tmp_path / "plots")
    # evaluating world0 again stops: its results stay unless --overwrite moves them aside
    with pytest.raises(SystemExit, match=r"eval/.*already exist\(s\); pass --overwrite"):
        evaluate.main(["--model", "color-histogram", "--config", str(spec), "--num-samples", "2"])
    # + a target list in the config: the plot files carry the target's name
    assert evaluate.main(["--model", "color-histogram", "--config", str(spec), "--num-samples", "2", "--overwrite",
                          f'evaluate.targets=["small={second}/probe,{second}/pool"]']) == 0
    assert len(list(out.glob(f"{tiny_world.name}.replaced-*/metrics.json"))) == 1
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "cmc_small.png", f"cmc_{tiny_world.name}.png", "grid_small.png", f"grid_{tiny_world.name}.png"]


def test_msmt17_release_folder_as_a_target(tiny_world, tmp_path):
    base = tmp_path / "MSMT17_V1"
    lists = {"train": [], "val": [], "query": [], "gallery": []}
    for split, src in (("query", "query"), ("gallery", "bounding_box_test"), ("train", "bounding_box_train")):
        for i, p in enumerate(sorted((tiny_world / src).glob("[0-9]*.jpg"))):
            pid, cam = int(p.name[:4]), int(p.name.split("_c")[1][0])
            rel = f"{pid:04d}/{pid:04d}_{i:03d}_{cam:02d}_0303morning_0001_0.jpg"
            folder = base / ("train" if split == "train" else "test")
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, folder / rel)
            lists[split].append(f"{rel} {pid}")
    lists["val"] = lists["train"][:1]
    for split, lines in lists.items():
        (base / f"list_{split}.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    assert evaluate.main([*HIST, "--target", str(tmp_path), f"evaluate.results_dir={out}"]) == 0
    metrics = _metrics(out / tmp_path.name)
    assert metrics["data"]["kind"] == "msmt17" and metrics["num_query"] == len(lists["query"])


@pytest.mark.skipif("list" not in str(typing.get_type_hints(DatasetConfig)["query_dataset_dir"]),
                    reason="dataset.query_dataset_dir does not take a list in this tree")
def test_paired_dataset_folders_are_one_target_each(tiny_world, second, tmp_path):
    out = tmp_path / "eval"
    assert evaluate.main([*HIST, f"dataset.query_dataset_dir=[{tiny_world}/query,{second}/probe]",
                          f"dataset.test_dataset_dir=[{tiny_world}/bounding_box_test,{second}/pool]",
                          f"evaluate.results_dir={out}"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted([tiny_world.name, second.name])


def test_target_names():
    assert evaluate.parse_target("market=/data/market1501") == ("market", "/data/market1501", None)
    assert evaluate.parse_target("/data/market1501") == (None, "/data/market1501", None)
    assert evaluate.parse_target("x=q dir,g dir") == ("x", "q dir", "g dir")
    assert evaluate.parse_target("data/a=b") == (None, "data/a=b", None)  # not a name: a path holding '='
    assert evaluate.name_from_folders("/d/synthetic/query", "/d/synthetic/bounding_box_test") == "synthetic"
    assert evaluate.name_from_folders("/d/a/query", "/e/b/gallery") == "a_b"
    assert evaluate.safe_name("my data (v2)") == "my_data_v2"


def test_same_names_are_numbered(tiny_world, tmp_path):
    out = tmp_path / "eval"
    assert evaluate.main([*HIST, "--target", str(tiny_world), "--target", str(tiny_world),
                          f"evaluate.results_dir={out}"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [tiny_world.name, f"{tiny_world.name}-2"]


@pytest.mark.parametrize("target, message", [
    ("{tmp}/nowhere", "dataset folder not found: {tmp}/nowhere"),
    ("x={tmp}", "is neither a Market-1501-layout root"),
    ("x=a,b,c", "two folders"),
    ("y={tmp}/q,{tmp}/g", "query folder (evaluate.targets[0]"),
])
def test_bad_targets_are_one_line_and_write_nothing(tmp_path, target, message):
    with pytest.raises(SystemExit) as exc:
        evaluate.main([*HIST, "--target", target.format(tmp=tmp_path), f"evaluate.results_dir={tmp_path / 'out'}"])
    assert message.format(tmp=tmp_path) in str(exc.value.code)
    assert not (tmp_path / "out").exists()

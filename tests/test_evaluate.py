"""finetune/evaluate.py: a tiny trained model and the colour-histogram baseline, end to end."""
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from soliderkit.finetune import evaluate
from script_loader import load_script

run = load_script("finetune/run.py")
from soliderkit.reid.color_histogram import evaluate_color_histogram
from soliderkit.reid.datasets import ImageRecord, read_market_folder
from soliderkit.reid.evaluation import ranked_gallery
from soliderkit.reid.plots import FALSE_MATCH_COLOR, QUERY_COLOR, TRUE_MATCH_COLOR, match_colors, ranked_grid_figure

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/finetune/synthetic_tiny.yaml")
RE_RANKING = ["re_ranking.k1=6", "re_ranking.k2=3"]


def _folders(world):
    return ["--query", str(world / "query"), "--gallery", str(world / "bounding_box_test")]


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    """One tiny model trained for one epoch (pico, 64x32); its training metrics are evaluated
    with re-ranking, so evaluate.py can be checked against them."""
    results = tmp_path_factory.mktemp("trained")
    w = tiny_world
    assert run.main(["--config", CONFIG, f"dataset.train_dataset_dir={w}/bounding_box_train",
                     f"dataset.query_dataset_dir={w}/query", f"dataset.test_dataset_dir={w}/bounding_box_test",
                     f"results_dir={results}", "model.input_height=64", "model.input_width=32",
                     "dataset.batch_size=8", "dataset.num_instances=2", "train.num_epochs=1",
                     "re_ranking.re_ranking=true", *RE_RANKING]) == 0
    return results / "train"


def _png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format, image.size


@pytest.mark.slow
def test_evaluates_a_trained_model_like_training_does(trained, tiny_world, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate.main(["--config", CONFIG, "--checkpoint", str(trained / "model.safetensors"),
                          *_folders(tiny_world), "--re-ranking", *RE_RANKING, f"evaluate.results_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "| ranking   |     mAP |  rank-1 |  rank-5 | rank-10 |    mINP |" in printed
    assert "| plain     |" in printed and "| re-ranked |" in printed

    out = out / tiny_world.name  # one folder per evaluated target, named from the data
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"model", "checkpoint", "mAP", "rank1", "rank5", "rank10", "mINP", "cmc",
                            "num_valid_queries", "re_ranked"}
    assert metrics["model"] == "swin_pico_patch4_window7"
    assert metrics["checkpoint"] == str(trained / "model.safetensors") and metrics["flip"] is False
    assert len(metrics["cmc"]) == 10 and set(metrics["re_ranked"]) >= {"mAP", "rank1", "mINP", "cmc"}
    # Same model, same data, same settings: the numbers training wrote after its last epoch.
    during_training = json.loads((trained / "metrics.json").read_text())
    for key in ("mAP", "rank1", "rank10", "mINP"):
        assert metrics[key] == pytest.approx(during_training[key], abs=1e-6)
        assert metrics["re_ranked"][key] == pytest.approx(during_training["re_ranked"][key], abs=1e-6)

    assert _png(out / "cmc_curve.png") == ("PNG", (640, 440))
    fmt, (width, height) = _png(out / "sampled_matches.png")
    assert fmt == "PNG" and 900 <= width <= 1300 and 8 * 150 <= height <= 8 * 260  # 8 rows of 11 images
    assert (out / "config.yaml").is_file()


@pytest.mark.slow
def test_flip_and_a_checkpoint_folder(trained, tiny_world, tmp_path):
    out = tmp_path / "flip"
    assert evaluate.main(["--checkpoint", str(trained), "--flip", *_folders(tiny_world), "--num-samples", "2",
                          "--seed", "5", "dataset.num_workers=0", f"evaluate.results_dir={out}",
                          f"evaluate.output_cmc_curve_plot={tmp_path / 'plots/cmc.png'}",
                          f"evaluate.output_sampled_matches_plot={tmp_path / 'plots/grid.png'}"]) == 0
    out = out / tiny_world.name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["flip"] is True and "re_ranked" not in metrics
    assert _png(tmp_path / "plots/cmc.png")[0] == "PNG"
    # the other side of the BNNeck (a test-time choice; embeddings: test_extractor.py): config.yaml says which ran
    before = tmp_path / "before"
    assert evaluate.main(["--checkpoint", str(trained), "--neck-feat", "before", *_folders(tiny_world),
                          "dataset.num_workers=0", f"evaluate.results_dir={before}"]) == 0
    assert "neck_feat: before" in (before / tiny_world.name / "config.yaml").read_text()
    assert 2 * 150 <= _png(tmp_path / "plots/grid.png")[1][1] <= 2 * 260 + 100
    assert not (out / "cmc_curve.png").exists() and not (out / "sampled_matches.png").exists()


@pytest.mark.slow
def test_color_histogram_needs_no_checkpoint_or_config(tiny_world, tmp_path, capsys):
    out = tmp_path / "hist"
    assert evaluate.main(["--model", "color-histogram", *_folders(tiny_world), f"evaluate.results_dir={out}"]) == 0
    out = out / tiny_world.name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "color-histogram" and metrics["checkpoint"] is None
    assert metrics["metric"] == "cosine" and "re_ranked" not in metrics
    baseline = evaluate_color_histogram(str(tiny_world), max_rank=10)
    assert metrics["mAP"] == pytest.approx(100 * baseline.mAP, abs=1e-6)
    assert metrics["rank1"] == pytest.approx(100 * baseline.cmc[0], abs=1e-6)
    assert "| plain     |" in capsys.readouterr().out
    assert _png(out / "sampled_matches.png")[0] == "PNG"


def test_re_ranking_from_the_config_and_no_grid(tiny_world, tmp_path, capsys):
    out = tmp_path / "rr"
    assert evaluate.main(["--model", "color-histogram", *_folders(tiny_world), "re_ranking.re_ranking=true",
                          *RE_RANKING, "--num-samples", "0", f"evaluate.results_dir={out}"]) == 0
    out = out / tiny_world.name
    assert "re_ranked" in json.loads((out / "metrics.json").read_text())
    assert "| re-ranked |" in capsys.readouterr().out
    assert (out / "cmc_curve.png").is_file() and not (out / "sampled_matches.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "{tmp}/missing/model.safetensors"], "checkpoint not found: {tmp}/missing/model.safetensors"),
    ([], "no checkpoint: pass --checkpoint PATH"),
    (["--checkpoint", "{tmp}/junk.safetensors"], "is not a readable safetensors file"),
    (["--model", "color-histogram", "--query", "{tmp}/nowhere"], "query folder (evaluate.query_dataset): "
                                                                  "image folder not found: {tmp}/nowhere"),
])
def test_user_errors_are_one_clear_line(tiny_world, tmp_path, argv, message):
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exc:
        evaluate.main([*_folders(tiny_world), *argv, f"evaluate.results_dir={tmp_path / 'out'}"])
    assert message.format(tmp=tmp_path) in str(exc.value.code)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dry_run_checks_and_writes_nothing(trained, tiny_world, tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(trained / "model.safetensors"), *_folders(tiny_world),
                          "--dry-run", f"evaluate.results_dir={tmp_path / 'out'}"]) == 0
    assert "input 64x32" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_ranked_gallery_leaves_out_the_query_identity_from_the_query_camera():
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.3]])
    g_pids, g_cams = [7, 7, 3, 7, 0, 7], [1, 2, 1, 1, 2, 2]
    # query pid 7 seen by camera 1: gallery 0 and 3 are removed; the 0.3 tie keeps gallery order.
    [order] = ranked_gallery(dist, [7], [1], g_pids, g_cams, top_k=3)
    assert order.tolist() == [1, 2, 5]


def test_grid_frames_true_matches_green_and_false_ones_red(tiny_world):
    gallery = read_market_folder(tiny_world / "bounding_box_test", "t")
    query = next(g for g in gallery if g.pid > 0)
    others = [g for g in gallery if g.pid not in (query.pid, 0)]
    ranked = [g for g in gallery if g.pid == query.pid][1:3] + others[:4]
    expected = [TRUE_MATCH_COLOR] * 2 + [FALSE_MATCH_COLOR] * 4
    assert match_colors(query, ranked) == expected
    figure = ranked_grid_figure([query, query], [ranked, ranked[::-1]], "test", top_k=10)
    frames = [ax.spines["top"].get_edgecolor() for ax in figure.axes]
    assert frames == [to_rgba(c) for c in [QUERY_COLOR, *expected, QUERY_COLOR, *expected[::-1]]]
    assert [ax.get_xlabel() for ax in figure.axes[:3]] == [
        f"query\nid {query.pid} · c{query.camid + 1}", f"id {ranked[0].pid} · c{ranked[0].camid + 1}",
        f"id {ranked[1].pid} · c{ranked[1].camid + 1}"]


def test_sampled_queries_are_seeded_and_have_a_true_match():
    query = [ImageRecord(f"q{i}", pid, cam, "s") for i, (pid, cam) in enumerate([(1, 0), (2, 0), (3, 1), (4, 0)])]
    gallery = [ImageRecord("g", pid, cam, "s") for pid, cam in [(1, 1), (2, 0), (3, 0), (4, 2), (4, 0)]]
    picked = evaluate.sample_queries(query, gallery, 8, seed=0)
    assert picked == [0, 2, 3]  # query 1's identity is only seen by its own camera
    assert evaluate.sample_queries(query, gallery, 2, seed=1) == evaluate.sample_queries(query, gallery, 2, seed=1)

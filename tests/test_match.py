"""finetune/match.py (the demo on your own images) and the ranked grid's identities, distances and frames."""
import re
import shutil
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from soliderkit.finetune import match
from soliderkit.reid.datasets import ImageRecord
from soliderkit.reid.plots import (
    DISTRACTOR_COLOR,
    FALSE_MATCH_COLOR,
    JUNK_COLOR,
    QUERY_COLOR,
    TRUE_MATCH_COLOR,
    UNKNOWN_COLOR,
    match_kind,
    ranked_grid_figure,
)

ROW = re.compile(r"^\s+(\d+)\s+([0-9.]+)\s+(-?\d+|\?)\s+(\S.*)$")


@pytest.fixture(scope="module")
def checkpoint(tiny_reid_checkpoint):
    return tiny_reid_checkpoint


def _rows(text):
    return [ROW.match(line).groups() for line in text.splitlines() if ROW.match(line)]


def test_top_k_matches_printed_and_drawn(checkpoint, tiny_world, tmp_path, capsys):
    gallery = tiny_world / "bounding_box_test"
    query = sorted(gallery.glob("0*_c*.jpg"))[-1]  # a gallery image as query: left out of its own ranking
    out = tmp_path / "pictures/matches.png"
    assert match.main(["--checkpoint", str(checkpoint), "--query", str(query), "--gallery", str(gallery),
                       "--top-k", "6", "--output", str(out), "--no-progress"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5, 6]
    distances = [float(r[1]) for r in rows]
    assert distances == sorted(distances) and 0 <= distances[0] <= 4
    assert str(query) not in [r[3] for r in rows]
    for pid, path in ((r[2], r[3]) for r in rows):  # ids read from the Market-1501 names
        assert int(Path(path).name.split("_")[0]) == int(pid)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 150
    assert [p.name for p in out.parent.iterdir()] == ["matches.png"]  # written atomically, nothing else


def test_two_queries_and_images_without_identities(checkpoint, tiny_world, tmp_path, capsys):
    folder = tmp_path / "my photos"
    folder.mkdir()
    for i, source in enumerate(sorted((tiny_world / "bounding_box_test").glob("*.jpg"))[:5]):
        shutil.copy(source, folder / f"photo {i}.jpg")
    queries = sorted((tiny_world / "query").glob("*.jpg"))[:2]
    out = tmp_path / "m.png"
    assert match.main(["--checkpoint", str(checkpoint.parent), "--query", str(queries[0]), "--query", str(queries[1]),
                       "--gallery", str(folder), "--top-k", "10", "--output", str(out), "--no-progress"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 2 * 5 and {r[2] for r in rows} == {"?"}  # top-k capped by the gallery size
    assert out.is_file()


@pytest.mark.parametrize("argv, message", [
    (["--query", "{tmp}/missing.jpg"], "query image not found: {tmp}/missing.jpg"),
    (["--gallery", "{tmp}/nowhere"], "gallery folder not found: {tmp}/nowhere"),
    (["--checkpoint", "{tmp}/none.safetensors"], "--checkpoint: checkpoint {tmp}/none.safetensors does not exist"),
])
def test_user_errors_are_one_line(checkpoint, tiny_world, tmp_path, argv, message):
    query = next((tiny_world / "query").glob("*.jpg"))
    base = {"--checkpoint": str(checkpoint), "--query": str(query), "--gallery": str(tiny_world / "query")}
    base.update(dict(zip(argv[::2], [a.format(tmp=tmp_path) for a in argv[1::2]])))
    with pytest.raises(SystemExit) as exc:
        match.main([x for kv in base.items() for x in kv] + ["--output", str(tmp_path / "o.png")])
    assert message.format(tmp=tmp_path) in str(exc.value.code)
    assert not (tmp_path / "o.png").exists()


def test_identity_records_from_names():
    assert match.identity_record("/x/0012_c3s1_000151_00.jpg", "g") == ImageRecord("/x/0012_c3s1_000151_00.jpg", 12, 2, "g")
    assert match.identity_record("-1_c1s2_000001_00.jpg", "g").pid == -1
    unknown = match.identity_record("holiday.png", "g")
    assert unknown.pid is None and unknown.camid == -1


def test_grid_tells_distractors_and_junk_from_wrong_identities(tiny_world):
    image = str(next((tiny_world / "query").glob("*.jpg")))
    query = ImageRecord(image, 5, 0, "q")
    ranked = [ImageRecord(image, pid, cam, "g") for pid, cam in [(5, 1), (7, 2), (0, 1), (-1, 2)]]
    assert [match_kind(query, g) for g in ranked] == ["same", "other", "distractor", "junk"]
    assert match_kind(query, ranked[2], distractor_pid=None) == "other"  # MSMT17: pid 0 is a person
    unknown = ImageRecord(image, None, -1, "q")
    assert match_kind(unknown, ranked[1]) == "unknown"
    figure = ranked_grid_figure([query, unknown], [ranked, ranked[1:2]], "t", top_k=4,
                                distances=[[0.1, 0.25, 0.5, 1.0], [0.75]])
    axes = figure.axes
    frames = [ax.spines["top"].get_edgecolor() for ax in axes]
    assert frames == [to_rgba(c) for c in [QUERY_COLOR, TRUE_MATCH_COLOR, FALSE_MATCH_COLOR, DISTRACTOR_COLOR,
                                           JUNK_COLOR, QUERY_COLOR, UNKNOWN_COLOR]]
    assert [ax.get_xlabel() for ax in axes] == [
        "query\nid 5 · c1", "id 5 · c2\nd=0.100", "id 7 · c3\nd=0.250", "distractor · c2\nd=0.500",
        "junk · c3\nd=1.000", "query\nid ?", "id 7 · c3\nd=0.750"]
    assert axes[3].spines["top"].get_linestyle() != axes[2].spines["top"].get_linestyle()  # dashed
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["same identity", "other identity", "distractor (id 0)", "junk (id -1)", "identity unknown"]
    with pytest.raises(ValueError, match="one value per ranked image"):
        ranked_grid_figure([query], [ranked], "t", distances=[[0.1]])

"""Tests for soliderkit.reid.datasets: Market-style folders, MSMT17 lists, statistics, registry."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from soliderkit.reid.datasets import (
    DatasetError,
    ImageRecord,
    parse_dataset,
    parse_market1501,
    parse_msmt17,
    parse_three_folders,
)


def make_folder(root: Path, folder: str, names: list[str]) -> Path:
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (path / name).touch()  # the parser never opens images: empty files are enough
    return path


MARKET_TRAIN = [
    "0002_c1s1_000451_03.jpg",
    "0002_c2s1_000301_01.jpg",
    "0007_c3s3_077419_03.JPG",   # upper-case extension still counts
    "0010_c6s4_002427_02.png",
    "-1_c1s1_000401_03.jpg",     # junk: dropped
    "Thumbs.db",                 # not an image: ignored silently
]
MARKET_QUERY = [
    "0002_c3s1_000551_00.jpg",
    "0007_c1s1_000601_00.jpeg",
]
MARKET_GALLERY = [
    "0002_c1s1_000451_01.jpg",
    "0007_c2s1_000426_01.jpg",
    "0000_c1s1_000000_01.jpg",   # distractor: kept in the gallery
    "0000_c6s1_000000_02.jpg",
    "-1_c2s1_000002_01.jpg",     # junk: dropped
]


@pytest.fixture
def market_root(tmp_path) -> Path:
    make_folder(tmp_path, "bounding_box_train", MARKET_TRAIN)
    make_folder(tmp_path, "query", MARKET_QUERY)
    make_folder(tmp_path, "bounding_box_test", MARKET_GALLERY)
    return tmp_path


def parse_quietly(parser, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean dataset must not warn
        return parser(*args, **kwargs)


# --------------------------------------------------------------------------------------
# Market-1501
# --------------------------------------------------------------------------------------

def test_market_train_relabelled_and_junk_dropped(market_root):
    splits = parse_quietly(parse_market1501, market_root)
    assert splits.name == "market1501"
    # Original train pids 2, 2, 7, 10 -> 0, 0, 1, 2 in sorted order; junk -1 gone.
    assert sorted((Path(r.path).name, r.pid, r.camid) for r in splits.train) == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c2s1_000301_01.jpg", 0, 1),
        ("0007_c3s3_077419_03.JPG", 1, 2),
        ("0010_c6s4_002427_02.png", 2, 5),
    ]
    assert all(r.source == "market1501" for r in splits.train)
    assert splits.train[0].path == str(market_root / "bounding_box_train" / "0002_c1s1_000451_03.jpg")


def test_market_query_and_gallery_keep_original_ids(market_root):
    splits = parse_quietly(parse_market1501, market_root)
    assert sorted((r.pid, r.camid) for r in splits.query) == [(2, 2), (7, 0)]
    # Distractors (pid 0) stay in the gallery, junk (-1) does not.
    assert sorted((r.pid, r.camid) for r in splits.gallery) == [(0, 0), (0, 5), (2, 0), (7, 1)]
    assert isinstance(splits.gallery[0], ImageRecord)


def test_distractors_dropped_from_train_and_query_with_warning(market_root):
    make_folder(market_root, "bounding_box_train", ["0000_c1s1_000001_01.jpg"])
    make_folder(market_root, "query", ["0000_c2s1_000001_01.jpg", "0000_c3s1_000001_01.jpg"])
    with pytest.warns(UserWarning) as caught:
        splits = parse_market1501(market_root)
    messages = [str(w.message) for w in caught]
    assert any("dropped 1 distractor" in m and "train" in m for m in messages)
    assert any("dropped 2 distractor" in m and "query" in m for m in messages)
    assert all(r.pid != 0 for r in splits.query)
    assert len(splits.train) == 4


def test_query_identities_missing_from_gallery_warn(market_root):
    make_folder(market_root, "query", ["0042_c1s1_000001_00.jpg", "0043_c2s1_000001_00.jpg"])
    with pytest.warns(UserWarning, match=r"2 query identities never appear in the gallery.*42, 43"):
        splits = parse_market1501(market_root)
    assert {r.pid for r in splits.query} == {2, 7, 42, 43}


def test_bad_name_error_names_the_file(market_root):
    make_folder(market_root, "query", ["person7.jpg"])
    with pytest.raises(DatasetError, match=r"person7\.jpg"):
        parse_market1501(market_root)


def test_camera_zero_is_an_error(market_root):
    make_folder(market_root, "bounding_box_test", ["0002_c0s1_000001_00.jpg"])
    with pytest.raises(DatasetError, match=r"0002_c0s1_000001_00\.jpg.*numbered from 1"):
        parse_market1501(market_root)


def test_missing_folder_error_names_it(tmp_path):
    make_folder(tmp_path, "bounding_box_train", MARKET_TRAIN)
    make_folder(tmp_path, "query", MARKET_QUERY)
    with pytest.raises(DatasetError, match="bounding_box_test"):
        parse_market1501(tmp_path)


def test_empty_folder_error_names_it(tmp_path):
    make_folder(tmp_path, "bounding_box_train", MARKET_TRAIN)
    make_folder(tmp_path, "query", ["notes.txt"])  # no image at all
    make_folder(tmp_path, "bounding_box_test", MARKET_GALLERY)
    with pytest.raises(DatasetError, match=r"no images.*query"):
        parse_market1501(tmp_path)


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


def test_three_folders_with_custom_names(tmp_path):
    make_folder(tmp_path, "train", ["0005_c1_f0001.jpg", "0009_c12_f0002.jpg"])  # 2-digit camera
    make_folder(tmp_path, "query", ["0005_c2_f0003.jpg"])
    make_folder(tmp_path, "test", ["0005_c3_f0004.jpg", "0000_c1_f0005.jpg"])
    splits = parse_quietly(parse_three_folders, tmp_path, "train", "query", "test", "shop")
    assert splits.name == "shop"
    assert sorted((r.pid, r.camid) for r in splits.train) == [(0, 0), (1, 11)]
    assert {r.source for r in splits.train + splits.query + splits.gallery} == {"shop"}


# --------------------------------------------------------------------------------------
# MSMT17
# --------------------------------------------------------------------------------------

def write_msmt17(base: Path, lists: dict[str, list[str]]) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    (base / "train").mkdir(exist_ok=True)
    (base / "test").mkdir(exist_ok=True)
    for split, lines in lists.items():
        (base / f"list_{split}.txt").write_text("".join(line + "\n" for line in lines))
    return base


MSMT_LISTS = {
    "train": ["0000/0000_000_01_0303morning_0015_0.jpg 0",
              "0005/0005_012_15_0303noon_0044_1.jpg 5"],
    "val": ["0005/0005_020_03_0303afternoon_0101_0.jpg 5"],   # same identity space as train
    "query": ["0000/0000_000_02_0303morning_0019_0.jpg 0",
              "0011/0011_004_07_0113noon_0600_2.jpg 11"],
    "gallery": ["0000/0000_001_05_0303morning_0030_0.jpg 0",
                "0011/0011_010_07_0113noon_0620_0.jpg 11",
                "0012/0012_003_09_0113noon_0700_0.jpg 12"],
}


def test_msmt17_v1_layout(tmp_path):
    base = write_msmt17(tmp_path / "MSMT17_V1", MSMT_LISTS)
    splits = parse_quietly(parse_msmt17, tmp_path)  # parent of MSMT17_V1 is accepted
    # Train = list_train + list_val, relabelled jointly: pid 0 -> 0, pid 5 -> 1.
    assert [(r.pid, r.camid) for r in splits.train] == [(0, 0), (1, 14), (1, 2)]
    assert splits.train[0].path == str(base / "train" / "0000/0000_000_01_0303morning_0015_0.jpg")
    # pid 0 is a real MSMT17 identity: kept in the query and counted in the table.
    assert [(r.pid, r.camid) for r in splits.query] == [(0, 1), (11, 6)]
    assert splits.query[1].path == str(base / "test" / "0011/0011_004_07_0113noon_0600_2.jpg")
    assert [row["identities"] for row in splits.summary_rows()] == [2, 2, 3]
    # The release folder itself is accepted too.
    assert len(parse_quietly(parse_msmt17, base).gallery) == 3


def test_msmt17_malformed_line_names_file_and_line(tmp_path):
    lists = dict(MSMT_LISTS, gallery=[MSMT_LISTS["gallery"][0], "", "0011/0011_010_07_x.jpg eleven"])
    write_msmt17(tmp_path, lists)
    with pytest.raises(DatasetError, match=r"list_gallery\.txt, line 3"):
        parse_msmt17(tmp_path)


def test_msmt17_name_without_camera_field(tmp_path):
    write_msmt17(tmp_path, dict(MSMT_LISTS, query=["0000/0000.jpg 0"]))
    with pytest.raises(DatasetError, match=r"list_query\.txt, line 1.*camera"):
        parse_msmt17(tmp_path)


def test_msmt17_missing_lists(tmp_path):
    with pytest.raises(DatasetError, match="list_train.txt"):
        parse_msmt17(tmp_path)
    write_msmt17(tmp_path, {k: v for k, v in MSMT_LISTS.items() if k != "val"})
    with pytest.raises(DatasetError, match="list_val.txt"):
        parse_msmt17(tmp_path)


# --------------------------------------------------------------------------------------
# Statistics table and registry
# --------------------------------------------------------------------------------------

def test_summary_rows_and_table(market_root):
    splits = parse_quietly(parse_market1501, market_root)
    assert splits.summary_rows() == [
        {"subset": "train", "identities": 3, "images": 4, "cameras": 4},
        {"subset": "query", "identities": 2, "images": 2, "cameras": 2},
        # 4 images, of which 2 distractors: 2 identities, cameras c1, c2, c6.
        {"subset": "gallery", "identities": 2, "images": 4, "cameras": 3},
    ]
    table = splits.format_table()
    lines = table.splitlines()
    assert lines[0] == "market1501 statistics:"
    assert [cell.strip() for cell in lines[1].strip("|").split("|")] == [
        "subset", "# identities", "# images", "# cameras"]
    assert [cell.strip() for cell in lines[5].strip("|").split("|")] == ["gallery", "2", "4", "3"]
    assert "2 distractor images" in lines[6]
    assert len({len(line) for line in lines[1:6]}) == 1  # columns line up


def test_registry(market_root):
    splits = parse_quietly(parse_dataset, "market1501", market_root)
    assert len(splits.train) == 4
    with pytest.raises(DatasetError, match=r"unknown dataset kind 'duke'.*market1501, msmt17, three_folders"):
        parse_dataset("duke", market_root)

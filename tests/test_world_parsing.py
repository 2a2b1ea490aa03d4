"""The Market-1501 parser on a generated world: junk, distractors, cameras, relabelling."""
import json
from pathlib import Path

from soliderkit.reid.datasets import parse_market1501


def test_parser_on_a_generated_world(tiny_world):
    world = json.loads((Path(tiny_world) / "world.json").read_text())
    counts = world["counts"]
    splits = parse_market1501(tiny_world)
    cameras = world["parameters"]["cameras"]

    assert len(splits.train) == counts["bounding_box_train"]["images"]
    assert sorted({r.pid for r in splits.train}) == list(range(counts["bounding_box_train"]["identities"]))
    assert len(splits.query) == counts["query"]["images"]
    gallery = counts["bounding_box_test"]
    # junk (pid -1) is dropped, distractors (pid 0) stay in the gallery only
    assert len(splits.gallery) == gallery["images"] - gallery["junk"]
    assert sum(r.pid == 0 for r in splits.gallery) == gallery["distractors"]
    assert all(r.pid > 0 for r in splits.query)
    assert all(r.pid != -1 for r in splits.train + splits.query + splits.gallery)
    # cameras are 1-based in names, 0-based in records
    for records in (splits.train, splits.query, splits.gallery):
        assert {r.camid for r in records} <= set(range(cameras))
    some = splits.query[0]
    assert f"_c{some.camid + 1}s" in Path(some.path).name
    # every query has a true match in the gallery under another camera (Market protocol)
    gallery_views = {(r.pid, r.camid) for r in splits.gallery}
    for q in splits.query:
        assert any(pid == q.pid and cam != q.camid for pid, cam in gallery_views)

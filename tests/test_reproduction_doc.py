"""docs/REPRODUCTION.md's tables against the presets they describe, so the two cannot drift.

* A table after ``<!-- preset: PATH -->`` lists recipe items: the value column (in backticks) must
  equal the resolved preset's value at the config-key column (in backticks); rows without a key
  (``—``) describe what no config holds.
* A table whose header names config keys (in backticks) has one preset per row (first column).
* The table after ``<!-- switches -->`` gives each deliberate difference's reference value: it must
  be the schema default and the value of every reference preset (all but the synthetic CPU configs).
"""
import re
from pathlib import Path

import pytest
import yaml

from soliderkit.config import load_config
from soliderkit.finetune.config import FinetuneConfig
from soliderkit.pretrain.config import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/REPRODUCTION.md"
TICKED = re.compile(r"^`([^`]+)`$")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(text: str):
    """(marker or None, header cells, rows) for every table, with the comment line just above it."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            marker = lines[i - 1].strip() if i > 0 and lines[i - 1].startswith("<!--") else None
            header = _cells(lines[i])
            rows = []
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(_cells(lines[j]))
                j += 1
            yield marker, header, rows
            i = j
        else:
            i += 1


def _schema(path: str):
    return FinetuneConfig if "/finetune/" in path else PretrainConfig


def _value_at(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return list(cfg) if isinstance(cfg, tuple) else cfg


def _literal(text: str, like):
    value = yaml.safe_load(text)
    if isinstance(like, float) and isinstance(value, (str, int)) and not isinstance(value, bool):
        value = float(value)
    return value


def _ticked(cell: str) -> str | None:
    match = TICKED.match(cell)
    return match.group(1) if match else None


def _preset_tables():
    return [(m.split("preset:")[1].strip(" ->"), h, r) for m, h, r in _tables(DOC.read_text())
            if m and m.startswith("<!-- preset:")]


def test_the_page_has_a_table_for_each_stage():
    presets = {p for p, _, _ in _preset_tables()}
    assert {"configs/pretrain/solider_swin_tiny.yaml", "configs/pretrain/solider_swin_tiny_from_dino.yaml",
            "configs/finetune/solider_reid_market1501_swin_tiny.yaml",
            "configs/finetune/card_market1501_swin_tiny.yaml"} <= presets


@pytest.mark.parametrize("preset, header, rows", _preset_tables(), ids=lambda x: x if isinstance(x, str) else "")
def test_recipe_table_equals_the_resolved_preset(preset, header, rows):
    assert header[1] == "value" and header[3] == "config key"
    cfg = load_config(_schema(preset), ROOT / preset, warn_no_effect=False)
    checked = 0
    for row in rows:
        key = _ticked(row[3])
        if key is None:
            assert row[3].startswith("—"), f"{preset}: {row[0]!r} names neither a key nor '—'"
            continue
        expected = _value_at(cfg, key)
        value = _ticked(row[1])
        assert value is not None, f"{preset}: {key} has no value in backticks"
        assert _literal(value, expected) == expected, f"{preset}: the page says {key}={value}, the preset {expected!r}"
        checked += 1
    assert checked >= 3


def test_per_preset_tables_equal_the_presets():
    tables = [(h, r) for m, h, r in _tables(DOC.read_text())
              if m is None and any(_ticked(c) and "." in _ticked(c) for c in h[1:])]
    assert tables
    for header, rows in tables:
        keys = {i: _ticked(c) for i, c in enumerate(header) if _ticked(c)}
        for row in rows:
            preset = _ticked(row[0])
            cfg = load_config(_schema(preset), ROOT / preset, warn_no_effect=False)
            for i, key in keys.items():
                expected = _value_at(cfg, key)
                assert _literal(_ticked(row[i]), expected) == expected, f"{preset}: {key}"


def test_switch_table_gives_the_defaults_and_every_reference_preset_uses_them():
    (header, rows), = [(h, r) for m, h, r in _tables(DOC.read_text()) if m == "<!-- switches -->"]
    presets = [p for p in sorted((ROOT / "configs").glob("*/*.yaml"))
               if not p.name.startswith("synthetic") and p.name != "tao_swin_tiny_reference.yaml"]
    checked = 0
    for row in rows:
        key, reference = _ticked(row[1]), _ticked(row[2])
        assert key, row
        if reference is None:  # e.g. a path that only the presets set
            continue
        stage = "finetune" if key.split(".")[0] in ("dataset", "train") or key.startswith("model.train_") \
            else "pretrain"
        schema = FinetuneConfig if stage == "finetune" else PretrainConfig
        default = _value_at(schema(), key)
        assert _literal(reference, default) == default, f"{key}: the page's reference value is not the default"
        for path in presets:
            if f"/{stage}/" not in str(path):
                continue
            cfg = load_config(schema, path, warn_no_effect=False)
            assert _value_at(cfg, key) == default, f"{path.name} moves {key} away from the reference"
        checked += 1
    assert checked >= 9

"""Every command-line tool: each option has help text that shows its default; W&B is honoured or
reported, never silently listed as active; no-effect settings are marked in resolved configs."""
import argparse
import importlib
import logging
import re
from pathlib import Path

import pytest
import yaml
from script_loader import load_script

from soliderkit.cli import HelpFormatter, help_problems
from soliderkit.config import config_to_dict, format_config, load_config
from soliderkit.finetune import trackers
from soliderkit.finetune.config import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_FOLDERS = ("finetune", "pretrain", "data_shards")


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__(parser.prog)
        self.parser = parser


def _capture(self, *args, **kwargs):
    raise _Captured(self)


def _parser_of(main, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``main`` builds: stopped where it would parse its arguments."""
    for method in ("parse_args", "parse_intermixed_args", "parse_known_args"):
        monkeypatch.setattr(argparse.ArgumentParser, method, _capture)
    with pytest.raises(_Captured) as captured:
        main([])
    monkeypatch.undo()
    return captured.value.parser


def _library_entry_points() -> list[str]:
    """Modules of soliderkit run with ``python -m`` (they have a ``__main__`` block)."""
    found = []
    for path in sorted((ROOT / "soliderkit").rglob("*.py")):
        if re.search(r'^if __name__ == "__main__":', path.read_text(), flags=re.M):
            found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


SCRIPTS = sorted(str(p.relative_to(ROOT)) for folder in SCRIPT_FOLDERS for p in (ROOT / folder).glob("*.py"))
MODULES = _library_entry_points()


def test_every_tool_is_listed():
    assert {"finetune/run.py", "finetune/evaluate.py", "finetune/inference.py", "finetune/export.py",
            "finetune/match.py", "pretrain/run.py", "pretrain/knn.py", "data_shards/synth.py"} <= set(SCRIPTS)
    assert {"soliderkit.reid.color_histogram", "soliderkit.pretrain.knn", "soliderkit.data.tracking"} <= set(MODULES)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_options_have_help_with_defaults(script, monkeypatch):
    parser = _parser_of(load_script(script).main, monkeypatch)
    assert help_problems(parser, script) == []
    assert parser.format_help()  # renders


@pytest.mark.parametrize("module", MODULES)
def test_library_entry_point_options_have_help_with_defaults(module, monkeypatch):
    parser = _parser_of(importlib.import_module(module).main, monkeypatch)
    assert help_problems(parser, module) == []


def test_help_check_catches_missing_help_and_defaults():
    parser = argparse.ArgumentParser(formatter_class=argparse.HelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="say less")  # a flag: off unless given
    parser.add_argument("--size", type=int, default=3)  # no help at all
    parser.add_argument("--rate", type=float, default=0.5, help="a rate")  # default not shown
    parser.add_argument("--device", help="torch device")  # None: what happens is not said
    parser.add_argument("--name", default="x", help="a name (default %(default)s)")
    assert help_problems(parser, "t") == [
        "t: --size has no help text",
        "t: --rate does not show its default (0.5): 'a rate'",
        "t: --device does not show its default (None): 'torch device'"]
    parser.formatter_class = HelpFormatter  # appends "(default: X)" where a value is known
    assert [p for p in help_problems(parser, "t") if "--rate" in p] == []
    assert "a rate (default: 0.5)" in " ".join(parser.format_help().split())


# --- W&B and no-effect settings ---------------------------------------------------------------------

def test_wandb_disabled_by_default_and_tensorboard_always():
    cfg = load_config(FinetuneConfig)
    assert cfg.wandb.enable is False
    assert trackers.experiment_trackers(cfg) == ["tensorboard"]
    assert trackers.experiment_trackers(cfg, dry_run=True) is None


def test_wandb_enabled_without_the_package_warns_and_is_recorded_off(monkeypatch, caplog):
    monkeypatch.setattr(trackers, "wandb_available", lambda: False)
    cfg = load_config(FinetuneConfig, overrides=["wandb.enable=true"])
    with caplog.at_level(logging.WARNING, logger="soliderkit.finetune.trackers"):
        assert trackers.experiment_trackers(cfg) == ["tensorboard"]
    assert "wandb package is not installed" in caplog.text
    assert cfg.wandb.enable is False  # the resolved config.yaml says what ran
    assert yaml.safe_load(format_config(cfg))["wandb"]["enable"] is False


def test_wandb_enabled_with_the_package_uses_accelerates_tracker(monkeypatch):
    from accelerate.tracking import WandBTracker

    monkeypatch.setattr(trackers, "wandb_available", lambda: True)
    cfg = load_config(FinetuneConfig, overrides=["wandb.enable=true", "wandb.project=reid", "wandb.entity=team",
                                                 "wandb.tags=[a, b]", "wandb.name=run1"])
    log_with = trackers.experiment_trackers(cfg)
    assert log_with[0] == "tensorboard" and isinstance(log_with[1], WandBTracker)
    tracker = log_with[1]  # built, not started: wandb itself is imported only by start()
    assert tracker.run_name == "reid"
    assert {k: tracker.init_kwargs[k] for k in ("entity", "tags", "name")} == {"entity": "team", "tags": ["a", "b"],
                                                                             "name": "run1"}
    assert tracker.init_kwargs["config"] == config_to_dict(cfg)
    assert cfg.wandb.enable is True


def test_resolved_config_marks_no_effect_settings():
    cfg = load_config(FinetuneConfig, warn_no_effect=False)
    text = format_config(cfg)
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if ":" in line}
    assert "# no effect: Swin downsamples by fixed patch merging" in lines["last_stride"]
    assert "# no effect" in lines["trt_engine"] and "# no effect" in lines["num_gpus"]
    assert "# no effect" not in lines["wandb"] and "# no effect" not in lines["enable"]  # W&B is honoured now
    assert "# no effect" not in lines["feat_dim"] and "# no effect" not in lines["input_width"]
    assert yaml.safe_load(text) == config_to_dict(cfg)  # comments only: it loads back the same

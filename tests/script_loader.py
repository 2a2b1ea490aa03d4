"""Import a script (``finetune/run.py``, ...) as a module so tests can call its ``main`` in-process.

Scripts are not installed; each is loaded from its path (``soliderkit.benchmarking.load_script``).
"""
from pathlib import Path

from soliderkit.benchmarking import load_script as _load

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    return _load(ROOT / relative_path)

"""Smoke tests of bench scripts that have no other coverage: they run and print their ratio."""
import re
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_cpu_precision_bench_prints_both_precisions_and_speedup(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_cpu_precision.py", "--batch", "2", "--size", "64", "32",
                                      "--repeats", "1", "--threads", "1"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCH / "bench_cpu_precision.py"), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(fp32|bf16)\s+([0-9.]+)\s", out, re.M)}
    assert set(rows) == {"fp32", "bf16"} and all(t > 0 for t in rows.values())
    speedup = float(re.search(r"speed-up over fp32: ([0-9.]+)x", out).group(1))
    assert speedup == pytest.approx(rows["fp32"] / rows["bf16"], rel=0.02)


def test_cpu_precision_bench_rejects_zero_repeats(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_cpu_precision.py", "--repeats", "0"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCH / "bench_cpu_precision.py"), run_name="__main__")
    assert done.value.code == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err

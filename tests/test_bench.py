"""Smoke tests of bench scripts that have no other coverage: they run and print their ratio."""
import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from soliderkit.backbone import build_backbone, save_backbone

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
    # all three are printed with 2 decimals: the speed-up's rounding plus what the rounded times move the ratio
    ratio = rows["fp32"] / rows["bf16"]
    assert speedup == pytest.approx(ratio, abs=0.0051 + ratio * 0.0051 * (1 / rows["fp32"] + 1 / rows["bf16"]))


def test_cpu_precision_bench_rejects_zero_repeats(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_cpu_precision.py", "--repeats", "0"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCH / "bench_cpu_precision.py"), run_name="__main__")
    assert done.value.code == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err


def test_pretrain_transfer_bench_scores_every_backbone_against_the_random_inits(tiny_world, tmp_path, capsys,
                                                                                monkeypatch):
    paths = []
    for seed in (5, 6):  # stand-ins for pretrained backbones: other random inits, saved as pretrain/run.py does
        torch.manual_seed(seed)
        path = tmp_path / f"backbone_{seed}.safetensors"
        save_backbone(build_backbone("swin_pico_patch4_window7", img_size=(64, 32), drop_path_rate=0.0), path)
        paths.append(str(path))
    out_dir = tmp_path / "bench"
    monkeypatch.setattr(sys, "argv", ["bench_pretrain_transfer.py", "--world", str(tiny_world), "--size", "64", "32",
                                      "--seeds", "0", "1", "--skip-finetune", "--out", str(out_dir),
                                      "--backbone", *paths])
    runpy.run_path(str(BENCH / "bench_pretrain_transfer.py"), run_name="__main__")
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (random init \(seed \d\)|pretrained \(.*?\)) \| ([0-9.]+) \|", out, re.M)
    assert [name.split(" (")[0] for name, _ in rows] == ["random init"] * 2 + ["pretrained"] * 2
    summary = json.loads((out_dir / "summary.json").read_text())
    random_maps = [r["mAP"] for r in summary["knn"]["random"]]
    pretrained_maps = [r["mAP"] for r in summary["knn"]["pretrained"]]
    assert [float(v) for _, v in rows] == pytest.approx([round(m, 2) for m in random_maps + pretrained_maps], abs=0.006)
    assert summary["knn"]["pretrained_above_every_random"] == sum(m > max(random_maps) for m in pretrained_maps)
    assert "of 2 pretrained backbone(s) above every random init" in out


def test_finetune_bench_prints_packed_and_padded_window_rates(capsys):
    from script_loader import load_script

    bench = load_script("bench/bench_finetune.py")
    assert bench.main(["--pico-only", "--steps", "1", "--batch", "8", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"^pico .* ([\d.]+) images/s +1\.000x pico +padded windows +([\d.]+) images/s "
                      r"\(packed: ([\d.]+)x\)$", out, re.M)
    assert match and float(match[1]) > 0 and float(match[2]) > 0 and "Swin-T" not in out
    assert abs(float(match[3]) - float(match[1]) / float(match[2])) < 0.01

"""Our training steps against numbers the reference implementations produced (golden values).

``bench/compare_with_reference.py`` runs one step of SOLIDER-REID (fine-tune) and SOLIDER
(pretrain) beside ours from identical seeded weights and batches and compares them directly; with
``--write-golden`` it also stores the reference side's numbers for a tiny seeded case in
``tests/fixtures/golden_*.json`` (the reference commit and the command that regenerates them are in
the file). These tests rerun only our side of that case and compare it with the stored numbers, so
CI guards the equivalence without the reference code.
"""
import json
import math
from pathlib import Path

import pytest
from script_loader import load_script

FIXTURES = Path(__file__).resolve().parent / "fixtures"
bench = load_script("bench/compare_with_reference.py")


def _golden(name: str) -> dict:
    golden = json.loads((FIXTURES / name).read_text())
    assert golden["reference_commit"] and golden["regenerate"].startswith("python bench/compare_with_reference.py")
    return golden


def _close_norms(ours: dict[str, float], ref: dict[str, float], rel: float) -> list[str]:
    """Names whose norm differs by more than ``rel`` of itself (or, for norms below the noise
    floor of the largest, of the largest: those are fp32 noise around zero)."""
    scale = max(ref.values())
    bad = []
    for name, value in ref.items():
        if name not in ours:
            bad.append(f"{name}: missing")
            continue
        reference = value if value >= bench.NOISE_FLOOR * scale else scale
        if abs(ours[name] - value) > rel * reference:
            bad.append(f"{name}: ours {ours[name]:.9g}, reference {value:.9g}")
    bad += [f"{name}: not in the reference" for name in ours if name not in ref]
    return bad


def _lr_wd_mismatches(ours: dict, ref: dict) -> list[str]:
    """Parameters whose (learning rate, weight decay) is not the reference's (to 1e-9)."""
    bad = [name for name, pair in ref.items() if name not in ours
           or not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(ours[name], pair))]
    return bad + [name for name in ours if name not in ref]


@pytest.mark.slow
def test_finetune_step_equals_solider_reid_golden_values():
    golden = _golden("golden_finetune_solider_reid.json")
    case = golden["case"]
    cfg, _ = bench.finetune_config(case["arch"], height=case["height"], width=case["width"], batch=case["batch"],
                                   instances=case["instances"])
    ours = bench.our_finetune_step(cfg, case["num_classes"], case["seed"], case["epoch"])
    init_norm = sum(v.double().norm().item() for v in ours["initial"].values() if v.is_floating_point())
    assert math.isclose(init_norm, golden["init_norm"], rel_tol=1e-9), "the seeded weights are not the fixture's"

    for name in ("id", "triplet"):
        assert abs(ours["terms"][name] - golden["losses"][name]) <= bench.FT_LOSS_ABS, name
    assert abs(ours["loss"] - golden["losses"]["total"]) <= bench.FT_LOSS_ABS
    # every parameter's learning rate and weight decay: SOLIDER-REID's make_optimizer + scheduler
    assert _lr_wd_mismatches(ours["lr_wd"], golden["lr_wd"]) == []
    grads = {k: g.double().norm().item() for k, g in ours["grads"].items()}
    assert _close_norms(grads, golden["grad_norms"], rel=1e-4) == []
    after = {k: v.double().norm().item() for k, v in ours["model"].state_dict().items() if v.is_floating_point()}
    assert _close_norms(after, golden["weight_norms"], rel=1e-6) == []


@pytest.mark.slow
def test_pretrain_step_equals_solider_golden_values():
    golden = _golden("golden_pretrain_solider.json")
    case = golden["case"]
    assert golden["label_stability"] == 1.0  # the clustering of this case is not on a knife edge
    cfg = bench.pretrain_config(case["arch"], height=case["height"], width=case["width"], batch=case["batch"],
                                local_crops=case["local_crops"], out_dim=case["out_dim"])
    ours = bench.our_pretrain_step(cfg, case["seed"])
    init_norm = sum(v.double().norm().item() for v in ours["initial"].values() if v.is_floating_point())
    assert math.isclose(init_norm, golden["init_norm"], rel_tol=1e-9), "the seeded weights are not the fixture's"
    assert ours["lam"].tolist() == golden["lambda"] and ours["part"] == golden["masked_part"]

    # SOLIDER's utils.get_mask labels: the same usable views and the same label for every token
    clusters = ours["clusters"]
    assert clusters.valid.nonzero().squeeze(1).tolist() == golden["usable_views"]
    assert clusters.labels[clusters.valid].flatten(1).tolist() == golden["part_labels"]

    stats = ours["stats"]
    assert stats["loss_dino"] == pytest.approx(golden["losses"]["dino"], rel=bench.PT_LOSS_REL)
    semantic = cfg.semantic.loss_weight * stats["loss_part"]
    assert semantic == pytest.approx(golden["losses"]["semantic"], rel=bench.PT_LOSS_REL)
    assert _lr_wd_mismatches(ours["lr_wd"], golden["lr_wd"]) == []
    grads = {k: g.double().norm().item() for k, g in ours["grads"].items()}
    assert _close_norms(grads, golden["grad_norms"], rel=bench.GRAD_REL) == []
    assert ours["center"].double().norm().item() == pytest.approx(golden["center_norm"], rel=1e-5)
    teacher = {k: v.double().norm().item() for k, v in ours["teacher"].items() if v.is_floating_point()}
    assert _close_norms(teacher, golden["teacher_norms"], rel=1e-6) == []


@pytest.mark.slow
def test_the_comparison_catches_each_switch_away_from_the_reference():
    """Each deliberate difference, switched on, changes what the golden values check."""
    golden = _golden("golden_finetune_solider_reid.json")
    case = golden["case"]
    for override, changes in (("model.train_semantic_controller=true", "grads"),
                              ("train.optim.bias_param_rule=suffix", "lr_wd")):
        cfg, _ = bench.finetune_config(case["arch"], height=case["height"], width=case["width"], batch=case["batch"],
                                       instances=case["instances"], extra=[override])
        ours = bench.our_finetune_step(cfg, case["num_classes"], case["seed"], case["epoch"])
        if changes == "grads":
            assert set(ours["grads"]) > set(golden["grad_norms"]), override  # the controller now trains
        else:
            # the relative-position tables lose the 2x bias LR
            mismatched = _lr_wd_mismatches(ours["lr_wd"], golden["lr_wd"])
            assert mismatched and all("relative_position_bias_table" in n for n in mismatched), override

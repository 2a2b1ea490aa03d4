"""soliderkit.run_control: checkpoint discovery and keep-sets, seeds, the non-finite guard."""
import json
import random
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from soliderkit.run_control import (
    NonFiniteGuard,
    checkpoints_to_keep,
    derive_seed,
    find_latest_checkpoint,
    load_checkpoint,
    read_progress,
    resolve_resume,
    save_checkpoint,
    seeded,
)


def _fake_checkpoint(root: Path, name: str, **progress) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "progress.json").write_text(json.dumps(progress))
    return folder


def test_newest_checkpoint_is_found_by_its_recorded_step_not_its_name(tmp_path):
    _fake_checkpoint(tmp_path, "step_00000900", step=900, epoch=9)
    newest = _fake_checkpoint(tmp_path, "renamed_by_hand", step=1000, epoch=10)
    _fake_checkpoint(tmp_path, "zzz", step=5, epoch=0)
    (tmp_path / "step_99999999").mkdir()  # no progress.json: incomplete, never chosen
    (tmp_path / ".step_00001100.partial").mkdir()
    assert find_latest_checkpoint(tmp_path) == newest
    assert find_latest_checkpoint(tmp_path / "missing") is None


def test_keep_last_n_plus_every_kth_epoch():
    entries = [(s, {"epoch": e, "epoch_end": end}) for s, e, end in
               [(10, 1, True), (20, 2, True), (30, 3, True), (40, 4, True), (45, 4, False), (50, 5, True)]]
    assert checkpoints_to_keep(entries, None, 2) == {10, 20, 30, 40, 45, 50}  # None keeps everything
    assert checkpoints_to_keep(entries, 1, None) == {50}
    assert checkpoints_to_keep(entries, 2, 2) == {20, 40, 45, 50}  # the mid-epoch 45 is not an epoch end
    assert checkpoints_to_keep(entries, 1, 5) == {50}


def test_save_checkpoint_prunes_outside_the_keep_set(tmp_path):
    accelerator = Accelerator(cpu=True)
    accelerator.register_for_checkpointing(torch.optim.lr_scheduler.LambdaLR(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), lambda _: 1.0))
    for epoch in range(1, 5):
        save_checkpoint(accelerator, tmp_path, {"step": 10 * epoch, "epoch": epoch, "epoch_end": True},
                        keep_last=1, keep_every=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000020", "step_00000040"]
    assert read_progress(tmp_path / "step_00000040")["epoch"] == 4


def test_resume_errors_name_the_folder(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint found in"):
        resolve_resume("auto", tmp_path, required=True)
    assert resolve_resume("auto", tmp_path, required=False) is None
    (tmp_path / "not_a_checkpoint").mkdir()
    with pytest.raises(SystemExit, match="not_a_checkpoint is not a checkpoint folder"):
        resolve_resume(str(tmp_path / "not_a_checkpoint"), tmp_path, required=True)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/progress.json").write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read .*broken"):
        read_progress(tmp_path / "broken")


def test_seeded_draws_depend_on_the_seed_only_and_restore_the_global_generators():
    torch.manual_seed(0)
    random.seed(0)
    expected_torch, expected_random = torch.rand(3), random.random()
    torch.manual_seed(0)
    random.seed(0)
    with seeded(derive_seed("x", 1)):
        a = (torch.rand(2), random.random())
    with seeded(derive_seed("x", 1)):
        b = (torch.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_random
    assert derive_seed("x", 1) != derive_seed("x", 2) and derive_seed("x", 1) < 2 ** 63


def test_guard_aborts_after_too_many_non_finite_steps_in_a_row(tmp_path):
    accelerator = Accelerator(cpu=True)
    guard = NonFiniteGuard(1, script="x/run.py", checkpoint_dir=tmp_path, advice="Lower the lr")
    guard.update(False, float("nan"), step=3, epoch=1, accelerator=accelerator)
    guard.update(True, 1.0, step=4, epoch=1, accelerator=accelerator)
    guard.update(False, float("nan"), step=5, epoch=1, accelerator=accelerator)
    with pytest.raises(SystemExit, match=r"x/run.py: the loss was not finite for 2 step\(s\).*Lower the lr"):
        guard.update(False, float("nan"), step=6, epoch=1, accelerator=accelerator)


class _Planted:
    """Unpickling this creates a file: the stand-in for code a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoints_hold_no_pickle_and_a_planted_one_never_runs(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    teacher = torch.nn.Linear(2, 2)
    scheduler_like = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(teacher.parameters(), lr=0.1), 3)
    saved = save_checkpoint(accelerator, tmp_path, {"step": 7, "epoch": 1, "epoch_end": True},
                            state={"teacher": teacher, "scheduler": scheduler_like})
    assert not list(saved.glob("custom_checkpoint_*")), "our own state must not go through accelerate's pickle"
    assert {"teacher.safetensors", "teacher.json", "scheduler.json", "progress.json"} <= {p.name for p in saved.iterdir()}

    marker = tmp_path / "code_ran"
    torch.save(_Planted(marker), saved / "custom_checkpoint_0.pkl")
    expected = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        teacher.weight.zero_()
        model.weight.zero_()
    scheduler_like.step_size = 99
    with pytest.raises(SystemExit, match="custom_checkpoint_0.pkl: pickle files this toolkit never writes"):
        load_checkpoint(accelerator, saved, {"teacher": teacher, "scheduler": scheduler_like})
    assert not marker.exists()
    (saved / "custom_checkpoint_0.pkl").unlink()
    progress = load_checkpoint(accelerator, saved, {"teacher": teacher, "scheduler": scheduler_like})
    assert progress["step"] == 7
    torch.testing.assert_close(teacher.state_dict(), expected)
    assert scheduler_like.step_size == 3 and model.weight.abs().sum() > 0

    accelerator.register_for_checkpointing(teacher)  # the unsafe path is refused outright
    with pytest.raises(RuntimeError, match="unpickled"):
        load_checkpoint(accelerator, saved)
    assert not marker.exists()


def test_describe_outputs_names_what_exists(tmp_path):
    from soliderkit.run_control import describe_outputs

    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "log.jsonl").write_text("{}\n")
    _fake_checkpoint(tmp_path / "checkpoints", "step_00000042", step=42, epoch=1)
    text = describe_outputs(tmp_path, "model.safetensors")
    assert "model.safetensors" in text and "the final model" in text and "log.jsonl" in text
    assert "checkpoints/step_00000042" in text and "metrics.json" not in text

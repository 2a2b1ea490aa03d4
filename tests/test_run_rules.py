"""A results folder belongs to one run, resumes cannot silently change a run, and SIGTERM through
`accelerate launch` leaves a checkpoint (issue #17's reliability findings, both stages)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from script_loader import load_script
from soliderkit.run_control import ResultsLock

ROOT = Path(__file__).resolve().parents[1]
finetune_run = load_script("finetune/run.py")
pretrain_run = load_script("pretrain/run.py")
FT_CONFIG = str(ROOT / "configs/finetune/synthetic_tiny.yaml")
PT_CONFIG = str(ROOT / "configs/pretrain/synthetic_tiny.yaml")


def _ft(world, results, *extra):
    return ["--config", FT_CONFIG, f"dataset.train_dataset_dir={world}/bounding_box_train",
            f"dataset.query_dataset_dir={world}/query", f"dataset.test_dataset_dir={world}/bounding_box_test",
            f"results_dir={results}", "model.input_height=64", "model.input_width=32", "dataset.batch_size=8",
            "dataset.num_instances=2", "dataset.num_workers=0", "train.num_epochs=1", *extra]


def _pt(world, results, *extra):
    return ["--config", PT_CONFIG, f"results_dir={results}", f"data.path={world}/unlabeled",
            "data.batch_size_per_device=4", "data.batches_per_epoch=2", "data.local_crops_number=1",
            "model.out_dim=128", "model.head_hidden_dim=32", "model.bottleneck_dim=16",
            "semantic.part_head_hidden_dim=16", "optim.epochs=1", "optim.warmup_epochs=1",
            "knn_eval.dataset_dir=null", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_a_used_results_folder_is_never_mixed(stage, tiny_world, tmp_path, capsys):
    run, args = (finetune_run, _ft) if stage == "finetune" else (pretrain_run, _pt)
    folder = tmp_path / "r" / ("train" if stage == "finetune" else "")
    assert run.main(args(tiny_world, tmp_path / "r")) == 0
    log_before = (folder / "log.jsonl").read_text()

    with pytest.raises(SystemExit, match=r"already holds a run \(config.yaml, log.jsonl, checkpoints.*--resume.*--overwrite"):
        run.main(args(tiny_world, tmp_path / "r"))
    assert (folder / "log.jsonl").read_text() == log_before  # nothing appended, nothing replaced

    assert run.main([*args(tiny_world, tmp_path / "r"), "--overwrite"]) == 0
    [aside] = [p for p in folder.parent.iterdir() if ".replaced-" in p.name]
    assert (aside / "log.jsonl").read_text() == log_before  # the old run is kept, whole
    assert (folder / "log.jsonl").read_text().count("\n") == log_before.count("\n")

    with pytest.raises(SystemExit) as exc:
        run.main([*args(tiny_world, tmp_path / "r"), "--resume", "--overwrite"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_resume_refuses_changed_model_settings_and_a_finished_run_does_nothing(tiny_world, tmp_path, capsys):
    results = tmp_path / "r"
    assert finetune_run.main(_ft(tiny_world, results)) == 0
    config = (results / "train/config.yaml").read_text()
    with pytest.raises(SystemExit, match=r"model.feat_dim: 64 -> 32.*model.input_width: 32 -> 64"):
        finetune_run.main([*_ft(tiny_world, results, "model.feat_dim=32", "model.input_width=64"), "--resume"])
    assert finetune_run.main([*_ft(tiny_world, results, "dataset.num_workers=1"), "--resume"]) == 0
    assert "already finished its 1 epochs" in capsys.readouterr().out
    assert (results / "train/config.yaml").read_text() == config


@pytest.mark.slow
def test_pretrain_resume_needs_a_checkpoint_and_keeps_its_schedule(tiny_world, tmp_path):
    with pytest.raises(SystemExit, match="--resume: no checkpoint found in"):
        pretrain_run.main([*_pt(tiny_world, tmp_path / "none"), "--resume"])
    results = tmp_path / "r"
    assert pretrain_run.main(_pt(tiny_world, results)) == 0
    with pytest.raises(SystemExit, match=r"optim.epochs: 1 -> 12"):  # the lr schedule would jump
        pretrain_run.main([*_pt(tiny_world, results, "optim.epochs=12"), "--resume"])


def test_two_runs_cannot_write_one_folder(tiny_world, tmp_path):
    folder = tmp_path / "r" / "train"
    held = ResultsLock(folder, "someone/else.py")
    try:
        with pytest.raises(SystemExit, match=r"another run \(pid \d+ \(someone/else.py\)\) is writing to"):
            finetune_run.main(_ft(tiny_world, tmp_path / "r"))
    finally:
        held.release()
    assert not (folder / "log.jsonl").exists()


# --- SIGTERM through accelerate launch -----------------------------------------------------------

def _launch(tiny_world, results, *launch_args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "finetune/run.py"),
           *_ft(tiny_world, results, "train.num_epochs=500", "train.checkpoint_interval=100",
                "train.validation_interval=100")]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_training(results, seconds=120):
    log = Path(results) / "train/config.yaml"
    deadline = time.time() + seconds
    while not log.exists():
        assert time.time() < deadline, "the run did not start"
        time.sleep(0.5)
    time.sleep(3)  # well into the epochs


def _checkpoint_steps(results):
    return [json.loads((p / "progress.json").read_text())["step"]
            for p in (Path(results) / "train/checkpoints").glob("step_*")]


@pytest.mark.slow
def test_sigterm_to_the_single_process_launcher_alone_still_checkpoints(tiny_world, tmp_path):
    """accelerate's one-process launcher dies on SIGTERM without forwarding it; the trainer, told
    by the kernel that its parent died, saves a checkpoint instead of training on as an orphan."""
    results = tmp_path / "single"
    launcher = _launch(tiny_world, results, "--num_processes", "1")
    _wait_for_training(results)
    launcher.send_signal(signal.SIGTERM)  # the launcher only, not its process group
    launcher.wait(timeout=60)
    deadline = time.time() + 60
    while not _checkpoint_steps(results):
        assert time.time() < deadline, "no checkpoint after SIGTERM"
        time.sleep(0.5)
    [step] = _checkpoint_steps(results)
    assert 0 < step < 600  # the SIGTERM checkpoint: the first interval one would be at step 600 (epoch 100)
    deadline = time.time() + 30
    while subprocess.run(["pgrep", "-f", str(results)], capture_output=True).returncode == 0:
        assert time.time() < deadline, "the trainer kept running after its launcher died"
        time.sleep(0.5)


@pytest.mark.slow
def test_sigterm_to_a_two_process_launch_is_forwarded_and_waited_for(tiny_world, tmp_path):
    results = tmp_path / "ddp"
    launcher = _launch(tiny_world, results, "--multi_gpu", "--num_processes", "2",
                       env_extra={"ACCELERATE_USE_CPU": "1"})
    _wait_for_training(results)
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=90)
    # torch elastic sends SIGTERM to every rank and waits; when the launcher returns the
    # checkpoint is complete.
    assert _checkpoint_steps(results), output[-3000:]
    assert "SIGTERM: saved" in output


@pytest.mark.slow
def test_accelerate_launch_on_cpu_uses_the_cores(tiny_world, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", str(ROOT / "finetune/run.py"), "--dry-run",
           *_ft(tiny_world, tmp_path / "r")]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"CPU run: {os.cpu_count()} torch threads per process" in done.stdout
    explicit = subprocess.run([*cmd[:3], "--num_cpu_threads_per_process", "1", *cmd[3:]], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    assert explicit.returncode == 0 and "CPU run:" not in explicit.stdout

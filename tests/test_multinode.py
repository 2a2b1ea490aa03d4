"""Both stages as two "machines" on loopback: two ``accelerate launch --num_machines 2 --machine_rank
{0,1} --main_process_ip 127.0.0.1`` commands, one process each, gloo on the CPU -- what
``srun ... accelerate launch`` starts on two nodes (README, "Multi-node (SLURM)").

Checked: both processes see world size 2 with their own global rank; pretraining's two shard
streams are disjoint and each is exactly what ``sample_keys`` predicts for its rank (so each machine
read as its global rank, not as a local rank 0); after the last step both ranks hold identical
parameters, and different ones from the start. ``tests/multinode_probe.py`` records all three
around the unchanged stage scripts.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from soliderkit.data.build import build_shards
from soliderkit.data.stream import sample_keys

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests/multinode_probe.py"
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_machines(stage: str, args: list[str], probe: Path) -> list[subprocess.CompletedProcess]:
    port = free_port()
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PROBE_DIR": str(probe)}
    probe.mkdir(parents=True, exist_ok=True)
    machines = []
    for machine_rank in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--machine_rank", str(machine_rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               str(PROBE), stage, *args]
        machines.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
    done = []
    try:
        for machine in machines:
            out, err = machine.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(machine.args, machine.returncode, out, err))
    finally:
        for machine in machines:
            if machine.poll() is None:
                machine.kill()
    for machine_rank, result in enumerate(done):
        assert result.returncode == 0, f"machine {machine_rank}:\n{result.stderr[-3000:]}"
    return done


def probe_records(probe: Path) -> list[dict]:
    records = [json.loads((probe / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["rank"], r["world_size"], r["rank_env"]) for r in records] == [(0, 2, 0), (1, 2, 1)]
    assert records[0]["at_end"] == records[1]["at_end"]  # DDP kept the replicas identical
    assert records[0]["after_prepare"] == records[1]["after_prepare"]
    assert len(records[0]["at_end"]) == len(records[0]["after_prepare"])
    assert all(a != b for a, b in zip(records[0]["at_end"], records[0]["after_prepare"]))  # the steps changed them
    return records


@pytest.mark.slow
def test_pretraining_on_two_machines(tiny_world, tmp_path):
    shards = tmp_path / "shards"
    build_shards(tiny_world / "unlabeled", shards, maxcount=8)
    results, probe = tmp_path / "results", tmp_path / "probe"
    batch, steps, buffer = 4, 2, 8
    done = launch_two_machines("pretrain", [
        "--config", str(ROOT / "configs/pretrain/synthetic_tiny.yaml"), f"results_dir={results}",
        "data.kind=shards", f"data.path={shards}", f"data.batch_size_per_device={batch}",
        f"data.batches_per_epoch={steps}", f"data.shuffle_buffer={buffer}", "data.num_workers=0",
        "data.local_crops_number=1", "model.out_dim=128", "model.head_hidden_dim=32", "model.bottleneck_dim=16",
        "semantic.part_head_hidden_dim=16", "optim.epochs=1", "optim.warmup_epochs=0", "knn_eval.dataset_dir=null",
    ], probe)
    assert "world size 2" in done[0].stdout
    log = [json.loads(line) for line in (results / "log.jsonl").read_text().splitlines()]
    assert log and {r["world_size"] for r in log} == {2}
    probe_records(probe)

    keys = [(probe / f"keys_rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert [len(k) for k in keys] == [batch * steps] * 2
    assert not set(keys[0]) & set(keys[1])  # disjoint streams
    for rank in (0, 1):  # each machine read the stream of its global rank
        assert keys[rank] == sample_keys(shards, rank=rank, world_size=2, num_workers=0, resampled=True, seed=0,
                                         batch_size=batch, batches_per_epoch=steps, shuffle_buffer=buffer)[0]


@pytest.mark.slow
def test_fine_tuning_on_two_machines(tiny_world, tmp_path):
    results, probe = tmp_path / "results", tmp_path / "probe"
    done = launch_two_machines("finetune", [
        "--config", str(ROOT / "configs/finetune/synthetic_tiny.yaml"),
        f"dataset.train_dataset_dir={tiny_world}/bounding_box_train", f"dataset.query_dataset_dir={tiny_world}/query",
        f"dataset.test_dataset_dir={tiny_world}/bounding_box_test", f"results_dir={results}",
        "model.input_height=64", "model.input_width=32", "dataset.batch_size=8", "dataset.num_instances=2",
        "dataset.num_workers=0", "train.num_epochs=1", "train.checkpoint_interval=1", "train.validation_interval=1",
    ], probe)
    assert "training on 2 process(es)" in done[0].stdout
    probe_records(probe)
    assert (results / "train/metrics.json").is_file()

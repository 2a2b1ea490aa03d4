"""Run a stage script (``pretrain/run.py`` / ``finetune/run.py``) in this process and record, for
``tests/test_multinode.py``, what one "machine" of a multi-node run did:

* ``PROBE_DIR/rank{R}.json``: the rank and world size Accelerate gave this process, and a
  SHA-256 of every prepared model's parameters right after ``accelerator.prepare`` and at
  ``accelerator.end_training`` (after the last step);
* ``PROBE_DIR/keys_rank{R}.txt``: the shard sample keys this rank trained on, in order (the
  shard loader is asked for its keys, which are stripped again before the run sees a batch).

    PROBE_DIR=... accelerate launch ... tests/multinode_probe.py pretrain --config ... key=value ...

Nothing of the stage script is changed; only ``make_shard_loader`` and two ``Accelerator`` methods
are wrapped.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import accelerate
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from script_loader import load_script  # noqa: E402

import soliderkit.data.stream as stream  # noqa: E402

OUT = Path(os.environ["PROBE_DIR"])
RANK = int(os.environ.get("RANK", "0"))
record: dict = {"rank_env": RANK}


def parameters_digest(accelerator: accelerate.Accelerator) -> list[str]:
    """One hex digest per prepared model, over its parameters in name order (BatchNorm running
    statistics are left out: DDP copies them from rank 0 at the start of a forward, so after the
    last step each rank holds its own batch's)."""
    digests = []
    for model in accelerator._models:
        digest = hashlib.sha256()
        for name, param in sorted(accelerator.unwrap_model(model).named_parameters()):
            digest.update(name.encode())
            digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        digests.append(digest.hexdigest())
    return digests


original_prepare = accelerate.Accelerator.prepare
original_end = accelerate.Accelerator.end_training


def prepare(self, *args, **kwargs):
    result = original_prepare(self, *args, **kwargs)
    record["after_prepare"] = parameters_digest(self)  # the last call (fine-tuning prepares twice)
    return result


def end_training(self):
    record.update(rank=self.process_index, world_size=self.num_processes, at_end=parameters_digest(self))
    (OUT / f"rank{RANK}.json").write_text(json.dumps(record))
    return original_end(self)


accelerate.Accelerator.prepare = prepare
accelerate.Accelerator.end_training = end_training


class KeyRecordingLoader(stream.ShardLoader):
    def __iter__(self):
        with open(OUT / f"keys_rank{RANK}.txt", "a", encoding="utf-8") as keys_file:
            for batch, keys in super().__iter__():
                keys_file.write("".join(key + "\n" for key in keys))
                keys_file.flush()
                yield batch


original_make_shard_loader = stream.make_shard_loader


def make_shard_loader(*args, **kwargs):
    loader = original_make_shard_loader(*args, **{**kwargs, "return_keys": True})
    loader.__class__ = KeyRecordingLoader
    return loader


stream.make_shard_loader = make_shard_loader

if __name__ == "__main__":
    stage, argv = sys.argv[1], sys.argv[2:]
    sys.exit(load_script(f"{stage}/run.py").main(argv))

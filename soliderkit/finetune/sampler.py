"""P x K identity sampling, split across processes without overlap.

Every step each process gets P identities x K images (SOLIDER-REID / TAO
``RandomIdentitySampler``, bag-of-tricks). Identities with fewer than K images are
sampled with replacement. One global batch of ``world_size * P`` identities is drawn per
step and each process takes its own contiguous slice of identities, so no image group is
seen twice in a step and every process sees the same number of batches (DDP never waits
on a rank that ran out). The order is a pure function of (seed, epoch), and
``set_epoch(epoch, start_batch)`` skips the batches a resumed run already trained. With
``sample_seeds=True`` every index comes with its own augmentation seed, a function of
(seed, epoch, step, position), so the augmented images do not depend on where a run was
interrupted or how many loader workers there are.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np

from soliderkit.run_control import derive_seed


class IdentityBatchSampler:
    """Yields lists of dataset indices, ``ids_per_batch * num_instances`` per batch, for one rank."""

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, sample_seeds: bool = False):
        if batch_size % num_instances:
            raise ValueError(f"per-process batch size {batch_size} is not a multiple of "
                             f"num_instances={num_instances}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.index_by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            self.index_by_pid[int(pid)].append(index)
        self.pids = sorted(self.index_by_pid)
        self.num_instances = num_instances
        self.ids_per_rank = batch_size // num_instances
        self.ids_per_step = self.ids_per_rank * world_size
        if len(self.pids) < self.ids_per_step:
            raise ValueError(f"{len(self.pids)} identities cannot fill a step of {self.ids_per_step} "
                             f"identities ({world_size} processes x {self.ids_per_rank}); lower the "
                             "batch size or raise num_instances")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.sample_seeds = sample_seeds
        self.epoch, self.start = 0, 0
        self._plan: tuple[int, list] | None = None  # (epoch, steps): len() and iter() share one draw

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def _global_steps(self) -> list[list[list[int]]]:
        """The epoch's steps, each a list of ``ids_per_step`` groups of K indices."""
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, self._draw_steps())
        return self._plan[1]

    def _draw_steps(self) -> list[list[list[int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups_by_pid = {}
        for pid in self.pids:
            indices = self.index_by_pid[pid]
            replace = len(indices) < self.num_instances
            count = self.num_instances if replace else len(indices)
            drawn = rng.choice(indices, size=count, replace=replace).tolist()
            whole = len(drawn) // self.num_instances * self.num_instances
            groups_by_pid[pid] = [drawn[i:i + self.num_instances] for i in range(0, whole, self.num_instances)]
        steps = []
        available = [pid for pid in self.pids if groups_by_pid[pid]]
        while len(available) >= self.ids_per_step:
            chosen = rng.choice(len(available), size=self.ids_per_step, replace=False)
            steps.append([groups_by_pid[available[i]].pop() for i in chosen])
            available = [pid for pid in available if groups_by_pid[pid]]
        return steps

    def __iter__(self) -> Iterator[list]:
        first = self.rank * self.ids_per_rank
        steps = self._global_steps()
        for j in range(min(self.start, len(steps)), len(steps)):
            batch = [index for group in steps[j][first:first + self.ids_per_rank] for index in group]
            if self.sample_seeds:
                offset = first * self.num_instances
                batch = [(index, derive_seed("finetune-sample", self.seed, self.epoch, j, offset + k))
                         for k, index in enumerate(batch)]
            yield batch

    def __len__(self) -> int:
        return max(len(self._global_steps()) - self.start, 0)

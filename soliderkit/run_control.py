"""Run control both training loops share: stop on SIGTERM, skip non-finite steps, checkpoints.

- :class:`StopRequest`: SIGTERM sets a flag; the loop saves a checkpoint at the end of the
  current step and exits 0 (how SLURM / Kubernetes stop a job).
- :class:`StepControl`: the per-step checks of both loops without a host sync. A non-finite
  loss on any process skips the optimizer step on the device (fused optimizers take a
  ``found_inf`` flag, as under a GradScaler: :func:`optimizer_step`); the streak of such steps
  is counted on the device and read, with the stop request of every process, in one collective
  per logging interval (:meth:`StepControl.check`). A single process looks at SIGTERM after
  every step (a host flag: no sync); several processes agree on it at the next check.
- :class:`NonFiniteGuard`: counts skipped steps in a row and aborts with advice after N.
- Checkpoints are ``checkpoints/step_NNNNNNNN/`` folders: the accelerate state plus our own
  state as safetensors + JSON (never pickle) and ``progress.json`` (our counters), all written
  before the folder is renamed into place, so a folder with ``progress.json`` is complete. The
  newest is found by the step recorded there, never by sorting names; :func:`save_checkpoint`
  keeps the last N plus the ones taken at the end of every K-th epoch.
- :func:`derive_seed` / :func:`rng_neutral`: random draws that depend only on (seed, position),
  so a run stopped and resumed mid-epoch draws what an uninterrupted one draws.
- :func:`claim_results_dir`: a results folder belongs to one run. A new run into a folder
  that holds one stops (``--resume`` continues it, ``--overwrite`` moves it aside first); a
  lock keeps two runs from writing into one folder at once; :func:`resume_conflicts` names
  the settings a resumed run may not change.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
from pathlib import Path
from typing import Iterable, Iterator

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from soliderkit.io import move_aside

PROGRESS_FILE = "progress.json"


# ------------------------------------------------------------------------------ randomness

def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any parts (Python's ``hash`` of strings varies per process)."""
    text = ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU RNG and Python's ``random`` seeded by ``seed``; both global
    generators are restored afterwards (torchvision and timm augmentations draw from them)."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also seed (and leave changed) the CUDA /
        # XPU / MTIA generators, and before CUDA starts it queues each call with a formatted stack
        # trace, which was 45% of the demo's per-image loading time.
        torch.random.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


def rng_neutral(iterable: Iterable) -> Iterator:
    """Iterate without touching the global CPU RNG.

    A DataLoader draws its workers' base seed from the global generator when an iterator is
    created; a run resumed mid-epoch creates it at another point than an uninterrupted run,
    which would shift every later draw (λ, masks, drop-path, dropout).
    """
    iterator = None
    while True:
        with torch.random.fork_rng(devices=[]):
            if iterator is None:
                iterator = iter(iterable)
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


# ------------------------------------------------------------------------------ stop and skip

def _parent_words() -> list[str]:
    try:
        cmdline = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []
    return [w.decode(errors="replace") for w in cmdline if w]


def _parent_is_accelerate_launcher() -> bool:
    words = [Path(w).name for w in _parent_words()]
    # `accelerate launch ...` or `python -m accelerate.commands.launch ...`
    return ("accelerate" in words and "launch" in words) or "accelerate.commands.launch" in words


def use_the_cpu_cores(accelerator: Accelerator) -> int | None:
    """Undo accelerate's one-thread default on CPU: give each process its share of the cores.

    Without a config file `accelerate launch` sets OMP_NUM_THREADS=1 for a CPU run, which made
    the README's commands several times slower than `python run.py`. Only when the launcher
    was given no thread count (neither ``--num_cpu_threads_per_process`` nor OMP_NUM_THREADS in
    its own environment); returns the number of threads set, or None when left alone.
    """
    if accelerator.device.type != "cpu" or not _parent_is_accelerate_launcher():
        return None
    if any(w.startswith("--num_cpu_threads_per_process") for w in _parent_words()):
        return None
    try:
        parent_env = Path(f"/proc/{os.getppid()}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    if any(item.startswith(b"OMP_NUM_THREADS=") for item in parent_env):
        return None
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)), 1)
    threads = max((os.cpu_count() or 1) // local, 1)
    torch.set_num_threads(threads)
    return threads


def _terminate_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies.

    accelerate's single-process launcher neither forwards SIGTERM nor waits: killed alone, it
    dies and leaves the trainer running with no one to stop it. With this, the trainer gets
    the signal too and saves a checkpoint. Only under that launcher: a trainer started from a
    shell must survive the shell (nohup, a closed terminal).
    """
    if not sys.platform.startswith("linux") or not _parent_is_accelerate_launcher():
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


class StopRequest:
    """SIGTERM sets ``requested``; the loop checkpoints at the end of the current step and exits 0."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> "StopRequest":
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        _terminate_with_parent()
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)


class NonFiniteGuard:
    """Skipped (non-finite) steps in a row; more than ``max_in_a_row`` aborts the run."""

    def __init__(self, max_in_a_row: int, *, script: str, checkpoint_dir: Path, advice: str):
        self.max_in_a_row, self.script = max_in_a_row, script
        self.checkpoint_dir, self.advice = checkpoint_dir, advice
        self.streak = 0

    def update(self, finite: bool, loss: float, *, step: int, epoch: int, accelerator: Accelerator) -> None:
        if finite:
            self.streak = 0
            return
        self.streak += 1
        accelerator.print(f"warning: non-finite loss ({loss}) at step {step}; step skipped "
                          f"({self.streak} in a row)", file=sys.stderr)
        if self.streak > self.max_in_a_row:
            raise SystemExit(
                f"{self.script}: the loss was not finite for {self.streak} step(s) in a row (last: step {step}, "
                f"epoch {epoch}); train.max_nan_steps={self.max_in_a_row}. {self.advice}, or resume from the "
                f"last checkpoint in {self.checkpoint_dir}")


def fused_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make ``optimizer`` (SGD / Adam / AdamW, all of whose parameters are floating point on one
    device type that has fused kernels) run fused and ready to skip a step on the device.

    Fused kernels update every parameter of a group in one launch and take ``found_inf``: a
    flag tensor that turns the update into a no-op (step counts included) without the host
    reading it; torch's GradScaler uses the same hook. SGD's momentum buffers are created as
    zeros here: torch's fused SGD leaves them uninitialised when its very first step is skipped,
    and with ``dampening=0`` a zero buffer gives the same first update as the lazy copy.
    Returns the optimizer; one that cannot be fused is left as it is (:func:`optimizer_step`
    then reads the flag on the host).
    """
    kinds = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not isinstance(optimizer, kinds) or not params:
        return optimizer
    supported = _get_fused_kernels_supported_devices()
    if any(not p.is_floating_point() or p.device.type not in supported for p in params):
        return optimizer
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and any(
            g.get("amsgrad") or g.get("differentiable") for g in optimizer.param_groups):
        return optimizer
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
        if isinstance(optimizer, torch.optim.SGD) and group["momentum"] != 0 and group["dampening"] == 0:
            for p in group["params"]:
                optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format))
        if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            for p in group["params"]:  # fused kernels keep step counts beside the parameters
                step = optimizer.state.get(p, {}).get("step")
                if torch.is_tensor(step) and step.device != p.device:
                    optimizer.state[p]["step"] = step.to(p.device)
    optimizer._step_supports_amp_scaling = True
    return optimizer


def is_fused(optimizer) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    return bool(inner.param_groups) and all(g.get("fused") for g in inner.param_groups)


def optimizer_step(optimizer, skip: torch.Tensor, scaler=None) -> None:
    """``optimizer.step()`` unless ``skip`` (a 0-d device tensor, nonzero = skip) is set.

    With a GradScaler (fp16) the scaler decides: a non-finite loss makes non-finite gradients,
    which it skips like any overflow. A fused optimizer gets ``skip`` as its ``found_inf``: no
    host sync. Any other optimizer reads ``skip`` on the host (one sync).
    """
    if scaler is not None:
        optimizer.step()
        return
    inner = getattr(optimizer, "optimizer", optimizer)
    if is_fused(inner):
        inner.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del inner.found_inf
    elif not bool(skip):
        optimizer.step()


def nonfinite_flag(accelerator: Accelerator, loss: torch.Tensor) -> torch.Tensor:
    """1.0 when ``loss`` is not finite on some process, else 0.0: a 0-d tensor on the device, the
    same on every process (one small all-reduce when there are several; no host sync)."""
    flag = (~torch.isfinite(loss.detach().float())).any().float()
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum").clamp(max=1.0)
    return flag


class StepControl:
    """What the loop must know after each step, kept on the device until one read per interval.

    ``skip = control.nonfinite(loss)`` before the optimizer step: 1 when the loss is not finite
    on some process (the same 0-d tensor on every process, one small all-reduce on the device, no
    host sync); ``control.record(skip, step)`` after it. ``control.stop_now()`` is for every step:
    a single process answers SIGTERM at once from the host flag; with several processes it is
    False and :meth:`check` (every logging interval, before checkpoints) reads, in one collective,
    the stop requests of all processes and the non-finite streak: it warns about skipped steps and
    raises :class:`NonFiniteGuard`'s error when more than ``max_nan_steps`` came in a row.
    """

    def __init__(self, accelerator: Accelerator, stop: StopRequest, guard: NonFiniteGuard):
        self.accelerator, self.stop, self.guard = accelerator, stop, guard
        device = accelerator.device
        self.world = accelerator.num_processes
        self.streak = torch.full((), float(guard.streak), device=device)  # non-finite steps in a row, now
        self.skipped = torch.zeros((), device=device)  # non-finite steps since the last check
        self.last_skipped = torch.full((), -1.0, device=device)  # step of the newest of them
        self.exceeded = torch.full((), -1.0, device=device)  # first step whose streak passed max_nan_steps
        self.exceeded_streak = torch.zeros((), device=device)
        self._pending: torch.Tensor | None = None  # skip flag of the micro-batches accumulated so far

    def nonfinite(self, loss: torch.Tensor) -> torch.Tensor:
        return nonfinite_flag(self.accelerator, loss)

    def skip_flag(self, flag: torch.Tensor, sync_gradients: bool) -> torch.Tensor:
        """The flag for the optimizer step: with gradient accumulation, a non-finite micro-batch
        (its NaN gradients are in the sum) skips the whole accumulated step."""
        pending = flag if self._pending is None else torch.maximum(self._pending, flag)
        self._pending = None if sync_gradients else pending
        return pending

    def record(self, skip: torch.Tensor, step: int) -> None:
        self.streak = (self.streak + 1.0) * skip
        self.skipped = self.skipped + skip
        self.last_skipped = torch.where(skip > 0, float(step), self.last_skipped)
        first = (self.streak > self.guard.max_in_a_row) & (self.exceeded < 0)
        self.exceeded = torch.where(first, float(step), self.exceeded)
        self.exceeded_streak = torch.where(first, self.streak, self.exceeded_streak)

    def stop_now(self) -> bool:
        return self.world == 1 and self.stop.requested

    def check(self, *, step: int, epoch: int) -> bool:
        """One collective and one host read. Returns whether some process was asked to stop."""
        values = torch.stack([self.skipped, self.last_skipped, self.exceeded, self.exceeded_streak, self.streak,
                              torch.full((), float(self.stop.requested), device=self.skipped.device)])
        if self.world > 1:  # the first five are equal on every process; stop requests add up
            values = self.accelerator.reduce(values, reduction="sum") / torch.tensor(
                [self.world] * 5 + [1], dtype=values.dtype, device=values.device)
        skipped, last, exceeded, exceeded_streak, streak, stop = values.tolist()
        self.guard.streak = round(streak)
        self.skipped.zero_()
        if skipped:
            self.accelerator.print(f"warning: non-finite loss in {round(skipped)} step(s) up to step "
                                   f"{int(last) + 1}; those steps were skipped", file=sys.stderr)
        if exceeded >= 0:
            g = self.guard
            raise SystemExit(
                f"{g.script}: the loss was not finite for {round(exceeded_streak)} step(s) in a row (at step "
                f"{int(exceeded) + 1}, epoch {epoch}; seen at the check after step {step}); train.max_nan_steps="
                f"{g.max_in_a_row}. {g.advice}, or resume from the last checkpoint in {g.checkpoint_dir}")
        return stop > 0


class DeviceSums:
    """Per-step values summed on the device, read on the host once (a logging interval, an epoch).

    ``add(values, skip)``: ``values`` maps names to 0-d tensors or host floats (written into a
    device tensor by a fill, not a copy: no sync); a missing name, a non-finite value, or every
    value of a step whose ``skip`` flag is set, is left out of its mean. ``means()`` returns
    ``{name: mean}`` for the names seen at least once, plus ``steps``; with ``accelerator`` the
    sums of every process are added first (the read's one collective).
    """

    def __init__(self, keys: Iterable[str], device: torch.device):
        self.keys, self.device = list(keys), device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
        self.counts = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
        self.steps = 0

    def add(self, values: dict, skip: torch.Tensor | None = None) -> None:
        self.steps += 1
        row = []
        for key in self.keys:
            value = values.get(key, math.nan)
            row.append(value.detach().reshape(()).float() if torch.is_tensor(value)
                       else torch.full((), float(value), device=self.device))
        vector = torch.stack(row).double()
        keep = torch.isfinite(vector)
        if skip is not None:
            keep = keep & (skip == 0)
        self.sums += torch.where(keep, vector, 0.0)
        self.counts += keep.double()

    def means(self, accelerator: Accelerator | None = None) -> dict[str, float]:
        n = len(self.keys)
        vector = torch.cat([self.sums, self.counts])
        if accelerator is not None and accelerator.num_processes > 1:
            vector = accelerator.reduce(vector, reduction="sum")
        values = vector.tolist()
        out = {k: values[i] / values[n + i] for i, k in enumerate(self.keys) if values[n + i] > 0}
        out["steps"] = self.steps
        return out


# ------------------------------------------------------------------------------ checkpoints

def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def read_progress(folder: str | Path) -> dict:
    """The counters a checkpoint folder recorded; a clear error when it is not one of ours."""
    path = Path(folder) / PROGRESS_FILE
    if not path.is_file():
        raise SystemExit(f"resume: {folder} is not a checkpoint folder written by this toolkit "
                         f"(no {PROGRESS_FILE})")
    try:
        progress = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"resume: cannot read {path}: {exc}") from None
    if not isinstance(progress, dict) or not isinstance(progress.get("step"), int):
        raise SystemExit(f"resume: {path} has no integer 'step'")
    return progress


def _checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path, dict]]:
    found = []
    for folder in Path(checkpoint_dir).glob("*"):
        if folder.is_dir() and not folder.name.startswith(".") and (folder / PROGRESS_FILE).is_file():
            progress = read_progress(folder)
            found.append((progress["step"], folder, progress))
    return sorted(found, key=lambda item: (item[0], item[1].name))


def find_latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest recorded step, or None."""
    found = _checkpoints(Path(checkpoint_dir))
    return found[-1][1] if found else None


def _write_state(obj, folder: Path, name: str) -> None:
    """``obj.state_dict()`` as ``<name>.safetensors`` (its tensors) + ``<name>.json`` (the rest)."""
    state = obj.state_dict()
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    save_file(tensors, str(folder / f"{name}.safetensors"))
    try:
        text = json.dumps(rest)
    except TypeError as exc:
        raise TypeError(f"checkpoint state {name!r} holds a value that is neither a tensor nor JSON: {exc}") from None
    (folder / f"{name}.json").write_text(text + "\n")


def _read_state(obj, folder: Path, name: str) -> None:
    tensors, rest = folder / f"{name}.safetensors", folder / f"{name}.json"
    if not tensors.is_file() or not rest.is_file():
        raise SystemExit(f"resume: {folder} lacks {tensors.name} / {rest.name} (a checkpoint of another "
                         "kind of run, or an older version of the toolkit)")
    obj.load_state_dict({**json.loads(rest.read_text()), **load_file(str(tensors))})


def save_state_atomically(accelerator: Accelerator, final: Path, extra_files: dict[str, str] | None = None,
                          extra_state: dict | None = None) -> Path:
    """``accelerator.save_state`` into ``.<name>.partial`` beside ``final``, then rename.

    Every process takes part (each saves its own RNG state); the main process writes
    ``extra_files`` (name -> text) and ``extra_state`` (name -> object with ``state_dict``, as
    safetensors + JSON, never pickle) into the folder before the rename, so a reader never
    sees a half-written checkpoint.
    """
    final = Path(final)
    partial = final.parent / f".{final.name}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for name, obj in (extra_state or {}).items():
                _write_state(obj, partial, name)
            for name, text in (extra_files or {}).items():
                (partial / name).write_text(text)
    except OSError as exc:  # disk full, quota, permissions: keep what is there, say what happened
        shutil.rmtree(partial, ignore_errors=True)
        previous = find_latest_checkpoint(final.parent)
        raise SystemExit(f"could not write checkpoint {final} ({exc}); nothing was replaced"
                         + (f": the newest complete checkpoint is {previous}" if previous else "")) from None
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final


def checkpoints_to_keep(entries: list[tuple[int, dict]], keep_last: int | None,
                        keep_every: int | None) -> set[int]:
    """Steps to keep among ``(step, progress)`` entries: the ``keep_last`` newest (all when None)
    plus every checkpoint taken at the end of an epoch that is a multiple of ``keep_every``."""
    steps = sorted(step for step, _ in entries)
    if keep_last is None:
        return set(steps)
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    if keep_every:
        keep |= {step for step, p in entries if p.get("epoch_end") and p["epoch"] % keep_every == 0}
    return keep


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, progress: dict, *, state: dict | None = None,
                    keep_last: int | None = None, keep_every: int | None = None) -> Path:
    """Save the accelerate state (prepared models, optimizers, RNG), ``state`` (name -> object
    with ``state_dict``: the teacher, the DINO center, a scheduler) and ``progress`` (must hold
    ``step``, ``epoch`` = epochs done, ``epoch_end``) as ``step_NNNNNNNN``; then delete older
    checkpoints outside the keep set. The new checkpoint is always kept."""
    final = save_state_atomically(accelerator, Path(checkpoint_dir) / checkpoint_name(progress["step"]),
                                  {PROGRESS_FILE: json.dumps(progress) + "\n"}, state)
    if accelerator.is_main_process:
        found = _checkpoints(Path(checkpoint_dir))
        keep = checkpoints_to_keep([(step, p) for step, _, p in found], keep_last, keep_every)
        for step, folder, _ in found:
            if folder != final and step not in keep:
                shutil.rmtree(folder)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, folder: str | Path, state: dict | None = None) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the recorded progress.

    Nothing is unpickled: accelerate reads its model / optimizer / RNG files with
    ``weights_only=True``, and custom objects are never registered with it (it would unpickle
    ``custom_checkpoint_N.pkl`` files with ``weights_only=False``); ours are safetensors + JSON.
    """
    folder = Path(folder)
    progress = read_progress(folder)
    if accelerator._custom_objects:  # noqa: SLF001 - the one place that could unpickle
        raise RuntimeError("objects registered with accelerator.register_for_checkpointing would be "
                           "unpickled on load; pass them as `state` instead")
    planted = sorted(p.name for p in folder.glob("custom_checkpoint_*"))
    if planted:
        raise SystemExit(f"resume: {folder} holds {', '.join(planted)}: pickle files this toolkit never writes "
                         "(unpickling can run code), so the checkpoint was not loaded")
    accelerator.load_state(str(folder))
    for name, obj in (state or {}).items():
        _read_state(obj, folder, name)
    return progress


def resolve_resume(resume: str | None, checkpoint_dir: Path, *, required: bool) -> Path | None:
    """The checkpoint to resume from: ``"auto"`` = the newest in ``checkpoint_dir`` (an error when
    ``required`` and there is none, else a fresh start), a path = that folder, None = fresh."""
    if resume is None:
        return None
    if resume == "auto":
        latest = find_latest_checkpoint(checkpoint_dir)
        if latest is None and required:
            raise SystemExit(f"--resume: no checkpoint found in {checkpoint_dir}")
        return latest
    read_progress(resume)  # a clear error when it is not a checkpoint folder
    return Path(resume)


# ------------------------------------------------------------------------------ results folders

RUN_MARKERS = ("config.yaml", "log.jsonl", "checkpoints", "metrics.json")
LOCK_FILE = ".run.lock"


class ResultsLock:
    """An exclusive ``fcntl`` lock on ``<folder>/.run.lock`` held for the life of a run."""

    def __init__(self, folder: Path, script: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LOCK_FILE
        self._handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            raise SystemExit(f"{script}: another run ({holder}) is writing to {folder}; wait for it to end "
                             "or choose another results_dir") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()} ({script})\n")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def holds_run(folder: Path) -> list[str]:
    """The run files ``folder`` holds (empty when it is new or empty)."""
    return [name for name in RUN_MARKERS if (Path(folder) / name).exists()]


def claim_results_dir(accelerator: Accelerator, folder: Path, *, resume_from: Path | None, overwrite: bool,
                      script: str, cleanup: contextlib.ExitStack, config: dict, fixed: tuple[str, ...],
                      free: tuple[str, ...]) -> None:
    """Make ``folder`` this run's: refuse to mix runs, move an old run aside with ``overwrite``,
    lock it (main process; released by ``cleanup``) and, when resuming, refuse settings in
    ``config`` that differ from the run's under the ``fixed`` prefixes (see
    :func:`check_resume_config`). Every process returns or exits together."""
    lock = _claim(accelerator, Path(folder), resume=resume_from is not None, overwrite=overwrite, script=script)
    if lock is not None:
        cleanup.callback(lock.release)
    if resume_from is not None:
        check_resume_config(folder, config, fixed, free, script)


def _claim(accelerator: Accelerator, folder: Path, *, resume: bool, overwrite: bool, script: str) -> ResultsLock | None:
    message, lock = "", None
    if accelerator.is_main_process:
        found = holds_run(folder)
        if found and not resume and not overwrite:
            message = (f"{script}: {folder} already holds a run ({', '.join(found)}); continue it with --resume, "
                       "or start over with --overwrite (the old run is moved aside, not deleted), or choose "
                       "another results_dir")
        elif found and overwrite and not resume:
            try:
                ResultsLock(folder, script).release()  # never move a folder another run is writing to
                aside = move_aside(folder)
                print(f"--overwrite: moved the previous run to {aside}")
            except SystemExit as exc:
                message = str(exc)
        if not message:
            try:
                lock = ResultsLock(folder, script)
            except SystemExit as exc:
                message = str(exc)
    failed = accelerator.reduce(torch.tensor([float(bool(message))], device=accelerator.device), reduction="sum")
    if failed.item() > 0:
        raise SystemExit(message or f"{script}: the main process could not claim {folder} (see its message)")
    return lock


def resume_conflicts(saved: dict, current: dict, fixed: tuple[str, ...], free: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys under the ``fixed`` prefixes (minus the ``free`` ones) whose values differ
    between the run's saved config and the resumed one, as ``key: old -> new``."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    old, new = flat(saved), flat(current)
    conflicts = []
    for key in sorted(set(old) | set(new)):
        if not any(key == f or key.startswith(f + ".") for f in fixed):
            continue
        if any(key == f or key.startswith(f + ".") for f in free):
            continue
        if old.get(key) != new.get(key):
            conflicts.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return conflicts


def check_resume_config(folder: Path, current: dict, fixed: tuple[str, ...], free: tuple[str, ...],
                        script: str) -> None:
    """Stop a resume whose settings differ from the run's saved ``config.yaml`` in a field that
    changes the model, the data or the schedules (naming each field)."""
    import yaml  # the resolved config is plain YAML

    path = Path(folder) / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"{script}: cannot read the run's saved config {path}: {exc}") from None
    conflicts = resume_conflicts(saved, current, fixed, free)
    if conflicts:
        raise SystemExit(f"{script}: --resume with settings that change the model, data or schedules of the run "
                         f"in {folder}: {'; '.join(conflicts)}. Resume with the saved values ({path}), or start a "
                         "new run (another results_dir, or --overwrite) initialised from this run's weights")


def describe_outputs(folder: Path, final_model: str) -> str:
    """Where a finished (or stopped) run put its outputs, one line per item that exists."""
    folder = Path(folder)
    items = [(final_model, "the final model"), ("metrics.json", "validation metrics (percent)"),
             ("config.yaml", "the resolved config"), ("log.jsonl", "per-step / per-epoch log"),
             ("tensorboard", "TensorBoard events")]
    lines = [f"outputs in {folder}:"]
    lines += [f"  {name:<26} {what}" for name, what in items if (folder / name).exists()]
    latest = find_latest_checkpoint(folder / "checkpoints")
    if latest is not None:
        lines.append(f"  {'checkpoints/' + latest.name:<26} newest checkpoint (--resume continues from it)")
    return "\n".join(lines)

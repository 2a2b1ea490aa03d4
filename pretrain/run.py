"""Stage 1: DINO + SOLIDER self-supervised pretraining of the shared Swin backbone.

    accelerate launch pretrain/run.py --config configs/pretrain/synthetic_tiny.yaml [--dry-run] [--resume] [key=value ...]

One iteration, in the order of DINO's ``main_dino.py`` with SOLIDER's additions
(``main_solider.py``): set LR / weight decay from the per-iteration schedules; draw λ per
image; teacher pass on the two global views (at each image's λ for the DINO targets and, with
``semantic.enabled``, at λ = 1 for the stage-4 tokens that are clustered into background /
body parts); copy the global views with one part blacked out (``semantic.mask_part``); student pass
on all views plus the masked copies; DINO loss + λ-weighted part-classification loss; skip
the step if the loss is not finite; backward, per-parameter gradient clipping, last layer
frozen during the first epoch(s), AdamW step; teacher EMA from the unwrapped student; center
update.

Accelerate owns devices, DDP and mixed precision; only the student (backbone + DINO head +
part classifier) and the optimizer are prepared. The teacher is a plain module on the
device, never wrapped; it is saved with ``accelerator.save_state`` next to the center and
the progress counters (global step, data epoch, batch within the epoch), so a resumed run
continues at the same step with the same schedules, data and random numbers.

Outputs in ``results_dir``: ``config.yaml``, ``log.jsonl`` (+ TensorBoard), checkpoints
``checkpoints/step_NNNNNNNN`` (at epoch ends and on SIGTERM; ``soliderkit.run_control``), and after every
epoch ``backbone.safetensors`` (teacher backbone incl. the semantic controller: what
``finetune/run.py`` loads via ``model.pretrained_model_path``) and ``dino_head.safetensors``
(teacher head + center: ``model.init_head_from`` of a continuation run) and
``student.safetensors`` (student backbone + head: ``model.init_student_from``).

Each deliberate difference from SOLIDER is a switch whose default is SOLIDER's behaviour
(docs/REPRODUCTION.md): ``semantic.part_classifier`` (SOLIDER's fixed random cosine head, or a
trained MLP), ``semantic.mask_part`` (one part per batch, or per view), ``semantic.clustering``
(per-view scikit-learn, or batched torch on the device), ``optim.decay_position_tables``,
``model.init_student_from`` / ``model.init_center`` (phase-2 initialisation) and
``dino.teacher_temp_schedule``. Fixed without a switch: resuming continues the epoch, step and
schedules (SOLIDER's ``--resume`` restarts at epoch 0 with fresh schedules and center); a batch
without a usable view contributes no part loss (SOLIDER's step fails on it).
``bench/compare_with_reference.py pretrain`` checks one step against SOLIDER's own code.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from tqdm.auto import tqdm

from soliderkit.backbone import build_backbone, load_state, read_checkpoint, save_backbone
from soliderkit.config import (
    add_config_args,
    config_to_dict,
    format_config,
    parse_config_from_args,
    save_resolved_config,
)
from soliderkit.io import atomic_path
from soliderkit.pretrain.config import PretrainConfig, recipe_warnings
from soliderkit.pretrain.device_multicrop import DeviceMultiCrop, collate_device_samples
from soliderkit.pretrain.dino import DINOHead, DINOLoss, MultiCropNetwork, ema_update, teacher_statistics
from soliderkit.pretrain.knn import knn_preprocessing, knn_reid, load_query_gallery
from soliderkit.pretrain.multicrop import MultiCropAugmentation
from soliderkit.pretrain.semantic import (
    PartClassifier,
    PartClustering,
    choose_parts,
    cluster_parts,
    mask_parts,
    part_loss,
    sklearn_cluster_parts,
)
from soliderkit.reid.image_check import readable_only
from soliderkit.run_control import (
    DeviceSums,
    NonFiniteGuard,
    StepControl,
    StopRequest,
    claim_results_dir,
    derive_seed,
    describe_outputs,
    fused_optimizer,
    load_checkpoint,
    nonfinite_flag,
    optimizer_step,
    resolve_resume,
    rng_neutral,
    save_checkpoint,
    use_the_cpu_cores,
)
from soliderkit.throughput import (ThroughputMeter, count_flops, describe_cost, device_name, meta_copy, peak_tflops,
                                   precision_key)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
HEAD_FORMAT = "solider-reid-toolkit/dino-head"
STUDENT_FORMAT = "solider-reid-toolkit/dino-student"


# ============================================================================== data

def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class EpochBatches(Sampler):
    """Batches of ``(image index, view seed)`` for one process of a folder dataset.

    Epoch ``e`` reads the images in a permutation seeded by (seed, e), continued by further
    permutations when ``batches_per_epoch`` asks for more than one pass. Global batch ``j``
    goes to process ``j % world``; every image position carries its own augmentation seed,
    so the views do not depend on workers or on where a run was resumed. ``set_epoch(e,
    start_batch)`` skips the batches already trained.
    """

    def __init__(self, num_images: int, batch_size: int, *, rank: int, world_size: int, seed: int,
                 batches_per_epoch: int | None):
        per_pass = num_images // (batch_size * world_size)
        if batches_per_epoch is None and per_pass == 0:
            raise SystemExit(f"config error: {num_images} images are fewer than one batch of "
                             f"data.batch_size_per_device={batch_size} on each of {world_size} process(es); "
                             "lower the batch size or set data.batches_per_epoch")
        self.num_images, self.batch_size = num_images, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.length = batches_per_epoch or per_pass
        self.epoch, self.start = 0, 0
        self._orders: dict[tuple[int, int], torch.Tensor] = {}

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch
        self._orders = {}

    def __len__(self) -> int:
        return self.length - self.start

    def _image_at(self, position: int) -> int:
        sweep, offset = divmod(position, self.num_images)
        key = (self.epoch, sweep)
        if key not in self._orders:
            generator = torch.Generator().manual_seed(derive_seed("order", self.seed, *key))
            self._orders[key] = torch.randperm(self.num_images, generator=generator)
        return int(self._orders[key][offset])

    def __iter__(self):
        for j in range(self.start, self.length):
            first = (j * self.world_size + self.rank) * self.batch_size
            yield [(self._image_at(p), derive_seed("views", self.seed, self.epoch, p))
                   for p in range(first, first + self.batch_size)]


class MultiCropFolder(Dataset):
    """``dataset[(index, seed)]`` -> the multi-crop views of image ``index`` drawn with ``seed``
    (``on_device``: the decoded pixels and the plan of its views, for ``DeviceMultiCrop``)."""

    def __init__(self, paths: list[Path], augment: MultiCropAugmentation, on_device: bool = False):
        self.paths, self.augment, self.on_device = paths, augment, on_device

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        index, seed = item
        try:
            decoded = self.augment.decode(self.paths[index], random.Random(seed))
        except OSError as exc:
            raise OSError(f"cannot read image {self.paths[index]}: {exc}") from exc
        return self.augment.device_sample(decoded) if self.on_device else self.augment.apply(decoded)


@dataclass
class PretrainData:
    """One process's batches: ``batches(epoch, start_batch)`` yields lists of view batches."""

    iters_per_epoch: int
    summary: str
    batches: Callable[[int, int], Iterator[list[torch.Tensor]]]


def build_data(cfg: PretrainConfig, rank: int, world_size: int, pin_memory: bool,
               device: torch.device | str = "cpu") -> PretrainData:
    """With ``data.augment_on=device`` the workers return decoded pixels and view plans, and the
    batches are turned into views on ``device`` as they are read."""
    d = cfg.data
    if d.path is None:
        raise SystemExit("config error: data.path is not set (a shard folder/pattern or an image folder)")
    augment = MultiCropAugmentation(
        d.global_crop_size, d.local_crop_size, global_scale=d.global_crop_scale, local_scale=d.local_crop_scale,
        local_number=d.local_crops_number, aspect_ratio_scale=d.crop_aspect_ratio_scale, mean=d.pixel_mean,
        std=d.pixel_std, color_jitter_prob=d.color_jitter_prob, color_jitter=d.color_jitter,
        grayscale_prob=d.grayscale_prob, seed=cfg.seed, rank=rank, decode_draft=d.decode_draft)
    on_device = d.augment_on == "device"
    collate = collate_device_samples if on_device else default_collate
    views_on = DeviceMultiCrop.like(augment)
    where = f"; views made on {torch.device(device).type}" if on_device else ""

    def views(batches: Iterator) -> Iterator[list[torch.Tensor]]:
        return (views_on(batch, device) for batch in batches) if on_device else batches
    if d.kind == "folder":
        root = Path(d.path)
        if not root.is_dir():
            raise SystemExit(f"config error: data.path={d.path} is not a folder (data.kind=folder)")
        paths = list_images(root)
        if not paths:
            raise SystemExit(f"config error: data.path={d.path}: no images ({sorted(IMAGE_SUFFIXES)}) found")
        dropped = readable_only(paths, skip=d.skip_unreadable_images, what=f"data.path={d.path}",
                                fix="set data.skip_unreadable_images=true", progress=rank == 0,
                                rank=rank, world_size=world_size, gather=gather_object)
        paths = [p for p in paths if str(p) not in dropped]
        sampler = EpochBatches(len(paths), d.batch_size_per_device, rank=rank, world_size=world_size,
                               seed=cfg.seed, batches_per_epoch=d.batches_per_epoch)
        loader = DataLoader(MultiCropFolder(paths, augment, on_device), batch_sampler=sampler,
                            num_workers=d.num_workers, collate_fn=collate, pin_memory=pin_memory,
                            generator=torch.Generator().manual_seed(cfg.seed))

        def folder_batches(epoch: int, start: int) -> Iterator[list[torch.Tensor]]:
            sampler.set_epoch(epoch, min(start, sampler.length))
            return views(rng_neutral(loader))

        return PretrainData(sampler.length, f"image folder {root}: {len(paths)} images{where}", folder_batches)

    from soliderkit.data.stream import ShardSetError, make_shard_loader

    try:
        loader = make_shard_loader(d.path, d.batch_size_per_device, augment.device_sample if on_device else augment,
                                   resampled=True, seed=cfg.seed, batches_per_epoch=d.batches_per_epoch,
                                   num_workers=d.num_workers, rank=rank, world_size=world_size,
                                   shuffle_buffer=d.shuffle_buffer, pin_memory=pin_memory,
                                   decode=augment.decode_stream, collate_fn=collate)
    except ShardSetError as exc:
        raise SystemExit(f"config error: data.path={d.path}: {exc}") from None

    def shard_batches(epoch: int, start: int) -> Iterator[list[torch.Tensor]]:
        # The stream of an epoch is fixed by (seed, epoch, rank, worker); a resumed epoch
        # re-reads and drops the batches it already trained on.
        if start >= loader.batches_per_epoch:
            return iter(())
        augment.set_epoch(epoch)
        loader.set_epoch(epoch)
        return views(itertools.islice(rng_neutral(loader), start, None))

    summary = f"shards {d.path}: {len(loader.shards)} files, {loader.num_samples} images (resampled){where}"
    return PretrainData(loader.batches_per_epoch, summary, shard_batches)


# ============================================================================== networks

def build_networks(cfg: PretrainConfig, load_init: bool = True) -> tuple[MultiCropNetwork, MultiCropNetwork]:
    """Student (backbone + DINO head [+ part classifier]) and a teacher with the same weights."""
    m, size = cfg.model, cfg.data.global_crop_size
    init = m.init_from if load_init else None

    def network(drop_path: float, grad_checkpointing: bool, with_parts: bool) -> MultiCropNetwork:
        backbone = build_backbone(m.arch, img_size=size, checkpoint=init, drop_path_rate=drop_path,
                                  grad_checkpointing=grad_checkpointing)
        head = DINOHead(backbone.num_features, m.out_dim, hidden_dim=m.head_hidden_dim,
                        bottleneck_dim=m.bottleneck_dim, use_bn=m.use_bn_in_head,
                        norm_last_layer=m.norm_last_layer)
        parts = None
        if with_parts:
            s = cfg.semantic
            if s.part_classifier == "solider":
                # SOLIDER's DINOHead(embed_dim, partnum + 1, nlayers=parthead_nlayers), never in the
                # optimizer: frozen here (gradients still reach the student through it).
                parts = DINOHead(backbone.num_features, s.num_parts + 1, hidden_dim=s.part_head_hidden_dim,
                                 bottleneck_dim=s.part_head_bottleneck_dim, nlayers=s.part_head_layers)
                parts.requires_grad_(False)
            else:
                parts = PartClassifier(backbone.num_features, s.num_parts, hidden_dim=s.part_head_hidden_dim,
                                       nlayers=s.part_head_layers)
        return MultiCropNetwork(backbone, head, parts)

    student = network(m.drop_path_rate, m.grad_checkpointing, cfg.semantic.enabled)
    teacher = network(0.0, False, False)  # DINO's teacher has no stochastic depth
    shared = {k: v for k, v in student.state_dict().items() if not k.startswith("part_classifier.")}
    teacher.load_state_dict(shared)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def load_head(path: str, student: MultiCropNetwork, teacher: MultiCropNetwork, dino_loss: DINOLoss,
              center: bool = True) -> None:
    """Start both heads (and, with ``center``, the DINO center) from a previous run's
    ``dino_head.safetensors``."""
    state, metadata = read_checkpoint(path)
    if metadata.get("format") != HEAD_FORMAT:
        raise SystemExit(f"config error: model.init_head_from={path} is not a dino_head.safetensors "
                         f"written by pretrain/run.py (format {metadata.get('format')!r})")
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    for network in (student, teacher):
        load_state(network.head, head, source=path)
    if state["center"].shape != dino_loss.center.shape:
        raise SystemExit(f"config error: model.init_head_from={path}: its center has shape "
                         f"{tuple(state['center'].shape)}, model.out_dim needs {tuple(dino_loss.center.shape)}")
    if center:
        dino_loss.center.copy_(state["center"])


def load_student(path: str, student: MultiCropNetwork) -> None:
    """Start the student's backbone and DINO head from a previous run's ``student.safetensors``."""
    state, metadata = read_checkpoint(path)
    if metadata.get("format") != STUDENT_FORMAT:
        raise SystemExit(f"config error: model.init_student_from={path} is not a student.safetensors "
                         f"written by pretrain/run.py (format {metadata.get('format')!r})")
    for part in ("backbone", "head"):
        load_state(getattr(student, part), {k[len(part) + 1:]: v for k, v in state.items()
                                            if k.startswith(part + ".")}, source=path)


def save_student(student: MultiCropNetwork, path: Path, **metadata) -> None:
    state = {f"{part}.{k}": v.detach().contiguous().cpu() for part in ("backbone", "head")
             for k, v in getattr(student, part).state_dict().items()}
    meta = {"format": STUDENT_FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def save_head(teacher: MultiCropNetwork, dino_loss: DINOLoss, path: Path, **metadata) -> None:
    state = {f"head.{k}": v.detach().contiguous().cpu() for k, v in teacher.head.state_dict().items()}
    state["center"] = dino_loss.center.detach().contiguous().cpu()
    meta = {"format": HEAD_FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def param_groups(student: MultiCropNetwork, decay_position_tables: bool = True) -> list[dict]:
    """SOLIDER's / DINO's two groups (``utils.get_params_groups``): scheduled weight decay on every
    parameter of 2 or more dimensions, none on biases and 1-D parameters. The Swin
    relative-position tables are 2-D and decay there; ``decay_position_tables=False`` exempts
    them as Swin's own recipe does. Frozen parameters (SOLIDER's fixed part classifier) are left out."""
    no_decay_tables = set() if decay_position_tables else {f"backbone.{n}" for n in student.backbone.no_weight_decay()}
    decay, no_decay = [], []
    for name, param in student.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.ndim == 1 or name in no_decay_tables:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "scheduled_weight_decay": True},
            {"params": no_decay, "weight_decay": 0.0, "scheduled_weight_decay": False}]


# ============================================================================== schedules

def cosine_schedule(base: float, final: float, total: int, warmup: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup`` steps, then half a cosine to ``final``."""
    ramp = np.linspace(warmup_start, base, warmup) if warmup > 0 else np.zeros(0)
    steps = np.arange(total - warmup)
    decay = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([ramp, decay])


@dataclass
class Schedules:
    """Per-iteration values, indexed by the global step (which is saved with the run's state)."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    freeze_last_layer_steps: int

    @classmethod
    def build(cls, cfg: PretrainConfig, iters_per_epoch: int, total_batch: int) -> "Schedules":
        o, d = cfg.optim, cfg.dino
        total = o.epochs * iters_per_epoch
        if d.teacher_temp_schedule == "epoch":  # DINO / SOLIDER: one temperature per epoch
            warm_epochs = d.warmup_teacher_temp_epochs
            per_epoch = np.concatenate([np.linspace(d.warmup_teacher_temp, d.teacher_temp, warm_epochs),
                                        np.full(o.epochs - warm_epochs, d.teacher_temp)])
            temp = np.repeat(per_epoch, iters_per_epoch)[:total]
        else:
            warm_temp = min(d.warmup_teacher_temp_epochs * iters_per_epoch, total)
            temp = np.concatenate([np.linspace(d.warmup_teacher_temp, d.teacher_temp, warm_temp),
                                   np.full(total - warm_temp, d.teacher_temp)])
        return cls(
            lr=cosine_schedule(o.lr * total_batch / 256.0, o.min_lr, total, o.warmup_epochs * iters_per_epoch),
            weight_decay=cosine_schedule(o.weight_decay, o.weight_decay_end, total),
            momentum=cosine_schedule(d.momentum_teacher, 1.0, total),
            teacher_temp=temp,
            freeze_last_layer_steps=o.freeze_last_layer * iters_per_epoch,
        )


class Progress:
    """Where the run is: ``progress.json`` of each checkpoint, so resuming continues exactly there."""

    def __init__(self, iters_per_epoch: int = 0, total_batch: int = 0):
        self.step = 0  # optimizer iterations done (skipped non-finite steps included)
        self.epoch = 0  # data epoch in progress (= epochs done)
        self.batch = 0  # batches of that epoch already trained
        self.iters_per_epoch = iters_per_epoch
        self.total_batch = total_batch
        self.nan_streak = 0

    def state_dict(self) -> dict:
        return {**vars(self), "epoch_end": self.batch == 0}

    def load_state_dict(self, state: dict) -> None:
        saved = (int(state["iters_per_epoch"]), int(state["total_batch"]))
        if saved != (self.iters_per_epoch, self.total_batch):
            raise SystemExit(
                f"resume: the checkpoint was written with {saved[0]} steps per epoch and a total batch of "
                f"{saved[1]}; this run has {self.iters_per_epoch} and {self.total_batch}, so its schedules "
                "would not continue (use the same data.batch_size_per_device, data.batches_per_epoch and "
                "number of processes)")
        for key in ("step", "epoch", "batch", "nan_streak"):
            setattr(self, key, int(state[key]))


# ============================================================================== one iteration

@dataclass
class Trainer:
    accelerator: Accelerator
    cfg: PretrainConfig
    student: torch.nn.Module  # prepared (DDP-wrapped when distributed)
    teacher: MultiCropNetwork
    dino_loss: DINOLoss
    optimizer: torch.optim.Optimizer  # fused (run_control.fused_optimizer): skips a step without a sync
    schedules: Schedules
    stop: StopRequest
    # the loop's StepControl (one flag reduced over processes per step); None: a local flag
    control: StepControl | None = None
    student_forward: Callable | None = None  # torch.compile of the student (train.compile); None = the student
    teacher_forward: Callable | None = None  # same for the teacher


@dataclass
class StepResult:
    stats: dict[str, torch.Tensor | float]  # 0-d device tensors (host floats for host-side counts)
    skipped: torch.Tensor  # 0-d device tensor: 1 when the loss was not finite (on some process)

    @property
    def finite(self) -> bool:
        """Reads the flag on the host (a sync): for tests and one-off callers, not the loop."""
        return not bool(self.skipped)

    def values(self) -> dict[str, float]:
        """``stats`` as host floats (one sync per value)."""
        return {k: float(v) for k, v in self.stats.items()}


def clip_gradients(parameters, clip: float) -> None:
    """DINO's clipping: every parameter's gradient norm is clipped to ``clip`` on its own."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    torch._foreach_mul_(grads, [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms])


def draw_lambda(sem, batch: int, device: torch.device) -> torch.Tensor:
    """λ per image, shared by all its views in student and teacher (SOLIDER's
    build_onehot_semantic_weight draws 0 or 1 per image); plain DINO runs at λ = 0."""
    if not sem.enabled:
        return torch.zeros(batch, device=device)
    pick = torch.multinomial(torch.tensor(sem.lambda_probs), batch, replacement=True)
    return to_device(torch.tensor(sem.lambda_values)[pick], device)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without waiting: pinned, then copied asynchronously on CUDA
    (a plain copy from pageable memory would wait for every queued kernel)."""
    device = torch.device(device)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def cluster_views(tokens: torch.Tensor, sem) -> PartClustering:
    """Background / part labels of the teacher's stage-4 tokens (``semantic.clustering``)."""
    if sem.clustering == "sklearn":
        return sklearn_cluster_parts(tokens, sem.num_parts, sem.fg_ratio_threshold)
    return cluster_parts(tokens, sem.num_parts, sem.fg_ratio_threshold, sem.kmeans_iters)


def draw_mask_parts(sem, sizes: torch.Tensor) -> torch.Tensor:
    """The part (1..K) blacked out in each view's masked copy: one for the whole batch
    (``mask_part=batch``, SOLIDER's random.randint(1, partnum)) or a non-empty one per view."""
    if sem.mask_part == "view":
        return choose_parts(sizes)
    k = int(torch.randint(1, sem.num_parts + 1, (1,)))
    return torch.full((sizes.shape[0],), k, dtype=torch.long, device=sizes.device)


def train_one_step(t: Trainer, views: list[torch.Tensor], step: int) -> StepResult:
    """One iteration (see the module docstring). No host sync of its own beyond SOLIDER's
    data-dependent masking (how many masked copies the student sees) and the clustering of
    ``semantic.clustering``: a non-finite loss skips the optimizer step, the EMA and the center
    update on the device, and the statistics stay device tensors until the loop reads them."""
    acc, cfg, sem, sched = t.accelerator, t.cfg, t.cfg.semantic, t.schedules
    device = acc.device
    student_forward = t.student if t.student_forward is None else t.student_forward
    teacher_forward = t.teacher if t.teacher_forward is None else t.teacher_forward
    for group in t.optimizer.param_groups:
        group["lr"] = float(sched.lr[step])
        if group["scheduled_weight_decay"]:
            group["weight_decay"] = float(sched.weight_decay[step])
    views = [v.to(device, non_blocking=True) for v in views]
    batch = views[0].shape[0]
    temp = float(sched.teacher_temp[step])

    lam = draw_lambda(sem, batch, device)
    lam_global = lam.repeat(2)
    global_views = torch.cat(views[:2])

    # Teacher: DINO targets at each image's λ; the copies at λ = 1 give the tokens to cluster.
    with torch.no_grad(), acc.autocast():
        teacher_out = teacher_forward(views[:2], [lam, lam], extra=global_views if sem.enabled else None,
                                      extra_weights=torch.ones_like(lam_global) if sem.enabled else None)
    stats: dict[str, torch.Tensor | float] = {}
    masked = masked_lam = None
    if sem.enabled:
        clusters = cluster_views(teacher_out.tokens[:2 * batch], sem)
        parts = draw_mask_parts(sem, clusters.sizes)
        # Views with λ = 0 would get zero weight in the part loss: their masked copies are not built.
        # How many there are decides the student's batch: SOLIDER's one host sync per step.
        source = (clusters.valid & (lam_global > 0)).nonzero().squeeze(1)
        masked = mask_parts(global_views[source], clusters.labels[source], parts[source])
        masked_lam = lam_global[source]
        valid = clusters.valid.sum()
        stats["fg_ratio"] = clusters.fg_ratio.mean()
        stats["semantic_views"] = valid / (2 * batch)
        stats["masked_views"] = float(source.numel())
        # mean share of background / each part over the usable views (NaN, so not logged, when none)
        usable = clusters.valid.float()[:, None]
        share = (clusters.sizes.float() * usable).sum(0) / (usable.sum() * clusters.labels[0].numel())
        stats["cluster_background"] = share[0]
        for k in range(1, sem.num_parts + 1):
            stats[f"cluster_part{k}"] = share[k]

    with acc.autocast():
        student_out = student_forward(views, [lam] * len(views), extra=masked, extra_weights=masked_lam)
        loss_dino = t.dino_loss(student_out.logits, teacher_out.logits, temp)
        loss = loss_dino
        if sem.enabled:
            tokens = clusters.labels[0].numel()
            labels = torch.cat([clusters.labels[source], clusters.labels]).flatten(1)
            weights = torch.cat([masked_lam, lam_global * clusters.valid])
            # SOLIDER's normalisation: the mean over the tokens of every usable view and its
            # masked copy (λ = 0 views count, with weight 0); no usable view -> zero loss.
            loss_part, accuracy = part_loss(student_out.part_logits, labels, weights, 2 * valid * tokens)
            loss = loss + sem.loss_weight * loss_part
            stats["loss_part"] = loss_part.detach()
            if source.numel():  # the accuracy is NaN without a masked view (no weighted token)
                stats["part_accuracy"] = accuracy

    # 1 when the loss is not finite on some process (every process skips together), on the device
    skip = t.control.nonfinite(loss) if t.control is not None else nonfinite_flag(acc, loss)
    stats.update(loss=loss.detach(), loss_dino=loss_dino.detach())

    acc.backward(loss)
    if cfg.optim.clip_grad > 0:
        acc.unscale_gradients()
        clip_gradients(t.student.parameters(), cfg.optim.clip_grad)
    unwrapped = acc.unwrap_model(t.student)
    if step < sched.freeze_last_layer_steps:
        for p in unwrapped.head.last_layer.parameters():
            p.grad = None
    optimizer_step(t.optimizer, skip, acc.scaler)
    t.optimizer.zero_grad(set_to_none=True)

    ema_update(t.teacher, unwrapped, float(sched.momentum[step]), skip=skip)
    stats.update(teacher_statistics(teacher_out.logits, t.dino_loss.center, temp))
    t.dino_loss.update_center(teacher_out.logits, skip=skip)
    return StepResult(stats, skip)


def step_flops(cfg: PretrainConfig, student: torch.nn.Module, teacher: torch.nn.Module) -> int | None:
    """FLOPs of one process's training step at the configured sizes, counted on meta copies of
    the networks (nothing computed, no weights or random numbers touched): the teacher's forward
    on the 2 global views (+ their λ = 1 copies with ``semantic.enabled``), the student's forward
    and backward on 2 global + ``data.local_crops_number`` local views + the masked copies. The
    number of masked copies varies per step; counted: 2 x batch x P(λ > 0), i.e. every view
    usable (an upper bound for the part task's share). None when the networks cannot run on meta."""
    d, sem = cfg.data, cfg.semantic
    batch = d.batch_size_per_device
    try:
        student_meta, teacher_meta = meta_copy(student).train(), meta_copy(teacher).train()
        views = [torch.empty(batch, 3, *d.global_crop_size, device="meta") for _ in range(2)]
        views += [torch.empty(batch, 3, *d.local_crop_size, device="meta") for _ in range(d.local_crops_number)]
        lam = torch.ones(batch, device="meta")
        extra = extra_lam = None
        if sem.enabled:
            positive = sum(p for v, p in zip(sem.lambda_values, sem.lambda_probs) if v > 0)
            masked = round(2 * batch * positive)
            extra = torch.empty(masked, 3, *d.global_crop_size, device="meta")
            extra_lam = torch.ones(masked, device="meta")

        def one_step():
            with torch.no_grad():
                teacher_meta(views[:2], [lam, lam], extra=torch.cat(views[:2]) if sem.enabled else None,
                             extra_weights=torch.ones(2 * batch, device="meta") if sem.enabled else None)
            out = student_meta(views, [lam] * len(views), extra=extra, extra_weights=extra_lam)
            total = out.logits.float().sum()
            if out.part_logits is not None:
                total = total + out.part_logits.float().sum()
            total.backward()

        return count_flops(one_step)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        print(f"warning: FLOPs of the training step not counted ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


# ============================================================================== outputs

def save_outputs(acc: Accelerator, t: Trainer, out_dir: Path, progress: Progress) -> None:
    if acc.is_main_process:
        info = {"pretrain_step": progress.step, "pretrain_epoch": progress.epoch,
                "semantic": t.cfg.semantic.enabled}
        # + what the kNN monitor feeds it (size, mean / std, λ), so pretrain/knn.py reproduces its numbers
        save_backbone(t.teacher.backbone, out_dir / "backbone.safetensors", **info,
                      preprocessing=knn_preprocessing(t.cfg))
        save_head(t.teacher, t.dino_loss, out_dir / "dino_head.safetensors", **info)
        save_student(acc.unwrap_model(t.student), out_dir / "student.safetensors", **info)


def run_knn(t: Trainer, splits) -> dict:
    """Retrieval of the teacher's features on the main process; no random numbers consumed."""
    cfg = t.cfg
    with torch.random.fork_rng(devices=[]):
        return knn_reid(t.teacher.backbone, splits, size=cfg.data.global_crop_size, mean=cfg.data.pixel_mean,
                        std=cfg.data.pixel_std, batch_size=cfg.knn_eval.batch_size, device=t.accelerator.device,
                        semantic_weight=cfg.knn_eval.semantic_weight, num_workers=min(cfg.data.num_workers, 4))


# Settings a resumed run may not change (they change the model, the data or the schedules).
RESUME_FIXED = ("seed", "model", "data", "dino", "semantic", "optim")
RESUME_FREE = ("model.init_from", "model.init_head_from", "model.init_student_from", "model.init_center",
               "data.path", "data.num_workers")


def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as cleanup:  # releases the results-folder lock on every exit
        return run(argv, cleanup)


def run(argv: list[str] | None, cleanup: contextlib.ExitStack) -> int:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                             examples="optim.epochs=5 data.batch_size_per_device=32 model.init_from=null")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in results_dir (train.resume=auto)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a results_dir that holds one (the old run is moved aside)")
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in results_dir; --overwrite replaces it: give one")
    cfg = parse_config_from_args(PretrainConfig, args)
    out_dir = Path(cfg.results_dir)
    checkpoint_dir = out_dir / "checkpoints"

    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        log_with=None if args.dry_run else "tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "tensorboard")),
    )
    main_process, world = accelerator.is_main_process, accelerator.num_processes
    threads = use_the_cpu_cores(accelerator)  # accelerate launch would leave a CPU run on one thread
    if threads and accelerator.is_main_process:
        print(f"CPU run: {threads} torch threads per process (accelerate launch was given no thread count)")
    if args.dry_run and main_process:  # first, so a preset's values show even before its data exists
        print(format_config(cfg), end="")
    if main_process:
        on_cpu = accelerator.device.type == "cpu"
        for warning in recipe_warnings(cfg, torch.backends.cpu.get_cpu_capability() if on_cpu else None):
            print(f"warning: {warning}", file=sys.stderr)
    # --resume needs a checkpoint; train.resume=auto starts fresh when there is none.
    resume_from = None if args.overwrite else resolve_resume("auto" if args.resume else cfg.train.resume,
                                                             checkpoint_dir, required=args.resume)

    # ============ data ... ============
    data = build_data(cfg, accelerator.process_index, world, pin_memory=accelerator.device.type == "cuda",
                      device=accelerator.device)
    total_batch = cfg.data.batch_size_per_device * world

    # ============ student, teacher, losses (same initial weights on every process) ... ============
    set_seed(cfg.seed)
    student, teacher = build_networks(cfg, load_init=resume_from is None)
    dino_loss = DINOLoss(cfg.model.out_dim, student_temp=cfg.dino.student_temp,
                         center_momentum=cfg.dino.center_momentum)
    if cfg.model.init_head_from is not None and resume_from is None:
        load_head(cfg.model.init_head_from, student, teacher, dino_loss, center=cfg.model.init_center == "saved")
    if cfg.model.init_student_from is not None and resume_from is None:
        load_student(cfg.model.init_student_from, student)  # SOLIDER's phase 2: the phase-1 student

    # ============ optimizer and per-iteration schedules ... ============
    optimizer = torch.optim.AdamW(param_groups(student, cfg.optim.decay_position_tables))
    schedules = Schedules.build(cfg, data.iters_per_epoch, total_batch)
    progress = Progress(data.iters_per_epoch, total_batch)

    if args.dry_run:
        if main_process:
            print(f"# data: {data.summary}; {data.iters_per_epoch} steps per epoch on {world} process(es)")
            params = sum(p.numel() for p in student.backbone.parameters())
            print(f"# student/teacher backbone: {cfg.model.arch}, {params / 1e6:.2f} M parameters each")
            print(f"# peak lr {schedules.lr.max():.3g} for a total batch of {total_batch}")
        return 0

    claim_results_dir(accelerator, out_dir, resume_from=resume_from, overwrite=args.overwrite, script="pretrain/run.py",
                      cleanup=cleanup, config=config_to_dict(cfg), fixed=RESUME_FIXED, free=RESUME_FREE)

    flops = step_flops(cfg, student, teacher)  # before prepare: the plain modules
    student, optimizer = accelerator.prepare(student, optimizer)
    teacher.to(accelerator.device)
    dino_loss.to(accelerator.device)
    extra_state = {"teacher": teacher, "dino_loss": dino_loss}  # saved as safetensors + JSON, never pickle
    set_seed(cfg.seed, device_specific=True)  # each process draws its own λ, masks and drop-path
    if resume_from is not None:
        progress.load_state_dict(load_checkpoint(accelerator, resume_from, extra_state))
        if main_process:
            print(f"resumed from {resume_from} at step {progress.step} (epoch {progress.epoch + 1}, "
                  f"batch {progress.batch})")
        if progress.epoch >= cfg.optim.epochs:
            accelerator.print(f"pretrain/run.py: the run in {out_dir} already finished its {cfg.optim.epochs} "
                              f"epochs (step {progress.step}); nothing to do. To train longer, start a new run "
                              "from its backbone.safetensors (model.init_from)")
            return 0

    fused_optimizer(optimizer.optimizer)  # skips a non-finite step on the device (after a resume too)
    guard = NonFiniteGuard(cfg.train.max_nan_steps, script="pretrain/run.py", checkpoint_dir=checkpoint_dir,
                           advice="Lower optim.lr, raise optim.warmup_epochs, use train.mixed_precision=bf16 or no")
    guard.streak = progress.nan_streak
    stop = StopRequest()
    control = StepControl(accelerator, stop, guard)
    compiled = {}
    if cfg.train.compile:  # the eager modules stay for the EMA, kNN, saving and unwrapping
        compiled = {"student_forward": torch.compile(student, mode=cfg.train.compile_mode),
                    "teacher_forward": torch.compile(teacher, mode=cfg.train.compile_mode)}
    trainer = Trainer(accelerator, cfg, student, teacher, dino_loss, optimizer, schedules, stop, control, **compiled)
    knn_splits = load_query_gallery(cfg.knn_eval.dataset_dir) if cfg.knn_eval.dataset_dir and main_process else None
    stat_keys = ["loss", "loss_dino", "loss_part", "part_accuracy", "fg_ratio", "semantic_views", "masked_views",
                 "cluster_background", *[f"cluster_part{k}" for k in range(1, cfg.semantic.num_parts + 1)],
                 "teacher_entropy", "teacher_batch_entropy", "teacher_kl_to_center", "skipped"]
    window = DeviceSums(stat_keys, accelerator.device)  # read once per train.log_every steps
    name, precision = device_name(accelerator.device), precision_key(cfg.train.mixed_precision)
    meter = ThroughputMeter(flops, total_batch, world, peak_tflops(name, precision))
    log_path = out_dir / "log.jsonl"

    def write_log(record: dict) -> None:
        if main_process:
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                            step=record["step"])
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")

    def knn_record(epoch: int) -> None:
        if knn_splits is not None:
            teacher.eval()
            scores = run_knn(trainer, knn_splits)
            teacher.train()
            write_log({"step": progress.step, "epoch": epoch, "world_size": world,
                       **{f"knn_{k}": v for k, v in scores.items()}})
            print(f"kNN ReID of the teacher after epoch {epoch}: mAP {scores['mAP']:.2f}  "
                  f"rank-1 {scores['rank1']:.2f}")
        accelerator.wait_for_everyone()

    if main_process:
        save_resolved_config(cfg, out_dir)
        print(f"training on {world} process(es) (world size {world}): {cfg.data.batch_size_per_device} images per "
              f"process per step, {data.iters_per_epoch} steps per epoch, {cfg.optim.epochs} epochs; {data.summary}")
        print(describe_cost(flops, cfg.data.batch_size_per_device, name, precision, meter.peak))
        if cfg.train.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            print("note: train.mixed_precision=fp16 has no effect on the CPU (Accelerate trains in float32 there; "
                  "bf16 autocasts)", file=sys.stderr)
    accelerator.init_trackers("pretrain")
    if cfg.knn_eval.at_start and progress.step == 0:
        knn_record(0)

    epochs = cfg.optim.epochs

    def checkpoint() -> Path:
        return save_checkpoint(accelerator, checkpoint_dir, progress.state_dict(), state=extra_state,
                               keep_last=cfg.train.keep_last,
                               keep_every=cfg.train.checkpoint_every)

    def stop_here() -> int:
        saved = checkpoint()
        accelerator.print(f"SIGTERM: saved {saved} at step {progress.step}; exiting")
        accelerator.print(describe_outputs(out_dir, "backbone.safetensors"))
        accelerator.end_training()
        return 0

    with stop:
        for epoch in range(progress.epoch, epochs):
            student.train()
            teacher.train()
            bar = tqdm(total=data.iters_per_epoch, initial=progress.batch, desc=f"epoch {epoch + 1}/{epochs}",
                       disable=not main_process)
            meter.reset()
            for views in data.batches(epoch, progress.batch):
                step = progress.step
                result = train_one_step(trainer, views, step)
                control.record(result.skipped, step)
                window.add({**result.stats, "skipped": result.skipped})
                meter.step()
                progress.step += 1
                progress.batch += 1
                bar.update(1)
                if progress.step % cfg.train.log_every != 0 and not control.stop_now():
                    continue
                # The loop's one host read per train.log_every steps: non-finite streak, stop
                # requests, then the window's statistics.
                stopping = control.check(step=progress.step, epoch=epoch + 1)
                progress.nan_streak = guard.streak
                summary = window.means(accelerator)
                steps = summary.pop("steps")
                summary["skipped_steps"] = round(summary.pop("skipped", 0.0) * steps)
                rates = meter.read()
                record = {"step": progress.step, "epoch": epoch + progress.batch / data.iters_per_epoch,
                          "steps": steps, **summary,
                          "lr": float(schedules.lr[step]), "weight_decay": float(schedules.weight_decay[step]),
                          "teacher_momentum": float(schedules.momentum[step]), "teacher_temp": float(
                              schedules.teacher_temp[step]), "world_size": world, **rates}
                write_log(record)
                window.reset()
                if "loss" in summary:
                    bar.set_postfix({"loss": f"{summary['loss']:.3f}", **meter.postfix(rates)})
                if stopping:
                    bar.close()
                    return stop_here()
            bar.close()
            stopping = control.check(step=progress.step, epoch=epoch + 1)  # before the epoch's checkpoint
            progress.nan_streak = guard.streak
            if stopping:  # seen at the epoch's end (several processes): the resumed run ends the epoch
                return stop_here()
            progress.epoch, progress.batch = epoch + 1, 0
            if (epoch + 1) % cfg.knn_eval.every_epochs == 0 or epoch + 1 == epochs:
                knn_record(epoch + 1)
            checkpoint()
            save_outputs(accelerator, trainer, out_dir, progress)

    if main_process:
        print(f"done: {progress.step} steps")
        print(describe_outputs(out_dir, "backbone.safetensors"))
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())

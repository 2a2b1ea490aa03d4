"""Stage 2: ReID fine-tuning of the shared Swin backbone (ID + triplet + center losses).

    accelerate launch finetune/run.py --config configs/finetune/synthetic_tiny.yaml [--dry-run] [--resume] [key=value ...]

The config is a TAO ReIdentificationNet (Transformer) experiment spec. The loop reads like
single-device code; Accelerate owns devices, DDP, mixed precision, gradient accumulation,
trackers and checkpoint state. Outputs go to ``train.results_dir`` (default
``<results_dir>/train``): ``config.yaml``, ``log.jsonl``, TensorBoard events,
``metrics.json``, ``model.safetensors`` and ``checkpoints/epoch_NNN`` (accelerate state).

Where TAO / SOLIDER-REID are broken this loop differs on purpose: the center loss has
its own optimizer that is stepped every iteration (TAO never steps it), on the
embedding's real dimension (SOLIDER-REID hard-codes 2048), and ``--resume`` continues at
the saved epoch with the optimizer, schedule, center optimizer and RNG state.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from soliderkit.backbone import CheckpointError
from soliderkit.config import (add_config_args, config_to_dict, format_config, parse_config_from_args,
                               save_resolved_config)
from soliderkit.finetune.config import DatasetConfig, FinetuneConfig
from soliderkit.finetune.losses import CenterLoss, ReidLosses, scale_center_gradients
from soliderkit.finetune.model import build_reid_model, preprocessing_for, save_reid_model
from soliderkit.finetune.optim import build_optimizer, build_scheduler
from soliderkit.finetune.sampler import IdentityBatchSampler
from soliderkit.finetune.trackers import experiment_trackers
from soliderkit.io import atomic_write_json
from soliderkit.reid.datasets import DatasetError, ReidSplits, parse_folders, parse_msmt17
from soliderkit.reid.image_check import readable_only
from soliderkit.reid.evaluation import evaluate_query_gallery
from soliderkit.reid.transforms import ImageDataset, collate, train_transform
from soliderkit.run_control import (
    DeviceSums,
    NonFiniteGuard,
    StepControl,
    StopRequest,
    claim_results_dir,
    describe_outputs,
    fused_optimizer,
    load_checkpoint,
    optimizer_step,
    resolve_resume,
    rng_neutral,
    save_checkpoint,
    use_the_cpu_cores,
)
from soliderkit.throughput import (ThroughputMeter, count_flops, describe_cost, device_name, meta_copy, peak_tflops,
                                   precision_key)


def load_splits(cfg: DatasetConfig, rank: int = 0, world_size: int = 1) -> ReidSplits:
    """The train / query / gallery records named by the TAO ``dataset`` section, every image of
    them checked (a clear error instead of a crash mid-epoch or at validation; in a multi-process
    run each process checks its share)."""
    try:
        splits = _parse_splits(cfg)
    except DatasetError as exc:
        raise SystemExit(f"dataset error: {exc}") from None
    records = {"train": splits.train, "query": splits.query, "gallery": splits.gallery}
    dropped = readable_only([r.path for subset in records.values() for r in subset], skip=cfg.skip_unreadable_images,
                            what="the dataset folders", fix="set dataset.skip_unreadable_images=true",
                            progress=rank == 0, rank=rank, world_size=world_size, gather=gather_object)
    if dropped:
        splits = dataclasses.replace(splits, **{k: [r for r in v if r.path not in dropped] for k, v in records.items()})
    return splits


def _parse_splits(cfg: DatasetConfig) -> ReidSplits:
    if cfg.train_dataset_dir is None:
        raise SystemExit("config error: dataset.train_dataset_dir is not set")
    if cfg.dataset_kind == "msmt17":
        if isinstance(cfg.train_dataset_dir, list):
            raise SystemExit("config error: dataset_kind=msmt17 reads one MSMT17 release folder; "
                             "dataset.train_dataset_dir must be a single path")
        return parse_msmt17(cfg.train_dataset_dir)
    for key in ("query_dataset_dir", "test_dataset_dir"):
        if getattr(cfg, key) is None:
            raise SystemExit(f"config error: dataset.{key} is not set")
    return parse_folders(cfg.train_dataset_dir, cfg.query_dataset_dir, cfg.test_dataset_dir,
                         name=cfg.dataset_kind)


class Progress:
    """Where the run is; written as ``progress.json`` into each checkpoint (no pickle)."""

    def __init__(self, total_batch: int, world_size: int):
        self.step = 0  # batches trained (skipped non-finite ones included)
        self.epoch = 0  # epochs done (= the epoch in progress, 0-based)
        self.batch = 0  # batches of that epoch already trained
        self.nan_streak = 0
        self.total_batch, self.world_size = total_batch, world_size

    def state_dict(self) -> dict:
        return {**vars(self), "epoch_end": self.batch == 0}

    def load_state_dict(self, state: dict) -> None:
        saved = (int(state["total_batch"]), int(state["world_size"]))
        if saved != (self.total_batch, self.world_size):
            raise SystemExit(
                f"resume: the checkpoint was written with dataset.batch_size={saved[0]} on {saved[1]} process(es); "
                f"this run has {self.total_batch} on {self.world_size}, so the remaining batches of its epoch "
                "would differ (use the same batch size and number of processes)")
        for key in ("step", "epoch", "batch", "nan_streak"):
            setattr(self, key, int(state[key]))


def validate(cfg: FinetuneConfig, model: torch.nn.Module, splits: ReidSplits, size: tuple[int, int], epoch: int,
             device: torch.device, out_dir: Path) -> dict:
    """Market-1501 metrics on query / gallery (+ re-ranked), written to ``metrics.json``; returns
    the plain ranking's numbers for the log."""
    rr = cfg.re_ranking
    results = evaluate_query_gallery(
        model, splits.query, splits.gallery, max_rank=max(rr.max_rank, 10), size=size,
        mean=cfg.dataset.pixel_mean, std=cfg.dataset.pixel_std, batch_size=cfg.dataset.val_batch_size,
        device=device, flip=cfg.model.with_flip_feature, num_workers=cfg.dataset.num_workers,
        interpolation=cfg.dataset.test_interpolation,
        re_ranking={"k1": rr.k1, "k2": rr.k2, "lambda_value": rr.lambda_value} if rr.re_ranking else None)
    plain = results["plain"]
    metrics = {"epoch": epoch, **plain.as_percent_dict(), "num_valid_queries": plain.num_valid_queries}
    if "re_ranked" in results:
        metrics["re_ranked"] = results["re_ranked"].as_percent_dict()
    atomic_write_json(out_dir / "metrics.json", metrics)
    for label, result in results.items():
        m = result.as_percent_dict()
        print(f"epoch {epoch} ({label}): mAP {m['mAP']:.1f}  rank-1 {m['rank1']:.1f}  "
              f"rank-5 {m['rank5']:.1f}  rank-10 {m['rank10']:.1f}  mINP {m['mINP']:.1f}")
    return {k: metrics[k] for k in ("mAP", "rank1", "rank5", "rank10", "mINP")}


@dataclass
class StepParts:
    """What one fine-tuning step needs (``forward`` is the model, or its ``torch.compile``)."""

    accelerator: Accelerator
    model: torch.nn.Module  # prepared (DDP-wrapped when distributed)
    forward: Callable
    losses: ReidLosses
    optimizer: torch.optim.Optimizer
    control: StepControl
    grad_clip: float = 0.0
    center_loss: torch.nn.Module | None = None
    center_optimizer: torch.optim.Optimizer | None = None
    center_weight: float = 1.0


def train_step(t: StepParts, images: torch.Tensor, pids: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One step: forward, ID / triplet / center losses, backward, clipping, both optimizers.

    No host sync: a non-finite loss on any process skips both optimizer steps on the device
    (``soliderkit.run_control.optimizer_step``). Returns the step's values as 0-d device tensors
    (``loss``, ``loss_<term>``, ``id_accuracy``) and the skip flag.
    """
    acc = t.accelerator
    modules = [t.model] + ([t.center_loss] if t.center_loss is not None else [])
    with acc.accumulate(*modules):
        out = t.forward(images, pids)
        parts = t.losses.terms(out, pids, t.center_loss)
        loss = sum(parts.values())
        nonfinite = t.control.nonfinite(loss)  # the same flag on every process
        skip = t.control.skip_flag(nonfinite, acc.sync_gradients)
        acc.backward(loss)
        if acc.sync_gradients and t.grad_clip > 0:
            acc.clip_grad_norm_(t.model.parameters(), t.grad_clip)
        optimizer_step(t.optimizer, skip, acc.scaler)
        if t.center_loss is not None:
            if acc.sync_gradients:
                scale_center_gradients(t.center_loss, t.center_weight)
            optimizer_step(t.center_optimizer, skip, acc.scaler)
        t.optimizer.zero_grad()
        if t.center_optimizer is not None:
            t.center_optimizer.zero_grad()
    with torch.no_grad():
        values = {"loss": loss.detach(), **{f"loss_{k}": v.detach() for k, v in parts.items()},
                  "id_accuracy": (out.logits.argmax(1) == pids).float().mean()}
    return values, nonfinite


def step_flops(model: torch.nn.Module, batch: int, size: tuple[int, int], num_classes: int) -> int | None:
    """FLOPs of one process's training step: forward + backward of the model on ``batch`` images
    of ``size`` (counted on a meta copy: nothing computed, no weights or random numbers touched).
    None when the model cannot run on the meta device."""
    try:
        meta = meta_copy(model).train()
        images = torch.empty(batch, 3, *size, device="meta")
        pids = torch.arange(batch, device="meta") % max(num_classes, 1)

        def step():
            out = meta(images, pids)
            (out.logits.float().sum() + out.features.float().sum()).backward()

        return count_flops(step)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        print(f"warning: FLOPs of the training step not counted ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


# Settings a resumed run may not change (they change the model, the data or the schedule).
RESUME_FIXED = ("model", "dataset", "train.optim", "train.num_epochs", "train.seed",
                "train.gradient_accumulation_steps")
RESUME_FREE = ("model.pretrained_model_path", "model.pretrain_choice", "dataset.num_workers",
               "dataset.val_batch_size", "dataset.query_dataset_dir", "dataset.test_dataset_dir")


def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as cleanup:  # releases the results-folder lock on every exit
        return run(argv, cleanup)


def run(argv: list[str] | None, cleanup: contextlib.ExitStack) -> int:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in the results folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a results folder that holds one (the old run is moved aside)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="start from a pretrained checkpoint whose keys do not all match (they are listed)")
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in the results folder; --overwrite replaces it: give one")
    cfg = parse_config_from_args(FinetuneConfig, args)
    out_dir = Path(cfg.train.results_dir or Path(cfg.results_dir) / "train")

    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        log_with=experiment_trackers(cfg, dry_run=args.dry_run),  # TensorBoard (+ W&B: wandb.enable)
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "tensorboard")),
    )
    main_process = accelerator.is_main_process
    threads = use_the_cpu_cores(accelerator)  # accelerate launch would leave a CPU run on one thread
    if threads and accelerator.is_main_process:
        print(f"CPU run: {threads} torch threads per process (accelerate launch was given no thread count)")
    if args.dry_run and main_process:  # first, so a preset's values show even before its data exists
        print(format_config(cfg), end="")
    if cfg.train.seed >= 0:
        set_seed(cfg.train.seed)

    splits = load_splits(cfg.dataset, accelerator.process_index, accelerator.num_processes)
    num_classes = len({r.pid for r in splits.train})
    try:
        model = build_reid_model(cfg.model, num_classes, cosine_scale=cfg.train.optim.cosine_scale,
                                 cosine_margin=cfg.train.optim.cosine_margin, allow_partial=args.allow_partial)
    except CheckpointError as exc:
        raise SystemExit(f"model.pretrained_model_path: {exc}") from None
    if main_process:
        print(splits.format_table())

    world = accelerator.num_processes
    if cfg.dataset.batch_size % (world * cfg.dataset.num_instances):
        raise SystemExit(f"config error: dataset.batch_size={cfg.dataset.batch_size} must split into "
                         f"{world} processes x a multiple of dataset.num_instances={cfg.dataset.num_instances}")
    size = (cfg.model.input_height, cfg.model.input_width)
    try:
        sampler = IdentityBatchSampler([r.pid for r in splits.train], cfg.dataset.batch_size // world,
                                       cfg.dataset.num_instances, seed=max(cfg.train.seed, 0),
                                       rank=accelerator.process_index, world_size=world, sample_seeds=True)
    except ValueError as exc:  # too few identities for one step
        raise SystemExit(f"config error: dataset.batch_size={cfg.dataset.batch_size} with dataset.num_instances="
                         f"{cfg.dataset.num_instances} on {world} process(es): {exc}") from None
    augment = train_transform(size, cfg.dataset.pixel_mean, cfg.dataset.pixel_std, flip_prob=cfg.dataset.prob,
                              padding=cfg.dataset.padding, erase_prob=cfg.dataset.re_prob,
                              color_jitter_prob=cfg.dataset.color_jitter_prob, color_jitter=cfg.dataset.color_jitter)
    # The identity sampler already gives each process its own batches, so the loader is not
    # passed through accelerator.prepare (which would shard it a second time).
    loader = DataLoader(ImageDataset(splits.train, augment), batch_sampler=sampler,
                        num_workers=cfg.dataset.num_workers, collate_fn=collate,
                        pin_memory=accelerator.device.type == "cuda")  # + non_blocking copies in the loop

    optim_cfg = cfg.train.optim
    losses = ReidLosses(cfg)  # the loss terms of a step (shared with bench/compare_with_reference.py)
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, cfg.train.num_epochs)
    progress = Progress(cfg.dataset.batch_size, world)

    if args.dry_run:
        if main_process:
            params = sum(p.numel() for p in model.parameters())
            print(f"# model: {cfg.model.backbone} + head, {params / 1e6:.2f} M parameters, "
                  f"{num_classes} identities, {len(sampler)} steps per epoch on {world} process(es)")
        return 0

    checkpoint_dir = out_dir / "checkpoints"
    resume_from = None if args.overwrite else resolve_resume(
        cfg.train.resume_training_checkpoint_path or ("auto" if args.resume else None), checkpoint_dir, required=True)
    claim_results_dir(accelerator, out_dir, resume_from=resume_from, overwrite=args.overwrite, script="finetune/run.py",
                      cleanup=cleanup, config=config_to_dict(cfg), fixed=RESUME_FIXED, free=RESUME_FREE)

    per_process = cfg.dataset.batch_size // world
    flops = step_flops(model, per_process, size, num_classes)  # before prepare: the plain module
    model, optimizer = accelerator.prepare(model, optimizer)
    center_loss = center_optimizer = None
    if cfg.model.with_center_loss:
        center_loss = CenterLoss(num_classes, accelerator.unwrap_model(model).embedding_dim)
        center_optimizer = torch.optim.SGD(center_loss.parameters(), lr=optim_cfg.center_lr)
        center_loss, center_optimizer = accelerator.prepare(center_loss, center_optimizer)
    extra_state = {"scheduler": scheduler}  # saved as safetensors + JSON, never pickle

    if resume_from is not None:
        progress.load_state_dict(load_checkpoint(accelerator, resume_from, extra_state))
        if main_process:
            print(f"resumed from {resume_from} at step {progress.step} (epoch {progress.epoch + 1}, "
                  f"batch {progress.batch})")
        if progress.epoch >= cfg.train.num_epochs:
            accelerator.print(f"finetune/run.py: the run in {out_dir} already finished its {cfg.train.num_epochs} "
                              f"epochs (step {progress.step}); nothing to do. To train longer, start a new run "
                              "from its model.safetensors (model.pretrained_model_path)")
            return 0
    for opt in (optimizer, center_optimizer):  # fused: skips a step on the device (after a resume too)
        if opt is not None:
            fused_optimizer(opt.optimizer)
    scheduler.step(progress.epoch)
    guard = NonFiniteGuard(cfg.train.max_nan_steps, script="finetune/run.py", checkpoint_dir=checkpoint_dir,
                           advice="Lower train.optim.base_lr, raise train.optim.warmup_epochs or use "
                                  "train.mixed_precision=bf16 or no")
    guard.streak = progress.nan_streak

    def checkpoint() -> Path:
        return save_checkpoint(accelerator, checkpoint_dir, progress.state_dict(), state=extra_state,
                               keep_last=cfg.train.keep_last,
                               keep_every=cfg.train.keep_every)

    name, precision = device_name(accelerator.device), precision_key(cfg.train.mixed_precision)
    meter = ThroughputMeter(flops, cfg.dataset.batch_size, world, peak_tflops(name, precision))
    if main_process:
        save_resolved_config(cfg, out_dir)
        print(f"training on {world} process(es): {per_process} images per process "
              f"per step, {len(sampler)} steps per epoch, {num_classes} identities")
        print(describe_cost(flops, per_process, name, precision, meter.peak))
        if cfg.train.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            print("note: train.mixed_precision=fp16 has no effect on the CPU (Accelerate trains in float32 there; "
                  "bf16 autocasts)", file=sys.stderr)
    accelerator.init_trackers("finetune")
    log_path = out_dir / "log.jsonl"
    tensorboard = accelerator.get_tracker("tensorboard", unwrap=False) if main_process else None

    forward = model
    if cfg.train.compile:  # the eager module stays for validation, saving and unwrapping
        forward = torch.compile(model, mode=cfg.train.compile_mode)
    stop = StopRequest()
    control = StepControl(accelerator, stop, guard)
    parts = StepParts(accelerator, model, forward, losses, optimizer, control, grad_clip=cfg.train.grad_clip,
                      center_loss=center_loss, center_optimizer=center_optimizer,
                      center_weight=optim_cfg.center_loss_weight)
    keys = ["loss", *[f"loss_{k}" for k in ("id", "triplet", "center")], "id_accuracy"]

    def stop_here(epoch: int) -> int:
        saved = checkpoint()
        accelerator.print(f"SIGTERM: saved {saved} at step {progress.step} (epoch {epoch + 1}, "
                          f"batch {progress.batch}); exiting")
        accelerator.print(describe_outputs(out_dir, "model.safetensors"))
        accelerator.end_training()
        return 0

    with stop:
        for epoch in range(progress.epoch, cfg.train.num_epochs):
            sampler.set_epoch(epoch, progress.batch)
            model.train()
            epoch_sums, interval = DeviceSums(keys, accelerator.device), DeviceSums(keys, accelerator.device)
            started, check_due = time.time(), False
            meter.reset()
            bar = tqdm(total=progress.batch + len(sampler), initial=progress.batch,
                       desc=f"epoch {epoch + 1}/{cfg.train.num_epochs}", disable=not main_process)
            for images, pids, _, _ in rng_neutral(loader):
                images = images.to(accelerator.device, non_blocking=True)
                pids = pids.to(accelerator.device, non_blocking=True)
                values, nonfinite = train_step(parts, images, pids)
                control.record(nonfinite, progress.step)
                epoch_sums.add(values, nonfinite)
                interval.add(values, nonfinite)
                meter.step()
                progress.step += 1
                progress.batch += 1
                bar.update(1)
                # The one host read per train.log_every steps (losses, non-finite streak, stop
                # requests), only where an optimizer step just ended, so accumulation resumes aligned.
                check_due = check_due or progress.step % cfg.train.log_every == 0
                if not accelerator.sync_gradients or not (check_due or control.stop_now()):
                    continue
                check_due = False
                stopping = control.check(step=progress.step, epoch=epoch + 1)
                progress.nan_streak = guard.streak
                window = {**interval.means(accelerator), **meter.read()}
                interval.reset()
                if "loss" in window:
                    bar.set_postfix({"loss": f"{window['loss']:.3f}", **meter.postfix(window)})
                if tensorboard is not None:  # per interval, TensorBoard only (W&B keeps the epoch axis)
                    tensorboard.log({f"interval/{k}": v for k, v in window.items() if k != "steps"},
                                    step=progress.step)
                if stopping:
                    bar.close()
                    return stop_here(epoch)
            bar.close()
            stopping = control.check(step=progress.step, epoch=epoch + 1)  # before the epoch's checkpoint
            progress.nan_streak = guard.streak
            if stopping:  # seen at the epoch's end (several processes): the resumed run ends the epoch
                return stop_here(epoch)
            means = epoch_sums.means(accelerator)
            seconds = time.time() - started
            trained = means.pop("steps")

            scheduler.step(epoch + 1)
            progress.epoch, progress.batch = epoch + 1, 0
            seconds = time.time() - started
            record = {"epoch": epoch + 1, "step": progress.step, **means,
                      "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": seconds,
                      **meter.rates(trained, seconds)}

            # Save before validating: a failure in validation never loses the epoch.
            last_epoch = epoch + 1 == cfg.train.num_epochs
            if (epoch + 1) % cfg.train.checkpoint_interval == 0 or last_epoch:
                checkpoint()
                if main_process:
                    save_reid_model(accelerator.unwrap_model(model), out_dir / "model.safetensors", cfg.model,
                                    num_classes, cosine_scale=optim_cfg.cosine_scale,
                                    cosine_margin=optim_cfg.cosine_margin, epoch=epoch + 1,
                                    preprocessing=preprocessing_for(cfg.model, cfg.dataset))
            if (epoch + 1) % cfg.train.validation_interval == 0 or last_epoch:
                accelerator.wait_for_everyone()
                if main_process:
                    record.update(validate(cfg, accelerator.unwrap_model(model), splits, size, epoch + 1,
                                           accelerator.device, out_dir))
                accelerator.wait_for_everyone()

            if main_process:
                accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(json.dumps(record) + "\n")

    accelerator.print(describe_outputs(out_dir, "model.safetensors"))
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from soliderkit.backbone import CheckpointError
from soliderkit.run_control import save_state_atomically
from soliderkit.config import add_config_args, format_config, parse_config_from_args, save_resolved_config
from soliderkit.io import atomic_write_json
from soliderkit.finetune.config import DatasetConfig, FinetuneConfig
from soliderkit.reid.transforms import ImageDataset, collate, train_transform
from soliderkit.reid.datasets import ReidSplits, parse_folders, parse_msmt17
from soliderkit.reid.evaluation import evaluate_query_gallery
from soliderkit.finetune.losses import CenterLoss, TripletLoss, id_loss, scale_center_gradients
from soliderkit.finetune.model import build_reid_model, save_reid_model
from soliderkit.finetune.optim import build_optimizer, build_scheduler
from soliderkit.finetune.sampler import IdentityBatchSampler


def load_splits(cfg: DatasetConfig) -> ReidSplits:
    """The train / query / gallery records named by the TAO ``dataset`` section."""
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
    """Epochs finished; saved with the accelerate state so ``--resume`` continues there."""

    def __init__(self):
        self.epoch = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = sorted(checkpoint_dir.glob("epoch_[0-9][0-9][0-9]*"))
    return found[-1] if found else None


def main(argv: list[str] | None = None) -> int:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in the results folder")
    parser.add_argument("--allow-partial", action="store_true",
                        help="start from a pretrained checkpoint whose keys do not all match (they are listed)")
    args = parser.parse_args(argv)
    cfg = parse_config_from_args(FinetuneConfig, args)
    out_dir = Path(cfg.train.results_dir or Path(cfg.results_dir) / "train")

    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        log_with=None if args.dry_run else "tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "tensorboard")),
    )
    main_process = accelerator.is_main_process
    if cfg.train.seed >= 0:
        set_seed(cfg.train.seed)

    splits = load_splits(cfg.dataset)
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
    sampler = IdentityBatchSampler([r.pid for r in splits.train], cfg.dataset.batch_size // world,
                                   cfg.dataset.num_instances, seed=max(cfg.train.seed, 0),
                                   rank=accelerator.process_index, world_size=world)
    augment = train_transform(size, cfg.dataset.pixel_mean, cfg.dataset.pixel_std, flip_prob=cfg.dataset.prob,
                              padding=cfg.dataset.padding, erase_prob=cfg.dataset.re_prob)
    # The identity sampler already gives each process its own batches, so the loader is not
    # passed through accelerator.prepare (which would shard it a second time).
    loader = DataLoader(ImageDataset(splits.train, augment), batch_sampler=sampler,
                        num_workers=cfg.dataset.num_workers, collate_fn=collate)

    optim_cfg = cfg.train.optim
    use_id_loss = "softmax" in cfg.dataset.sampler
    use_triplet = "triplet" in cfg.dataset.sampler and "triplet" in cfg.model.metric_loss_type
    triplet = TripletLoss(None if cfg.model.no_margin else optim_cfg.triplet_loss_margin,
                          normalize_features=optim_cfg.trp_l2)
    label_smoothing = cfg.model.label_smooth_epsilon if cfg.model.label_smooth else 0.0
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, cfg.train.num_epochs)
    progress = Progress()

    if args.dry_run:
        if main_process:
            print(format_config(cfg), end="")
            params = sum(p.numel() for p in model.parameters())
            print(f"# model: {cfg.model.backbone} + head, {params / 1e6:.2f} M parameters, "
                  f"{num_classes} identities, {len(sampler)} steps per epoch on {world} process(es)")
        return 0

    model, optimizer = accelerator.prepare(model, optimizer)
    center_loss = center_optimizer = None
    if cfg.model.with_center_loss:
        center_loss = CenterLoss(num_classes, accelerator.unwrap_model(model).embedding_dim)
        center_optimizer = torch.optim.SGD(center_loss.parameters(), lr=optim_cfg.center_lr)
        center_loss, center_optimizer = accelerator.prepare(center_loss, center_optimizer)
    accelerator.register_for_checkpointing(scheduler, progress)

    checkpoint_dir = out_dir / "checkpoints"
    resume_from = cfg.train.resume_training_checkpoint_path
    if args.resume and resume_from is None:
        resume_from = latest_checkpoint(checkpoint_dir)
        if resume_from is None:
            raise SystemExit(f"--resume: no checkpoint found in {checkpoint_dir}")
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        if main_process:
            print(f"resumed from {resume_from} at epoch {progress.epoch}")
    scheduler.step(progress.epoch)

    if main_process:
        save_resolved_config(cfg, out_dir)
        print(f"training on {world} process(es): {cfg.dataset.batch_size // world} images per process "
              f"per step, {len(sampler)} steps per epoch, {num_classes} identities")
    accelerator.init_trackers("finetune")
    log_path = out_dir / "log.jsonl"

    for epoch in range(progress.epoch, cfg.train.num_epochs):
        sampler.set_epoch(epoch)
        model.train()
        sums, count, started = defaultdict(float), 0, time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.num_epochs}", disable=not main_process)
        modules = [model] + ([center_loss] if center_loss is not None else [])
        for images, pids, _, _ in bar:
            images, pids = images.to(accelerator.device), pids.to(accelerator.device)
            with accelerator.accumulate(*modules):
                out = model(images, pids)
                parts = {}
                if use_id_loss:
                    parts["id"] = cfg.model.id_loss_weight * id_loss(out.logits, pids, label_smoothing)
                if use_triplet:
                    parts["triplet"] = cfg.model.triplet_loss_weight * triplet(out.features, pids)
                if center_loss is not None:
                    parts["center"] = optim_cfg.center_loss_weight * center_loss(out.features, pids)
                loss = sum(parts.values())
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.train.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
                if center_loss is not None:
                    if accelerator.sync_gradients:
                        scale_center_gradients(center_loss, optim_cfg.center_loss_weight)
                    center_optimizer.step()
                    center_optimizer.zero_grad()
            sums["loss"] += loss.item()
            for name, value in parts.items():
                sums[f"loss_{name}"] += value.item()
            sums["id_accuracy"] += (out.logits.argmax(1) == pids).float().mean().item()
            count += 1
            bar.set_postfix(loss=f"{sums['loss'] / count:.3f}")

        scheduler.step(epoch + 1)
        progress.epoch = epoch + 1
        record = {"epoch": epoch + 1, **{k: v / max(count, 1) for k, v in sums.items()},
                  "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.time() - started,
                  "images_per_second": count * images.shape[0] * world / (time.time() - started)}

        last_epoch = epoch + 1 == cfg.train.num_epochs
        if (epoch + 1) % cfg.train.validation_interval == 0 or last_epoch:
            accelerator.wait_for_everyone()
            if main_process:
                rr = cfg.re_ranking
                results = evaluate_query_gallery(
                    accelerator.unwrap_model(model), splits.query, splits.gallery,
                    max_rank=max(rr.max_rank, 10), size=size, mean=cfg.dataset.pixel_mean,
                    std=cfg.dataset.pixel_std, batch_size=cfg.dataset.val_batch_size,
                    device=accelerator.device, flip=cfg.model.with_flip_feature,
                    num_workers=cfg.dataset.num_workers,
                    re_ranking={"k1": rr.k1, "k2": rr.k2, "lambda_value": rr.lambda_value}
                    if rr.re_ranking else None)
                plain = results["plain"]
                metrics = {"epoch": epoch + 1, **plain.as_percent_dict(),
                           "num_valid_queries": plain.num_valid_queries}
                if "re_ranked" in results:
                    metrics["re_ranked"] = results["re_ranked"].as_percent_dict()
                atomic_write_json(out_dir / "metrics.json", metrics)
                record.update({k: metrics[k] for k in ("mAP", "rank1", "rank5", "rank10", "mINP")})
                for label, result in results.items():
                    m = result.as_percent_dict()
                    print(f"epoch {epoch + 1} ({label}): mAP {m['mAP']:.1f}  rank-1 {m['rank1']:.1f}  "
                          f"rank-5 {m['rank5']:.1f}  rank-10 {m['rank10']:.1f}  mINP {m['mINP']:.1f}")
            accelerator.wait_for_everyone()

        if main_process:
            accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
        if (epoch + 1) % cfg.train.checkpoint_interval == 0 or last_epoch:
            save_state_atomically(accelerator, checkpoint_dir / f"epoch_{epoch + 1:03d}")
            if main_process:
                save_reid_model(accelerator.unwrap_model(model), out_dir / "model.safetensors", cfg.model,
                                num_classes, cosine_scale=optim_cfg.cosine_scale,
                                cosine_margin=optim_cfg.cosine_margin, epoch=epoch + 1)

    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())

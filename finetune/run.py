"""Stage 2: ReID fine-tuning of the shared Swin backbone (ID + triplet + center losses).

    accelerate launch finetune/run.py --config configs/finetune/synthetic_tiny.yaml [--dry-run] [key=value ...]

The training loop arrives with the fine-tune issue (#3); today the script reads the
datasets and builds the backbone from the config (a TAO ReIdentificationNet spec), and
with ``--dry-run`` prints the dataset statistics and the resolved config and exits 0.
"""
from __future__ import annotations

import argparse
import sys

from backbone import build_backbone
from common.config import add_config_args, format_config, parse_config_from_args
from finetune.config import DatasetConfig, FinetuneConfig, ModelConfig
from finetune.datasets import ReidSplits, parse_msmt17, parse_three_folders


def load_splits(cfg: DatasetConfig) -> ReidSplits:
    """The train / query / gallery records named by the TAO ``dataset`` section."""
    if isinstance(cfg.train_dataset_dir, list):
        raise SystemExit("dataset.train_dataset_dir: multi-source training (a list of folders) "
                         "is not implemented yet (fine-tune issue #3); give one folder")
    if cfg.train_dataset_dir is None:
        raise SystemExit("config error: dataset.train_dataset_dir is not set")
    if cfg.dataset_kind == "msmt17":
        return parse_msmt17(cfg.train_dataset_dir)
    missing = [k for k in ("query_dataset_dir", "test_dataset_dir") if getattr(cfg, k) is None]
    if missing:
        raise SystemExit(f"config error: dataset.{missing[0]} is not set")
    # TAO names the three folders directly; absolute or relative to the working directory.
    return parse_three_folders(".", train_dir=cfg.train_dataset_dir, query_dir=cfg.query_dataset_dir,
                               gallery_dir=cfg.test_dataset_dir, name=cfg.dataset_kind)


def build_model_backbone(cfg: ModelConfig):
    checkpoint = cfg.pretrained_model_path
    if checkpoint is not None and cfg.pretrain_choice == "imagenet":
        raise SystemExit("model.pretrain_choice=imagenet: loading ImageNet Swin checkpoints is not "
                         "implemented yet (deployment issue #7); use pretrain_choice=self or "
                         "pretrained_model_path=null")
    return build_backbone(cfg.backbone, img_size=(cfg.input_height, cfg.input_width),
                          checkpoint=checkpoint, semantic_weight=cfg.semantic_weight,
                          drop_path_rate=cfg.drop_path, grad_checkpointing=cfg.grad_checkpointing)


def main(argv: list[str] | None = None) -> int:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    cfg = parse_config_from_args(FinetuneConfig, args)

    splits = load_splits(cfg.dataset)
    print(splits.format_table())
    backbone = build_model_backbone(cfg.model)

    if args.dry_run:
        print(format_config(cfg), end="")
        params = sum(p.numel() for p in backbone.parameters())
        print(f"# backbone: {cfg.model.backbone}, {params / 1e6:.2f} M parameters")
        return 0
    raise SystemExit("finetune/run.py: the training loop is not implemented yet (issue #3); "
                     "use --dry-run to check a config")


if __name__ == "__main__":
    sys.exit(main())

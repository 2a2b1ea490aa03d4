"""Stage 1: DINO + SOLIDER self-supervised pretraining of the shared Swin backbone.

    accelerate launch pretrain/run.py --config configs/pretrain/synthetic_tiny.yaml [--dry-run] [key=value ...]

The training loop arrives with the pretraining issue (#6); today the script builds the
student and teacher backbones from the config, checks the data source, and with
``--dry-run`` prints the resolved config and exits 0.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backbone import build_backbone
from common.config import add_config_args, format_config, parse_config_from_args
from pretrain.config import PretrainConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def describe_data(cfg: PretrainConfig) -> str:
    """Check the configured data source exists and say what it holds."""
    if cfg.data.path is None:
        raise SystemExit("config error: data.path is not set (a shard folder or an image folder)")
    path = Path(cfg.data.path)
    if not path.exists():
        raise SystemExit(f"config error: data.path={cfg.data.path} does not exist")
    if cfg.data.kind == "folder":
        count = sum(1 for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if count == 0:
            raise SystemExit(f"data.path={cfg.data.path}: no images ({sorted(IMAGE_SUFFIXES)}) found")
        return f"image folder {path}: {count} images"
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not shards:
        raise SystemExit(f"data.path={cfg.data.path}: no .tar shards found")
    return f"shards {path}: {len(shards)} files"


def main(argv: list[str] | None = None) -> int:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    cfg = parse_config_from_args(PretrainConfig, args)

    data_summary = describe_data(cfg)
    student = build_backbone(cfg.model.arch, img_size=cfg.data.global_crop_size,
                             drop_path_rate=cfg.model.drop_path_rate,
                             grad_checkpointing=cfg.model.grad_checkpointing)
    teacher = build_backbone(cfg.model.arch, img_size=cfg.data.global_crop_size, drop_path_rate=0.0)
    teacher.load_state_dict(student.state_dict())

    if args.dry_run:
        print(format_config(cfg), end="")
        print(f"# data: {data_summary}")
        params = sum(p.numel() for p in student.parameters())
        print(f"# student/teacher backbone: {cfg.model.arch}, {params / 1e6:.2f} M parameters each")
        return 0
    raise SystemExit("pretrain/run.py: the training loop is not implemented yet (issue #6); "
                     "use --dry-run to check a config")


if __name__ == "__main__":
    sys.exit(main())

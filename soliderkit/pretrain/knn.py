"""Retrieval check of a backbone with no training: Market-1501 mAP / CMC of its pooled features.

Query and gallery images of a Market-1501-layout folder are resized to the model input,
embedded by the backbone's pooled stage-4 feature at a fixed λ, L2-normalised and ranked
by euclidean distance (``soliderkit.reid.metrics.pairwise_distance``), then scored with the
Market-1501 protocol (``soliderkit.reid.metrics.evaluate_ranking``)
(same-camera matches of the query identity are ignored). This is the nearest-neighbour
("kNN") ReID monitor that ``pretrain/run.py`` runs on the teacher.

    python pretrain/knn.py data/synthetic --checkpoint results/pretrain/x/backbone.safetensors
    python pretrain/knn.py data/synthetic --arch swin_pico_patch4_window7 --size 128 64 --seed 0  # random init

With a checkpoint, the architecture, input size, pixel mean / std and λ are those the run's own
kNN monitor used: read from the checkpoint's metadata (``pretrain/run.py`` records them), else
from the run's ``config.yaml`` beside it (``data.global_crop_size``, ``data.pixel_mean`` /
``pixel_std``, ``knn_eval.semantic_weight``, ``model.arch``); flags override them and the
settings used, with where each came from, are printed. Without ``--checkpoint`` the backbone
is randomly initialised (seeded): the baseline a pretrained backbone has to beat.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from soliderkit.backbone import SwinBackbone, build_backbone
from soliderkit.cli import HelpFormatter
from soliderkit.config import ConfigError, load_config
from soliderkit.pretrain.config import PretrainConfig
from soliderkit.reid.datasets import DatasetError, ReidSplits, parse_market1501
from soliderkit.reid.embedding import PREPROCESSING_KEY, Preprocessing
from soliderkit.reid.evaluation import extract_embeddings
from soliderkit.reid.metrics import evaluate_ranking, pairwise_distance

__all__ = ["PooledEmbedding", "knn_reid", "load_query_gallery", "knn_preprocessing", "checkpoint_settings", "main"]


class PooledEmbedding(nn.Module):
    """A backbone as an embedding model: images -> pooled feature at a fixed λ."""

    def __init__(self, backbone: SwinBackbone, semantic_weight: float):
        super().__init__()
        self.backbone = backbone
        self.semantic_weight = float(semantic_weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images, semantic_weight=self.semantic_weight).pooled


def load_query_gallery(dataset_dir: str) -> ReidSplits:
    """Query and gallery records of a Market-1501-layout folder (the train split is not used);
    a folder without that layout is a one-line error naming it."""
    try:
        return parse_market1501(dataset_dir)
    except DatasetError as exc:
        raise SystemExit(f"kNN dataset {dataset_dir}: {exc} (a Market-1501-layout folder: query/, "
                         "bounding_box_test/)") from None


@torch.no_grad()
def knn_reid(backbone: SwinBackbone, splits: ReidSplits, *, size: Sequence[int], mean: Sequence[float],
             std: Sequence[float], batch_size: int = 128, device: torch.device | str = "cpu",
             semantic_weight: float = 0.2, num_workers: int = 0, progress: bool = False) -> dict:
    """mAP / rank-k (percent) of ``backbone``'s features on ``splits.query`` vs ``splits.gallery``."""
    model = PooledEmbedding(backbone, semantic_weight)
    was_training = backbone.training
    options = dict(size=tuple(size), mean=mean, std=std, batch_size=batch_size, device=torch.device(device),
                   num_workers=num_workers, progress=progress)
    query = extract_embeddings(model, splits.query, desc="kNN query", **options)
    gallery = extract_embeddings(model, splits.gallery, desc="kNN gallery", **options)
    backbone.train(was_training)
    result = evaluate_ranking(pairwise_distance(query, gallery, metric="euclidean", normalize=True),
                              np.array([r.pid for r in splits.query]), np.array([r.pid for r in splits.gallery]),
                              np.array([r.camid for r in splits.query]), np.array([r.camid for r in splits.gallery]),
                              max_rank=min(10, len(splits.gallery)))
    scores = result.as_percent_dict()
    return {"mAP": scores["mAP"], "rank1": scores["rank1"], "rank5": scores.get("rank5"),
            "mINP": scores.get("mINP"), "num_query": len(splits.query), "num_gallery": len(splits.gallery),
            "num_valid_queries": result.num_valid_queries}


DEFAULTS = {"arch": "swin_pico_patch4_window7", "size": (256, 128), "semantic_weight": 0.2,
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def knn_preprocessing(cfg) -> dict:
    """What the run's kNN monitor feeds the teacher (a ``PretrainConfig``): input size, pixel mean /
    std and λ, as the ``preprocessing`` record ``save_backbone`` stores (``soliderkit.reid.embedding``)."""
    return Preprocessing(input_size=tuple(cfg.data.global_crop_size), pixel_mean=tuple(cfg.data.pixel_mean),
                         pixel_std=tuple(cfg.data.pixel_std), interpolation="bicubic",
                         semantic_weight=cfg.knn_eval.semantic_weight).as_dict()


def checkpoint_settings(checkpoint: str | None) -> tuple[dict, dict]:
    """(settings, where each came from) for probing ``checkpoint``: arch, size, semantic_weight,
    mean, std. Read from the checkpoint's ``preprocessing`` metadata (written by ``pretrain/run.py``),
    else the run's ``config.yaml`` beside it, else the checkpoint's ``arch`` / ``img_size``
    metadata, else :data:`DEFAULTS`."""
    values, sources = dict(DEFAULTS), {k: "default" for k in DEFAULTS}

    def take(key, value, source):
        if value is not None and sources[key] == "default":
            values[key], sources[key] = value, source

    if checkpoint is None:
        return values, sources
    path = Path(checkpoint)
    metadata: dict = {}
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    record = metadata.get(PREPROCESSING_KEY)
    if record:
        pre = Preprocessing.from_json(record)
        for key, value in (("size", pre.input_size), ("semantic_weight", pre.semantic_weight),
                           ("mean", pre.pixel_mean), ("std", pre.pixel_std)):
            take(key, value, "checkpoint")
    take("arch", metadata.get("arch") or None, "checkpoint")
    run_config = path.parent / "config.yaml"
    if run_config.is_file():
        try:
            cfg = load_config(PretrainConfig, run_config, warn_no_effect=False)
        except ConfigError:
            cfg = None  # not a pretraining run's config (e.g. a fine-tune folder)
        if cfg is not None:
            source = f"run config {run_config}"
            take("size", tuple(cfg.data.global_crop_size), source)
            take("semantic_weight", cfg.knn_eval.semantic_weight, source)
            take("mean", tuple(cfg.data.pixel_mean), source)
            take("std", tuple(cfg.data.pixel_std), source)
            take("arch", cfg.model.arch, source)
    if metadata.get("img_size"):
        take("size", tuple(json.loads(metadata["img_size"])) or None, "checkpoint")
    return values, sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python pretrain/knn.py", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("dataset_dir", help="Market-1501-layout folder (query/, bounding_box_test/)")
    parser.add_argument("--checkpoint", default=None,
                        help="backbone .safetensors (pretrain/run.py's backbone.safetensors) or a SOLIDER / timm "
                             "checkpoint (default: none, a random init: the baseline to beat)")
    where = "the checkpoint's metadata, else the run's config.yaml beside it, else"
    parser.add_argument("--arch", default=None,
                        help=f"architecture (default: {where} {DEFAULTS['arch']})")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help=f"input height and width (default: {where} {DEFAULTS['size'][0]} {DEFAULTS['size'][1]})")
    parser.add_argument("--semantic-weight", type=float, default=None,
                        help=f"λ of the backbone's semantic controller (default: {where} {DEFAULTS['semantic_weight']})")
    parser.add_argument("--mean", type=float, nargs=3, default=None,
                        help=f"pixel mean, RGB 0-1 (default: {where} ImageNet's)")
    parser.add_argument("--std", type=float, nargs=3, default=None,
                        help=f"pixel std, RGB 0-1 (default: {where} ImageNet's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward")
    parser.add_argument("--num-workers", type=int, default=0, help="image-loading processes (0: this process)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    settings, sources = checkpoint_settings(args.checkpoint)
    for key, flag in (("arch", args.arch), ("size", args.size), ("semantic_weight", args.semantic_weight),
                      ("mean", args.mean), ("std", args.std)):
        if flag is not None:
            settings[key], sources[key] = tuple(flag) if isinstance(flag, list) else flag, "command line"
    size = tuple(int(s) for s in settings["size"])
    print("kNN probe settings: " + "; ".join(
        f"{key} {list(value) if isinstance(value, tuple) else value} ({sources[key]})" for key, value in settings.items()),
        file=sys.stderr)
    torch.manual_seed(args.seed)
    backbone = build_backbone(settings["arch"], img_size=size, checkpoint=args.checkpoint, drop_path_rate=0.0)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone.to(device)
    scores = knn_reid(backbone, load_query_gallery(args.dataset_dir), size=size, mean=settings["mean"],
                      std=settings["std"], batch_size=args.batch_size, device=device,
                      semantic_weight=settings["semantic_weight"], num_workers=args.num_workers,
                      progress=not args.no_progress)
    print(json.dumps({"checkpoint": args.checkpoint, "arch": settings["arch"], "size": list(size),
                      "semantic_weight": settings["semantic_weight"], "mean": list(settings["mean"]),
                      "std": list(settings["std"]), "seed": args.seed, "sources": sources, **scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

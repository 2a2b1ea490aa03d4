"""Retrieval check of a backbone with no training: Market-1501 mAP / CMC of its pooled features.

Query and gallery images of a Market-1501-layout folder are resized to the model input,
embedded by the backbone's pooled stage-4 feature at a fixed λ, L2-normalised and ranked
by euclidean distance (``soliderkit.reid.metrics.pairwise_distance``), then scored with the
Market-1501 protocol (``soliderkit.reid.metrics.evaluate_ranking``)
(same-camera matches of the query identity are ignored). This is the nearest-neighbour
("kNN") ReID monitor that ``pretrain/run.py`` runs on the teacher.

    python pretrain/knn.py data/synthetic --arch swin_pico_patch4_window7 --size 128 64 \
        [--checkpoint results/pretrain/x/backbone.safetensors] [--semantic-weight 0.2] [--seed 0]

Without ``--checkpoint`` the backbone is randomly initialised (seeded): the baseline a
pretrained backbone has to beat.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np
import torch
from torch import nn

from soliderkit.backbone import SwinBackbone, build_backbone
from soliderkit.reid.datasets import ReidSplits, parse_market1501
from soliderkit.reid.evaluation import extract_embeddings
from soliderkit.reid.metrics import evaluate_ranking, pairwise_distance

__all__ = ["PooledEmbedding", "knn_reid", "load_query_gallery", "main"]


class PooledEmbedding(nn.Module):
    """A backbone as an embedding model: images -> pooled feature at a fixed λ."""

    def __init__(self, backbone: SwinBackbone, semantic_weight: float):
        super().__init__()
        self.backbone = backbone
        self.semantic_weight = float(semantic_weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images, semantic_weight=self.semantic_weight).pooled


def load_query_gallery(dataset_dir: str) -> ReidSplits:
    """Query and gallery records of a Market-1501-layout folder (the train split is not used)."""
    return parse_market1501(dataset_dir)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python pretrain/knn.py", description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", help="Market-1501-layout folder (query/, bounding_box_test/, bounding_box_train/)")
    parser.add_argument("--arch", default="swin_pico_patch4_window7")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 128), metavar=("H", "W"))
    parser.add_argument("--checkpoint", default=None, help="backbone .safetensors (default: random init)")
    parser.add_argument("--semantic-weight", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    parser.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    backbone = build_backbone(args.arch, img_size=args.size, checkpoint=args.checkpoint, drop_path_rate=0.0)
    scores = knn_reid(backbone, load_query_gallery(args.dataset_dir), size=args.size, mean=args.mean,
                      std=args.std, batch_size=args.batch_size, semantic_weight=args.semantic_weight)
    print(json.dumps({"checkpoint": args.checkpoint, "arch": args.arch, "size": list(args.size),
                      "semantic_weight": args.semantic_weight, "seed": args.seed, **scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

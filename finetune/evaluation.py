"""Feature extraction and query/gallery evaluation shared by training and the evaluate tool."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from finetune.data import ImageDataset, collate, test_transform
from finetune.datasets import ImageRecord
from finetune.metrics import RankingResult, evaluate_ranking, pairwise_distance
from finetune.model import flip_averaged_embedding
from finetune.reranking import re_ranking_from_features


@torch.no_grad()
def extract_embeddings(model: torch.nn.Module, records: Sequence[ImageRecord], *, size: tuple[int, int],
                       mean: Sequence[float], std: Sequence[float], batch_size: int,
                       device: torch.device, flip: bool = False, num_workers: int = 0,
                       progress: bool = True, desc: str = "embeddings") -> torch.Tensor:
    """Embeddings (N, D) of ``records`` in order, from ``model`` in eval mode."""
    loader = DataLoader(ImageDataset(records, test_transform(size, mean, std)), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=collate)
    was_training = model.training
    model.eval()
    chunks = []
    for images, _, _, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = images.to(device)
        embedding = flip_averaged_embedding(model, images) if flip else model(images)
        chunks.append(embedding.float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


def evaluate_query_gallery(model: torch.nn.Module, query: Sequence[ImageRecord],
                           gallery: Sequence[ImageRecord], *, max_rank: int = 50,
                           re_ranking: dict | None = None, **extract_kwargs) -> dict[str, RankingResult]:
    """Market-1501 protocol on L2-normalised embeddings, squared euclidean distance.

    Returns ``{"plain": result}``, plus ``"re_ranked"`` when ``re_ranking`` gives the
    k-reciprocal settings (``k1``, ``k2``, ``lambda_value``).
    """
    q = extract_embeddings(model, query, desc="query", **extract_kwargs)
    g = extract_embeddings(model, gallery, desc="gallery", **extract_kwargs)
    ids = (np.array([r.pid for r in query]), np.array([r.pid for r in gallery]),
           np.array([r.camid for r in query]), np.array([r.camid for r in gallery]))
    results = {"plain": evaluate_ranking(pairwise_distance(q, g, metric="euclidean", normalize=True),
                                         *ids, max_rank=max_rank)}
    if re_ranking is not None:
        distmat = re_ranking_from_features(q, g, re_ranking["k1"], re_ranking["k2"],
                                           re_ranking["lambda_value"])
        results["re_ranked"] = evaluate_ranking(distmat, *ids, max_rank=max_rank)
    return results

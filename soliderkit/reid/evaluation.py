"""Feature extraction and query/gallery evaluation shared by training and the evaluate tool."""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from soliderkit.reid.datasets import ImageRecord
from soliderkit.reid.embedding import flip_averaged_embedding, iter_embeddings
from soliderkit.reid.metrics import (
    RankingResult,
    evaluate_ranking_chunks,
    evaluate_ranking_from_features,
    pairwise_distance,
)
from soliderkit.reid.reranking import iter_re_ranking_from_features
from soliderkit.reid.transforms import ImageDataset, test_transform

__all__ = ["flip_averaged_embedding", "extract_embeddings", "evaluate_query_gallery", "evaluate_features",
           "ranked_gallery"]


def extract_embeddings(model: torch.nn.Module, records: Sequence[ImageRecord], *, size: tuple[int, int],
                       mean: Sequence[float], std: Sequence[float], batch_size: int,
                       device: torch.device, flip: bool = False, num_workers: int = 0,
                       progress: bool = True, desc: str = "embeddings",
                       interpolation: str = "bicubic") -> torch.Tensor:
    """Embeddings (N, D) of ``records`` in order, from ``model`` in eval mode; images resized
    with ``interpolation`` ("bilinear" or "bicubic", ``soliderkit.reid.transforms.test_transform``)."""
    transform = test_transform(size, mean, std, interpolation=interpolation)
    batches = iter_embeddings(model, ImageDataset(records, transform), batch_size=batch_size, device=device,
                              flip=flip, num_workers=num_workers, progress=progress, desc=desc)
    return torch.cat([embedding for _, embedding in batches])


def evaluate_query_gallery(model: torch.nn.Module, query: Sequence[ImageRecord],
                           gallery: Sequence[ImageRecord], *, max_rank: int = 50,
                           re_ranking: dict | None = None, **extract_kwargs) -> dict[str, RankingResult]:
    """Market-1501 protocol on L2-normalised embeddings, squared euclidean distance.

    Returns ``{"plain": result}``, plus ``"re_ranked"`` when ``re_ranking`` gives the
    k-reciprocal settings (``k1``, ``k2``, ``lambda_value``).
    """
    q = extract_embeddings(model, query, desc="query", **extract_kwargs)
    g = extract_embeddings(model, gallery, desc="gallery", **extract_kwargs)
    return evaluate_features(q, g, query, gallery, max_rank=max_rank, re_ranking=re_ranking)[0]


def evaluate_features(q_feats, g_feats, query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], *,
                      metric: str = "euclidean", max_rank: int = 50, re_ranking: dict | None = None,
                      keep_rows: Sequence[int] = ()) -> tuple[dict[str, RankingResult], dict[str, np.ndarray]]:
    """Market-1501 protocol metrics of query / gallery features (L2-normalised first).

    ``metric``: "euclidean" (squared; learned embeddings) or "cosine" (the colour-histogram
    baseline). Returns ``(results, rows)``: ``results["plain"]``, plus ``results["re_ranked"]``
    when ``re_ranking`` gives the k-reciprocal settings (``k1``, ``k2``, ``lambda_value``;
    re-ranking always starts from the squared euclidean distance); ``rows[name]`` holds the
    distance rows (len(keep_rows), num_gallery) of the queries ``keep_rows`` under that
    ranking, e.g. to show them. The full distance matrix is never held.
    """
    q_feats, g_feats = torch.as_tensor(q_feats), torch.as_tensor(g_feats)
    ids = (np.array([r.pid for r in query]), np.array([r.pid for r in gallery]),
           np.array([r.camid for r in query]), np.array([r.camid for r in gallery]))
    keep = [int(i) for i in keep_rows]
    results = {"plain": evaluate_ranking_from_features(q_feats, g_feats, *ids, max_rank=max_rank,
                                                       metric=metric, normalize=True)}
    rows = {"plain": pairwise_distance(q_feats[keep], g_feats, metric=metric, normalize=True).cpu().numpy()}
    if re_ranking is not None:
        kept: dict[int, np.ndarray] = {}
        blocks = iter_re_ranking_from_features(q_feats, g_feats, re_ranking["k1"], re_ranking["k2"],
                                               re_ranking["lambda_value"])
        results["re_ranked"] = evaluate_ranking_chunks(_keeping_rows(blocks, set(keep), kept), *ids,
                                                       max_rank=max_rank)
        rows["re_ranked"] = np.array([kept[i] for i in keep], dtype=np.float32).reshape(len(keep), len(gallery))
    return results, rows


def _keeping_rows(blocks: Iterable[tuple[slice, np.ndarray]], wanted: set[int],
                  kept: dict[int, np.ndarray]) -> Iterator[tuple[slice, np.ndarray]]:
    """Pass (rows, block) pairs through, copying the rows listed in ``wanted`` into ``kept``."""
    for rows, block in blocks:
        for i in wanted.intersection(range(rows.start or 0, rows.stop)):
            kept[i] = np.array(block[i - (rows.start or 0)])
        yield rows, block


def ranked_gallery(dist_rows, q_pids, q_camids, g_pids, g_camids, top_k: int) -> list[np.ndarray]:
    """For each distance row, the indices of its ``top_k`` nearest gallery entries, after the
    Market-1501 protocol's removal of the query's own identity seen by the query's camera.
    Ties keep gallery order (as ``soliderkit.reid.metrics``)."""
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    ranked = []
    for dist, pid, camid in zip(np.asarray(dist_rows), q_pids, q_camids):
        order = np.argsort(dist, kind="stable")
        junk = (g_pids[order] == pid) & (g_camids[order] == camid)
        ranked.append(order[~junk][:top_k])
    return ranked

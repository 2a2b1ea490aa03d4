"""Per-query numpy loop of the published Market-1501 evaluation, the baseline of
``bench_metrics.py``.

Written independently, step for step like the published python evaluation
(torchreid ``torchreid/metrics/rank.py`` ``eval_market1501``; fast-reid
``fastreid/evaluation/rank.py``, which adds mINP): one ``np.argsort`` of the whole
distance matrix with numpy's default (unstable) sort, the whole match matrix, then a
Python loop over queries that builds each query's kept-match vector and computes its
CMC, INP and AP, the precision for AP through a Python list comprehension as published.

``vectorised_ap=True`` replaces that list comprehension with one numpy division: not
the published code, but a stronger baseline worth reporting next to it. ``stable=True``
sorts with a stable sort, so exactly tied distances are ranked by gallery index as
``soliderkit.reid.metrics`` ranks them (float32 distances do tie now and then).

The only deviation: when junk removal leaves a query fewer than ``max_rank`` gallery
entries, its CMC row is padded with its last value (the published code would build a
ragged array there and fail).
"""
from __future__ import annotations

import numpy as np


def market1501_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, *,
                    vectorised_ap=False, stable=False):
    """Return (cmc, mAP, mINP, num_valid) as the published per-query loop computes them."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    max_rank = min(max_rank, distmat.shape[1])

    # Whole matrix at once with the default (unstable) sort, as published.
    ranked = np.argsort(distmat, axis=1, kind="stable" if stable else None)
    matches = (g_pids[ranked] == q_pids[:, np.newaxis]).astype(np.int32)
    cmc_rows, average_precisions, inverse_neg_penalties = [], [], []
    for qi in range(distmat.shape[0]):
        order = ranked[qi]
        junk = (g_pids[order] == q_pids[qi]) & (g_camids[order] == q_camids[qi])
        hits = matches[qi][~junk]  # 1 where a kept entry is a true match
        if not np.any(hits):
            continue  # the query's identity has no true match in the gallery

        hits_so_far = hits.cumsum()
        hardest = np.max(np.where(hits == 1))
        inverse_neg_penalties.append(hits_so_far[hardest] / (hardest + 1.0))

        curve = hits_so_far.copy()
        curve[curve > 1] = 1
        curve = curve[:max_rank]
        cmc_rows.append(np.pad(curve, (0, max_rank - curve.size), mode="edge"))

        if vectorised_ap:
            precision = hits_so_far / np.arange(1.0, hits.size + 1)
        else:
            precision = np.asarray([count / (rank + 1.0) for rank, count in enumerate(hits_so_far)])
        average_precisions.append((precision * hits).sum() / hits.sum())

    if not cmc_rows:
        raise ValueError("no valid query")
    cmc = np.asarray(cmc_rows).astype(np.float32).sum(0) / len(cmc_rows)
    return cmc, float(np.mean(average_precisions)), float(np.mean(inverse_neg_penalties)), len(cmc_rows)

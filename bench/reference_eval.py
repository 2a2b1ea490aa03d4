"""Per-query numpy loop of the published Market-1501 evaluation (torchreid / fast-reid).

Written independently as the baseline for ``bench_metrics.py``: it follows the structure
of the published python evaluation (argsort the whole distance matrix, then loop over
queries in Python), but uses a stable sort so tie order is defined.
"""
from __future__ import annotations

import numpy as np


def market1501_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Return (cmc, mAP, mINP, num_valid) exactly as the per-query reference loop computes."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    max_rank = min(max_rank, distmat.shape[1])

    ranked = np.argsort(distmat, axis=1, kind="stable")
    cmc_rows, average_precisions, inverse_neg_penalties = [], [], []
    for qi in range(distmat.shape[0]):
        ranked_pids = g_pids[ranked[qi]]
        ranked_cams = g_camids[ranked[qi]]
        is_same_pid = ranked_pids == q_pids[qi]
        is_junk = is_same_pid & (ranked_cams == q_camids[qi])
        hits = is_same_pid[~is_junk].astype(np.int64)  # 1 where a kept entry is a true match
        if not hits.any():
            continue
        hits_so_far = np.cumsum(hits)
        hit_positions = np.flatnonzero(hits)            # 0-based ranks among kept entries
        precision = hits_so_far / np.arange(1, hits.size + 1)
        average_precisions.append((precision * hits).sum() / hits.sum())
        hardest = hit_positions[-1]
        inverse_neg_penalties.append(hits_so_far[hardest] / (hardest + 1.0))
        first_hit_curve = np.minimum(hits_so_far, 1)[:max_rank]
        # Junk removal can leave fewer than max_rank entries; the curve stays at 1 after a hit.
        cmc_rows.append(np.pad(first_hit_curve, (0, max_rank - first_hit_curve.size), mode="edge"))

    if not cmc_rows:
        raise ValueError("no valid query")
    cmc = np.asarray(cmc_rows, dtype=np.float32).sum(0) / len(cmc_rows)
    return cmc, float(np.mean(average_precisions)), float(np.mean(inverse_neg_penalties)), len(cmc_rows)

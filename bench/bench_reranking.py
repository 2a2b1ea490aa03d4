"""Benchmark k-reciprocal re-ranking (``soliderkit.reid.reranking``).

Default: a problem where both paths fit in memory (1,000 queries x 5,000 gallery, 256-d
synthetic identity-clustered features). Times ``re_ranking`` on the three distance
matrices (dense path, one (N, N) matrix) and ``re_ranking_from_features`` (no (N, N)
matrix), prints the largest absolute difference between them and the metrics before
and after re-ranking. ``--reference`` also times a plain per-item loop of the published
algorithm (slow: use a small size, e.g. ``--num-query 200 --num-gallery 1000``).

``--msmt`` (MSMT17 size, 11,659 x 82,161): re-ranks from features and evaluates the
result block by block (``iter_re_ranking_from_features`` -> ``evaluate_ranking_chunks``),
so neither the (N, N) nor the (num_query, num_gallery) matrix is held; prints time and
peak RSS. ``--scale 0.25`` runs the same protocol on a fraction of the MSMT17 size;
``--materialise`` asks for the whole float32 result matrix instead of blocks.

    .venv/bin/python bench/bench_reranking.py
    .venv/bin/python bench/bench_reranking.py --num-query 200 --num-gallery 1000 --reference
    .venv/bin/python bench/bench_reranking.py --msmt
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from soliderkit.benchmarking import MSMT, peak_rss_mib, synthetic_split, timed
from soliderkit.reid.metrics import (
    evaluate_ranking,
    evaluate_ranking_chunks,
    evaluate_ranking_from_features,
    pairwise_distance,
)
from soliderkit.reid.reranking import (
    iter_re_ranking_from_features,
    re_ranking,
    re_ranking_from_features,
)


def describe(name: str, result, seconds: float | None = None) -> str:
    timing = f"{seconds:8.2f}s  " if seconds is not None else " " * 11
    return (f"{name:<34}{timing}mAP {100 * result.mAP:6.2f}  rank1 {100 * result.cmc[0]:6.2f}  "
            f"mINP {100 * result.mINP:6.2f}")


def euclidean(a, b) -> torch.Tensor:
    """Plain euclidean distance of L2-normalised features; ``re_ranking`` squares it, so
    both paths see the same squared euclidean distance."""
    return pairwise_distance(a, b).sqrt_()


def reference_loop(q_g, q_q, g_g, k1, k2, lambda_value):
    """Per-item loop of the published algorithm (as in torchreid's rerank.py), for timing."""
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32) ** 2
    original = (full / full.max(axis=0)).T
    num_items, num_query = original.shape[0], q_g.shape[0]
    ranking = np.argsort(original, axis=1)

    def reciprocal(i, k):
        forward = ranking[i, :k + 1]
        return forward[(ranking[forward, :k + 1] == i).any(axis=1)]

    encoding = np.zeros_like(original)
    for i in range(num_items):
        own = reciprocal(i, k1)
        expanded = own
        for candidate in own:
            theirs = reciprocal(candidate, int(np.around(k1 / 2)))
            if len(np.intersect1d(theirs, own)) > 2 / 3 * len(theirs):
                expanded = np.append(expanded, theirs)
        expanded = np.unique(expanded)
        weight = np.exp(-original[i, expanded])
        encoding[i, expanded] = weight / weight.sum()
    if k2 != 1:
        encoding = np.stack([encoding[ranking[i, :k2]].mean(axis=0) for i in range(num_items)])
    postings = [np.flatnonzero(encoding[:, j]) for j in range(num_items)]
    jaccard = np.zeros((num_query, num_items), dtype=np.float32)
    for i in range(num_query):
        shared = np.zeros(num_items, dtype=np.float32)
        for j in np.flatnonzero(encoding[i]):
            shared[postings[j]] += np.minimum(encoding[i, j], encoding[postings[j], j])
        jaccard[i] = 1 - shared / (2 - shared)
    return (jaccard * (1 - lambda_value) + original[:num_query] * lambda_value)[:, num_query:]


def run_small(args) -> None:
    rng = np.random.default_rng(args.seed)
    num_ids = max(2, args.num_query // 4)
    q_feats, g_feats, q_pids, g_pids, q_cams, g_cams = synthetic_split(
        rng, args.num_query, args.num_gallery, num_ids, num_cams=6, dim=args.dim, noise=args.noise)
    knobs = dict(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value)
    print(f"{args.num_query} x {args.num_gallery}, dim {args.dim}, {num_ids} ids, k1 {args.k1} "
          f"k2 {args.k2} lambda {args.lambda_value}, torch threads {torch.get_num_threads()}")

    start = time.perf_counter()
    q_g, q_q, g_g = euclidean(q_feats, g_feats), euclidean(q_feats, q_feats), euclidean(g_feats, g_feats)
    t_matrices = time.perf_counter() - start
    dense, t_dense = timed(re_ranking, q_g, q_q, g_g, **knobs, repeat=args.repeat)
    from_features, t_features = timed(re_ranking_from_features, q_feats, g_feats, **knobs, repeat=args.repeat)

    print(f"(timings: best of {args.repeat} runs)")
    print(f"re_ranking (dense)                {t_dense:8.2f}s  (+{t_matrices:.2f}s for its 3 distance matrices)")
    print(f"re_ranking_from_features          {t_features:8.2f}s")
    print(f"max |dense - features|            {np.abs(dense - from_features).max():.2e}")
    if args.reference:
        start = time.perf_counter()
        expected = reference_loop(q_g.numpy(), q_q.numpy(), g_g.numpy(), **knobs)
        t_reference = time.perf_counter() - start
        print(f"per-item reference loop           {t_reference:8.2f}s  "
              f"max |dense - loop| {np.abs(dense - expected).max():.2e}  "
              f"(dense path {t_reference / t_dense:.0f}x faster)")

    ids = (q_pids, g_pids, q_cams, g_cams)
    print(describe("original distance", evaluate_ranking_from_features(q_feats, g_feats, *ids)))
    print(describe("re-ranked", evaluate_ranking(from_features, *ids)))
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


def run_msmt(args) -> None:
    sizes = dict(MSMT)
    for key in ("num_query", "num_gallery", "num_ids"):
        sizes[key] = max(2, round(sizes[key] * args.scale))
    rng = np.random.default_rng(args.seed)
    q_feats, g_feats, q_pids, g_pids, q_cams, g_cams = synthetic_split(
        rng, dim=args.dim, noise=args.noise, **sizes)
    ids = (q_pids, g_pids, q_cams, g_cams)
    knobs = dict(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value)
    print(f"msmt-size x{args.scale:g}: {sizes['num_query']} x {sizes['num_gallery']}, dim {args.dim}, "
          f"torch threads {torch.get_num_threads()}; peak RSS after making features {peak_rss_mib():.0f} MiB")

    start = time.perf_counter()
    if args.materialise:
        dist = re_ranking_from_features(q_feats, g_feats, **knobs, chunk_size=args.chunk_size)
        t_rerank = time.perf_counter() - start
        print(f"re_ranking_from_features          {t_rerank:8.2f}s  result {dist.nbytes / 2**20:.0f} MiB; "
              f"peak RSS {peak_rss_mib():.0f} MiB")
        result = evaluate_ranking(dist, *ids)
    else:
        blocks = iter_re_ranking_from_features(q_feats, g_feats, **knobs, chunk_size=args.chunk_size)
        result = evaluate_ranking_chunks(blocks, *ids)
    t_total = time.perf_counter() - start
    print(describe("re-ranked + evaluated", result, t_total))
    print(f"peak RSS {peak_rss_mib():.0f} MiB "
          f"(one float32 (N, N) matrix would be {(len(q_pids) + len(g_pids)) ** 2 * 4 / 2**30:.1f} GiB, "
          f"the query x gallery result {len(q_pids) * len(g_pids) * 4 / 2**30:.1f} GiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msmt", action="store_true",
                        help="MSMT17-size run from features, evaluated block by block")
    parser.add_argument("--scale", type=float, default=1.0, help="--msmt: fraction of the MSMT17 size")
    parser.add_argument("--materialise", action="store_true",
                        help="--msmt: return the whole float32 result matrix instead of blocks")
    parser.add_argument("--num-query", type=int, default=1000)
    parser.add_argument("--num-gallery", type=int, default=5000)
    parser.add_argument("--reference", action="store_true", help="also time the per-item reference loop")
    parser.add_argument("--repeat", type=int, default=3,
                        help="small mode: report the best of this many runs of each path")
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda-value", type=float, default=0.3)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=2.2,
                        help="feature noise around identity centroids (2.2: a hard ranking, where "
                             "re-ranking has something to fix)")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per distance block")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run_msmt(args) if args.msmt else run_small(args)


if __name__ == "__main__":
    main()

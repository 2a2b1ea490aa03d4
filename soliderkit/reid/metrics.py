"""Person re-identification ranking metrics: CMC, mAP and mINP.

This module reproduces the standard Market-1501 evaluation protocol as implemented by
torchreid (``torchreid/metrics/rank.py``, ``eval_market1501``) and fast-reid
(``fastreid/evaluation/rank.py``, which adds mINP):

* the gallery is ranked by ascending distance for every query;
* gallery entries with the query's person id *and* camera are removed ("junk"), so a
  query is never rewarded for finding itself or near-duplicates from the same view;
* a query with no remaining true match is skipped (and counted);
* CMC(k) is the fraction of valid queries whose first true match is within the top k;
* AP is the mean, over the query's true matches, of the precision at each match position;
* INP is (number of true matches) / (rank of the hardest true match) [Ye et al. 2021];
* mAP, mINP and CMC are averaged over valid queries only.

Deliberate differences from those reference loops (results are otherwise identical):

* Ties in distance are broken by gallery index (a stable sort). The references call
  ``np.argsort`` with its default, non-stable quicksort, so their order among exactly
  tied distances is unspecified; whenever a row has no ties the results coincide.
* The work is vectorised over chunks of queries (about 4M query x gallery entries per
  chunk), so memory stays bounded even for MSMT17-sized problems. Within a chunk only
  the entries ranked no later than each query's hardest true match are sorted: the
  rest cannot change any metric.
* When the gallery has fewer than ``max_rank`` entries, ``max_rank`` is reduced to the
  gallery size with a warning, as the references do. If, for a query, fewer gallery
  entries than ``max_rank`` survive junk removal, its CMC stays at 1 after its first
  match (the references would produce a ragged array there).
* Invalid input (shape mismatch, NaN distances, no valid query) raises ``ValueError``
  instead of an ``assert``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "RankingResult",
    "evaluate_ranking",
    "evaluate_ranking_chunks",
    "evaluate_ranking_from_features",
    "pairwise_distance",
]

# Query x gallery entries handled per chunk. An entry costs 2 bytes of mask and label,
# plus ~40 bytes if it has to be sorted or if query and gallery entry share a person id
# (worst case: every entry), so a chunk needs at most ~200 MB besides its distances.
_ENTRIES_PER_CHUNK = 1 << 22

# Rank cut-offs reported by RankingResult.as_percent_dict (when <= max_rank).
_REPORTED_RANKS = (1, 5, 10)


@dataclass(frozen=True, eq=False)
class RankingResult:
    """Aggregate ranking metrics; all values are fractions in [0, 1]."""

    mAP: float
    cmc: np.ndarray  # cmc[k - 1] = fraction of valid queries with a true match in the top k
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int

    @property
    def max_rank(self) -> int:
        return int(self.cmc.shape[0])

    def as_percent_dict(self) -> dict:
        """Metrics in percent: mAP, rank1/5/10 (those within max_rank), mINP and the CMC list."""
        percent: dict = {"mAP": 100.0 * self.mAP}
        for k in _REPORTED_RANKS:
            if k <= self.max_rank:
                percent[f"rank{k}"] = 100.0 * float(self.cmc[k - 1])
        percent["mINP"] = 100.0 * self.mINP
        percent["cmc"] = [100.0 * float(v) for v in self.cmc]
        return percent


# --------------------------------------------------------------------------------------
# Input conversion and validation
# --------------------------------------------------------------------------------------

def _as_distance_tensor(distmat) -> torch.Tensor:
    dist = distmat.detach() if isinstance(distmat, torch.Tensor) else torch.as_tensor(np.asarray(distmat))
    if dist.dim() != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(dist.shape)}")
    if dist.is_complex():
        raise ValueError(f"distmat must be real-valued, got dtype {dist.dtype}")
    return _sortable(dist)


def _sortable(dist: torch.Tensor) -> torch.Tensor:
    """Return ``dist`` in a dtype that sorts exactly like the input values."""
    if dist.dtype in (torch.float16, torch.bfloat16):
        return dist.float()  # widening is exact, so the ranking is unchanged
    if not dist.is_floating_point():
        return dist.double()  # integer / bool distances: exact below 2**53
    return dist


def _as_id_vector(name: str, values, expected_length: int, expected_from: str,
                  device: torch.device) -> torch.Tensor:
    try:
        ids = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    except TypeError as error:  # e.g. string ids
        raise ValueError(f"{name} must hold integer ids: {error}") from None
    if ids.dim() != 1 or ids.shape[0] != expected_length:
        raise ValueError(
            f"{name} must be 1-D with {expected_length} entries to match {expected_from}, "
            f"got shape {tuple(ids.shape)}")
    if ids.is_floating_point():
        if not bool(torch.all(ids == torch.round(ids))):
            raise ValueError(f"{name} must hold integer ids, got non-integer values")
    elif ids.is_complex():
        raise ValueError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    return ids.to(device=device, dtype=torch.int64)


def _id_vectors(q_pids, q_camids, g_pids, g_camids, num_query: int, num_gallery: int,
                query_from: str, gallery_from: str, device):
    """The four id vectors as checked tensors on ``device`` (shape errors name their source)."""
    return (_as_id_vector("q_pids", q_pids, num_query, query_from, device),
            _as_id_vector("q_camids", q_camids, num_query, query_from, device),
            _as_id_vector("g_pids", g_pids, num_gallery, gallery_from, device),
            _as_id_vector("g_camids", g_camids, num_gallery, gallery_from, device))


def _checked_max_rank(max_rank: int, num_gallery: int) -> int:
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    max_rank = int(max_rank)
    if 0 < num_gallery < max_rank:
        warnings.warn(
            f"gallery has only {num_gallery} entries; reducing max_rank from {max_rank} "
            f"to {num_gallery}", stacklevel=3)
        max_rank = num_gallery
    return max_rank


def _checked_chunk_size(chunk_size: int | None, num_gallery: int) -> int:
    if chunk_size is None:
        return max(1, _ENTRIES_PER_CHUNK // max(1, num_gallery))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return int(chunk_size)


# --------------------------------------------------------------------------------------
# Core: per-query statistics for one chunk of queries
# --------------------------------------------------------------------------------------

def _numpy_backed(tensor: torch.Tensor) -> bool:
    """Whether to use numpy kernels on zero-copy views of ``tensor``: on CPU, torch's
    nonzero, index gather and sort are several times slower than numpy's."""
    return tensor.device.type == "cpu"


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Row-major flat indices of the True entries of ``mask``."""
    if _numpy_backed(mask):
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask.reshape(-1)).squeeze(1)


def _at_most(dist: torch.Tensor, row_limit: torch.Tensor) -> torch.Tensor:
    """Mask of the entries of ``dist`` that are <= their row's limit."""
    if _numpy_backed(dist):
        return torch.from_numpy(np.less_equal(dist.numpy(), row_limit.numpy()[:, None]))
    return dist <= row_limit.unsqueeze(1)


def _take_flat(values: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """``values.reshape(-1)[flat_index]``."""
    if _numpy_backed(values):
        return torch.from_numpy(values.contiguous().numpy().reshape(-1)[flat_index.numpy()])
    return values.reshape(-1)[flat_index]


def _candidates_in_rank_order(dist: torch.Tensor, candidate: torch.Tensor):
    """(rows, flat indices) of the ``candidate`` entries of ``dist``, grouped by row
    (ascending) and, within a row, in ranking order: ascending distance, ties broken by
    column (gallery index) exactly as a stable sort would."""
    num_rows, num_cols = dist.shape
    flat = _flat_nonzero(candidate)  # row-major: ascending row, then column
    values = _take_flat(dist, flat)
    col_bits = max(1, (num_cols - 1).bit_length())
    row_bits = max(1, (num_rows - 1).bit_length())
    if _numpy_backed(values) and values.dtype == torch.float32 and row_bits + 32 + col_bits <= 64:
        # Fast path: numpy's vectorised sort of one packed uint64 key (row, distance bits,
        # column) is several times faster than torch's CPU sort; the key is unique, so the
        # order equals a stable sort.
        rows, cols = np.divmod(flat.numpy(), num_cols)
        bits = (values.numpy() + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into +0.0
        # IEEE order -> unsigned order: flip every bit of negatives, only the sign bit of others.
        bits ^= (bits >> np.uint32(31)) * np.uint32(0x7FFFFFFF) | np.uint32(0x80000000)
        keys = rows.astype(np.uint64) << np.uint64(32 + col_bits)
        keys |= bits.astype(np.uint64) << np.uint64(col_bits)
        keys |= cols.astype(np.uint64)
        keys.sort()
        rows = (keys >> np.uint64(32 + col_bits)).astype(np.int64)
        cols = (keys & np.uint64((1 << col_bits) - 1)).astype(np.int64)
        return torch.from_numpy(rows), torch.from_numpy(rows * num_cols + cols)
    # General path (float64, GPU): two stable sorts give (row, distance, column) order.
    rows = torch.div(flat, num_cols, rounding_mode="floor")
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    return rows[order], flat[order]


@dataclass(frozen=True)
class _Gallery:
    """Gallery ids, with the gallery indices grouped by person id."""

    camids: torch.Tensor       # int64, (num_gallery,)
    index_by_pid: torch.Tensor  # gallery indices sorted by person id (stable)
    sorted_pids: torch.Tensor   # the person ids in that order

    @classmethod
    def of(cls, g_pids: torch.Tensor, g_camids: torch.Tensor) -> "_Gallery":
        index_by_pid = torch.argsort(g_pids, stable=True)
        return cls(g_camids, index_by_pid, g_pids[index_by_pid].contiguous())

    def same_pid_pairs(self, q_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(query row, gallery index) of every pair sharing a person id, ascending by
        query, then by gallery index. Such pairs are few (a person has a handful of gallery
        images), so listing them is much cheaper than a (queries, gallery) mask."""
        first = torch.searchsorted(self.sorted_pids, q_pids, side="left")
        count = torch.searchsorted(self.sorted_pids, q_pids, side="right") - first
        rows = torch.repeat_interleave(torch.arange(q_pids.numel(), device=q_pids.device), count)
        start_of_row = torch.cumsum(count, 0) - count
        position = torch.arange(rows.numel(), device=q_pids.device) - start_of_row[rows] + first[rows]
        return rows, self.index_by_pid[position]


def _labels_at(num_entries: int, match_flat: torch.Tensor, junk_flat: torch.Tensor,
               flat_index: torch.Tensor) -> torch.Tensor:
    """Label (0 other, 1 true match, 2 junk) of each entry in ``flat_index``."""
    if _numpy_backed(flat_index):
        labels = np.zeros(num_entries, dtype=np.int8)
        labels[match_flat.numpy()] = 1
        labels[junk_flat.numpy()] = 2
        return torch.from_numpy(labels[flat_index.numpy()])
    labels = torch.zeros(num_entries, dtype=torch.int8, device=flat_index.device)
    labels[match_flat] = 1
    labels[junk_flat] = 2
    return labels[flat_index]


@dataclass
class _ChunkStats:
    """Per-query results for one chunk; only valid queries are listed."""

    average_precision: torch.Tensor   # float64, one per valid query
    inverse_neg_penalty: torch.Tensor  # float64, one per valid query
    first_hit_rank: torch.Tensor      # int64, 1-based rank of the first true match
    num_skipped: int


def _rank_chunk(dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor,
                gallery: _Gallery) -> _ChunkStats:
    """Rank the gallery for a chunk of queries and score each query.

    ``dist`` is (chunk, num_gallery). Everything is done with whole-chunk tensor ops;
    only the entries that can influence a metric are materialised as a flat list.
    """
    # A NaN makes the sum NaN; checking the sum first is ~10x cheaper than isnan().any()
    # (a NaN sum can also come from +inf + -inf, hence the exact second check).
    if bool(torch.isnan(dist.sum())) and bool(torch.isnan(dist).any()):
        raise ValueError("distmat contains NaN; the ranking would be undefined")
    num_queries = dist.shape[0]
    if dist.shape[1] == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=dist.device)
        return _ChunkStats(empty, empty, torch.zeros(0, dtype=torch.int64, device=dist.device), num_queries)

    pair_rows, pair_cols = gallery.same_pid_pairs(q_pids)
    same_cam = gallery.camids[pair_cols] == q_camids[pair_rows]
    pair_flat = pair_rows * dist.shape[1] + pair_cols
    match_rows = pair_rows[~same_cam]  # true match: same person seen by another camera
    match_flat = pair_flat[~same_cam]
    junk_flat = pair_flat[same_cam]    # junk: same person, same camera; removed from the ranking

    # Entries ranked after a query's hardest true match cannot change any of its metrics,
    # so only entries no farther than that match are ranked: for a trained model this is
    # a small fraction of the gallery. A query without true match gets NaN, which no
    # distance compares <= to, so it has no entries.
    hardest_match_dist = torch.full((num_queries,), float("nan"), dtype=dist.dtype, device=dist.device)
    hardest_match_dist.scatter_reduce_(0, match_rows, _take_flat(dist, match_flat), "amax", include_self=False)
    rows, flat_index = _candidates_in_rank_order(dist, _at_most(dist, hardest_match_dist))

    labels = _labels_at(dist.numel(), match_flat, junk_flat, flat_index)
    is_hit = labels == 1
    is_kept = (labels != 2).long()

    # 1-based rank among a query's kept entries = kept entries so far in the flat list
    # minus those that belong to earlier queries (counted just before the query's first entry).
    kept_so_far = torch.cumsum(is_kept, 0)
    entries_per_query = torch.bincount(rows, minlength=num_queries)
    first_entry_of_query = torch.cumsum(entries_per_query, 0) - entries_per_query
    hit_index = _flat_nonzero(is_hit)  # ascending: by query, then by rank
    query_of_hit = rows[hit_index]
    kept_in_earlier_queries = (kept_so_far - is_kept)[first_entry_of_query[query_of_hit]]
    hit_rank = kept_so_far[hit_index] - kept_in_earlier_queries

    hits_per_query = torch.bincount(query_of_hit, minlength=num_queries)
    # Position of each hit among its query's hits (1 = best ranked true match).
    first_hit_offset = torch.cumsum(hits_per_query, 0) - hits_per_query
    hit_ordinal = torch.arange(1, hit_rank.numel() + 1, device=hit_rank.device) - first_hit_offset[query_of_hit]

    precision_at_hit = hit_ordinal.double() / hit_rank.double()
    precision_sum = torch.zeros(num_queries, dtype=torch.float64, device=dist.device)
    precision_sum.index_add_(0, query_of_hit, precision_at_hit)

    # Hits are listed in ascending rank per query, so a query's first and last entries
    # are its easiest and hardest true matches.
    valid = hits_per_query > 0
    first_index = first_hit_offset[valid]
    last_index = first_index + hits_per_query[valid] - 1
    num_hits = hits_per_query[valid].double()

    return _ChunkStats(
        average_precision=precision_sum[valid] / num_hits,
        inverse_neg_penalty=num_hits / hit_rank[last_index].double(),
        first_hit_rank=hit_rank[first_index],
        num_skipped=int(num_queries - int(valid.sum())),
    )


def _summarise(chunks: Sequence[_ChunkStats], max_rank: int) -> RankingResult:
    num_skipped = sum(c.num_skipped for c in chunks)
    average_precision = torch.cat([c.average_precision for c in chunks]) if chunks else torch.zeros(0)
    num_valid = int(average_precision.numel())
    if num_valid == 0:
        raise ValueError(
            f"no valid query: none of the {num_skipped} queries has a true match in the gallery "
            "(same person id from a different camera); check that query and gallery ids agree")
    inverse_neg_penalty = torch.cat([c.inverse_neg_penalty for c in chunks])
    first_hit_rank = torch.cat([c.first_hit_rank for c in chunks]).cpu()

    # cmc[k-1] counts queries whose first hit is at rank <= k.
    first_hits_histogram = torch.bincount(first_hit_rank.clamp(max=max_rank + 1), minlength=max_rank + 2)
    cmc = torch.cumsum(first_hits_histogram[1:max_rank + 1], 0).double() / num_valid
    cmc_array = cmc.numpy().copy()
    cmc_array.setflags(write=False)
    return RankingResult(
        mAP=float(average_precision.mean()),
        cmc=cmc_array,
        mINP=float(inverse_neg_penalty.mean()),
        num_valid_queries=num_valid,
        num_skipped_queries=num_skipped,
    )


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                     *, chunk_size: int | None = None) -> RankingResult:
    """Market-1501 protocol CMC / mAP / mINP from a (num_query, num_gallery) distance matrix.

    Inputs may be numpy arrays, torch tensors (any real dtype, any device) or sequences.
    ``chunk_size`` is the number of queries ranked at once (default: ~4M gallery entries
    per chunk); it affects memory and speed only, never the result.
    """
    dist = _as_distance_tensor(distmat)
    num_query, num_gallery = dist.shape
    device = dist.device
    q_pids_t, q_cams_t, g_pids_t, g_cams_t = _id_vectors(
        q_pids, q_camids, g_pids, g_camids, num_query, num_gallery,
        f"distmat rows {tuple(dist.shape)}", f"distmat columns {tuple(dist.shape)}", device)
    max_rank = _checked_max_rank(max_rank, num_gallery)
    step = _checked_chunk_size(chunk_size, num_gallery)

    with torch.no_grad():
        gallery = _Gallery.of(g_pids_t, g_cams_t)
        chunks = [
            _rank_chunk(dist[start:start + step], q_pids_t[start:start + step],
                        q_cams_t[start:start + step], gallery)
            for start in range(0, num_query, step)
        ]
    return _summarise(chunks, max_rank)


def evaluate_ranking_chunks(chunks: Iterable, q_pids, g_pids, q_camids, g_camids,
                            max_rank: int = 50, *, chunk_size: int | None = None) -> RankingResult:
    """``evaluate_ranking`` for a distance matrix delivered in blocks of query rows.

    ``chunks`` yields ``(rows, dist_block)``: ``rows`` a slice (or range) of query indices,
    ``dist_block`` its (len(rows), num_gallery) distances. Blocks must be consecutive,
    start at query 0 and cover every query once, e.g. the output of
    ``soliderkit.reid.reranking.iter_re_ranking_from_features``. Only one block is held at a
    time; the result equals ``evaluate_ranking`` on the stacked blocks.
    """
    try:
        num_query = len(q_pids)
    except TypeError:
        raise ValueError(f"q_pids must be 1-D, got {q_pids!r}") from None
    # Settings are checked now, before any block is computed; the ids with the first block.
    _checked_max_rank(max_rank, 0)
    _checked_chunk_size(chunk_size, 1)
    q_pids_t = q_cams_t = gallery = None
    expected_start, results = 0, []
    with torch.no_grad():
        for rows, block in chunks:
            dist = _as_distance_tensor(block)
            start, stop = (rows.start or 0), rows.stop
            if getattr(rows, "step", None) not in (None, 1) or start != expected_start \
                    or stop - start != dist.shape[0] or stop > num_query:
                raise ValueError(
                    f"chunk rows {rows} with a {tuple(dist.shape)} block: expected consecutive query "
                    f"rows starting at {expected_start}, within {num_query} queries")
            if gallery is None:  # the first block fixes the gallery size and the device
                num_gallery, device = dist.shape[1], dist.device
                q_pids_t = _as_id_vector("q_pids", q_pids, num_query, "the queries", device)
                q_cams_t = _as_id_vector("q_camids", q_camids, num_query, f"q_pids ({num_query},)", device)
                blocks_shape = f"distance blocks {tuple(dist.shape)}"
                gallery = _Gallery.of(_as_id_vector("g_pids", g_pids, num_gallery, blocks_shape, device),
                                      _as_id_vector("g_camids", g_camids, num_gallery, blocks_shape, device))
                max_rank = _checked_max_rank(max_rank, num_gallery)
                step = _checked_chunk_size(chunk_size, num_gallery)
            elif dist.shape[1] != num_gallery:
                raise ValueError(
                    f"distance blocks disagree on the gallery size: {num_gallery} then {dist.shape[1]}")
            dist = dist.to(device)
            for offset in range(0, dist.shape[0], step):
                part = dist[offset:offset + step]
                queries = slice(start + offset, start + offset + part.shape[0])
                results.append(_rank_chunk(part, q_pids_t[queries], q_cams_t[queries], gallery))
            expected_start = stop
    if expected_start != num_query:
        raise ValueError(f"distance blocks covered {expected_start} of {num_query} queries")
    return _summarise(results, max_rank)


def _as_feature_tensor(name: str, feats) -> torch.Tensor:
    tensor = feats if isinstance(feats, torch.Tensor) else torch.as_tensor(np.asarray(feats))
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_items, dim), got shape {tuple(tensor.shape)}")
    return tensor.detach().float()


def _prepared_features(query_feats, gallery_feats, metric: str, normalize: bool):
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    query = _as_feature_tensor("query_feats", query_feats)
    gallery = _as_feature_tensor("gallery_feats", gallery_feats).to(query.device)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"feature sizes differ: query_feats {tuple(query.shape)} vs gallery_feats {tuple(gallery.shape)}")
    # Cosine distance is defined on unit vectors, so it always normalises.
    if normalize or metric == "cosine":
        query = torch.nn.functional.normalize(query, dim=1)
        gallery = torch.nn.functional.normalize(gallery, dim=1)
    return query, gallery


def _distance_chunks(query: torch.Tensor, gallery: torch.Tensor, metric: str,
                     step: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first_query_index, distance block) for consecutive blocks of ``step`` queries."""
    gallery_t = gallery.t().contiguous()
    gallery_sq_norm = gallery.pow(2).sum(1) if metric == "euclidean" else None
    for start in range(0, query.shape[0], step):
        block = query[start:start + step]
        similarity = block @ gallery_t
        if metric == "cosine":
            yield start, 1.0 - similarity
        else:
            # ||q - g||^2 = ||q||^2 + ||g||^2 - 2 q.g ; clamp the tiny negatives from rounding.
            sq = block.pow(2).sum(1, keepdim=True) + gallery_sq_norm.unsqueeze(0) - 2.0 * similarity
            yield start, sq.clamp_(min=0.0)


def pairwise_distance(query_feats, gallery_feats, metric: str = "euclidean",
                      normalize: bool = True, *, chunk_size: int | None = None) -> torch.Tensor:
    """(num_query, num_gallery) float32 distances, computed one block of queries at a time.

    ``metric="euclidean"``: squared euclidean distance, on L2-normalised features when
    ``normalize`` (the default; then it equals 2 * cosine distance and ranks identically).
    ``metric="cosine"``: 1 - cosine similarity (features are always normalised).
    Output lives on the query features' device.
    """
    query, gallery = _prepared_features(query_feats, gallery_feats, metric, normalize)
    step = _checked_chunk_size(chunk_size, gallery.shape[0])
    out = torch.empty(query.shape[0], gallery.shape[0], dtype=torch.float32, device=query.device)
    with torch.no_grad():
        for start, block in _distance_chunks(query, gallery, metric, step):
            out[start:start + block.shape[0]] = block
    return out


def evaluate_ranking_from_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids,
                                   max_rank: int = 50, *, metric: str = "euclidean",
                                   normalize: bool = True,
                                   chunk_size: int | None = None) -> RankingResult:
    """Same as ``evaluate_ranking(pairwise_distance(q_feats, g_feats), ...)`` without ever
    holding the full distance matrix: distances are computed and ranked per query chunk.

    Use it for large benchmarks (MSMT17: 11,659 x 82,161 would be 3.8 GB as float32).
    """
    query, gallery = _prepared_features(q_feats, g_feats, metric, normalize)
    num_query, num_gallery = query.shape[0], gallery.shape[0]
    device = query.device
    q_pids_t, q_cams_t, g_pids_t, g_cams_t = _id_vectors(
        q_pids, q_camids, g_pids, g_camids, num_query, num_gallery,
        f"q_feats rows {tuple(query.shape)}", f"g_feats rows {tuple(gallery.shape)}", device)
    max_rank = _checked_max_rank(max_rank, num_gallery)
    step = _checked_chunk_size(chunk_size, num_gallery)

    with torch.no_grad():
        gallery_ids = _Gallery.of(g_pids_t, g_cams_t)
        chunks = [
            _rank_chunk(block, q_pids_t[start:start + step], q_cams_t[start:start + step], gallery_ids)
            for start, block in _distance_chunks(query, gallery, metric, step)
        ]
    return _summarise(chunks, max_rank)

"""k-reciprocal re-ranking of query-gallery distances.

Zhong, Zheng, Cao and Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017.

``re_ranking`` reproduces the python ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2,
lambda_value)`` derived from the paper's code (Luo Hao, Houjing Huang) as shipped by
torchreid (``torchreid/utils/rerank.py``): same inputs, same steps, same float32 result
up to rounding. With N = num_query + num_gallery items:

1. original distance: the (N, N) matrix [[q_q, q_g], [q_g^T, g_g]], squared, each column
   divided by its maximum, then transposed (row i is column i scaled into [0, 1]);
2. initial ranking: every row sorted by ascending original distance;
3. k-reciprocal set R(i, k): the items among i's first k + 1 that have i among theirs;
4. expansion: R(i, k1) grows by R(c, round(k1 / 2)) for each c in R(i, k1) whose set
   shares more than 2/3 of its members with R(i, k1);
5. V[i]: Gaussian-kernel weights exp(-distance) on the expanded set, normalised to sum 1;
6. local query expansion: V[i] becomes the mean of V over i's first k2 items (k2 = 1: none);
7. Jaccard distance 1 - sum(min(V_i, V_j)) / sum(max(V_i, V_j)) = 1 - m / (2 - m),
   m = sum(min(V_i, V_j)), because every row of V sums to 1;
8. result = (1 - lambda) * Jaccard + lambda * original, for query rows x gallery columns.

How it differs from the reference loop (results are otherwise equal):

* V is sparse (each row holds the expanded set, a few dozen items, times k2 after query
  expansion) and the Jaccard distance is computed only for the query x gallery block
  that is returned, through an inverted index over the gallery rows of V.
* Neighbours come from a top-k selection, in the order of a stable sort (ties broken by
  item index); the reference's unstable ``np.argsort`` leaves the order of exact ties
  unspecified, so results coincide whenever the ranked distances have no ties.
* The shared mass m is accumulated in float64 before the float32 Jaccard formula.
* A column whose maximum is 0 (all items identical) is left at 0 instead of 0/0 = NaN.

``re_ranking_from_features`` / ``iter_re_ranking_from_features`` start from features and
never hold an (N, N) matrix: one pass over blocks of rows of the distance matrix keeps
each row's nearest items and its maximum, the few other distances the algorithm needs
are computed from the features, and the query x gallery result is produced one block of
queries at a time. The distance is the squared euclidean distance of L2-normalised
features, the distance of the paper's feature-based code (``re_ranking_feature.py``),
i.e. the result equals ``re_ranking`` fed with plain (not squared) euclidean distances.
That distance is symmetric, so each row is divided by its own maximum (the column
maximum of the reference), and an item's distance to itself is set to exactly 0.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.sparse
import torch

from soliderkit.reid.metrics import _prepared_features

__all__ = ["re_ranking", "re_ranking_from_features", "iter_re_ranking_from_features"]

# Entries of a (rows x N) float32 distance block handled at once: 128 MiB.
_ENTRIES_PER_BLOCK = 1 << 25
# Source rows per transposed copy: narrow column strips keep the strided writes in cache.
_ROWS_PER_TRANSPOSED_COPY = 1024
# Budget of one step of building V: the overlap test of a row compares (k1 + 1)^2 *
# (k1 / 2 + 1) pairs (4.9k for k1 = 20), so a step takes ~2^24 / that many rows.
_OVERLAP_TESTS_PER_STEP = 1 << 24
# (query, gallery item, shared weight) triplets expanded at once in the Jaccard step.
_TRIPLETS_PER_STEP = 1 << 23


@dataclass(frozen=True)
class _Settings:
    k1: int
    k2: int
    lambda_value: float

    @property
    def half_k1(self) -> int:
        # np.around rounds half to even, as Python's round does: k1 = 5 -> 2, k1 = 7 -> 4.
        return int(round(self.k1 / 2))

    def neighbours_needed(self, num_items: int) -> int:
        return min(max(self.k1 + 1, self.k2), num_items)


def _checked_settings(k1, k2, lambda_value) -> _Settings:
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if (isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float, np.floating, np.integer))
            or not 0.0 <= float(lambda_value) <= 1.0):
        raise ValueError(f"lambda_value must be a number in [0, 1], got {lambda_value!r}")
    return _Settings(int(k1), int(k2), float(lambda_value))


def _checked_chunk_size(chunk_size, num_items: int) -> int:
    if chunk_size is None:
        return max(1, _ENTRIES_PER_BLOCK // max(1, num_items))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return int(chunk_size)


# --------------------------------------------------------------------------------------
# Original distance: held in memory (dense path) or computed from features
# --------------------------------------------------------------------------------------

def _smallest_in_order(block: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of each row's k smallest values, ordered as a stable argsort would
    order them (ascending value, ties by column)."""
    num_cols = block.shape[1]
    take = min(k + 1, num_cols)  # one extra to see whether the k-th value is tied beyond k
    values, index = torch.topk(block, take, dim=1, largest=False, sorted=True)
    index, by_column = index.sort(dim=1)
    values, order = values.gather(1, by_column).sort(dim=1, stable=True)
    index = index.gather(1, order)
    if take > k:
        # The k-th smallest equals the next one: which tied columns topk kept is arbitrary,
        # so sort those (rare) rows completely.
        tied = torch.nonzero(values[:, k] == values[:, k - 1]).flatten()
        if tied.numel():
            index[tied] = torch.sort(block[tied], dim=1, stable=True).indices[:, :take]
    return index[:, :k]


class _DenseOriginalDistance:
    """The reference's (N, N) ``original_dist``, held in memory."""

    def __init__(self, q_g: torch.Tensor, q_q: torch.Tensor, g_g: torch.Tensor, step: int):
        num_query, num_gallery = q_g.shape
        self.num_items = num_query + num_gallery
        self.step = step
        # Row i of original_dist is column i of the squared input matrix, so fill the
        # transposed layout directly: [[q_q^T, q_g], [q_g^T, g_g^T]].
        dist = torch.empty(self.num_items, self.num_items, dtype=torch.float32)
        for target, source, transpose in ((dist[:num_query, :num_query], q_q, True),
                                          (dist[:num_query, num_query:], q_g, False),
                                          (dist[num_query:, :num_query], q_g, True),
                                          (dist[num_query:, num_query:], g_g, True)):
            rows_per_copy = _ROWS_PER_TRANSPOSED_COPY if transpose else step
            for start in range(0, source.shape[0], rows_per_copy):
                rows = source[start:start + rows_per_copy]
                squared = rows * rows  # in the input's dtype, then stored as float32
                if transpose:
                    target[:, start:start + rows_per_copy] = squared.t()
                else:
                    target[start:start + rows_per_copy] = squared
        for start in range(0, self.num_items, step):
            rows = dist[start:start + step]
            rows /= _positive(rows.amax(dim=1, keepdim=True))
        self.dist = dist

    def nearest(self, k: int) -> torch.Tensor:
        return torch.cat([_smallest_in_order(self.dist[start:start + self.step], k)
                          for start in range(0, self.num_items, self.step)])

    def pairs(self, rows: slice, cols_per_row: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Distances from each row in ``rows`` to its ``cols_per_row`` entries of ``cols``."""
        return self.dist[_row_of_entry(rows, cols_per_row), cols]

    def block(self, rows: slice, cols: slice) -> torch.Tensor:
        return self.dist[rows, cols]


class _FeatureOriginalDistance:
    """Squared euclidean distance of features, each row divided by its maximum, computed
    on demand; only the row maxima (one pass over all pairs) are stored."""

    def __init__(self, feats: torch.Tensor, step: int):
        self.feats = feats
        self.num_items = feats.shape[0]
        self.step = step
        self.sq_norms = feats.pow(2).sum(1)
        self.row_max: torch.Tensor | None = None

    def _squared_distances(self, rows: slice, cols: slice) -> torch.Tensor:
        block = torch.addmm(self.sq_norms[cols].unsqueeze(0), self.feats[rows], self.feats[cols].t(),
                            alpha=-2.0)
        block += self.sq_norms[rows].unsqueeze(1)
        block.clamp_(min=0.0)  # rounding can make ||a||^2 + ||b||^2 - 2ab slightly negative
        # An item's distance to itself is exactly 0, whatever the rounding.
        row_ids = torch.arange(rows.start, rows.stop)
        on_diagonal = (row_ids >= cols.start) & (row_ids < cols.stop)
        block[torch.nonzero(on_diagonal).flatten(), row_ids[on_diagonal] - cols.start] = 0.0
        return block

    def nearest(self, k: int) -> torch.Tensor:
        """One pass over all rows: k nearest items per row, and the row maxima."""
        row_max = torch.empty(self.num_items)
        nearest = []
        for start in range(0, self.num_items, self.step):
            rows = slice(start, min(start + self.step, self.num_items))
            block = self._squared_distances(rows, slice(0, self.num_items))
            row_max[rows] = _positive(block.amax(dim=1))
            block /= row_max[rows].unsqueeze(1)
            nearest.append(_smallest_in_order(block, k))
            del block
        self.row_max = row_max
        return torch.cat(nearest)

    def pairs(self, rows: slice, cols_per_row: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Distances from each row in ``rows`` to its ``cols_per_row`` entries of ``cols``
        (ascending within a row)."""
        # A sampled dense product computes just the dot products on this sparsity pattern,
        # ~40x faster than gathering feature rows pair by pair.
        row_start = torch.zeros(cols_per_row.numel() + 1, dtype=torch.int64)
        torch.cumsum(cols_per_row, 0, out=row_start[1:])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            # Valid by construction: rows are consecutive, columns ascending and in range.
            pattern = torch.sparse_csr_tensor(row_start, cols, torch.zeros(cols.numel()),
                                              size=(cols_per_row.numel(), self.num_items),
                                              check_invariants=False)
            dots = torch.sparse.sampled_addmm(pattern, self.feats[rows], self.feats.t(), beta=0.0).values()
        row_of_entry = _row_of_entry(rows, cols_per_row)
        squared = (self.sq_norms[row_of_entry] + self.sq_norms[cols] - 2.0 * dots).clamp_(min=0.0)
        squared[row_of_entry == cols] = 0.0
        return squared / self.row_max[row_of_entry]

    def block(self, rows: slice, cols: slice) -> torch.Tensor:
        block = self._squared_distances(rows, cols)
        return block.div_(self.row_max[rows].unsqueeze(1))


def _row_of_entry(rows: slice, cols_per_row: torch.Tensor) -> torch.Tensor:
    return torch.arange(rows.start, rows.stop).repeat_interleave(cols_per_row)


def _positive(maxima: torch.Tensor) -> torch.Tensor:
    """Row maxima as divisors: a row of zeros (all items identical) stays zeros."""
    return torch.where(maxima > 0, maxima, torch.ones_like(maxima))


# --------------------------------------------------------------------------------------
# k-reciprocal encoding V, query expansion and Jaccard distance
# --------------------------------------------------------------------------------------

def _reciprocal_mask(nearest: torch.Tensor, rows: slice, k: int) -> torch.Tensor:
    """(rows, k) bool: whether nearest[i, a] has i among its own first k items."""
    forward = nearest[rows, :k]
    backward = nearest[:, :k][forward]  # (rows, k, k): the first k items of each neighbour
    own_index = torch.arange(rows.start, rows.start + forward.shape[0]).view(-1, 1, 1)
    return (backward == own_index).any(dim=2)


def _k_reciprocal_encoding(nearest: torch.Tensor, original, settings: _Settings) -> scipy.sparse.csr_matrix:
    """Sparse V: row i holds the normalised Gaussian weights of i's expanded k-reciprocal set."""
    num_items = nearest.shape[0]
    k_full = min(settings.k1 + 1, num_items)
    k_half = min(settings.half_k1 + 1, num_items)
    step = max(1, _OVERLAP_TESTS_PER_STEP // (k_full * k_full * k_half))
    in_half_set = torch.cat([_reciprocal_mask(nearest, slice(s, min(s + step, num_items)), k_half)
                             for s in range(0, num_items, step)])
    half_set_size = in_half_set.sum(dim=1).double()

    indptr = [np.zeros(1, dtype=np.int64)]
    indices, weights = [], []
    for start in range(0, num_items, step):
        rows = slice(start, min(start + step, num_items))
        forward = nearest[rows, :k_full]                   # (r, k_full) candidate items
        in_set = _reciprocal_mask(nearest, rows, k_full)  # R(i, k1) as a mask over forward
        cand_members = nearest[forward, :k_half]          # (r, k_full, k_half)
        cand_in_half = in_half_set[forward]               # R(c, k1/2) as a mask over those
        # |R(c, k1/2) & R(i, k1)|: members of c's half set that are in i's set.
        member_in_set = ((cand_members.unsqueeze(3) == forward.view(-1, 1, 1, k_full))
                         & in_set.view(-1, 1, 1, k_full)).any(dim=3)
        overlap = (member_in_set & cand_in_half).sum(dim=2).double()
        # Same float64 comparison as the reference: overlap > 2/3 * |R(c, k1/2)|.
        accepted = in_set & (overlap > 2.0 / 3 * half_set_size[forward])

        members = torch.cat([forward, cand_members.flatten(1)], dim=1)
        keep = torch.cat([in_set, (cand_in_half & accepted.unsqueeze(2)).flatten(1)], dim=1)
        members = torch.where(keep, members, num_items).sort(dim=1).values  # dropped ones last
        distinct = members < num_items
        distinct[:, 1:] &= members[:, 1:] != members[:, :-1]

        cols = members[distinct]  # row-major, ascending within a row
        cols_per_row = distinct.sum(dim=1)
        row_of_entry = _row_of_entry(rows, cols_per_row)
        weight = torch.exp(-original.pairs(rows, cols_per_row, cols))
        row_total = torch.zeros(num_items).index_add_(0, row_of_entry, weight)
        weights.append((weight / row_total[row_of_entry]).numpy())
        indices.append(cols.to(torch.int32).numpy())
        indptr.append(indptr[-1][-1] + np.cumsum(cols_per_row.numpy()))
    return scipy.sparse.csr_matrix(
        (np.concatenate(weights), np.concatenate(indices), np.concatenate(indptr)),
        shape=(num_items, num_items))


def _local_query_expansion(encoding: scipy.sparse.csr_matrix, nearest: torch.Tensor,
                           k2: int) -> scipy.sparse.csr_matrix:
    """Row i becomes the mean of the rows of its first k2 items (i itself usually first)."""
    num_items = encoding.shape[0]
    k2 = min(k2, num_items)
    # Selection matrix with the k2 items in ranking order, so rows are summed in that order.
    selection = scipy.sparse.csr_matrix(
        (np.ones(num_items * k2, dtype=np.float32), nearest[:, :k2].to(torch.int32).numpy().ravel(),
         np.arange(0, num_items * k2 + 1, k2)),
        shape=(num_items, num_items))
    expanded = (selection @ encoding).tocsr()
    np.divide(expanded.data, np.float32(k2), out=expanded.data)
    expanded.sort_indices()
    return expanded


def _row_groups(work_per_row: np.ndarray, max_rows: int, max_work: int) -> Iterator[slice]:
    """Consecutive row slices of at most ``max_rows`` rows and, unless one row alone
    exceeds it, at most ``max_work`` work."""
    start, num_rows = 0, work_per_row.size
    cumulative = np.concatenate([[0], np.cumsum(work_per_row)])
    while start < num_rows:
        stop = int(np.searchsorted(cumulative, cumulative[start] + max_work, side="right")) - 1
        stop = min(max(stop, start + 1), start + max_rows, num_rows)
        yield slice(start, stop)
        start = stop


def _jaccard_blocks(encoding: scipy.sparse.csr_matrix, num_query: int, original,
                    settings: _Settings, step: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Final distances, one block of query rows at a time."""
    num_items = encoding.shape[0]
    num_gallery = num_items - num_query
    query_rows = encoding[:num_query]
    # Inverted index: for every item k, the gallery rows j with V[j, k] != 0.
    gallery_by_item = encoding[num_query:].tocsc()
    gallery_by_item.sort_indices()
    postings_start = gallery_by_item.indptr[:-1].astype(np.int64)
    postings_length = np.diff(gallery_by_item.indptr).astype(np.int64)

    # Work of a query row = the number of (item, gallery row) pairs it touches.
    work_so_far = np.concatenate([[0], np.cumsum(postings_length[query_rows.indices])])
    work_per_row = work_so_far[query_rows.indptr[1:]] - work_so_far[query_rows.indptr[:-1]]
    max_rows = max(1, min(step, _TRIPLETS_PER_STEP // max(1, num_gallery)))

    weight_of_original = np.float32(settings.lambda_value)
    weight_of_jaccard = np.float32(1.0 - settings.lambda_value)
    for rows in _row_groups(work_per_row, max_rows, _TRIPLETS_PER_STEP):
        first, last = query_rows.indptr[rows.start], query_rows.indptr[rows.stop]
        items = query_rows.indices[first:last]
        query_weight = query_rows.data[first:last]
        local_row = np.repeat(np.arange(rows.stop - rows.start),
                              np.diff(query_rows.indptr[rows.start:rows.stop + 1]))
        # Expand every (query, item) entry to the gallery rows listed for that item.
        lengths = postings_length[items]
        total = int(lengths.sum())
        offsets = np.cumsum(lengths) - lengths
        position = np.repeat(postings_start[items] - offsets, lengths) + np.arange(total)
        gallery_row = gallery_by_item.indices[position]
        shared = np.minimum(np.repeat(query_weight, lengths), gallery_by_item.data[position])
        target = np.repeat(local_row, lengths) * num_gallery + gallery_row
        num_rows = rows.stop - rows.start
        mass = np.bincount(target, weights=shared, minlength=num_rows * num_gallery)
        mass = mass.astype(np.float32).reshape(num_rows, num_gallery)
        jaccard = 1.0 - mass / (np.float32(2.0) - mass)
        del mass, shared, target, position, gallery_row
        original_block = original.block(rows, slice(num_query, num_items)).numpy()
        yield rows, jaccard * weight_of_jaccard + original_block * weight_of_original


def _re_ranked_blocks(original, num_query: int, settings: _Settings,
                      step: int) -> Iterator[tuple[slice, np.ndarray]]:
    # No torch.no_grad() here: inside a generator it would leak into the caller between
    # blocks. Inputs are detached on entry, so no autograd graph is built anyway.
    nearest = original.nearest(settings.neighbours_needed(original.num_items))
    encoding = _k_reciprocal_encoding(nearest, original, settings)
    if settings.k2 != 1:
        encoding = _local_query_expansion(encoding, nearest, settings.k2)
    del nearest
    yield from _jaccard_blocks(encoding, num_query, original, settings, step)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def _as_matrix(name: str, values) -> torch.Tensor:
    tensor = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(tensor.shape)}")
    if tensor.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.double()
    elif tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    if bool(torch.isnan(tensor).any()):
        raise ValueError(f"{name} contains NaN")
    return tensor


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranked (num_query, num_gallery) float32 distances.

    Same inputs and result as torchreid's / fast-reid's ``re_ranking``: query-gallery,
    query-query and gallery-gallery distance matrices (numpy arrays or tensors), which are
    squared and normalised internally. Holds one (N, N) float32 matrix,
    N = num_query + num_gallery; for large problems use ``re_ranking_from_features``.
    """
    settings = _checked_settings(k1, k2, lambda_value)
    q_g = _as_matrix("q_g_dist", q_g_dist)
    q_q = _as_matrix("q_q_dist", q_q_dist)
    g_g = _as_matrix("g_g_dist", g_g_dist)
    num_query, num_gallery = q_g.shape
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"q_g_dist needs at least one query and one gallery item, got shape {tuple(q_g.shape)}")
    if q_q.shape != (num_query, num_query) or g_g.shape != (num_gallery, num_gallery):
        raise ValueError(
            f"expected q_q_dist {(num_query, num_query)} and g_g_dist {(num_gallery, num_gallery)} "
            f"for q_g_dist {tuple(q_g.shape)}, got {tuple(q_q.shape)} and {tuple(g_g.shape)}")
    step = _checked_chunk_size(None, num_query + num_gallery)
    original = _DenseOriginalDistance(q_g, q_q, g_g, step)
    out = np.empty((num_query, num_gallery), dtype=np.float32)
    for rows, block in _re_ranked_blocks(original, num_query, settings, step):
        out[rows] = block
    return out


def _feature_re_ranking(q_feats, g_feats, k1, k2, lambda_value, normalize, chunk_size):
    """Validate the inputs; return (num_query, num_gallery, lazy block iterator)."""
    settings = _checked_settings(k1, k2, lambda_value)
    query, gallery = _prepared_features(q_feats, g_feats, "euclidean", normalize)
    num_query, num_gallery = query.shape[0], gallery.shape[0]
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"need at least one query and one gallery item, got {num_query} and {num_gallery}")
    feats = torch.cat([query, gallery]).cpu()
    if bool(torch.isnan(feats).any()):
        raise ValueError("features contain NaN")
    step = _checked_chunk_size(chunk_size, feats.shape[0])
    original = _FeatureOriginalDistance(feats, step)
    return num_query, num_gallery, _re_ranked_blocks(original, num_query, settings, step)


def iter_re_ranking_from_features(q_feats, g_feats, k1: int = 20, k2: int = 6,
                                  lambda_value: float = 0.3, *, normalize: bool = True,
                                  chunk_size: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Re-ranked distances from features, as consecutive (query rows, float32 block) pairs.

    The distance is the squared euclidean distance of the features, L2-normalised first
    when ``normalize``. No (N, N) or (num_query, num_gallery) matrix is ever held: memory
    is the features, the sparse encoding and a few hundred MB of blocks. ``chunk_size``
    bounds the rows of a distance block (default: ~32M entries per block); it affects
    memory and speed only. Inputs are checked at the call; the work starts with the first
    block. Feed the blocks to ``soliderkit.reid.metrics.evaluate_ranking_chunks`` to evaluate
    without the full matrix.
    """
    return _feature_re_ranking(q_feats, g_feats, k1, k2, lambda_value, normalize, chunk_size)[2]


def re_ranking_from_features(q_feats, g_feats, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                             *, normalize: bool = True, chunk_size: int | None = None,
                             dtype=np.float32) -> np.ndarray:
    """(num_query, num_gallery) re-ranked distances computed from features without any
    (N, N) matrix; see ``iter_re_ranking_from_features``. The result is the largest
    allocation (MSMT17: 3.8 GB as float32); ``dtype=np.float16`` halves it.
    """
    num_query, num_gallery, blocks = _feature_re_ranking(
        q_feats, g_feats, k1, k2, lambda_value, normalize, chunk_size)
    out = np.empty((num_query, num_gallery), dtype=dtype)
    for rows, block in blocks:
        out[rows] = block
    return out

"""Tests for soliderkit.reid.reranking: k-reciprocal re-ranking (Zhong et al., CVPR 2017)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from soliderkit.reid.metrics import evaluate_ranking, evaluate_ranking_chunks
from soliderkit.reid.reranking import iter_re_ranking_from_features, re_ranking, re_ranking_from_features


# --------------------------------------------------------------------------------------
# Independent reference: the published algorithm written out one item at a time, with
# Python sets, and ties in the ranking broken by index (a stable sort).
# --------------------------------------------------------------------------------------

def plain_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value):
    q_g, q_q, g_g = (np.asarray(m, dtype=np.float64) for m in (q_g, q_q, g_g))
    num_query = q_g.shape[0]
    squared = (np.block([[q_q, q_g], [q_g.T, g_g]]) ** 2).astype(np.float32)
    original = (squared / squared.max(axis=0)).T  # row i: column i divided by its maximum
    num_items = original.shape[0]
    ranking = [list(np.argsort(original[i], kind="stable")) for i in range(num_items)]

    def reciprocal(i, k):
        return {j for j in ranking[i][:k + 1] if i in ranking[j][:k + 1]}

    encoding = np.zeros((num_items, num_items), dtype=np.float32)
    for i in range(num_items):
        own = reciprocal(i, k1)
        expanded = set(own)
        for candidate in own:
            theirs = reciprocal(candidate, int(np.around(k1 / 2)))
            if len(theirs & own) > 2 / 3 * len(theirs):
                expanded |= theirs
        members = sorted(expanded)
        weight = np.exp(-original[i, members])
        encoding[i, members] = weight / weight.sum()
    if k2 != 1:
        encoding = np.array([encoding[ranking[i][:k2]].mean(axis=0) for i in range(num_items)])

    result = np.empty((num_query, num_items - num_query))
    for i in range(num_query):
        for j in range(num_query, num_items):
            shared = float(np.minimum(encoding[i], encoding[j]).sum())
            jaccard = 1 - shared / (2 - shared)
            result[i, j - num_query] = (1 - lambda_value) * jaccard + lambda_value * original[i, j]
    return result


def euclidean(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_features(rng, num_query=15, num_gallery=40, dim=8, num_ids=6, noise=0.7):
    centroids = rng.standard_normal((num_ids, dim))
    q = centroids[rng.integers(0, num_ids, num_query)] + noise * rng.standard_normal((num_query, dim))
    g = centroids[rng.integers(0, num_ids, num_gallery)] + noise * rng.standard_normal((num_gallery, dim))
    return q, g


def distance_matrices(q, g):
    return euclidean(q, g), euclidean(q, q), euclidean(g, g)


SETTINGS = [  # (k1, k2, lambda_value)
    (20, 6, 0.3),   # the paper's values
    (5, 1, 0.0),    # no query expansion; k1 / 2 rounds half to even; Jaccard only
    (7, 3, 0.5),    # k1 / 2 = 3.5 rounds up
    (3, 2, 0.9),
    (60, 70, 0.3),  # k1 + 1 and k2 beyond the number of items
]


# --------------------------------------------------------------------------------------
# Agreement with the reference
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("k1,k2,lambda_value", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_dense_matches_plain_reference(seed, k1, k2, lambda_value):
    q, g = clustered_features(np.random.default_rng(seed))
    matrices = distance_matrices(q, g)
    got = re_ranking(*matrices, k1=k1, k2=k2, lambda_value=lambda_value)
    assert got.dtype == np.float32 and got.shape == (15, 40)
    np.testing.assert_allclose(got, plain_re_ranking(*matrices, k1, k2, lambda_value), atol=2e-6, rtol=0)


def test_dense_matches_reference_on_asymmetric_inputs():
    # The reference normalises column i of [[q_q, q_g], [q_g^T, g_g]] and uses it as row i;
    # asymmetric query-query / gallery-gallery inputs show that the orientation is right.
    rng = np.random.default_rng(4)
    q_g, q_q, g_g = rng.random((12, 30)), rng.random((12, 12)), rng.random((30, 30))
    np.fill_diagonal(q_q, 0)
    np.fill_diagonal(g_g, 0)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1=6, k2=3),
                               plain_re_ranking(q_g, q_q, g_g, 6, 3, 0.3), atol=2e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_are_ranked_like_a_stable_sort(seed):
    # Few distinct distances: many ties, also at the k-th neighbour.
    rng = np.random.default_rng(seed)
    q_g = rng.integers(1, 4, (10, 25)).astype(float)
    q_q = rng.integers(1, 4, (10, 10)).astype(float)
    g_g = rng.integers(1, 4, (25, 25)).astype(float)
    q_q, g_g = np.triu(q_q, 1) + np.triu(q_q, 1).T, np.triu(g_g, 1) + np.triu(g_g, 1).T
    for k1, k2 in ((4, 3), (6, 2)):
        np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1=k1, k2=k2),
                                   plain_re_ranking(q_g, q_q, g_g, k1, k2, 0.3), atol=2e-6, rtol=0)


@pytest.mark.parametrize("k1,k2,lambda_value", SETTINGS)
def test_features_path_matches_dense_path(k1, k2, lambda_value):
    q, g = clustered_features(np.random.default_rng(3))
    dense = re_ranking(*distance_matrices(unit(q), unit(g)), k1=k1, k2=k2, lambda_value=lambda_value)
    # chunk_size=7: distance blocks straddle the query / gallery boundary.
    from_features = re_ranking_from_features(q, g, k1=k1, k2=k2, lambda_value=lambda_value, chunk_size=7)
    assert from_features.dtype == np.float32 and from_features.shape == dense.shape
    np.testing.assert_allclose(from_features, dense, atol=2e-6, rtol=0)


def test_features_path_without_normalisation_matches_dense_path():
    q, g = clustered_features(np.random.default_rng(5))
    dense = re_ranking(*distance_matrices(q, g), k1=8, k2=3)
    from_features = re_ranking_from_features(torch.from_numpy(q), torch.from_numpy(g), k1=8, k2=3,
                                             normalize=False)
    np.testing.assert_allclose(from_features, dense, atol=1e-5, rtol=0)


def test_blocks_cover_all_queries_and_evaluate_like_the_whole_matrix():
    rng = np.random.default_rng(6)
    q, g = clustered_features(rng, num_query=23, num_gallery=50)
    whole = re_ranking_from_features(q, g, k1=6, k2=3)
    blocks = list(iter_re_ranking_from_features(q, g, k1=6, k2=3, chunk_size=4))
    assert len(blocks) > 1
    assert [rows.start for rows, _ in blocks] == [0] + [rows.stop for rows, _ in blocks[:-1]]
    # Equal up to float32 rounding: matrix products over a block of rows may round differently
    # from the whole matrix (seen on an AVX2 CPU, differences of one ulp).
    np.testing.assert_allclose(np.concatenate([block for _, block in blocks]), whole, atol=1e-6, rtol=0)

    ids = (rng.integers(0, 6, 23), rng.integers(0, 6, 50), rng.integers(0, 3, 23), rng.integers(0, 3, 50))
    expected = evaluate_ranking(whole, *ids)
    chunked = evaluate_ranking_chunks(iter_re_ranking_from_features(q, g, k1=6, k2=3, chunk_size=4), *ids)
    assert chunked.mAP == pytest.approx(expected.mAP, abs=1e-12)
    np.testing.assert_allclose(chunked.cmc, expected.cmc, atol=1e-12)


def test_float16_result():
    q, g = clustered_features(np.random.default_rng(7))
    half = re_ranking_from_features(q, g, dtype=np.float16)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, re_ranking_from_features(q, g), atol=1e-3)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

def test_lambda_one_returns_the_normalised_original_distance():
    q, g = clustered_features(np.random.default_rng(8))
    q_g, q_q, g_g = distance_matrices(q, g)
    got = re_ranking(q_g, q_q, g_g, lambda_value=1.0)
    # Query i's row is divided by the largest squared distance from query i to any item.
    row_max = np.maximum((q_q ** 2).max(axis=1), (q_g ** 2).max(axis=1))
    np.testing.assert_allclose(got, (q_g ** 2) / row_max[:, None], rtol=1e-6)
    np.testing.assert_array_equal(np.argsort(got, axis=1, kind="stable"),
                                  np.argsort(q_g, axis=1, kind="stable"))


def test_re_ranked_distances_lie_in_unit_interval():
    q, g = clustered_features(np.random.default_rng(9))
    for lambda_value in (0.0, 0.3):
        out = re_ranking_from_features(q, g, lambda_value=lambda_value)
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_numpy_torch_and_float32_inputs_agree():
    q, g = clustered_features(np.random.default_rng(10))
    matrices = distance_matrices(q, g)
    from_numpy = re_ranking(*matrices)
    from_torch = re_ranking(*(torch.from_numpy(m) for m in matrices))
    np.testing.assert_array_equal(from_torch, from_numpy)
    from_float32 = re_ranking(*(m.astype(np.float32) for m in matrices))
    np.testing.assert_allclose(from_float32, from_numpy, atol=1e-5)


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------

def test_shape_mismatches_are_reported():
    q_g, q_q, g_g = np.ones((3, 5)), np.ones((3, 3)), np.ones((5, 5))
    with pytest.raises(ValueError, match=r"q_q_dist \(3, 3\).*g_g_dist \(5, 5\).*\(4, 4\)"):
        re_ranking(q_g, q_q, np.ones((4, 4)))
    with pytest.raises(ValueError, match="2-D"):
        re_ranking(np.ones(5), q_q, g_g)
    with pytest.raises(ValueError, match="at least one"):
        re_ranking(np.ones((3, 0)), q_q, np.ones((0, 0)))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 6\)"):
        re_ranking_from_features(np.ones((3, 4)), np.ones((5, 6)))
    with pytest.raises(ValueError, match="NaN"):
        re_ranking(np.full((3, 5), np.nan), q_q, g_g)
    with pytest.raises(ValueError, match="NaN"):
        re_ranking_from_features(np.full((3, 4), np.nan), np.ones((5, 4)))


@pytest.mark.parametrize("knobs,name", [
    (dict(k1=0), "k1"), (dict(k1=2.5), "k1"), (dict(k1=True), "k1"),
    (dict(k2=0), "k2"), (dict(k2=-1), "k2"),
    (dict(lambda_value=-0.1), "lambda_value"), (dict(lambda_value=1.5), "lambda_value"),
    (dict(lambda_value="0.3"), "lambda_value"),
])
def test_bad_parameters(knobs, name):
    q, g = clustered_features(np.random.default_rng(0), num_query=3, num_gallery=5)
    with pytest.raises(ValueError, match=name):
        re_ranking(*distance_matrices(q, g), **knobs)
    with pytest.raises(ValueError, match=name):
        iter_re_ranking_from_features(q, g, **knobs)  # checked at the call, before any work


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        re_ranking_from_features(np.ones((3, 4)), np.ones((5, 4)), chunk_size=0)


def test_tensors_that_require_grad_are_accepted_and_grad_mode_is_left_alone():
    q, g = clustered_features(np.random.default_rng(11))
    q_t = torch.tensor(q, requires_grad=True)
    g_t = torch.tensor(g, requires_grad=True)
    expected = re_ranking_from_features(q, g, k1=6)
    for rows, block in iter_re_ranking_from_features(q_t, g_t, k1=6, chunk_size=5):
        assert torch.is_grad_enabled()  # the generator must not switch autograd off for its caller
        np.testing.assert_allclose(block, expected[rows], atol=1e-6, rtol=0)  # float32 rounding, as above
    matrices = [torch.tensor(m, requires_grad=True) for m in distance_matrices(q, g)]
    assert re_ranking(*matrices, k1=6).shape == (15, 40)

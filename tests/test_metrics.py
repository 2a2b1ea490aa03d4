"""Tests for soliderkit.reid.metrics: Market-1501 protocol CMC / mAP / mINP and distances."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from soliderkit.reid.metrics import (
    RankingResult,
    evaluate_ranking,
    evaluate_ranking_chunks,
    evaluate_ranking_from_features,
    pairwise_distance,
)


# --------------------------------------------------------------------------------------
# Independent per-query reference of the published protocol (torchreid eval_market1501
# + fast-reid mINP), written plainly, one query at a time.
# --------------------------------------------------------------------------------------

def reference_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    distmat = np.asarray(distmat, dtype=np.float64)
    max_rank = min(max_rank, distmat.shape[1])
    aps, inps, cmcs = [], [], []
    skipped = 0
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")  # ties -> lower gallery index first
        ranked_pid = np.asarray(g_pids)[order]
        ranked_cam = np.asarray(g_camids)[order]
        junk = (ranked_pid == q_pids[i]) & (ranked_cam == q_camids[i])
        is_match = (ranked_pid == q_pids[i])[~junk]
        if not is_match.any():
            skipped += 1
            continue
        match_ranks = np.flatnonzero(is_match) + 1  # 1-based ranks among kept entries
        # AP: precision at each true match, averaged over the true matches.
        aps.append(np.mean([(k + 1) / r for k, r in enumerate(match_ranks)]))
        # INP: number of true matches / rank of the hardest one.
        inps.append(len(match_ranks) / match_ranks[-1])
        cmcs.append([1.0 if match_ranks[0] <= k else 0.0 for k in range(1, max_rank + 1)])
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps), skipped


def assert_matches_reference(result: RankingResult, *args, max_rank=50):
    cmc, mAP, mINP, valid, skipped = reference_eval(*args, max_rank=max_rank)
    assert result.num_valid_queries == valid
    assert result.num_skipped_queries == skipped
    assert result.mAP == pytest.approx(mAP, abs=1e-6)
    assert result.mINP == pytest.approx(mINP, abs=1e-6)
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------
# Hand-made cases
# --------------------------------------------------------------------------------------

def test_single_query_by_hand():
    # Query pid 1, camera 0. Gallery (index: pid/cam, distance):
    #   0: 1/0 d=0.1  -> junk (same pid, same camera): removed
    #   1: 2/1 d=0.2  -> wrong
    #   2: 1/1 d=0.3  -> match
    #   3: 3/2 d=0.4  -> wrong
    #   4: 1/2 d=0.5  -> match
    # Kept ranking: [wrong, match, wrong, match] -> matches at ranks 2 and 4.
    # AP = (1/2 + 2/4) / 2 = 0.5 ; INP = 2 matches / rank 4 = 0.5 ; CMC = [0, 1, 1, 1].
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    result = evaluate_ranking(dist, [1], [1, 2, 1, 3, 1], [0], [0, 1, 1, 2, 2], max_rank=4)
    assert result.mAP == pytest.approx(0.5)
    assert result.mINP == pytest.approx(0.5)
    np.testing.assert_allclose(result.cmc, [0, 1, 1, 1])
    assert (result.num_valid_queries, result.num_skipped_queries) == (1, 0)


def test_ties_are_broken_by_gallery_index():
    # All distances equal, so the ranking is gallery order: [wrong(2), match(1), match(1)].
    # Matches at ranks 2, 3: AP = (1/2 + 2/3) / 2 = 7/12 ; INP = 2/3 ; CMC = [0, 1, 1].
    result = evaluate_ranking(np.zeros((1, 3)), [1], [2, 1, 1], [0], [1, 1, 1], max_rank=3)
    assert result.mAP == pytest.approx(7 / 12)
    assert result.mINP == pytest.approx(2 / 3)
    np.testing.assert_allclose(result.cmc, [0, 1, 1])
    # Swapping gallery order puts the matches first: AP = 1, INP = 2/2 = 1.
    result = evaluate_ranking(np.zeros((1, 3)), [1], [1, 1, 2], [0], [1, 1, 1], max_rank=3)
    assert result.mAP == pytest.approx(1.0)
    assert result.mINP == pytest.approx(1.0)


def test_distractors_are_ordinary_non_matches():
    # Gallery: distractor (pid 0) nearest, then the single true match.
    # Ranking [wrong, match]: AP = 1/2, INP = 1/2, CMC = [0, 1].
    dist = np.array([[0.0, 1.0]])
    result = evaluate_ranking(dist, [5], [0, 5], [0], [1, 1], max_rank=2)
    assert result.mAP == pytest.approx(0.5)
    assert result.mINP == pytest.approx(0.5)
    np.testing.assert_allclose(result.cmc, [0, 1])


def test_queries_without_true_match_are_skipped_and_counted():
    # q0 (pid 1, cam 0): gallery copy of pid 1 is also cam 0 -> junk -> no true match: skipped.
    # q1 (pid 2, cam 0): pid 2 absent from the gallery: skipped.
    # q2 (pid 3, cam 0): gallery [pid1/cam0 d=0.5, pid3/cam1 d=0.1, pid4/cam1 d=0.3]
    #   -> ranking [match, wrong, wrong] -> AP 1, CMC [1, 1, 1].
    dist = np.array([[0.1, 0.2, 0.3],
                     [0.1, 0.2, 0.3],
                     [0.5, 0.1, 0.3]])
    result = evaluate_ranking(dist, [1, 2, 3], [1, 3, 4], [0, 0, 0], [0, 1, 1], max_rank=3)
    assert (result.num_valid_queries, result.num_skipped_queries) == (1, 2)
    assert result.mAP == pytest.approx(1.0)
    np.testing.assert_allclose(result.cmc, [1, 1, 1])


def test_two_queries_are_averaged_over_valid_queries_only():
    # q0: ranking [match, wrong, match] -> AP (1/1 + 2/3)/2 = 5/6, INP 2/3, first hit 1.
    # q1: ranking [wrong, wrong, match] -> AP 1/3, INP 1/3, first hit 3.
    # q2: no match -> skipped.
    # mAP = (5/6 + 1/3)/2 = 7/12 ; mINP = (2/3 + 1/3)/2 = 1/2 ; CMC = [1/2, 1/2, 1].
    g_pids = [1, 2, 1]
    g_cams = [1, 1, 1]
    dist = np.array([[0.1, 0.2, 0.3],   # q0: g0 (pid 1), g1 (pid 2), g2 (pid 1)
                     [0.1, 0.3, 0.2],   # q1: g0 (pid 1), g2 (pid 1), g1 (pid 2)
                     [0.1, 0.2, 0.3]])
    result = evaluate_ranking(dist, [1, 2, 9], g_pids, [0, 0, 0], g_cams, max_rank=3)
    assert (result.num_valid_queries, result.num_skipped_queries) == (2, 1)
    assert result.mAP == pytest.approx(7 / 12)
    assert result.mINP == pytest.approx(1 / 2)
    np.testing.assert_allclose(result.cmc, [0.5, 0.5, 1.0])


def test_all_queries_invalid_raises_value_error():
    with pytest.raises(ValueError, match="no valid query"):
        evaluate_ranking(np.zeros((2, 2)), [1, 2], [3, 4], [0, 0], [1, 1], max_rank=2)
    # Only same-camera copies -> all junk -> also no valid query.
    with pytest.raises(ValueError, match="no valid query"):
        evaluate_ranking(np.zeros((1, 2)), [1], [1, 1], [0], [0, 0], max_rank=2)


def test_small_gallery_shrinks_max_rank_with_warning():
    with pytest.warns(UserWarning, match="reducing max_rank from 50 to 3"):
        result = evaluate_ranking(np.array([[0.3, 0.2, 0.1]]), [1], [1, 2, 3], [0], [1, 1, 1])
    # Ranking [pid3, pid2, pid1]: match at rank 3.
    np.testing.assert_allclose(result.cmc, [0, 0, 1])
    assert "rank5" not in result.as_percent_dict()


def test_cmc_stays_at_one_when_junk_shortens_the_list():
    # 3 gallery entries, 2 are junk for the query: only 1 kept entry, a match at rank 1.
    result = evaluate_ranking(np.array([[0.1, 0.2, 0.3]]), [1], [1, 1, 1], [0], [0, 0, 1], max_rank=3)
    np.testing.assert_allclose(result.cmc, [1, 1, 1])


def test_as_percent_dict():
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    result = evaluate_ranking(dist, [1], [1, 2, 1, 3, 1], [0], [0, 1, 1, 2, 2], max_rank=4)
    percent = result.as_percent_dict()
    assert list(percent) == ["mAP", "rank1", "mINP", "cmc"]
    assert percent["mAP"] == pytest.approx(50.0)
    assert percent["rank1"] == pytest.approx(0.0)
    assert percent["cmc"] == pytest.approx([0.0, 100.0, 100.0, 100.0])


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------

def test_shape_mismatch_names_the_shapes():
    with pytest.raises(ValueError, match=r"g_pids.*\(2, 4\).*\(3,\)"):
        evaluate_ranking(np.zeros((2, 4)), [1, 2], [1, 2, 3], [0, 0], [0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"2-D"):
        evaluate_ranking(np.zeros(4), [1], [1, 2, 3, 4], [0], [0, 0, 0, 0])


def test_nan_distances_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(np.array([[0.1, np.nan]]), [1], [1, 2], [0], [1, 1], max_rank=2)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_max_rank(bad):
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_ranking(np.zeros((1, 2)), [1], [1, 2], [0], [1, 1], max_rank=bad)


# --------------------------------------------------------------------------------------
# Randomised agreement with the reference
# --------------------------------------------------------------------------------------

def random_problem(rng, num_query=60, num_gallery=300, num_ids=12, num_cams=3, levels=6):
    # Few distinct distance levels -> many ties; few ids/cams -> many matches and junk.
    dist = rng.integers(0, levels, (num_query, num_gallery)).astype(np.float32)
    q_pids = rng.integers(0, num_ids, num_query)
    g_pids = rng.integers(0, num_ids, num_gallery)
    q_pids[:3] = num_ids + 1  # a few queries whose identity is not in the gallery
    return (dist, q_pids, g_pids,
            rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery))


@pytest.mark.parametrize("seed", range(5))
def test_random_ties_match_reference(seed):
    problem = random_problem(np.random.default_rng(seed))
    assert_matches_reference(evaluate_ranking(*problem), *problem)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_match_reference(dtype):
    dist, *ids = random_problem(np.random.default_rng(7))
    dist = (dist + np.random.default_rng(8).random(dist.shape)).astype(dtype)
    assert_matches_reference(evaluate_ranking(dist, *ids), dist.astype(np.float64), *ids)


def test_negative_and_signed_zero_distances_match_reference():
    rng = np.random.default_rng(3)
    values = np.array([-np.inf, -2.0, -0.5, -0.0, 0.0, 0.5, np.inf], dtype=np.float32)
    dist, *ids = random_problem(rng)
    dist = rng.choice(values, dist.shape)
    assert_matches_reference(evaluate_ranking(dist, *ids), dist, *ids)


def test_torch_only_code_path_matches_reference(monkeypatch):
    # The numpy shortcuts are CPU-only; force the pure-torch path used for GPU tensors.
    import soliderkit.reid.metrics as metrics

    monkeypatch.setattr(metrics, "_numpy_backed", lambda tensor: False)
    for seed in (0, 1):
        problem = random_problem(np.random.default_rng(seed))
        assert_matches_reference(evaluate_ranking(*problem, chunk_size=13), *problem)


def test_chunked_equals_unchunked():
    dist, *ids = random_problem(np.random.default_rng(11), num_query=57)
    whole = evaluate_ranking(dist, *ids, chunk_size=10_000)
    for chunk_size in (1, 7, 56):
        part = evaluate_ranking(dist, *ids, chunk_size=chunk_size)
        assert part.mAP == pytest.approx(whole.mAP, abs=1e-12)
        assert part.mINP == pytest.approx(whole.mINP, abs=1e-12)
        np.testing.assert_allclose(part.cmc, whole.cmc, atol=1e-12)
        assert part.num_skipped_queries == whole.num_skipped_queries


def test_numpy_and_torch_inputs_agree():
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(np.random.default_rng(5))
    from_numpy = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    from_torch = evaluate_ranking(torch.from_numpy(dist), torch.from_numpy(q_pids),
                                  torch.from_numpy(g_pids), torch.from_numpy(q_cams),
                                  torch.from_numpy(g_cams))
    from_lists = evaluate_ranking(dist.tolist(), q_pids.tolist(), g_pids.tolist(),
                                  q_cams.tolist(), g_cams.tolist())
    for other in (from_torch, from_lists):
        assert other.mAP == from_numpy.mAP
        assert other.mINP == from_numpy.mINP
        np.testing.assert_array_equal(other.cmc, from_numpy.cmc)


# --------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------

def test_pairwise_distance_matches_direct_formulas():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((7, 16)), rng.standard_normal((11, 16))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)

    euclidean = pairwise_distance(q, g, chunk_size=3)
    assert euclidean.dtype == torch.float32 and euclidean.shape == (7, 11)
    np.testing.assert_allclose(euclidean.numpy(), ((qn[:, None] - gn[None]) ** 2).sum(-1), atol=1e-5)

    raw = pairwise_distance(torch.from_numpy(q), torch.from_numpy(g), normalize=False)
    np.testing.assert_allclose(raw.numpy(), ((q[:, None] - g[None]) ** 2).sum(-1), rtol=1e-5, atol=1e-4)

    cosine = pairwise_distance(q, g, metric="cosine")
    np.testing.assert_allclose(cosine.numpy(), 1 - qn @ gn.T, atol=1e-5)

    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(q, g, metric="manhattan")
    with pytest.raises(ValueError, match=r"\(7, 16\).*\(11, 8\)"):
        pairwise_distance(q, g[:, :8])


def test_evaluate_from_features_equals_full_matrix():
    rng = np.random.default_rng(2)
    q_pids, g_pids = rng.integers(0, 10, 40), rng.integers(0, 10, 200)
    centroids = rng.standard_normal((10, 8))
    q = centroids[q_pids] + 0.8 * rng.standard_normal((40, 8))
    g = centroids[g_pids] + 0.8 * rng.standard_normal((200, 8))
    q_cams, g_cams = rng.integers(0, 3, 40), rng.integers(0, 3, 200)
    full = evaluate_ranking(pairwise_distance(q, g), q_pids, g_pids, q_cams, g_cams)
    chunked = evaluate_ranking_from_features(q, g, q_pids, g_pids, q_cams, g_cams, chunk_size=9)
    assert chunked.mAP == pytest.approx(full.mAP, abs=1e-6)
    assert chunked.mINP == pytest.approx(full.mINP, abs=1e-6)
    np.testing.assert_allclose(chunked.cmc, full.cmc, atol=1e-6)


# --------------------------------------------------------------------------------------
# Distance matrix delivered in blocks of query rows
# --------------------------------------------------------------------------------------

def row_blocks(dist, sizes):
    start = 0
    for size in sizes:
        yield slice(start, start + size), dist[start:start + size]
        start += size


def test_chunks_equal_whole_matrix():
    dist, *ids = random_problem(np.random.default_rng(12), num_query=57)
    whole = evaluate_ranking(dist, *ids)
    # Uneven blocks, a block larger than chunk_size, torch blocks and range rows.
    for blocks in (row_blocks(dist, [10, 1, 30, 16]),
                   ((range(r.start, r.stop), torch.from_numpy(b)) for r, b in row_blocks(dist, [57]))):
        part = evaluate_ranking_chunks(blocks, *ids, chunk_size=7)
        assert part.mAP == pytest.approx(whole.mAP, abs=1e-12)
        assert part.mINP == pytest.approx(whole.mINP, abs=1e-12)
        np.testing.assert_allclose(part.cmc, whole.cmc, atol=1e-12)
        assert (part.num_valid_queries, part.num_skipped_queries) == \
            (whole.num_valid_queries, whole.num_skipped_queries)


def test_chunks_must_cover_the_queries_in_order():
    dist, *ids = random_problem(np.random.default_rng(13), num_query=20)
    with pytest.raises(ValueError, match="consecutive"):
        evaluate_ranking_chunks([(slice(0, 10), dist[:10]), (slice(11, 20), dist[11:])], *ids)
    with pytest.raises(ValueError, match="consecutive"):
        evaluate_ranking_chunks([(slice(0, 10), dist[:9])], *ids)
    with pytest.raises(ValueError, match="covered 10 of 20"):
        evaluate_ranking_chunks(row_blocks(dist, [10]), *ids)
    with pytest.raises(ValueError, match="gallery size"):
        evaluate_ranking_chunks([(slice(0, 10), dist[:10]), (slice(10, 20), dist[10:, :-1])], *ids)
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_ranking_chunks(row_blocks(dist[:, :-1], [20]), *ids)
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_ranking_chunks(iter(()), *ids, max_rank=0)

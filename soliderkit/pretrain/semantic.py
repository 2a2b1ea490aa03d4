"""SOLIDER's semantic supervision: batched token clustering, part masking, part classifier.

SOLIDER (Chen et al., CVPR 2023; ``utils.get_mask`` and the loop in ``main_solider.py``)
labels the teacher's stage-4 tokens of each global view (teacher at λ = 1):

1. 2-means on the token norms; the cluster with the larger mean norm is the person
   (foreground). Views whose foreground covers at most half of the tokens are left out.
2. k-means (k = 3) on the foreground tokens' features gives body parts, renumbered 1..k
   from top to bottom by the mean row of their tokens; background is 0.

SOLIDER runs scikit-learn on the CPU, one image at a time (a device->host copy and two
KMeans fits per image, every step). Here both clusterings run for the whole batch at once
in torch, on the training device, deterministically:

* the 1-D 2-means is solved exactly (best threshold over the sorted norms, from prefix
  sums), which is the optimum Lloyd iterations look for;
* the part k-means runs a fixed number of Lloyd iterations on the (N, T, T) Gram matrix of
  each image's tokens (the C-dimensional features are read once), from two starts --
  farthest-point (the foreground token farthest from the foreground mean, then repeatedly
  the one farthest from all chosen centres) and row quantiles (the top, middle and bottom
  thirds of the foreground) -- keeping per image the one with the lower inertia
  (scikit-learn likewise keeps its best start).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

__all__ = ["PartClassifier", "PartClustering", "choose_parts", "cluster_parts", "foreground_split",
           "kmeans", "kmeans_gram", "mask_parts", "part_loss", "sklearn_cluster_parts", "sklearn_part_labels"]


class PartClustering(NamedTuple):
    labels: torch.Tensor  # (N, h, w) long: 0 background, 1..K body parts from top to bottom
    valid: torch.Tensor  # (N,) bool: foreground share > threshold (the view joins the part task)
    fg_ratio: torch.Tensor  # (N,) foreground share of the tokens
    sizes: torch.Tensor  # (N, K + 1) tokens per label (background first)


def foreground_split(norms: torch.Tensor) -> torch.Tensor:
    """Exact 2-means of each row of ``norms`` (N, T); True where a token is in the higher-norm cluster.

    In one dimension the optimal 2-means partition is a threshold between two consecutive
    sorted values, so every split is scored at once from prefix sums (within-cluster sum of
    squares) and the best is taken: the global optimum, not a local one.
    """
    # Centred float64: untrained LayerNorm outputs all have norm ~sqrt(C), differing in the
    # 6th digit, where float32 prefix sums of the raw values would only round.
    values, _ = norms.double().sort(dim=1)
    values = values - values.mean(1, keepdim=True)
    t = values.shape[1]
    if t < 2:
        return torch.zeros_like(norms, dtype=torch.bool)
    sizes = torch.arange(1, t, device=norms.device, dtype=values.dtype)  # tokens left of each split
    prefix = values.cumsum(1)[:, :-1]
    total = values.sum(1, keepdim=True)
    # SSE = sum(v^2) - left_sum^2 / left_n - right_sum^2 / right_n; the first term is constant.
    score = prefix ** 2 / sizes + (total - prefix) ** 2 / (t - sizes)
    split = score.argmax(1)
    threshold, _ = norms.sort(dim=1)
    return norms > threshold.gather(1, split[:, None])


def _gram_distances(gram: torch.Tensor, diag: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, K, T) squared distances from centres to tokens, centres given as weighted token means.

    ``gram`` (N, T, T) = x x^T, ``diag`` (N, T) its diagonal, ``weights`` (N, K, T) with rows
    summing to 1: centre k = sum_t weights[k, t] x_t. Working on the Gram matrix touches the
    C-dimensional features once (to build it) instead of twice per iteration.
    """
    wg = weights @ gram  # (N, K, T): <c_k, x_t>; gram is symmetric
    center_sq = (weights * wg).sum(-1, keepdim=True)  # (N, K, 1): |c_k|^2
    return (diag[:, None, :] - 2 * wg + center_sq).clamp_min_(0)


def _normalise_rows(weights: torch.Tensor) -> torch.Tensor:
    return weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)


def _farthest_point_init(gram: torch.Tensor, diag: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    n, t = mask.shape
    mean = _normalise_rows(mask.to(gram.dtype)[:, None, :])
    score = _gram_distances(gram, diag, mean)[:, 0].masked_fill(~mask, -1.0)
    chosen = [score.argmax(1)]
    pair = (diag[:, :, None] + diag[:, None, :] - 2 * gram).clamp_min(0)  # (N, T, T) token distances
    rows = torch.arange(n, device=gram.device)
    nearest = pair[rows, chosen[0]]
    for _ in range(1, k):
        chosen.append(nearest.masked_fill(~mask, -1.0).argmax(1))
        nearest = torch.minimum(nearest, pair[rows, chosen[-1]])
    return F.one_hot(torch.stack(chosen, 1), t).to(gram.dtype)  # (N, K, T)


def _row_quantile_init(mask: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    # Tokens are row-major, so the rank of a foreground token in token order is its rank by row.
    count = mask.sum(1, keepdim=True)
    rank = mask.cumsum(1) - 1
    band = (rank * k).div(count.clamp_min(1), rounding_mode="floor").clamp_(0, k - 1)
    weights = (F.one_hot(band, k).to(dtype) * mask.to(dtype)[..., None]).transpose(1, 2)  # (N, K, T)
    fallback = mask.to(dtype)[:, None, :].expand_as(weights)  # an empty band starts at the mean
    weights = torch.where(weights.sum(-1, keepdim=True) > 0, weights, fallback)
    return _normalise_rows(weights)


def _lloyd(gram, diag, mask, weights, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    fg = mask.to(gram.dtype)[:, None, :]
    for _ in range(iters):
        member = F.one_hot(_gram_distances(gram, diag, weights).min(1).indices, k).to(gram.dtype).transpose(1, 2) * fg
        # An emptied cluster keeps its centre.
        weights = torch.where(member.sum(-1, keepdim=True) > 0, _normalise_rows(member), weights)
    best = _gram_distances(gram, diag, weights).min(1)
    return best.indices, (best.values * mask).sum(1)


def kmeans(x: torch.Tensor, mask: torch.Tensor, k: int, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lloyd k-means over the masked tokens of each image, from two deterministic starts.

    ``x``: (N, T, C) float tokens; ``mask``: (N, T) bool, tokens taking part. Returns the
    cluster of every token (N, T) (meaningless where ``mask`` is False) and each image's
    inertia (N,), keeping per image the better of the farthest-point and row-quantile starts.
    """
    return kmeans_gram(x @ x.transpose(1, 2), mask, k, iters)


def kmeans_gram(gram: torch.Tensor, mask: torch.Tensor, k: int, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``kmeans`` given the tokens' Gram matrices (N, T, T) instead of the tokens."""
    diag = gram.diagonal(dim1=1, dim2=2)
    n = gram.shape[0]
    starts = torch.cat([_farthest_point_init(gram, diag, mask, k), _row_quantile_init(mask, k, gram.dtype)])
    assign, inertia = _lloyd(gram.repeat(2, 1, 1), diag.repeat(2, 1), mask.repeat(2, 1), starts, k, iters)
    second = inertia[n:] < inertia[:n]
    return torch.where(second[:, None], assign[n:], assign[:n]), torch.minimum(inertia[:n], inertia[n:])


@torch.no_grad()
def cluster_parts(feature_map: torch.Tensor, num_parts: int = 3, fg_threshold: float = 0.5,
                  iters: int = 10) -> PartClustering:
    """SOLIDER's part labels for stage-4 maps (N, C, h, w), computed batched in float32.

    Views left out of the part task (foreground share <= ``fg_threshold``) keep their
    foreground/background labels, but are not clustered into parts (all foreground = 1).
    """
    n, _, h, w = feature_map.shape
    x = feature_map.detach().float().flatten(2)  # (N, C, T), tokens in row-major order
    gram = x.transpose(1, 2) @ x  # (N, T, T): the only pass over the C-dimensional features
    fg = foreground_split(gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt())
    fg_ratio = fg.float().mean(1)
    valid = fg_ratio > fg_threshold

    assign = torch.zeros_like(fg, dtype=torch.long)
    kept = valid.nonzero().squeeze(1)
    if kept.numel():  # one host sync per step; the invalid views need no part clustering
        assign[kept] = kmeans_gram(gram[kept], fg[kept], num_parts, iters)[0]
    # Renumber clusters 1..K by the mean row of their tokens (top first); empty ones go last.
    rows = (torch.arange(h * w, device=x.device) // w).float()
    member = F.one_hot(assign, num_parts).float() * fg.float()[..., None]
    counts = member.sum(1)
    mean_row = (member * rows[None, :, None]).sum(1) / counts.clamp_min(1)
    mean_row = mean_row.masked_fill(counts == 0, float("inf"))
    rank = mean_row.argsort(dim=1, stable=True).argsort(dim=1)
    labels = torch.where(fg, rank.gather(1, assign) + 1, torch.zeros_like(assign))
    sizes = F.one_hot(labels, num_parts + 1).sum(1)
    return PartClustering(labels.view(n, h, w), valid, fg_ratio, sizes)


def choose_parts(sizes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One non-empty part label (1..K) per view, uniformly at random; ``sizes`` (N, K + 1)."""
    scores = torch.rand(sizes[:, 1:].shape, generator=generator, device="cpu").to(sizes.device)
    scores = scores.masked_fill(sizes[:, 1:] == 0, -1.0)
    return scores.argmax(1) + 1


def mask_parts(images: torch.Tensor, labels: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """Copies of ``images`` (N, 3, H, W) with the pixels of part ``parts[i]`` set to 0.

    The token map (N, h, w) is blown up to pixels by nearest-neighbour repetition (each
    stage-4 token covers a 32x32 pixel block). The images are normalised, so 0 is the
    dataset's mean colour, as in SOLIDER (which multiplies by a 0/1 mask).
    """
    region = (labels == parts[:, None, None]).to(images.dtype)[:, None]
    region = F.interpolate(region, size=images.shape[-2:], mode="nearest")
    return images * (1 - region)


class PartClassifier(nn.Module):
    """Token-wise MLP: (..., C) -> (..., num_parts + 1) background/part scores.

    SOLIDER uses a DINO head here (L2-normalised bottleneck, weight-normalised last layer
    with fixed norm), whose logits are cosines in [-1, 1]: with 4 classes its softmax can
    never exceed e / (e + 3 / e) = 0.71, and as SOLIDER never optimises it, it stays a
    random cosine classifier. Ours is a plain GELU MLP that is trained with the student.
    """

    def __init__(self, in_dim: int, num_parts: int, *, hidden_dim: int = 2048, nlayers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (nlayers - 1)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], num_parts + 1))
        self.mlp = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens)


def part_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
              normalizer: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view weighted token cross-entropy: sum(weights[i] * CE(token)) / normalizer.

    ``logits`` (N, T, K + 1), ``labels`` (N, T), ``weights`` (N,); ``normalizer`` a number or a
    0-d tensor (no host read). Returns the loss and the token accuracy over the views with a
    positive weight (NaN if there are none).
    """
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)
    if torch.is_tensor(normalizer):
        denominator = normalizer.to(ce.dtype).clamp_min(1.0)
    else:
        denominator = max(float(normalizer), 1.0)
    loss = (ce * weights[:, None].to(ce.dtype)).sum() / denominator
    with torch.no_grad():
        counted = (weights > 0)[:, None].expand_as(labels)
        correct = (logits.argmax(-1) == labels) & counted
        total = counted.sum()
        accuracy = torch.where(total > 0, correct.sum().float() / total.clamp_min(1), float("nan"))
    return loss, accuracy


def sklearn_cluster_parts(feature_map: torch.Tensor, num_parts: int = 3,
                          fg_threshold: float = 0.5) -> PartClustering:
    """SOLIDER's own clustering (``utils.get_mask``), view by view with scikit-learn on the CPU.

    The reference behaviour (``semantic.clustering: sklearn``), step for step so the labels are
    the same: per view, ``KMeans(2, random_state=0)`` on the token norms, the cluster with the
    larger centre is the person; a view is used only when more than ``fg_threshold`` of its tokens
    are foreground; ``KMeans(num_parts, random_state=0)`` on the foreground features; parts
    renumbered 1..K by the mean row of their tokens (``np.argsort`` of the means, as SOLIDER).
    scikit-learn's default ``n_init`` is kept, as SOLIDER calls it. Returns the same
    ``PartClustering`` as :func:`cluster_parts`, on the input's device.
    """
    import numpy as np
    from sklearn.cluster import KMeans

    n, c, h, w = feature_map.shape
    maps = feature_map.detach().float().cpu().numpy()
    labels = np.zeros((n, h * w), dtype=np.int64)
    valid = np.zeros(n, dtype=bool)
    fg_ratio = np.zeros(n, dtype=np.float64)
    rows = np.arange(h * w) // w
    for i in range(n):
        x = maps[i].reshape(c, h * w).T
        split = KMeans(n_clusters=2, random_state=0).fit(np.linalg.norm(x, axis=1, keepdims=True))
        person = 0 if split.cluster_centers_[0][0] > split.cluster_centers_[1][0] else 1
        fg = split.labels_ == person
        fg_ratio[i] = fg.mean()
        # SOLIDER's KMeans(partnum) would fail on fewer foreground tokens than parts; such a
        # view (possible only on tiny maps) is left out instead.
        if fg.sum() <= fg_threshold * h * w or fg.sum() < num_parts:
            continue
        valid[i] = True
        parts = KMeans(n_clusters=num_parts, random_state=0).fit(x[fg]).labels_ + 1
        mean_rows = np.hstack([rows[fg][parts == k].mean() for k in range(1, num_parts + 1)])
        order = np.argsort(mean_rows) + 1  # order[j] = the cluster that becomes part j + 1
        view = np.zeros(h * w, dtype=np.int64)
        view[fg] = parts
        renumbered = np.zeros_like(view)
        for j in range(num_parts):
            renumbered[view == order[j]] = j + 1
        labels[i] = renumbered
    device = feature_map.device
    labels_t = torch.from_numpy(labels).to(device)
    sizes = F.one_hot(labels_t, num_parts + 1).sum(1)
    return PartClustering(labels_t.view(n, h, w), torch.from_numpy(valid).to(device),
                          torch.from_numpy(fg_ratio).float().to(device), sizes)


def sklearn_part_labels(feature_map: torch.Tensor, num_parts: int = 3,
                        fg_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: SOLIDER's per-image scikit-learn procedure, for tests and the benchmark.

    For each image on the CPU: ``KMeans(2)`` on the token norms (higher-centre cluster =
    foreground), skip the image unless foreground > ``fg_threshold`` of the tokens,
    ``KMeans(num_parts)`` on the foreground features, parts renumbered top to bottom.
    Returns labels (N, h, w) (all 0 for skipped images) and the valid mask (N,).
    """
    import numpy as np
    from sklearn.cluster import KMeans

    n, c, h, w = feature_map.shape
    maps = feature_map.detach().float().cpu().numpy()
    labels = np.zeros((n, h * w), dtype=np.int64)
    valid = np.zeros(n, dtype=bool)
    rows = np.arange(h * w) // w
    for i in range(n):
        x = maps[i].reshape(c, h * w).T
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        split = KMeans(n_clusters=2, random_state=0, n_init="auto").fit(norms)
        fg = split.labels_ == int(np.argmax(split.cluster_centers_[:, 0]))
        if fg.sum() <= fg_threshold * h * w:
            continue
        valid[i] = True
        parts = KMeans(n_clusters=num_parts, random_state=0, n_init="auto").fit(x[fg]).labels_
        mean_rows = [rows[fg][parts == k].mean() if (parts == k).any() else np.inf for k in range(num_parts)]
        rank = np.argsort(np.argsort(mean_rows, kind="stable"), kind="stable")
        labels[i, fg] = rank[parts] + 1
    return torch.from_numpy(labels.reshape(n, h, w)), torch.from_numpy(valid)

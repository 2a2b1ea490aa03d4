"""ReID training losses: identity cross-entropy, batch-hard triplet, center loss.

The formulas follow "Bag of Tricks and A Strong Baseline for Deep Person Re-identification"
(Luo et al., CVPRW 2019), as used by SOLIDER-REID and TAO ReIdentificationNet:
* ID loss: cross-entropy, optionally label-smoothed: targets (1 - eps) * onehot + eps / K.
* Triplet: for each anchor, its farthest positive and nearest negative in the batch
  (euclidean distance, not squared); hinge with a margin, or soft margin
  log(1 + exp(d_ap - d_an)) when ``margin`` is None (TAO ``no_margin``).
* Center loss: mean over the batch of ||f - c_y||^2, with learnable centers stepped by
  their own SGD optimizer (see ``scale_center_gradients``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def id_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    # torch's label_smoothing is exactly the bag-of-tricks target (1 - eps) * y + eps / K.
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    squared = features.pow(2).sum(dim=1, keepdim=True)
    dist = squared + squared.t() - 2.0 * features @ features.t()
    # The clamp keeps sqrt differentiable on the diagonal (distance 0).
    return dist.clamp(min=1e-12).sqrt()


def hardest_pairs(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to the farthest positive and the nearest negative of every anchor."""
    same = labels[:, None] == labels[None, :]
    usable = (same.sum(dim=1) > 1).all() & ~same.all()
    message = ("batch-hard triplet loss needs >= 2 images per identity and >= 2 identities in every batch "
               "(use the identity sampler)")
    try:  # checked without a host sync: the CPU raises here, a GPU asserts on the device
        torch._assert_async(usable, message)
    except RuntimeError:
        raise ValueError(message) from None
    hardest_positive = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_negative = dist.masked_fill(same, float("inf")).amin(dim=1)
    return hardest_positive, hardest_negative


class TripletLoss(nn.Module):
    """Batch-hard triplet loss; ``margin=None`` gives the soft-margin version."""

    def __init__(self, margin: float | None = 0.3, normalize_features: bool = False):
        super().__init__()
        self.margin = margin
        self.normalize_features = normalize_features

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = features.float()
        if self.normalize_features:
            features = F.normalize(features, dim=1)
        positive, negative = hardest_pairs(pairwise_euclidean(features), labels)
        if self.margin is None:
            return F.softplus(positive - negative).mean()
        return F.relu(positive - negative + self.margin).mean()


class CenterLoss(nn.Module):
    """Pulls each embedding towards a learnable center of its identity (Wen et al., ECCV 2016)."""

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        squared = (features.float() - self.centers[labels]).pow(2).sum(dim=1)
        return squared.clamp(min=1e-12, max=1e12).mean()


def scale_center_gradients(center_loss: nn.Module, weight: float) -> None:
    """Undo the loss weight on the centers' gradient before their own SGD step.

    The total loss holds ``weight * center_loss``; bag-of-tricks updates the centers with
    the unweighted gradient, so that ``center_lr`` alone sets how fast centers move.
    """
    for param in center_loss.parameters():
        if param.grad is not None:
            param.grad.mul_(1.0 / weight)


class ReidLosses:
    """The loss terms of one fine-tuning step, as ``finetune/run.py`` trains them.

    ``terms(out, pids, center_loss)`` returns the weighted terms (their sum is the loss):
    ``id`` when ``dataset.sampler`` contains "softmax", ``triplet`` when it contains "triplet" and
    ``model.metric_loss_type`` does, ``center`` when a center loss is given. The triplet sees the
    feature before the BNNeck (``ReidOutput.features``), soft-margin when ``model.no_margin``.
    Shared with ``bench/compare_with_reference.py`` and the golden-value tests, so the step they
    check is the step the loop runs.
    """

    def __init__(self, cfg):
        model, optim = cfg.model, cfg.train.optim
        self.use_id = "softmax" in cfg.dataset.sampler
        self.use_triplet = "triplet" in cfg.dataset.sampler and "triplet" in model.metric_loss_type
        self.triplet = TripletLoss(None if model.no_margin else optim.triplet_loss_margin,
                                   normalize_features=optim.trp_l2)
        self.label_smoothing = model.label_smooth_epsilon if model.label_smooth else 0.0
        self.id_weight, self.triplet_weight = model.id_loss_weight, model.triplet_loss_weight
        self.center_weight = optim.center_loss_weight

    def terms(self, out, pids: torch.Tensor, center_loss: nn.Module | None = None) -> dict[str, torch.Tensor]:
        parts = {}
        if self.use_id:
            parts["id"] = self.id_weight * id_loss(out.logits, pids, self.label_smoothing)
        if self.use_triplet:
            parts["triplet"] = self.triplet_weight * self.triplet(out.features, pids)
        if center_loss is not None:
            parts["center"] = self.center_weight * center_loss(out.features, pids)
        return parts

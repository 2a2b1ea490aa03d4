"""DINO pieces: projection head, multi-crop network wrapper, self-distillation loss with centering.

Behaviour follows DINO (Caron et al. 2021, ``main_dino.py`` / ``vision_transformer.py``) and
SOLIDER's conditioned variant (``utils.MultiCropCondWrapper``):

* ``DINOHead``: MLP (Linear-GELU, Linear-GELU, Linear to the bottleneck), L2 normalisation,
  then a bias-free weight-normalised linear layer to ``out_dim`` prototypes whose norm (g)
  starts at 1 and stays fixed with ``norm_last_layer``.
* ``MultiCropNetwork``: backbone + DINO head (+ SOLIDER's part classifier on the student).
  Views of one resolution go through the backbone in one call, each image at its own λ;
  optional ``extra`` images (the masked copies of the global views) join the call of their
  resolution but skip the DINO head: they only feed the part classifier.
* ``DINOLoss``: cross-entropy between the sharpened, centred teacher distribution of each
  global view and the student distribution of every *other* view, averaged over pairs.
  The center is a buffer (saved and restored with the run's state); its update averages the
  batch mean of the teacher logits over all processes (``accelerate.utils.reduce``) and is
  applied only after the step is known to be finite, so a skipped step leaves it untouched.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from accelerate.utils import reduce
from timm.layers import trunc_normal_
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from soliderkit.backbone import SwinBackbone

__all__ = ["DINOHead", "DINOLoss", "MultiCropNetwork", "NetworkOutput", "ema_update", "teacher_statistics"]


class DINOHead(nn.Module):
    """Projection head: ``nlayers``-layer MLP -> L2 norm -> weight-normalised prototypes."""

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (max(nlayers, 1) - 1)
        for a, b in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(a, b))
            if use_bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.GELU())
        layers.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.apply(_init_linear)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class NetworkOutput(NamedTuple):
    logits: torch.Tensor  # (num_views * B, out_dim) DINO head outputs, views in input order
    tokens: torch.Tensor  # (E + G * B, C, h, w) stage-4 maps of the extra images, then of the G global views
    part_logits: torch.Tensor | None  # (E + G * B, h * w, num_parts + 1) part scores of those tokens


class MultiCropNetwork(nn.Module):
    """Backbone + DINO head (+ part classifier): DINO's multi-crop wrapper with per-image λ.

    ``forward(views, weights, extra=None, extra_weights=None)``: ``views`` is a list of
    (B, 3, H, W) batches (global views first), ``weights`` one λ tensor (B,) per view.
    Consecutive views of equal size share one backbone call; ``extra`` (E, 3, H, W), if
    given, must have the size of the first views and is prepended to their call. Stage-4
    tokens (and part scores) are returned for the extra images and the first ``num_global``
    views.
    """

    def __init__(self, backbone: SwinBackbone, head: DINOHead, part_classifier: nn.Module | None = None,
                 num_global: int = 2):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.part_classifier = part_classifier
        self.num_global = num_global

    def forward(self, views: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                extra: torch.Tensor | None = None, extra_weights: torch.Tensor | None = None) -> NetworkOutput:
        if len(views) != len(weights):
            raise ValueError(f"{len(views)} views but {len(weights)} semantic-weight tensors")
        groups: list[list[int]] = []
        for i, view in enumerate(views):
            if groups and views[groups[-1][0]].shape[-2:] == view.shape[-2:]:
                groups[-1].append(i)
            else:
                groups.append([i])
        if extra is not None and extra.shape[-2:] != views[0].shape[-2:]:
            raise ValueError(f"extra images are {tuple(extra.shape[-2:])}, the first views {tuple(views[0].shape[-2:])}")

        pooled, first_tokens, num_extra = [], None, 0
        for g, members in enumerate(groups):
            images = torch.cat([views[i] for i in members])
            lam = torch.cat([weights[i] for i in members])
            if g == 0 and extra is not None and extra.shape[0] > 0:
                num_extra = extra.shape[0]
                images = torch.cat([extra, images])
                lam = torch.cat([extra_weights, lam])
            out = self.backbone(images, semantic_weight=lam)
            pooled.append(out.pooled[num_extra:] if g == 0 else out.pooled)
            if g == 0:
                first_tokens = out.feature_maps[-1][:num_extra + self.num_global * views[0].shape[0]]
        logits = self.head(torch.cat(pooled))
        part_logits = None
        if self.part_classifier is not None:
            tokens = first_tokens.flatten(2).transpose(1, 2)  # (N, h*w, C), row-major token order
            part_logits = self.part_classifier(tokens)
        return NetworkOutput(logits, first_tokens, part_logits)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, skip: torch.Tensor | None = None) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for every parameter both have.

    Parameters are matched by name (the student's part classifier has no teacher twin). ``skip``
    (a 0-d device tensor, nonzero = skip) leaves the teacher as it is without a host sync.
    """
    teacher_params = dict(teacher.named_parameters())
    pairs = [(teacher_params[n], p.detach()) for n, p in student.named_parameters() if n in teacher_params]
    if len(pairs) != len(teacher_params):
        missing = sorted(set(teacher_params) - {n for n, _ in student.named_parameters()})
        raise ValueError(f"teacher parameters without a student twin: {missing[:5]}")
    t, s = zip(*pairs)
    weight = 1.0 - momentum
    if skip is not None:  # the same float32 weight as the scalar's, or 0
        weight = torch.where(skip > 0, 0.0, torch.full((), weight, dtype=t[0].dtype, device=t[0].device))
    torch._foreach_lerp_(list(t), [x.to(y.dtype) for x, y in zip(s, t)], weight)


class DINOLoss(nn.Module):
    """Cross-entropy between centred/sharpened teacher and student distributions over views."""

    def __init__(self, out_dim: int, *, student_temp: float = 0.1, center_momentum: float = 0.9,
                 num_global: int = 2):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.num_global = num_global
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                teacher_temp: float) -> torch.Tensor:
        """``student_logits``: (V * B, D), views in order, global views first; ``teacher_logits``: (G * B, D)."""
        g = self.num_global
        batch = teacher_logits.shape[0] // g
        views = student_logits.shape[0] // batch
        targets = self.teacher_probs(teacher_logits, teacher_temp).detach().view(g, batch, -1)
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1).view(views, batch, -1)
        # cross[t, v] = mean over images of H(teacher view t, student view v)
        cross = -torch.einsum("tbd,vbd->tv", targets, log_p) / batch
        same = torch.eye(g, views, dtype=torch.bool, device=cross.device)
        pairs = g * views - min(g, views)
        return cross.masked_fill(same, 0.0).sum() / pairs

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor, skip: torch.Tensor | None = None) -> None:
        """EMA of the teacher logits' batch mean, averaged over all processes (equal batches);
        ``skip`` (0-d device tensor, nonzero = skip) keeps the center without a host sync."""
        batch_center = reduce(teacher_logits.float().mean(dim=0, keepdim=True), reduction="mean")
        if skip is None:
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
            return
        updated = self.center.mul(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
        self.center.copy_(torch.where(skip > 0, self.center, updated))


@torch.no_grad()
def teacher_statistics(teacher_logits: torch.Tensor, center: torch.Tensor,
                       teacher_temp: float) -> dict[str, torch.Tensor]:
    """Collapse signals of the teacher's targets (natural logs; log(out_dim) is the maximum).

    * ``teacher_entropy``: mean entropy of each image's centred, sharpened target. Near
      log(out_dim): uniform collapse; near 0 with a low ``teacher_batch_entropy``: every
      image is sent to the same prototype.
    * ``teacher_batch_entropy``: entropy of the batch-mean target (how many prototypes are used).
    * ``teacher_kl_to_center``: mean KL(softmax(t / T) || softmax(center / T)): how far each
      image's teacher output is from the running center; 0 means the outputs no longer
      depend on the image (collapse), whatever the temperature.
    """
    logits = teacher_logits.float()
    probs = F.softmax((logits - center) / teacher_temp, dim=-1)
    log_probs = F.log_softmax((logits - center) / teacher_temp, dim=-1)
    entropy = -(probs * log_probs).sum(-1).mean()
    mean_probs = probs.mean(0)
    batch_entropy = -(mean_probs * mean_probs.clamp_min(1e-30).log()).sum()
    raw = F.log_softmax(logits / teacher_temp, dim=-1)
    ref = F.log_softmax(center / teacher_temp, dim=-1)
    kl = (raw.exp() * (raw - ref)).sum(-1).mean()
    # 0-d tensors on the logits' device: read once per logging interval, not per step
    return {"teacher_entropy": entropy, "teacher_batch_entropy": batch_entropy, "teacher_kl_to_center": kl}

"""Optimizers and per-epoch learning-rate schedules for fine-tuning (TAO ``train.optim``).

Parameter groups follow SOLIDER-REID's ``make_optimizer``: biases get
``base_lr * bias_lr_factor`` and ``weight_decay_bias``; with ``large_fc_lr`` the classifier
gets twice the base LR. What counts as a bias is ``bias_param_rule``: ``contains`` (the
reference's ``"bias" in name``, so the Swin relative-position bias tables are biases too) or
``suffix`` (names ending in ``bias``). Frozen parameters (``requires_grad`` false: the BNNeck
bias, and the semantic controller unless ``model.train_semantic_controller``) are left out.
Schedules are stepped once per epoch:
* ``warmup_method: cosine`` — timm's ``CosineLRScheduler`` as SOLIDER-REID configures it
  (linear warm-up from 0.01 x base over ``warmup_epochs``, cosine to 0.002 x base over
  ``num_epochs``);
* ``linear`` / ``constant`` — TAO's warm-up multi-step: the LR is multiplied by ``gamma`` at
  each epoch in ``lr_steps``; during the first ``warmup_iters`` epochs the factor rises
  linearly from ``warmup_factor`` to 1 (linear) or stays at ``warmup_factor`` (constant).
"""
from __future__ import annotations

import bisect

import torch
from timm.scheduler import CosineLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn

from soliderkit.finetune.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Parameters with the same LR and weight decay share one group, listed by name in its ``names``
    (SOLIDER-REID makes one group per parameter: the same update, but a fused optimizer launches
    one kernel per group, and Swin-B has over 300 parameters)."""
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, weight_decay = cfg.base_lr, cfg.weight_decay
        is_bias = "bias" in name if cfg.bias_param_rule == "contains" else name.endswith("bias")
        if is_bias:
            lr, weight_decay = cfg.base_lr * cfg.bias_lr_factor, cfg.weight_decay_bias
        if cfg.large_fc_lr and "classifier" in name:
            lr = cfg.base_lr * 2
        group = groups.setdefault((lr, weight_decay), {"params": [], "names": [], "lr": lr,
                                                       "weight_decay": weight_decay})
        group["params"].append(param)
        group["names"].append(name)
    groups = list(groups.values())
    if cfg.name == "SGD":
        return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum)
    if cfg.name == "Adam":
        return torch.optim.Adam(groups, lr=cfg.base_lr)
    return torch.optim.AdamW(groups, lr=cfg.base_lr)


def lr_and_weight_decay(optimizer: torch.optim.Optimizer) -> dict[str, tuple[float, float]]:
    """``{parameter name: (lr, weight decay)}`` of an optimizer from :func:`build_optimizer`."""
    return {name: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for name in g["names"]}


class WarmupMultiStepScheduler(Scheduler):
    """TAO's warm-up multi-step schedule as a timm scheduler (so both kinds share one API)."""

    def __init__(self, optimizer, milestones, gamma, warmup_factor, warmup_epochs, warmup_method):
        self.milestones, self.gamma = list(milestones), gamma
        self.warmup_factor, self.warmup_epochs, self.warmup_method = warmup_factor, warmup_epochs, warmup_method
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=True)
        self.update_groups(self._get_lr(0))

    def _get_lr(self, t: int) -> list[float]:
        factor = 1.0
        if t < self.warmup_epochs:
            if self.warmup_method == "constant":
                factor = self.warmup_factor
            else:
                alpha = t / self.warmup_epochs
                factor = self.warmup_factor * (1 - alpha) + alpha
        decay = self.gamma ** bisect.bisect_right(self.milestones, t)
        return [base * factor * decay for base in self.base_values]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, num_epochs: int) -> Scheduler:
    if cfg.warmup_method == "cosine":
        return CosineLRScheduler(optimizer, t_initial=num_epochs, lr_min=0.002 * cfg.base_lr,
                                 warmup_lr_init=0.01 * cfg.base_lr, warmup_t=cfg.warmup_epochs,
                                 cycle_limit=1, t_in_epochs=True)
    return WarmupMultiStepScheduler(optimizer, cfg.lr_steps, cfg.gamma, cfg.warmup_factor,
                                    cfg.warmup_iters, cfg.warmup_method)

"""Experiment trackers of the fine-tune loop: TensorBoard always, Weights & Biases on request.

TAO specs carry a ``wandb`` block. Here it is honoured through Accelerate's own W&B tracker,
so the loop's ``accelerator.log`` calls reach both TensorBoard and W&B. ``wandb`` is not a
dependency of the toolkit; when a config enables W&B and the package is missing, the run logs
a warning and switches ``wandb.enable`` off in the config it is given, so the resolved
``config.yaml`` records what actually ran.

    accelerator = Accelerator(log_with=experiment_trackers(cfg, dry_run=args.dry_run), ...)
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Any

from soliderkit.config import config_to_dict

log = logging.getLogger(__name__)

__all__ = ["experiment_trackers", "wandb_available", "wandb_init_kwargs"]


def wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


def wandb_init_kwargs(cfg) -> dict[str, Any]:
    """``wandb.init`` keyword arguments from the config's ``wandb`` block (project aside)."""
    w = cfg.wandb
    kwargs: dict[str, Any] = {"name": w.name, "tags": list(w.tags), "reinit": w.reinit,
                              "sync_tensorboard": w.sync_tensorboard, "save_code": w.save_code,
                              "config": config_to_dict(cfg)}
    if w.entity:
        kwargs["entity"] = w.entity
    return kwargs


def experiment_trackers(cfg, *, dry_run: bool = False) -> list | None:
    """``log_with`` for ``Accelerator``: None for a dry run, else TensorBoard, plus Accelerate's
    ``WandBTracker`` when ``cfg.wandb.enable`` and ``wandb`` is importable. Enabled but missing:
    warns and sets ``cfg.wandb.enable = False``."""
    if dry_run:
        return None
    trackers: list = ["tensorboard"]
    if cfg.wandb.enable:
        if wandb_available():
            from accelerate.tracking import WandBTracker

            trackers.append(WandBTracker(cfg.wandb.project, **wandb_init_kwargs(cfg)))
        else:
            log.warning("wandb.enable is true but the wandb package is not installed: logging to TensorBoard "
                        "only (pip install wandb to log to Weights & Biases); the resolved config records "
                        "wandb.enable: false")
            cfg.wandb.enable = False
    return trackers

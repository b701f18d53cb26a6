"""Optimisers and learning-rate schedules with linear warmup.

The schedule is a multiplier of the base lr, evaluated once per iteration (the engine calls
`scheduler.step()` after every optimiser step) as a function of the fractional epoch
t = step / steps_per_epoch:

- warmup: for t < warmup_epochs the factor ramps linearly from 1/warmup_steps to 1;
- `step`: gamma ** (number of milestones <= floor(t)), i.e. the lr changes at epoch
  boundaries exactly like an epoch-stepped MultiStepLR (RepDistiller's CIFAR schedule);
- `cosine`: 0.5 * (1 + cos(pi * p)) with p the fraction of the post-warmup iterations done,
  so the lr decays smoothly within epochs;
- `constant`: 1.

`optim.lr` is the lr for the global batch `optim.batch_size`; it is never rescaled when the
number of DDP processes changes (the global batch stays the same, so neither should the lr).
If you change batch_size, the linear scaling rule (lr proportional to batch) is the usual start.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from crossmodal.errors import ConfigError
from crossmodal.sections import OptimConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW over `params`, weight decay on every parameter (as the paper's code).

    `fused`: SGD's fused kernel, which takes the lr as a device tensor (the captured step needs it)."""
    params = list(params)
    if not params:
        raise ConfigError("nothing to train: the task has no parameter with requires_grad")
    if cfg.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.lr}")
    if cfg.name == "sgd":
        if cfg.nesterov and cfg.momentum <= 0:
            raise ConfigError("optim.nesterov needs optim.momentum > 0")
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, fused=fused or None)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


SCHEDULES = ("step", "cosine", "constant")


def lr_factor_fn(cfg: OptimConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The per-iteration lr multiplier (see module docstring) for `steps_per_epoch` steps per epoch."""
    if steps_per_epoch < 1:
        raise ValueError("steps_per_epoch must be >= 1")
    if cfg.schedule not in SCHEDULES:  # a config built in code skips the YAML validator's check
        raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}; got {cfg.schedule!r}")
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    milestones = sorted(cfg.milestones)
    if cfg.schedule == "step" and any(m <= 0 for m in milestones):
        raise ConfigError(f"optim.milestones must be positive epochs, got {cfg.milestones}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if cfg.schedule == "step":
            epoch = step // steps_per_epoch
            return cfg.gamma ** sum(epoch >= m for m in milestones)
        if cfg.schedule == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int):
    """A LambdaLR stepped once per iteration; its state_dict holds only numbers (weights_only-safe)."""
    # A plain closure (not a callable object) keeps LambdaLR.state_dict free of pickled objects.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(cfg, steps_per_epoch))

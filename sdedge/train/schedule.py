"""Learning-rate and momentum schedules as pure functions of training progress.

A schedule maps progress (epochs done, fractional) to the step's learning rate and, for one-cycle, its
momentum; :meth:`StepSchedule.apply` sets both on the optimiser before every step. Because nothing is
stateful, a resumed run sees exactly the rates of an uninterrupted one.

* ``multistep`` / ``cosine``: :func:`lr_at` (with an optional linear warm-up).
* ``onecycle``: torch's :class:`~torch.optim.lr_scheduler.OneCycleLR` (cosine annealing, momentum
  cycled inversely to the rate between ``min_momentum`` and ``momentum``), tabulated once per run by
  stepping it on a throw-away optimiser, so its formula stays torch's own.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch


def lr_at(progress: float, base_lr: float, total_epochs: float, schedule: str, milestones: list[int],
          gamma: float = 0.1, warmup_epochs: float = 0.0) -> float:
    """Learning rate after ``progress`` epochs (fractional): linear warm-up, then multistep or cosine."""
    if warmup_epochs > 0 and progress < warmup_epochs:
        return base_lr * (progress + 1e-3) / warmup_epochs
    if schedule == "cosine":
        t = (progress - warmup_epochs) / max(1e-9, total_epochs - warmup_epochs)
        return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, max(0.0, t))))
    return base_lr * gamma ** sum(1 for m in milestones if progress >= m)


@dataclass(frozen=True)
class StepSchedule:
    """What the optimiser's rate (and momentum, when ``momentum`` is set) is at a given progress."""

    lr: Callable[[float], float]
    momentum: Callable[[float], float] | None = None

    def apply(self, optimizer: torch.optim.Optimizer, progress: float) -> float:
        lr = self.lr(progress)
        m = self.momentum(progress) if self.momentum is not None else None
        for group in optimizer.param_groups:
            group["lr"] = lr
            if m is not None:
                group["momentum"] = m
        return lr


def onecycle(max_lr: float, epochs: int, steps_per_epoch: int, pct_start: float, min_momentum: float,
             max_momentum: float, start_epoch: float = 0.0) -> StepSchedule:
    """torch's one-cycle policy over ``epochs`` x ``steps_per_epoch`` steps, starting at ``start_epoch``.

    Momentum cycles from ``max_momentum`` down to ``min_momentum`` while the rate rises, and back up
    while it anneals (no cycling when the two are equal). The rate starts at ``max_lr / 25`` and ends at
    ``max_lr / 25e4`` (torch's defaults).
    """
    total = max(2, epochs * steps_per_epoch)
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr, momentum=max(max_momentum, 1e-8))
    cycle = min_momentum < max_momentum
    sched = torch.optim.lr_scheduler.OneCycleLR(probe, max_lr=max_lr, total_steps=total, pct_start=pct_start,
                                                cycle_momentum=cycle, base_momentum=min_momentum,
                                                max_momentum=max_momentum)
    lrs, moms = [], []
    with warnings.catch_warnings():  # the probe never steps (its parameter has no gradient): nothing to warn about
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        for i in range(total):
            g = probe.param_groups[0]
            lrs.append(float(g["lr"]))
            moms.append(float(g["momentum"]))
            if i < total - 1:
                sched.step()

    def index(progress: float) -> int:
        return min(total - 1, max(0, round((progress - start_epoch) * steps_per_epoch)))

    return StepSchedule(lambda p: lrs[index(p)], (lambda p: moms[index(p)]) if cycle else None)


def steps_per_epoch(n_images: int, batch_size: int, world: int = 1) -> int:
    """Optimiser steps one process takes per epoch (the loop drops the last partial batch)."""
    share = -(-n_images // world) if world > 1 else n_images
    return share // batch_size if share >= batch_size else 1

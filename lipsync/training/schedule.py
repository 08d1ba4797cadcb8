"""Learning-rate schedules as a pure function of the step.

Stateless on purpose: a run restored from a checkpoint (Ray Train FailureConfig, --resume)
gets the right rate from its step alone, with no scheduler state to save or restore.
``constant`` is the paper's recipe; ``cosine`` decays to ``final_ratio`` x the base rate at
``max_steps``, which steadies the end of a run trained at a high rate.
"""

from __future__ import annotations

import math

from lipsync.errors import ConfigError

LR_SCHEDULES = ("constant", "cosine")


def check_schedule(schedule: str, warmup_steps: int) -> None:
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if warmup_steps < 0:
        raise ConfigError(f"--warmup-steps must be >= 0, got {warmup_steps}")


def lr_at(step: int, base_lr: float, max_steps: int, schedule: str = "constant",
          warmup_steps: int = 0, final_ratio: float = 0.02) -> float:
    """Learning rate for optimizer step ``step`` (1-based): linear warm-up over
    ``warmup_steps``, then constant or cosine decay to ``final_ratio * base_lr``."""
    check_schedule(schedule, warmup_steps)
    if warmup_steps and step <= warmup_steps:
        return base_lr * step / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return base_lr * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

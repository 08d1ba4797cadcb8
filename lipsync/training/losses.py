"""The binary cross-entropy every stage uses on probabilities (the expert's P(in sync)).

One definition so the expert's training loss, its evaluation and the generator's sync loss
cannot drift apart: computed in float32 outside autocast (BCE is unsafe in bf16) on
probabilities clamped away from 0 and 1 (log 0 would be infinite), as the original's
``nn.BCELoss`` on a cosine score that can reach 0 or 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def bce(probabilities: torch.Tensor, target: torch.Tensor | float, reduction: str = "mean") -> torch.Tensor:
    """BCE of probabilities against labels: a tensor of 0/1, or one constant label for all."""
    with torch.autocast(probabilities.device.type, enabled=False):
        p = probabilities.float().clamp(EPS, 1 - EPS)
        y = target.float() if torch.is_tensor(target) else torch.full_like(p, float(target))
        return F.binary_cross_entropy(p, y, reduction=reduction)

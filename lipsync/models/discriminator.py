"""The visual-quality discriminator (`Wav2Lip_disc_qual`, reference §4).

It scores the lower half of each frame as real (1) or generated (0). No BatchNorm:
Conv2d + LeakyReLU(0.01) blocks. At width 1 and face size 96 every layer, key and shape
equals the official `disc_*` checkpoints (28 tensors, 14,113,793 parameters).

Input: frames BGR in [0, 1], 5-D (B, 3, T, S, S) — folded into the batch time-major as the
original does — or already-folded 4-D (N, 3, S, S). Output: (N, 1) probabilities, N = B·T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipsync.models.blocks import (
    MIN_CHANNELS,
    NoNormConvBlock,
    check_architecture,
    fold_time,
    lower_half,
    scaled,
    stages_to_bottleneck,
)
from lipsync.models.kind import ModelKind


class VisualQualityDiscriminator(nn.Module):
    def __init__(self, width: float = 1.0, face_size: int = 96, min_channels: int = MIN_CHANNELS):
        super().__init__()
        self.width, self.face_size, self.min_channels = check_architecture(width, face_size, min_channels)
        c = lambda n: scaled(n, self.width, self.min_channels)  # noqa: E731
        block = lambda cin, cout, k, s, p: NoNormConvBlock(c(cin), c(cout), k, s, p)  # noqa: E731

        # After stage 1 the lower half is (S/2)x(S/2) (48x48 at 96 px); the official net
        # halves that 4 times to 3x3; larger faces get extra 64-channel halvings first.
        half = face_size // 2
        extra, (k, _) = stages_to_bottleneck(half, half, official_stages=4)

        stages = [
            [NoNormConvBlock(3, c(32), 7, 1, 3)],  # 48x96
            [block(32, 64, 5, (1, 2), 2), block(64, 64, 5, 1, 2)],  # 48x48
        ]
        for _ in range(extra):
            stages.append([block(64, 64, 5, 2, 2), block(64, 64, 5, 1, 2)])
        stages += [
            [block(64, 128, 5, 2, 2), block(128, 128, 5, 1, 2)],  # 24
            [block(128, 256, 5, 2, 2), block(256, 256, 5, 1, 2)],  # 12
            [block(256, 512, 3, 2, 1), block(512, 512, 3, 1, 1)],  # 6
            [block(512, 512, 3, 2, 1), block(512, 512, 3, 1, 1)],  # 3
            [block(512, 512, k, 1, 0), block(512, 512, 1, 1, 0)],  # 1
        ]
        self.face_encoder_blocks = nn.ModuleList(nn.Sequential(*stage) for stage in stages)
        self.binary_pred = nn.Sequential(nn.Conv2d(c(512), 1, 1, 1, 0), nn.Sigmoid())

    def forward(self, frames: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """(B,3,T,S,S) or (N,3,S,S) frames → (N, 1) probability that each frame is real
        (``logits=True``: the score before the sigmoid, what the training losses take)."""
        if frames.dim() == 5:
            frames = fold_time(frames, time_dim=2)
        x = lower_half(frames)
        for stage in self.face_encoder_blocks:
            x = stage(x)
        score = self.binary_pred[0](x).view(x.shape[0], -1)  # binary_pred[1] is the sigmoid
        return score if logits else self.binary_pred[1](score)

    def perceptual_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial loss BCE(D(fake), 1), on whatever device `fake` is."""
        return bce_with_logits(self(fake, logits=True), 1.0)


DISCRIMINATOR_KIND = ModelKind(
    name="disc",
    display_name="visual-quality discriminator",
    model_class=VisualQualityDiscriminator,
    signature_keys=("binary_pred.0.weight",),
    signature_prefixes=(),
    bottleneck_key="binary_pred.0.weight",  # in channels
    bottleneck_dim=1,
)


def bce_with_logits(score: torch.Tensor, target: torch.Tensor | float) -> torch.Tensor:
    """BCE of sigmoid(score) against labels (a 0/1 tensor or one constant), in float32 outside autocast.

    The original takes BCE of the sigmoid's output; equal in value, but once the sigmoid
    saturates (p rounds to 0 or 1) that gradient is exactly 0 and the discriminator can never
    recover (seen: fakes scored p = 1 for good at step 200 of a 1e-3 run). From the score the
    gradient is p - target, which never vanishes on a wrong answer."""
    with torch.autocast(score.device.type, enabled=False):
        score = score.float()
        labels = target.float() if torch.is_tensor(target) else torch.full_like(score, float(target))
        return F.binary_cross_entropy_with_logits(score, labels)

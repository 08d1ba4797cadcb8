"""The lip-sync expert (`SyncNet_color` in the original, reference §2).

It embeds a 5-frame window of mouth crops and the matching 16-step mel window into the
same 512-d space; the cosine similarity of the two is the probability that they are in
sync. At width 1 and face size 96 every layer, key and shape equals the official
`lipsync_expert.pth` (217 tensors, 16,435,072 parameters).

Inputs, as the original expects them:
- face: (B, 15, S/2, S) — the lower half of 5 BGR frames scaled to [0, 1], stacked
  frame-major along channels (f0 B,G,R, f1 B,G,R, …); `syncnet_face_input` builds it.
- audio: (B, 1, 80, 16) — one mel window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipsync.models.blocks import (
    MIN_CHANNELS,
    ConvBlock,
    check_architecture,
    conv_out_size,
    lower_half,
    make_audio_encoder,
    stages_to_bottleneck,
    width_layers,
)
from lipsync.models.kind import ModelKind

SYNC_FRAMES = 5  # syncnet_T: frames per window


class SyncNet(nn.Module):
    def __init__(self, width: float = 1.0, face_size: int = 96, min_channels: int = MIN_CHANNELS):
        super().__init__()
        self.width, self.face_size, self.min_channels = check_architecture(width, face_size, min_channels)
        c, res, down = width_layers(self.width, self.min_channels)

        # Map size after the 7x7 block and the (1,2)-strided 5x5 block (96 px: 46x47).
        h = conv_out_size(face_size // 2, 5, 1, 1)
        w = conv_out_size(face_size, 5, 2, 1)
        # The official net halves that 4 times to 3x3; bigger faces get extra 64-channel
        # halvings right after the first stage, where they are cheapest in parameters.
        extra, kernel = stages_to_bottleneck(h, w, official_stages=4)

        face_layers = [
            ConvBlock(3 * SYNC_FRAMES, c(32), 7, 1, 3),  # 48x96
            ConvBlock(c(32), c(64), 5, (1, 2), 1),  # 46x47
            res(64),
            res(64),
        ]
        for _ in range(extra):
            face_layers += [down(64, 64), res(64)]
        face_layers += [
            down(64, 128),  # 23x24
            res(128),
            res(128),
            res(128),
            down(128, 256),  # 12x12
            res(256),
            res(256),
            down(256, 512),  # 6x6
            res(512),
            res(512),
            down(512, 512),  # 3x3
            ConvBlock(c(512), c(512), kernel, 1, 0),  # 1x1
            ConvBlock(c(512), c(512), 1, 1, 0),
        ]
        self.face_encoder = nn.Sequential(*face_layers)
        self.audio_encoder = make_audio_encoder(self.width, residuals_at_256=2, min_channels=self.min_channels)

    def forward(self, audio: torch.Tensor, face: torch.Tensor):
        """audio (B,1,80,16), face (B,15,S/2,S) → (audio_emb, face_emb), each (B, 512·width), L2-normalised."""
        face_emb = self.face_encoder(face).flatten(1)
        audio_emb = self.audio_encoder(audio).flatten(1)
        return F.normalize(audio_emb, p=2, dim=1), F.normalize(face_emb, p=2, dim=1)


SYNCNET_KIND = ModelKind(
    name="expert",
    display_name="lip-sync expert (SyncNet)",
    model_class=SyncNet,
    signature_keys=(),
    signature_prefixes=("face_encoder.", "audio_encoder."),
    bottleneck_key="audio_encoder.13.conv_block.0.weight",  # out channels
    bottleneck_dim=0,
)


def sync_probability(audio_emb: torch.Tensor, face_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the two embeddings, (B,), in [0, 1].

    The embeddings come out of a ReLU, so they are non-negative and the cosine already
    lies in [0, 1]; the clamp only removes float round-off above 1 before a BCE.
    """
    return F.cosine_similarity(audio_emb, face_emb, dim=1).clamp(0.0, 1.0)


def syncnet_face_input(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) frames in [0,1] → (B, 3·T, H/2, W): lower halves stacked frame-major."""
    if frames.dim() != 5:
        raise ValueError(f"expected (B, 3, T, H, W) frames, got shape {tuple(frames.shape)}")
    halves = lower_half(frames)  # (B, 3, T, H/2, W)
    return halves.transpose(1, 2).reshape(frames.shape[0], -1, *halves.shape[-2:])

"""The Wav2Lip generator (reference §3): a U-Net over the face, conditioned on one mel window.

Read top to bottom: the face encoder (every stage's output is kept as a skip), the audio
encoder, the decoder (starts from the audio embedding; after each stage it concatenates
the deepest skip not yet used), and the output block. At width 1 and face size 96 every
layer, key and shape equals the official `wav2lip.pth` / `wav2lip_gan.pth`
(352 tensors, 36,298,035 parameters).

Inputs, as the original expects them (pixels BGR, divided by 255):
- face: (B, 6, S, S) — channels 0-2 the target frame with its lower half zeroed
  (`mask_lower_half`), channels 3-5 the unmasked reference frame; `generator_input` builds it.
- audio: (B, 1, 80, 16) — the mel window for that frame.
Training passes 5-frame windows, face (B, 6, T, S, S) and audio (B, T, 1, 80, 16); they are
folded into the batch time-major and the output is re-stacked to (B, 3, T, S, S).
The output is BGR in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from lipsync.models.blocks import (
    MIN_CHANNELS,
    ConvBlock,
    ConvTransposeBlock,
    check_architecture,
    fold_time,
    make_audio_encoder,
    stages_to_bottleneck,
    width_layers,
    unfold_time,
)
from lipsync.models.kind import ModelKind


class Wav2Lip(nn.Module):
    def __init__(self, width: float = 1.0, face_size: int = 96, min_channels: int = MIN_CHANNELS):
        super().__init__()
        self.width, self.face_size, self.min_channels = check_architecture(width, face_size, min_channels)
        c, res, down = width_layers(self.width, self.min_channels)

        # 96 px halves 5 times to 3x3; larger faces get extra 16-channel halvings right
        # after the input block (cheap in parameters), and a matching decoder stage each.
        extra, (k, _) = stages_to_bottleneck(face_size, face_size, official_stages=5)
        if k * 2 ** (5 + extra) != face_size:
            raise AssertionError("check_face_size admits only sizes that halve exactly")

        # ---- face encoder: one nn.Sequential per stage, each stage's output is a skip
        encoder = [[ConvBlock(6, c(16), 7, 1, 3)]]  # 96
        for _ in range(extra):
            encoder.append([down(16, 16), res(16)])
        encoder += [
            [down(16, 32), res(32), res(32)],  # 48
            [down(32, 64), res(64), res(64), res(64)],  # 24
            [down(64, 128), res(128), res(128)],  # 12
            [down(128, 256), res(256), res(256)],  # 6
            [down(256, 512), res(512)],  # 3
            [ConvBlock(c(512), c(512), k, 1, 0), ConvBlock(c(512), c(512), 1, 1, 0)],  # 1
        ]
        self.face_encoder_blocks = nn.ModuleList(nn.Sequential(*stage) for stage in encoder)
        skips = [stage[-1].conv_block[0].out_channels for stage in encoder]

        # ---- audio encoder: (B,1,80,16) → (B,512,1,1)
        self.audio_encoder = make_audio_encoder(self.width, residuals_at_256=1, min_channels=self.min_channels)

        # ---- decoder: each stage's input is the previous output ++ the deepest unused skip
        decoder = [[ConvBlock(c(512), c(512), 1, 1, 0)]]  # 1x1, from the audio embedding
        cin = c(512) + skips.pop()
        decoder.append([ConvTransposeBlock(cin, c(512), k, 1, 0), res(512)])  # 3x3
        cin = c(512) + skips.pop()
        # (out channels, residual blocks) per doubling: 6, 12, 24, 48, 96 px, then extras
        upsampling = [(512, 2), (384, 2), (256, 2), (128, 2), (64, 2)] + [(64, 1)] * extra
        for cout, n_res in upsampling:
            up = ConvTransposeBlock(cin, c(cout), 3, 2, 1, output_padding=1)
            decoder.append([up] + [res(cout) for _ in range(n_res)])
            cin = c(cout) + skips.pop()
        self.face_decoder_blocks = nn.ModuleList(nn.Sequential(*stage) for stage in decoder)

        # ---- output: BGR in [0, 1]
        self.output_block = nn.Sequential(
            ConvBlock(cin, c(32), 3, 1, 1), nn.Conv2d(c(32), 3, 1, 1, 0), nn.Sigmoid()
        )

    def forward(self, audio: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """audio (B,1,80,16) + face (B,6,S,S) → (B,3,S,S); or 5-D (B,T,1,80,16) + (B,6,T,S,S) → (B,3,T,S,S)."""
        windowed = face.dim() == 5
        batch = face.shape[0]
        if windowed:
            audio = fold_time(audio, time_dim=1)
            face = fold_time(face, time_dim=2)

        out = self.decode(audio, self.encode_face(face))
        return unfold_time(out, batch, time_dim=2) if windowed else out

    def encode_face(self, face: torch.Tensor) -> list[torch.Tensor]:
        """The face encoder alone: (B,6,S,S) → every stage's output (the decoder's skips),
        shallowest first. It never sees the audio, so a still face needs it only once."""
        skips = []
        x = face
        for stage in self.face_encoder_blocks:
            x = stage(x)
            skips.append(x)
        return skips

    def decode(self, audio: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Audio encoder + decoder + output block: (B,1,80,16) and ``encode_face``'s skips → (B,3,S,S).
        Skips with batch 1 are broadcast to the audio's batch (one still face, many windows)."""
        skips = list(skips)
        x = self.audio_encoder(audio)
        for stage in self.face_decoder_blocks:
            y = stage(x)
            skip = skips.pop()
            x = torch.cat((y, skip.expand(y.shape[0], *skip.shape[1:])), dim=1)
        return self.output_block(x)


WAV2LIP_KIND = ModelKind(
    name="wav2lip",
    display_name="Wav2Lip generator",
    model_class=Wav2Lip,
    signature_keys=("output_block.1.weight",),
    signature_prefixes=("face_decoder_blocks.",),
    bottleneck_key="audio_encoder.12.conv_block.0.weight",  # out channels
    bottleneck_dim=0,
)


def mask_lower_half(faces: torch.Tensor) -> torch.Tensor:
    """A copy of (…, H, W) images with rows H//2 … H-1 set to 0 (what the generator must fill)."""
    masked = faces.clone()
    masked[..., faces.shape[-2] // 2 :, :] = 0
    return masked


def generator_input(target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Masked target ++ reference along channels: (B,3,[T,]S,S) twice → (B,6,[T,]S,S)."""
    return torch.cat((mask_lower_half(target), reference), dim=1)

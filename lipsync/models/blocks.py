"""Building blocks shared by the three networks, plus the audio encoder they have in common.

Attribute names mirror the original Wav2Lip code: every block holds its layers in
`conv_block` (the convolution at index 0, the BatchNorm at index 1), so an official
state_dict key such as `face_encoder.0.conv_block.1.running_mean` lands on the same
tensor here. Activations have no parameters and therefore no keys.

Two knobs that the original does not have:
- `width` scales every inner channel count (`scaled`); width 1 is the official model.
  Below width 1 no layer gets fewer than `min_channels` (default MIN_CHANNELS).
- `face_size` adds stride-2 stages for high-resolution faces (`stages_to_bottleneck`)
  so that every face encoder still ends in a 1x1 bottleneck.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipsync.errors import ConfigError

# Default channel floor for narrow models: below this a BatchNorm over a handful of channels
# stops being a useful layer, and width 0.125 (the demo/test model) stays well-formed.
# A model can ask for a higher floor (`min_channels`): the generator's full-resolution
# layers carry the picture itself, and 4 channels there blur it (GeneratorRecipe).
MIN_CHANNELS = 4

# Face sizes the networks accept: 3·2^n or 4·2^n, so that the generator's encoder halves
# exactly down to a 3x3 or 4x4 map and its decoder doubles back up to the input size.
MIN_FACE_SIZE = 96


def scaled(channels: int, width: float, min_channels: int = MIN_CHANNELS) -> int:
    """Channel count of a layer whose official (width 1) count is `channels`."""
    if width == 1.0:
        return channels
    return max(min_channels, int(round(channels * width)))


def width_layers(width: float, min_channels: int = MIN_CHANNELS):
    """Layer makers at a width multiplier: channels c(n), a residual 3x3 block, a stride-2 3x3 block.

    The expert and the generator build their encoders from these same three shapes.
    """
    def c(n: int) -> int:
        return scaled(n, width, min_channels)

    def res(n: int) -> "ConvBlock":
        return ConvBlock(c(n), c(n), 3, 1, 1, residual=True)

    def down(cin: int, cout: int) -> "ConvBlock":
        return ConvBlock(c(cin), c(cout), 3, 2, 1)

    return c, res, down


def check_width(width: float) -> float:
    if not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"model width must be a positive number, got {width!r}")
    return float(width)


def check_min_channels(min_channels: int) -> int:
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ConfigError(f"min_channels (--min-channels) must be a whole number >= 1, got {min_channels!r}")
    return min_channels


def check_face_size(face_size: int) -> int:
    """Validate `face_size` (raises ConfigError naming the allowed values)."""
    ok = isinstance(face_size, int) and face_size >= MIN_FACE_SIZE
    if ok:
        odd = face_size
        while odd % 2 == 0:
            odd //= 2
        ok = odd in (1, 3)  # 3·2^n, or a power of two (= 4·2^n here)
    if not ok:
        raise ConfigError(
            f"face_size must be 3·2^n or 4·2^n and at least {MIN_FACE_SIZE} "
            f"(e.g. 96, 128, 192, 256, 384), got {face_size!r}"
        )
    return face_size


def check_architecture(width: float, face_size: int, min_channels: int) -> tuple[float, int, int]:
    """The three size knobs every network takes, validated in this order → (width, face_size,
    min_channels); each network stores them as attributes of the same names."""
    return check_width(width), check_face_size(face_size), check_min_channels(min_channels)


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def stages_to_bottleneck(height: int, width: int, official_stages: int) -> tuple[int, tuple[int, int]]:
    """How many extra stride-2 (k3 p1) stages bring an (height, width) map to at most 4x4.

    The official 96-px networks halve their map `official_stages` times and end with a
    valid convolution whose kernel equals the map left (3x3). Larger faces get extra
    halvings first; the final kernel then covers whatever is left (3 or 4), so the
    bottleneck is always 1x1. Returns (extra_stages, (final_height, final_width)).
    """
    extra = 0
    while True:
        h, w = height, width
        for _ in range(official_stages + extra):
            h, w = conv_out_size(h, 3, 2, 1), conv_out_size(w, 3, 2, 1)
        if max(h, w) <= 4:
            return extra, (h, w)
        extra += 1


class ConvBlock(nn.Module):
    """Conv2d (with bias) → BatchNorm2d (→ + input when residual) → ReLU."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0, residual=False):
        super().__init__()
        if residual and (cin != cout or stride not in (1, (1, 1))):
            raise ValueError("a residual block keeps its shape: cin == cout and stride 1")
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout)
        )
        self.residual = residual

    def forward(self, x):
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return F.relu(out)


class ConvTransposeBlock(nn.Module):
    """ConvTranspose2d (with bias) → BatchNorm2d → ReLU (the generator's upsampling step)."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0, output_padding=0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return F.relu(self.conv_block(x))


class NoNormConvBlock(nn.Module):
    """Conv2d (with bias) → LeakyReLU(0.01): the discriminator's block, no BatchNorm."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding))

    def forward(self, x):
        return F.leaky_relu(self.conv_block(x), 0.01)


def make_audio_encoder(width: float, residuals_at_256: int, min_channels: int = MIN_CHANNELS) -> nn.Sequential:
    """The mel encoder: (B, 1, 80, 16) → (B, 512·width, 1, 1).

    SyncNet has two residual blocks at 256 channels, the generator one; everything else
    is identical (reference §2/§3 audio_encoder tables).
    """
    c = lambda n: scaled(n, width, min_channels)  # noqa: E731
    res = lambda n: ConvBlock(c(n), c(n), 3, 1, 1, residual=True)  # noqa: E731
    layers = [
        ConvBlock(1, c(32), 3, 1, 1),  # 80x16
        res(32),
        res(32),
        ConvBlock(c(32), c(64), 3, (3, 1), 1),  # 27x16
        res(64),
        res(64),
        ConvBlock(c(64), c(128), 3, 3, 1),  # 9x6
        res(128),
        res(128),
        ConvBlock(c(128), c(256), 3, (3, 2), 1),  # 3x3
        *[res(256) for _ in range(residuals_at_256)],
        ConvBlock(c(256), c(512), 3, 1, 0),  # 1x1
        ConvBlock(c(512), c(512), 1, 1, 0),
    ]
    return nn.Sequential(*layers)


def fold_time(x: torch.Tensor, time_dim: int) -> torch.Tensor:
    """Fold a time axis into the batch, time-major (all items of t=0, then t=1, …).

    Same order as the original's `torch.cat([x[:, :, t] for t in range(T)], dim=0)`.
    """
    x = x.movedim(time_dim, 0)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unfold_time(x: torch.Tensor, batch: int, time_dim: int) -> torch.Tensor:
    """Inverse of `fold_time`: (T·B, …) → the time axis back at `time_dim`."""
    x = x.reshape(x.shape[0] // batch, batch, *x.shape[1:])
    return x.movedim(0, time_dim)


def lower_half(x: torch.Tensor) -> torch.Tensor:
    """Rows H//2 … H-1 of images laid out (…, H, W): the mouth region both critics see."""
    return x[..., x.shape[-2] // 2 :, :]

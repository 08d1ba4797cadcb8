"""The public evaluation SyncNet (joonson/syncnet_python ``SyncNetModel.S``, ``syncnet_v2.model``),
layer for layer, with its MFCC front-end — the judge behind the papers' LSE-D / LSE-C.

Facts from ``shared/reference/syncnet_v2.md`` §1–2:
- Layer indices inside each ``nn.Sequential`` equal the original's, so the state_dict keys
  (``netcnnaud.0.weight`` … ``netcnnlip.19.running_var``) are the public file's: 104 keys, of
  which the 14 ``num_batches_tracked`` buffers may be absent (the file was saved by an older
  PyTorch). Loading is strict otherwise: every key used, no extra key, every shape equal.
- No L2 normalisation of the embeddings (distances are plain Euclidean, ``pairwise_distance``).
- Lip input: (B, 3, 5, 224, 224) **BGR**, float 0–255, no mean subtraction.
- Audio input: (B, 1, 13, 20) MFCC windows of int16-valued PCM (not rescaled to ±1):
  ``python_speech_features.mfcc(audio, 16000)`` with its defaults, 4 MFCC steps per video frame,
  the window of video window v = columns 4v .. 4v+19.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from lipsync.checkpoints.state_dicts import load_weights_file
from lipsync.errors import ConfigError

EMBED_DIM = 1024
FRAMES = 5  # video frames per window
MFCC_PER_FRAME = 4  # 640 samples per frame / 160-sample MFCC step
MFCC_WINDOW = 20  # MFCC columns per window (5 frames)
INPUT_SIZE = 224
SAMPLE_RATE = 16000


def _fc() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, EMBED_DIM))


class SyncNetV2(nn.Module):
    """``SyncNetModel.S(num_layers_in_fc_layers=1024)``; registration order as the original's."""

    def __init__(self):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192), nn.ReLU(inplace=True), nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 512, (5, 4), padding=0), nn.BatchNorm2d(512), nn.ReLU(),
        )
        self.netfcaud = _fc()
        self.netfclip = _fc()
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0), nn.BatchNorm3d(96), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6), padding=0), nn.BatchNorm3d(512), nn.ReLU(inplace=True),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) → (B, 1024)."""
        return self.netfcaud(self.netcnnaud(mfcc).view(mfcc.shape[0], -1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) BGR 0–255 → (B, 1024)."""
        return self.netfclip(self.netcnnlip(frames).view(frames.shape[0], -1))


def load_syncnet_v2(path: str | os.PathLike, map_location="cpu") -> SyncNetV2:
    """``syncnet_v2.model`` as distributed (a plain name→tensor mapping, no prefix), loaded with
    weights_only=True and checked strictly; anything else → CheckpointError naming the file."""
    return load_weights_file(path, SyncNetV2, label="SyncNet v2", what="SyncNet v2 (syncnet_v2.model)",
                             unreadable="not a SyncNet v2 weight file (cannot read it as PyTorch weights: {first_line})",
                             map_location=map_location)


def mfcc_features(audio: np.ndarray) -> np.ndarray:
    """The reference's front-end: (13, T) float32 MFCCs of 16 kHz mono audio.

    ``audio`` float in [-1, 1] (the library's loader) is brought to the int16 scale the
    reference reads from its wav (``round(x · 32767)``, clipped), then
    ``python_speech_features.mfcc(audio, 16000)`` with every default (§2)."""
    python_speech_features = _speech_features()
    return np.asarray(python_speech_features.mfcc(_pcm(audio), SAMPLE_RATE), np.float32).T.copy()


def _speech_features():
    try:
        import python_speech_features
    except ImportError as e:
        raise ConfigError("the SyncNet v2 judge needs python-speech-features (pip install python-speech-features)") from e
    return python_speech_features


def _pcm(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(audio, np.float64) * 32767.0), -32768, 32767)


MFCC_FRAME, MFCC_STEP = 400, 160  # python_speech_features' defaults at 16 kHz (25 ms, 10 ms)


class MfccStream:
    """``mfcc_features`` of audio given in chunks, the same numbers, in bounded memory.

    ``push(chunk)`` returns the MFCC columns (13, k) that are complete, ``finish()`` the rest
    (python_speech_features zero-pads the last frame). Pre-emphasis is done here across chunk
    boundaries, so each segment goes to python_speech_features with ``preemph=0``."""

    def __init__(self):
        self.features = _speech_features()
        self.buffer = np.zeros(0, np.float64)  # pre-emphasised samples from MFCC_STEP * next_frame
        self.next_frame = 0
        self.last_sample: float | None = None

    def push(self, chunk: np.ndarray) -> np.ndarray:
        pcm = _pcm(chunk)
        if pcm.size:
            emphasised = np.empty_like(pcm)
            emphasised[0] = pcm[0] if self.last_sample is None else pcm[0] - 0.97 * self.last_sample
            emphasised[1:] = pcm[1:] - 0.97 * pcm[:-1]
            self.last_sample = pcm[-1]
            self.buffer = np.concatenate([self.buffer, emphasised])
        ready = (self.buffer.size - MFCC_FRAME) // MFCC_STEP  # keep one frame back for finish
        return self._columns(ready) if ready > 0 else np.zeros((13, 0), np.float32)

    def finish(self) -> np.ndarray:
        remaining = self.buffer.size
        if self.next_frame > 0 and remaining <= MFCC_FRAME - MFCC_STEP:
            return np.zeros((13, 0), np.float32)  # the frames so far reach the end
        return self._mfcc(self.buffer)

    def _columns(self, count: int) -> np.ndarray:
        out = self._mfcc(self.buffer[: (count - 1) * MFCC_STEP + MFCC_FRAME])
        self.buffer = self.buffer[count * MFCC_STEP :]
        self.next_frame += count
        return out

    def _mfcc(self, emphasised: np.ndarray) -> np.ndarray:
        return np.asarray(self.features.mfcc(emphasised, SAMPLE_RATE, preemph=0), np.float32).T.copy()

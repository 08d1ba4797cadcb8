"""Training windows cut from one clip sample (face crops + the clip's mel spectrogram).

Two consumers:

* the lip-sync **expert** (SyncNet): a window is T=5 consecutive face crops (lower half
  only) and one 16-step mel window (200 ms = 5 video frames at 25 fps). Positives use the
  audio aligned with the frames (window starting at the first frame, as the original's
  ``crop_audio_window``); negatives keep the same frames and take the audio from another
  position of the *same* clip, ``min_offset`` or more frames away, so identity, lighting and
  voice cannot give the answer away — only the lip motion against the audio can.
* the **generator** (Wav2Lip): the same T ground-truth frames, a reference window from
  elsewhere in the clip (identity), one mel window per output frame and the sync mel
  (lipsync/data/generator_windows.py, over the frame access and geometry here).

Why ``min_offset=2`` by default (the original's negatives can be 1 frame off):
a 1-frame shift (40 ms) is below the ~45 ms at which viewers start to notice audio
leading the picture, and it is within the alignment uncertainty of the data itself
(the original trains its generator and runs inference one frame apart, its released
expert may have been trained with a +1 window, and LRS2 clips are not all perfectly in
sync). Labelling such pairs "off-sync" feeds the expert contradictory labels — one reason
users see the loss stuck at ln 2 — while 2 frames (80 ms) is clearly visible and still
teaches the fine-grained sensitivity the generator's sync loss needs. The flag allows 1
for paper parity.

Why negatives must *sound* different (``min_mel_distance=0.5``; the original has no such
rule): a negative cut from another pause of the same clip carries the same silence as the
true window, so face and audio are exactly as compatible as the positive's — the label
"off sync" is noise the expert cannot learn (measured on a 0.89 expert: 5% of such
negatives scored right, and silent positives dropped to 87%, the two contradicting each
other). A negative is redrawn until its mel window differs from the aligned one by at least
``min_mel_distance`` (mean absolute difference on the [-4, 4] mel scale; 0.5 ≈ 6 dB per
bin); 0 restores the original sampling.

Frames in the face tensor are frame-major BGR scaled to [0, 1] (f0 B,G,R, f1 B,G,R, …),
lower half of a ``face_size`` square resized with cv2 bilinear, exactly as the original's
expert expects. Windows keep faces as uint8 until collation (4x smaller shuffle buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from lipsync.audio import MEL_STEP, mel_start_index
from lipsync.errors import ConfigError
from lipsync.models.syncnet import SYNC_FRAMES

DEFAULT_MIN_OFFSET = 2
DEFAULT_MIN_MEL_DISTANCE = 0.5
NEGATIVE_TRIES = 64  # redraws before a clip counts as having no usable negative (all one sound)


@dataclass(frozen=True)
class ExpertSampling:
    """How expert windows are cut. ``face_size=None`` keeps the shard's crop size."""

    T: int = SYNC_FRAMES
    face_size: int | None = None
    min_offset: int = DEFAULT_MIN_OFFSET
    min_mel_distance: float = DEFAULT_MIN_MEL_DISTANCE
    augment: bool = False

    def __post_init__(self):
        if self.T < 1:
            raise ConfigError(f"expert window length T must be >= 1, got {self.T}")
        if self.min_offset < 1:
            raise ConfigError(f"--min-offset must be >= 1 frame, got {self.min_offset}")
        if not self.min_mel_distance >= 0:
            raise ConfigError(f"--min-mel-distance must be >= 0, got {self.min_mel_distance}")
        if self.face_size is not None and (self.face_size < 4 or self.face_size % 2):
            raise ConfigError(f"--face-size must be an even number >= 4, got {self.face_size}")

    # The window-sampler protocol used by lipsync.data.shard_stream (one stream for every kind).
    def sample(self, clip, n: int, rng: np.random.Generator) -> list["ExpertWindow"]:
        return sample_expert_windows(clip, n, rng, self)

    def collate(self, windows: list["ExpertWindow"]) -> dict[str, torch.Tensor]:
        return collate_expert(windows)

    def why_unusable(self) -> str:
        return (f"too short for T={self.T} and min offset {self.min_offset}, or one sound throughout, "
                f"e.g. silent, so no negative differs by --min-mel-distance {self.min_mel_distance}")


@dataclass
class ExpertWindow:
    """One expert training pair. ``offset`` = audio start frame - video start frame (0 = in sync)."""

    face: np.ndarray  # uint8 (3T, S/2, S): frame-major BGR lower halves
    mel: np.ndarray  # float32 (1, 80, 16)
    label: float  # 1.0 in sync, 0.0 off sync
    offset: int
    start: int
    key: str


# ----------------------------------------------------------------------------- frame access


def clip_fps(clip) -> float:
    return float((clip.meta or {}).get("fps", 25.0))


def clip_frame_count(clip) -> int:
    # ClipSample.n_frames never decodes; reading `.frames` of a shard sample would decode them all.
    n = getattr(clip, "n_frames", None)
    return int(n) if n is not None else len(clip.frames)


class FrameCache:
    """Decodes each needed frame of a clip once (several windows per clip share frames)."""

    def __init__(self, clip, face_size: int | None):
        self.clip = clip
        self.face_size = face_size
        self._cache: dict[int, np.ndarray] = {}
        self._lazy = callable(getattr(clip, "frame", None))

    def get(self, idx: int) -> np.ndarray:
        frame = self._cache.get(idx)
        if frame is None:
            frame = self.clip.frame(idx) if self._lazy else self.clip.frames[idx]
            s = self.face_size
            if s is not None and (frame.shape[0] != s or frame.shape[1] != s):
                frame = cv2.resize(frame, (s, s), interpolation=cv2.INTER_LINEAR)
            self._cache[idx] = frame
        return frame

    def window(self, start: int, T: int) -> np.ndarray:
        return np.stack([self.get(start + i) for i in range(T)])


# ----------------------------------------------------------------------------- geometry


def valid_expert_starts(n_frames: int, mel_frames: int, fps: float = 25.0, T: int = SYNC_FRAMES) -> int:
    """Number of frame starts k (0..n-1) whose T frames and 16-step mel window both fit."""
    if n_frames < T:
        return 0
    ks = np.arange(n_frames - T + 1)
    fits = mel_start_index(ks, fps) + MEL_STEP <= mel_frames
    return int(np.count_nonzero(fits))


def expert_face_array(frames: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) uint8 BGR -> (3T, S/2, S) uint8, lower halves stacked frame-major."""
    T, S = frames.shape[0], frames.shape[1]
    lower = frames[:, S // 2 :, :, :]  # (T, S/2, S, 3)
    return np.ascontiguousarray(lower.transpose(0, 3, 1, 2)).reshape(T * 3, S - S // 2, frames.shape[2])


def expert_face_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, S, S, 3) uint8 BGR -> float32 tensor (3T, S/2, S) in [0, 1], the expert's face input."""
    return torch.from_numpy(expert_face_array(frames)).float().div_(255.0)


def mel_window_at(mel: np.ndarray, frame_start: int, fps: float) -> np.ndarray:
    s = int(mel_start_index(np.array([frame_start]), fps)[0])
    return mel[:, s : s + MEL_STEP]


def mel_window_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two mel windows (same shape, [-4, 4] scale)."""
    return float(np.abs(a - b).mean())


# ----------------------------------------------------------------------------- augmentation


def augment_window(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sync-preserving augmentation: ONE random colour jitter, scale/shift and horizontal
    flip drawn per window and applied identically to all T frames (audio untouched), so
    lip motion relative to the audio is unchanged. Input/output (T, S, S, 3) uint8 BGR."""
    S = frames.shape[1]
    out = frames
    if rng.random() < 0.5:
        out = out[:, :, ::-1, :]
    scale = rng.uniform(0.95, 1.05)
    dx, dy = rng.uniform(-0.03, 0.03, size=2) * S
    if abs(scale - 1.0) > 1e-3 or abs(dx) > 0.25 or abs(dy) > 0.25:
        m = cv2.getRotationMatrix2D((S / 2.0, S / 2.0), 0.0, scale)
        m[:, 2] += (dx, dy)
        out = np.stack(
            [cv2.warpAffine(np.ascontiguousarray(f), m, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101) for f in out]
        )
    x = out.astype(np.float32)
    brightness = rng.uniform(0.9, 1.1)
    contrast = rng.uniform(0.9, 1.1)
    saturation = rng.uniform(0.9, 1.1)
    mean = x.mean()
    x = (x - mean) * contrast + mean
    x *= brightness
    gray = x @ np.array([0.114, 0.587, 0.299], dtype=np.float32)  # BGR luma weights
    x = gray[..., None] + (x - gray[..., None]) * saturation
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- expert windows


def _negative_pair(n_valid: int, min_offset: int, rng: np.random.Generator) -> tuple[int, int]:
    """(video start k, audio start j) with |j - k| >= min_offset, both uniform over valid pairs."""
    # k must have a partner: k - m >= 0 or k + m <= n_valid - 1.
    ks = np.concatenate([np.arange(min_offset, n_valid), np.arange(0, max(0, n_valid - min_offset))])
    ks = np.unique(ks)
    k = int(ks[rng.integers(len(ks))])
    left = np.arange(0, max(0, k - min_offset + 1))
    right = np.arange(k + min_offset, n_valid)
    js = np.concatenate([left, right])
    return k, int(js[rng.integers(len(js))])


def _audible_negative(clip, n_valid: int, sampling: ExpertSampling, fps: float, rng: np.random.Generator) -> tuple[int, int] | None:
    """A negative pair whose audio differs audibly from the true window (see module doc),
    or None when ``NEGATIVE_TRIES`` draws found none (the clip is one sound throughout)."""
    if sampling.min_mel_distance <= 0:
        return _negative_pair(n_valid, sampling.min_offset, rng)
    for _ in range(NEGATIVE_TRIES):
        k, j = _negative_pair(n_valid, sampling.min_offset, rng)
        if mel_window_distance(mel_window_at(clip.mel, k, fps), mel_window_at(clip.mel, j, fps)) >= sampling.min_mel_distance:
            return k, j
    return None


def sample_expert_windows(
    clip,
    n: int,
    rng: np.random.Generator,
    sampling: ExpertSampling = ExpertSampling(),
) -> list[ExpertWindow]:
    """``n`` expert windows from one clip, alternating positive/negative (exactly balanced
    for even ``n``; the first is positive or negative at random). Returns [] when the clip is
    too short for a negative ``min_offset`` frames away, or has no audibly different audio
    to make one (caller counts and skips it)."""
    fps = clip_fps(clip)
    T = sampling.T
    n_valid = valid_expert_starts(clip_frame_count(clip), clip.mel.shape[1], fps, T)
    if n_valid <= sampling.min_offset or n <= 0:
        return []
    cache = FrameCache(clip, sampling.face_size)
    first_positive = bool(rng.integers(2))
    windows = []
    for i in range(n):
        positive = (i % 2 == 0) == first_positive
        if positive:
            k = j = int(rng.integers(n_valid))
        else:
            pair = _audible_negative(clip, n_valid, sampling, fps, rng)
            if pair is None:
                return []
            k, j = pair
        frames = cache.window(k, T)
        if sampling.augment:
            frames = augment_window(frames, rng)
        windows.append(
            ExpertWindow(
                face=expert_face_array(frames),
                mel=mel_window_at(clip.mel, j, fps)[None].astype(np.float32, copy=False),
                label=1.0 if positive else 0.0,
                offset=j - k,
                start=k,
                key=str(clip.key),
            )
        )
    return windows


def collate_expert(windows: list[ExpertWindow]) -> dict[str, torch.Tensor]:
    """Batch of windows -> face (B,3T,S/2,S) float32 [0,1], mel (B,1,80,16), label (B,1), offset (B,)."""
    face = torch.from_numpy(np.stack([w.face for w in windows])).float().div_(255.0)
    mel = torch.from_numpy(np.stack([w.mel for w in windows]))
    label = torch.tensor([[w.label] for w in windows], dtype=torch.float32)
    offset = torch.tensor([w.offset for w in windows], dtype=torch.int64)
    return {"face": face, "mel": mel, "label": label, "offset": offset}

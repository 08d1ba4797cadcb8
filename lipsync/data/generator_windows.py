"""Generator training samples cut from one clip (the Wav2Lip generator's windows).

A sample is T ground-truth frames, a reference window of T frames from elsewhere in the same
clip (the identity input, at least ``min_ref_distance`` frames away), one mel window per
output frame (``mel_mode``: the per-frame alignment of lipsync/audio.py) and the sync-loss
mel window aligned with the T frames. Frame access, the face geometry and the expert's
pairs are in lipsync/data/windows.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lipsync.audio import MEL_STEP, WINDOW_POLICY, mel_start_index, mel_windows
from lipsync.data.windows import FrameCache, clip_fps, clip_frame_count, mel_window_at
from lipsync.errors import ConfigError
from lipsync.models.syncnet import SYNC_FRAMES
from lipsync.models.wav2lip import generator_input



@dataclass(frozen=True)
class GeneratorSampling:
    """How generator samples are cut (see :func:`sample_generator_window`)."""

    T: int = SYNC_FRAMES
    face_size: int | None = None
    mel_mode: str = WINDOW_POLICY
    min_ref_distance: int | None = None  # default T: reference and target never overlap

    def __post_init__(self):
        if self.T < 1:
            raise ConfigError(f"generator window length T must be >= 1, got {self.T}")
        if self.face_size is not None and (self.face_size < 4 or self.face_size % 2):
            raise ConfigError(f"--face-size must be an even number >= 4, got {self.face_size}")
        _per_frame_mel_starts(1, 1, self.mel_mode)  # names a bad mode here, not in a worker

    def sample(self, clip, n: int, rng: np.random.Generator) -> list["GeneratorWindow"]:
        out = []
        for _ in range(n):
            window = sample_generator_window(clip, rng, self.T, self.face_size, self.mel_mode, self.min_ref_distance)
            if window is None:
                return []
            out.append(window)
        return out

    def collate(self, windows: list["GeneratorWindow"]) -> dict[str, torch.Tensor]:
        return collate_generator(windows)

    def why_unusable(self) -> str:
        dist = self.T if self.min_ref_distance is None else self.min_ref_distance
        return f"too short for T={self.T} target frames plus a reference window {dist} frames away"


@dataclass
class GeneratorWindow:
    """One generator training sample (numpy; see :func:`generator_tensors`)."""

    gt: np.ndarray  # uint8 (T, S, S, 3) BGR ground-truth frames
    ref: np.ndarray  # uint8 (T, S, S, 3) BGR reference (identity) frames from elsewhere in the clip
    indiv_mels: np.ndarray  # float32 (T, 1, 80, 16): one window per output frame
    mel: np.ndarray  # float32 (1, 80, 16): sync-loss window aligned with the T frames
    start: int
    ref_start: int
    key: str


# ----------------------------------------------------------------------------- generator windows


def _per_frame_mel_starts(start: int, T: int, mode: str) -> np.ndarray:
    if mode == "inference":  # output frame k <- window starting at frame k (inference.py)
        return np.arange(start, start + T)
    if mode == "training":  # the original's get_segmented_mels: window starts at frame k-1
        return np.arange(start - 1, start + T - 1)
    raise ConfigError(f"per-frame mel mode must be 'inference' or 'training', got {mode!r}")


def sample_generator_window(
    clip,
    rng: np.random.Generator,
    T: int = SYNC_FRAMES,
    face_size: int | None = None,
    mel_mode: str = WINDOW_POLICY,
    min_ref_distance: int | None = None,
) -> GeneratorWindow | None:
    """One generator sample from a clip (the original's wav2lip_train Dataset, from shards).

    * ``gt``: T consecutive frames starting at a random k.
    * ``ref``: T consecutive frames starting at a random r with |r - k| >= ``min_ref_distance``
      (default T, so reference and target never overlap: the reference gives identity and
      pose, never the answer).
    * ``indiv_mels``: one 16-step window per output frame, aligned as
      ``lipsync.audio.frame_mel_windows`` does for the same ``mel_mode`` (default: the library's
      policy ``WINDOW_POLICY``, so training and inference see the same alignment):
      ``"training"`` = window starting at frame k-1, ``"inference"`` = starting at frame k.
    * ``mel``: the sync-loss window starting at k (as the expert is trained).

    Returns None when the clip is too short for a non-overlapping reference.
    """
    fps = clip_fps(clip)
    n = clip_frame_count(clip)
    mel_frames = clip.mel.shape[1]
    dist = T if min_ref_distance is None else min_ref_distance
    first = 1 if mel_mode == "training" else 0
    ks = np.arange(first, max(first, n - T + 1))
    if len(ks) == 0:
        return None
    last_mel_frame = ks + T - 1 - (1 if mel_mode == "training" else 0)
    fits = (mel_start_index(last_mel_frame, fps) + MEL_STEP <= mel_frames) & (
        mel_start_index(ks, fps) + MEL_STEP <= mel_frames
    )
    ks = ks[fits]
    refs_all = np.arange(0, max(0, n - T + 1))
    candidates = [(int(k), refs_all[np.abs(refs_all - k) >= dist]) for k in ks]
    candidates = [(k, r) for k, r in candidates if len(r)]
    if not candidates:
        return None
    k, refs = candidates[int(rng.integers(len(candidates)))]
    r = int(refs[rng.integers(len(refs))])
    cache = FrameCache(clip, face_size)
    per_frame = mel_windows(clip.mel, _per_frame_mel_starts(k, T, mel_mode), fps=fps, step=MEL_STEP)
    return GeneratorWindow(
        gt=cache.window(k, T),
        ref=cache.window(r, T),
        indiv_mels=np.asarray(per_frame, dtype=np.float32)[:, None],
        mel=mel_window_at(clip.mel, k, fps)[None].astype(np.float32, copy=False),
        start=k,
        ref_start=r,
        key=str(clip.key),
    )


def generator_tensors(window: GeneratorWindow) -> dict[str, torch.Tensor]:
    """The original's generator tensors: x (6,T,S,S) = [GT with lower half zeroed ; reference],
    gt (3,T,S,S), indiv_mels (T,1,80,16), mel (1,80,16); BGR in [0, 1]."""
    gt = torch.from_numpy(np.ascontiguousarray(window.gt.transpose(3, 0, 1, 2))).float().div_(255.0)
    ref = torch.from_numpy(np.ascontiguousarray(window.ref.transpose(3, 0, 1, 2))).float().div_(255.0)
    return {
        "x": generator_input(gt[None], ref[None])[0],
        "gt": gt,
        "indiv_mels": torch.from_numpy(window.indiv_mels),
        "mel": torch.from_numpy(window.mel),
    }


def collate_generator(windows: list[GeneratorWindow]) -> dict[str, torch.Tensor]:
    """Batch of generator windows -> x (B,6,T,S,S), gt (B,3,T,S,S), indiv_mels (B,T,1,80,16),
    mel (B,1,80,16), as the original's DataLoader stacks them."""
    tensors = [generator_tensors(w) for w in windows]
    return {k: torch.stack([t[k] for t in tensors]) for k in ("x", "gt", "indiv_mels", "mel")}

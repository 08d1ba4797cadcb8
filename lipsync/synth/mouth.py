"""A mouth redrawn every frame from the audio at that instant.

Per video frame k we look at the audio samples that frame covers
([k/fps, (k+1)/fps)) and compute:

- **opening** from short-time loudness (RMS in dB, relative to the clip's loud frames):
  silent frames give 0, so the mouth is closed in pauses and between words;
- **width** from spectral shape: a low spectral centroid (rounded vowels, "oo", "o")
  draws a narrow round mouth, a high one ("ee", "s") a wide flat mouth;
- **visemes** from espeak's phoneme events: p/b/m close the lips, rounded vowels narrow them.

Both change from frame to frame with the syllables, which is what a sync expert has to
learn; moving the audio by a few frames visibly breaks the match.

The mouth is an ellipse of lip colour around a near-black interior, with a band of
upper teeth once it opens, drawn anti-aliased at the head's position and tilt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Loudness below (loud - DYNAMIC_RANGE_DB) is a closed mouth; at or above `loud` fully open.
DYNAMIC_RANGE_DB = 30.0
OPEN_RATIO = 0.5          # inner opening at full loudness, fraction of mouth width
_SHIFT = 4                # cv2 drawing: 4 fractional bits of sub-pixel precision
_ONE = 1 << _SHIFT


@dataclass
class MouthTrack:
    """Per-frame mouth shape: opening in [0, 1] and width factor (~0.75 .. 1.15)."""

    opening: np.ndarray
    width: np.ndarray
    loudness_db: np.ndarray


def frame_windows(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """(n_frames, L) audio samples each video frame covers (zero-padded at the end)."""
    spf = sample_rate / fps
    length = int(math.ceil(spf))
    starts = np.floor(np.arange(n_frames) * spf).astype(np.int64)
    padded = np.concatenate([audio.astype(np.float32), np.zeros(length + 1, np.float32)])
    return padded[starts[:, None] + np.arange(length)[None, :]]


def frame_loudness_db(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """RMS loudness of the audio under each video frame, in dBFS (floor -100)."""
    windows = frame_windows(audio, n_frames, fps, sample_rate)
    rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1))
    return (20 * np.log10(np.maximum(rms, 1e-5))).astype(np.float32)


def stream_frame_loudness_db(chunks, n_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """``frame_loudness_db`` of audio given in chunks (the same numbers), holding only the
    samples of the frames not yet complete."""
    spf = sample_rate / fps
    length = int(math.ceil(spf))
    starts = np.floor(np.arange(n_frames) * spf).astype(np.int64)
    out, done = np.empty(n_frames, np.float32), 0
    buffer, offset = np.zeros(0, np.float32), 0  # buffer[0] is sample `offset`

    def emit(count: int, samples: np.ndarray, first: int) -> None:
        rows = samples[(starts[done : done + count] - first)[:, None] + np.arange(length)[None, :]]
        rms = np.sqrt(np.mean(rows.astype(np.float64) ** 2, axis=1))
        out[done : done + count] = (20 * np.log10(np.maximum(rms, 1e-5))).astype(np.float32)

    for chunk in chunks:
        buffer = np.concatenate([buffer, np.asarray(chunk, np.float32)])
        end = offset + buffer.size
        ready = int(np.searchsorted(starts + length, end, side="right")) - done
        if ready > 0:
            emit(ready, buffer, offset)
            done += ready
            keep = starts[done] - offset if done < n_frames else buffer.size
            buffer, offset = buffer[keep:], offset + keep
    if done < n_frames:
        emit(n_frames - done, np.concatenate([buffer, np.zeros(length + 1 + int(starts[-1] - offset), np.float32)]),
             offset)
    return out


# espeak-ng phoneme mnemonics (stress marks stripped): lips closed / lips rounded.
BILABIALS = frozenset({"p", "b", "m"})
ROUNDED = frozenset({"w", "u:", "U", "u", "oU", "O:", "O", "O@", "0", "OI", "aU", "o@", "U@"})
_CLOSURE_OVERLAP_S = 0.015   # a bilabial closes the mouth in frames it overlaps by this much


def _phoneme_frames(phonemes, names, n_frames: int, fps: float) -> np.ndarray:
    """Frames whose time window overlaps one of `names` by at least _CLOSURE_OVERLAP_S."""
    hit = np.zeros(n_frames, bool)
    for start, end, name in phonemes:
        if name.lstrip("',") not in names:
            continue
        first, last = int(np.floor(start * fps)), int(np.ceil(end * fps))
        for k in range(max(0, first), min(n_frames, last + 1)):
            overlap = min(end, (k + 1) / fps) - max(start, k / fps)
            if overlap >= min(_CLOSURE_OVERLAP_S, (end - start) * 0.9):
                hit[k] = True
    return hit


def mouth_track(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int,
                phonemes: list[tuple[float, float, str]] | None = None) -> MouthTrack:
    """Mouth opening and width for every frame, from the audio under that frame.

    `phonemes` (start s, end s, espeak mnemonic), when given, add visemes on top of the
    acoustics: p/b/m close the lips (an "m" is loud, yet the mouth is shut), rounded
    vowels and "w" narrow the mouth.
    """
    db = frame_loudness_db(audio, n_frames, fps, sample_rate)
    voiced = db > -60
    loud = float(np.percentile(db[voiced], 90)) if voiced.any() else 0.0
    opening = np.clip((db - (loud - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
    opening = opening ** 1.3  # keep quiet consonants nearly closed, vowels wide open

    windows = frame_windows(audio, n_frames, fps, sample_rate)
    windows = windows * np.hanning(windows.shape[1])[None, :].astype(np.float32)
    spectrum = np.abs(np.fft.rfft(windows, axis=1))
    freqs = np.fft.rfftfreq(windows.shape[1], 1.0 / sample_rate)
    band = (freqs >= 100) & (freqs <= 5000)
    power = spectrum[:, band] ** 2
    centroid = (power * freqs[band]).sum(1) / np.maximum(power.sum(1), 1e-12)
    # 500 Hz (dark, rounded) .. 2500 Hz (bright, spread) -> 0 .. 1
    brightness = np.clip((centroid - 500.0) / 2000.0, 0.0, 1.0)
    width = np.where(opening > 0.02, 0.75 + 0.4 * brightness, 1.0)
    if phonemes:
        opening = np.where(_phoneme_frames(phonemes, BILABIALS, n_frames, fps), opening * 0.1, opening)
        rounded = _phoneme_frames(phonemes, ROUNDED, n_frames, fps)
        width = np.where(rounded & (opening > 0.02), np.minimum(width, 0.78), width)
    return MouthTrack(opening=opening.astype(np.float32), width=width.astype(np.float32), loudness_db=db)


@dataclass(frozen=True)
class MouthStyle:
    """Per-speaker mouth colours."""

    lip: tuple[int, int, int] = (70, 60, 160)      # BGR
    interior: tuple[int, int, int] = (10, 5, 14)
    teeth: tuple[int, int, int] = (215, 225, 232)

    @staticmethod
    def random(rng: np.random.Generator) -> "MouthStyle":
        lip = (int(rng.integers(50, 100)), int(rng.integers(40, 90)), int(rng.integers(120, 190)))
        return MouthStyle(lip=lip)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _axes(a: float, b: float) -> tuple[int, int]:
    return max(0, int(round(a * _ONE))), max(0, int(round(b * _ONE)))


def draw_mouth(frame: np.ndarray, center: tuple[float, float], mouth_width: float, angle_deg: float,
               opening: float, width_factor: float, style: MouthStyle = MouthStyle()) -> None:
    """Draw the mouth into `frame` (BGR uint8, in place).

    `angle_deg` is the head rotation as given to cv2.getRotationMatrix2D
    (counter-clockwise positive); cv2.ellipse angles run the other way.
    """
    cx, cy = center
    half_w = mouth_width / 2 * width_factor
    inner = max(0.0, float(opening)) * OPEN_RATIO * mouth_width / 2
    lip = max(1.2, 0.11 * mouth_width)
    rot = -angle_deg
    aa = cv2.LINE_AA
    # Lips: outer ellipse; when closed, a thin lip-coloured band with a dark parting line.
    cv2.ellipse(frame, _pt(cx, cy), _axes(half_w * 1.04, inner + lip), rot, 0, 360, style.lip, -1, aa, _SHIFT)
    if inner >= 0.6:
        cv2.ellipse(frame, _pt(cx, cy), _axes(half_w * 0.86, inner), rot, 0, 360, style.interior, -1, aa, _SHIFT)
        # Upper teeth: half-ellipse hanging from the top of the opening.
        theta = math.radians(angle_deg)
        up_x, up_y = -math.sin(theta), -math.cos(theta)   # "up" in the tilted head frame
        if opening > 0.35:
            tx, ty = cx + up_x * inner * 0.62, cy + up_y * inner * 0.62
            cv2.ellipse(frame, _pt(tx, ty), _axes(half_w * 0.55, inner * 0.3), rot, 180, 360, style.teeth, -1,
                        aa, _SHIFT)
    else:
        cv2.ellipse(frame, _pt(cx, cy), _axes(half_w * 0.9, max(0.35, inner)), rot, 0, 360, style.interior, -1, aa,
                    _SHIFT)

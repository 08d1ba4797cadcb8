"""Reading the synthetic mouth back from pixels: a judge that no trained model influences.

The synthetic corpus draws the mouth as a dark opening whose size follows the loudness of
the audio under the frame (``lipsync.synth.mouth``). Counting dark pixels in the lower-middle
part of the detected face therefore measures the opening, and its Pearson correlation with
the per-frame loudness says how well a video's lips follow an audio track: about 0.86 for
the corpus's own clips, about 0 against unrelated audio. The generator's learning benchmark
uses it to judge dubbed videos without trusting the expert the generator was trained against.
"""

from __future__ import annotations

import numpy as np

# The mouth region as fractions of the detected face box (x from the left, y from the top).
MOUTH_X = (0.28, 0.72)
MOUTH_Y = (0.62, 1.0)
DARK_LEVEL = 35  # mean BGR level below which a pixel belongs to the open mouth


def mouth_opening(frames, detector) -> np.ndarray:
    """Fraction of dark pixels in the mouth region of each frame's first detected face
    (NaN where no face is found). ``detector``: a ``lipsync.faces`` detector."""
    opening = np.full(len(frames), np.nan)
    for k, (frame, dets) in enumerate(zip(frames, detector.detect(list(frames)))):
        if dets:
            x1, y1, x2, y2 = dets[0].box
            w, h = x2 - x1, y2 - y1
            region = frame[int(y1 + MOUTH_Y[0] * h):int(y1 + MOUTH_Y[1] * h),
                           int(x1 + MOUTH_X[0] * w):int(x1 + MOUTH_X[1] * w)]
            if region.size:
                opening[k] = (region.mean(axis=2) < DARK_LEVEL).mean()
    return opening


def frame_log_rms(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int = 16000) -> np.ndarray:
    """Natural log of the RMS of the audio under each video frame."""
    spf = sample_rate / fps
    return np.log(np.array([np.sqrt(np.mean(audio[int(k * spf):int((k + 1) * spf)].astype(np.float64) ** 2) + 1e-12)
                            for k in range(n_frames)]))


def lip_audio_correlation(opening: np.ndarray, log_rms: np.ndarray, shift: int = 0) -> float:
    """Pearson r between mouth opening and loudness, the audio ``shift`` frames earlier
    than the picture; frames without a face are left out (NaN when fewer than 3 remain
    or either series is constant)."""
    n = min(len(opening), len(log_rms))
    a, b = opening[shift:n], log_rms[:n - shift]
    ok = ~np.isnan(a)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])

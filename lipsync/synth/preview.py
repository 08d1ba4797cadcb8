"""A picture of one clip: a strip of frames above the audio waveform under them.

Frames are taken at equal steps; the waveform panel spans exactly the time the strip
covers, so each frame sits above the stretch of audio it was drawn from (open mouths
over loud syllables, closed mouths over pauses).
"""

from __future__ import annotations

import os

import numpy as np

from lipsync.errors import ConfigError, MediaError


def save_preview(clip: str | os.PathLike, out_png: str | os.PathLike, n_frames: int = 10, step: int = 3,
                 start: float | None = None, dpi: int = 100) -> str:
    """Write a PNG with `n_frames` frames (every `step`-th, from `start` s) over the waveform."""
    from lipsync.figures import frames_over_waveform, speech_start
    from lipsync.video import read_video

    if n_frames < 1 or step < 1:
        raise ConfigError("--frames and --step must be at least 1")
    video = read_video(clip)
    if video.audio is None:
        raise MediaError(f"{clip}: has no audio track to draw")
    total = len(video.frames)
    span = n_frames * step
    if start is None:
        first = speech_start(video.audio, total, video.fps, video.sample_rate, span, lead=step)
    else:
        first = int(round(start * video.fps))
        first = max(0, min(first, total - span)) if total >= span else 0
    indices = [i for i in range(first, first + span, step) if i < total]
    strip = np.concatenate([video.frames[i][:, :, ::-1] for i in indices], axis=1)  # BGR -> RGB
    title = (f"{os.path.basename(os.fspath(clip))}: frames {indices[0]}..{indices[-1]} "
             f"(every {step}) at {video.fps:g} fps; shaded: audio under each shown frame")
    return frames_over_waveform(strip, [], video.audio, video.sample_rate, video.fps, indices, step, title,
                                out_png, dpi)

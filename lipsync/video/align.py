"""Decoded audio lined up with the video, so audio sample 0 is the first video frame's time.

A container's audio and video streams may start at different times; the audio decoder's sample 0
is the audio stream's start. ``read_video`` and preprocessing shift it by the difference.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from lipsync.audio import SAMPLE_RATE
from lipsync.video.probing import _open


def align_audio_to_video(path: str | os.PathLike, audio: np.ndarray) -> np.ndarray:
    """Shift 16 kHz ``audio`` decoded from ``path`` so sample 0 is the first video frame's time.

    Uses the streams' start times in the container: a later audio start is padded with leading
    silence, an earlier one loses the samples before the first frame. Unchanged without video.
    """
    shift = audio_shift(path)
    if shift > 0:  # audio starts after the video: pad the gap with silence
        return np.concatenate([np.zeros(shift, np.float32), audio])
    if shift < 0:  # audio starts before the video: drop what precedes the first frame
        return audio[-shift:]
    return audio


def audio_shift(path: str | os.PathLike) -> int:
    """16 kHz samples to add (> 0) or drop (< 0) at the start of ``path``'s decoded audio to line
    it up with the first video frame (0 without video, audio or start times)."""
    path = os.fspath(path)
    with _open(path) as container:
        if not container.streams.video or not container.streams.audio:
            return 0
        v, a = container.streams.video[0], container.streams.audio[0]
        if v.start_time is None or a.start_time is None:
            return 0
        offset = float(a.start_time * a.time_base) - float(v.start_time * v.time_base)
    return int(round(offset * SAMPLE_RATE))


def iter_aligned_audio(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """``align_audio_to_video(path, load_audio(path))`` in chunks (``lipsync.audio.iter_audio``),
    the same samples, never all in memory."""
    from lipsync.audio import iter_audio

    shift = audio_shift(path)
    if shift > 0:
        yield np.zeros(shift, np.float32)
    drop = max(0, -shift)
    for chunk in iter_audio(path, sr=SAMPLE_RATE):
        if drop:
            cut = min(drop, chunk.size)
            chunk, drop = chunk[cut:], drop - cut
        if chunk.size:
            yield chunk

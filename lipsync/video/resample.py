"""Timed frames onto a constant frame rate: nearest-timestamp selection, as FFmpeg's fps filter.

With ``fps`` given, frames are resampled by their timestamps, so variable frame rate and any
native rate become a constant ``fps``: output frame i (time t0 + i/fps, t0 = first frame's
timestamp) is the input frame whose presentation time is nearest (ties go to the later frame),
like FFmpeg's fps filter; frames are dropped or repeated, never blended. The output count is
round(duration * fps), where duration runs from the first frame to the end of the last.

The input is (frame, presentation time) pairs in presentation order, as ``lipsync.video.decode``
reads them; only the frames that are kept are converted to BGR.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from lipsync.video.colour import _to_bgr


# A decoded frame this close after a grid point counts as at it (float error of pts x time_base);
# the seek aims this far after the range's first grid point, so a keyframe exactly there is found.
# (A margin of a second before it, as first written, landed one whole GOP early whenever pieces
# started on keyframes — libx264 puts one every 250 frames, 10 s at 25 fps, the pieces' grid —
# and made a long input cut into 10 s pieces decode 1.8x the frames.)
SEEK_TOLERANCE_S = 1e-3


class _SeekedTooFar(Exception):
    pass


def _resample_range(timed, fps: float, rotate: bool, end_of, t0: float, start: int,
                    stop: int | None) -> Iterator[np.ndarray]:
    """``_resample_frames`` from a mid-stream position: grid points before the first decoded
    frame's time may belong to frames not decoded, so counting starts at the first one after it."""
    prev_frame, prev_t, prev_image = None, 0.0, None
    emitted = 0
    for frame, t in timed:
        if prev_frame is None:
            emitted = max(0, int(np.ceil((t - t0) * fps)) - 1)
            while t0 + emitted / fps < t - SEEK_TOLERANCE_S:
                emitted += 1
            if emitted > start:
                raise _SeekedTooFar
        else:
            midpoint = (prev_t + t) / 2.0
            while t0 + emitted / fps < midpoint:
                if stop is not None and emitted >= stop:
                    return
                if emitted >= start:
                    if prev_image is None:
                        prev_image = _to_bgr(prev_frame, rotate)
                    yield prev_image.copy()
                emitted += 1
        prev_frame, prev_t, prev_image = frame, t, None
    if prev_frame is None:
        return
    total = max(1, int(round((end_of(prev_t) - t0) * fps)))
    if stop is not None:
        total = min(total, stop)
    while emitted < total:
        if emitted >= start:
            if prev_image is None:
                prev_image = _to_bgr(prev_frame, rotate)
            yield prev_image.copy()
        emitted += 1


def _resample_frames(timed, fps: float, rotate: bool, end_of) -> Iterator[np.ndarray]:
    """Nearest-timestamp selection onto the grid t0 + i/fps; converts only frames that are kept.
    ``end_of(last_t)`` gives the time the last frame stops showing."""
    prev_frame, prev_t = None, 0.0
    prev_image: np.ndarray | None = None  # converted prev_frame, reused (copied) for repeats
    t0 = 0.0
    emitted = 0

    def emit():
        nonlocal prev_image
        if prev_image is None:
            prev_image = _to_bgr(prev_frame, rotate)
            return prev_image
        return prev_image.copy()

    for frame, t in timed:
        if prev_frame is None:
            t0 = t
        else:
            midpoint = (prev_t + t) / 2.0
            while t0 + emitted / fps < midpoint:
                yield emit()
                emitted += 1
        prev_frame, prev_t, prev_image = frame, t, None
    if prev_frame is None:
        return
    total = max(1, int(round((end_of(prev_t) - t0) * fps)))
    while emitted < total:
        yield emit()
        emitted += 1

"""Reading video: frames streamed one at a time, a range of them, a whole clip, or a still image.

* Any container/codec PyAV (FFmpeg) decodes. Only the first video stream is read.
* Frames are BGR uint8 (H, W, 3), turned upright with ``rotate=True`` (``lipsync.video.colour``),
  and resampled to a constant ``fps`` when one is given (``lipsync.video.resample``).
* Memory is bounded by one or two decoded frames in ``iter_frames``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import av
import cv2
import numpy as np

from lipsync.audio import SAMPLE_RATE, load_audio
from lipsync.errors import MediaError, check_media_file
from lipsync.video.align import align_audio_to_video
from lipsync.video.colour import _to_bgr
from lipsync.video.probing import VideoInfo, _open, _stream_fps, probe
from lipsync.video.resample import SEEK_TOLERANCE_S, _resample_frames, _resample_range, _SeekedTooFar


@dataclass
class Video:
    """A decoded clip: frames (N, H, W, 3) uint8 BGR, their fps, and 16 kHz mono audio (or None)."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None
    sample_rate: int = SAMPLE_RATE


def _video_stream(path: str, container, threads: int | None):
    """The container's first video stream, set up for threaded decoding (``threads`` caps the
    decoder's threads; default: FFmpeg's choice). MediaError when there is no video stream."""
    if not container.streams.video:
        raise MediaError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if threads:
        stream.thread_count = int(threads)
    return stream


def _timed_frames(path: str, container, stream) -> Iterator[tuple[av.VideoFrame, float]]:
    """(frame, presentation time in s) in presentation order, times forced increasing."""
    nominal = 1.0 / (_stream_fps(stream) or 25.0)
    last_t = None
    try:
        for index, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else index * nominal
            if last_t is not None and t <= last_t:  # broken/duplicate timestamps: keep order
                t = last_t + 1e-6
            last_t = t
            yield frame, t
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode video ({e})") from e


def _last_frame_end(stream, last_t: float) -> float:
    """When the last frame stops showing: the stream's end if the container records it, else one
    nominal frame later. (Decoded frames' own durations are unreliable with B-frame reordering.)"""
    nominal = 1.0 / (_stream_fps(stream) or 25.0)
    if stream.duration is not None and stream.time_base is not None:
        start = stream.start_time or 0
        end = float((start + stream.duration) * stream.time_base)
        if last_t < end <= last_t + max(1.0, 2 * nominal):
            return end
    return last_t + nominal


def iter_frames(
    path: str | os.PathLike, fps: float | None = None, rotate: bool = True, threads: int | None = None
) -> Iterator[np.ndarray]:
    """Yield BGR frames one at a time (bounded memory), resampled to ``fps`` when given.
    ``threads`` caps the decoder's threads (default: FFmpeg's choice, about one per core).

    See ``lipsync.video.resample`` for the resampling rule. Raises MediaError when the file is missing,
    unreadable, or has no video stream.
    """
    path = os.fspath(path)
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    with _open(path) as container:
        stream = _video_stream(path, container, threads)
        timed = _timed_frames(path, container, stream)
        if fps is None:
            for frame, _ in timed:
                yield _to_bgr(frame, rotate)
            return
        yield from _resample_frames(timed, float(fps), rotate, lambda t: _last_frame_end(stream, t))


def iter_frame_range(
    path: str | os.PathLike, fps: float, start: int, stop: int | None = None, rotate: bool = True,
    threads: int | None = None,
) -> Iterator[np.ndarray]:
    """Frames ``start .. stop-1`` of ``iter_frames(path, fps)``, the same pixels, without decoding
    what comes before: seeks to a keyframe before ``start``.

    Nearest-timestamp resampling is local (output frame i depends only on the source frames
    around t0 + i/fps), so once one source frame at or before the wanted time is decoded the
    grid continues exactly as a full decode would. ``t0`` (the first frame's time) is read by
    decoding the first frame. Falls back to decoding from the start when the seek lands late.
    """
    path = os.fspath(path)
    if start <= 0:
        yield from _stop_after(iter_frames(path, fps=fps, rotate=rotate, threads=threads), stop)
        return
    with _open(path) as container:
        stream = _video_stream(path, container, threads)
        first = next(_timed_frames(path, container, stream), None)
        if first is None:
            return
        t0 = first[1]
        target = t0 + start / fps + SEEK_TOLERANCE_S
        seeked = False
        if target > t0 and stream.time_base is not None:
            try:
                container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
                seeked = True
            except av.error.FFmpegError:
                seeked = False
        if seeked:
            timed = _timed_frames(path, container, stream)
            try:
                yield from _resample_range(timed, float(fps), rotate, lambda t: _last_frame_end(stream, t),
                                           t0, start, stop)
                return
            except _SeekedTooFar:
                pass
    frames = iter_frames(path, fps=fps, rotate=rotate, threads=threads)
    for index, frame in enumerate(_stop_after(frames, stop)):
        if index >= start:
            yield frame


def _stop_after(frames: Iterator[np.ndarray], stop: int | None) -> Iterator[np.ndarray]:
    for index, frame in enumerate(frames):
        if stop is not None and index >= stop:
            return
        yield frame


def read_video(
    path: str | os.PathLike,
    fps: float | None = None,
    *,
    require_audio: bool = False,
    rotate: bool = True,
) -> Video:
    """Decode a whole clip: frames (resampled to ``fps`` when given), fps, and 16 kHz mono audio.

    Audio is None when the file has no audio stream, unless ``require_audio`` (then MediaError).
    The audio is shifted so that sample 0 lines up with the first video frame when the streams start
    at different times (leading silence added, or leading samples dropped).
    """
    path = os.fspath(path)
    info = probe(path)
    if not info.has_video:
        raise MediaError(f"{path}: has no video stream")
    if require_audio and not info.has_audio:
        raise MediaError(f"{path}: has no audio stream (audio is required)")
    out_fps = float(fps) if fps is not None else info.fps
    frames = _collect_frames(path, iter_frames(path, fps=fps, rotate=rotate), info, out_fps)
    audio = None
    if info.has_audio:
        audio = load_audio(path, sr=SAMPLE_RATE)
        audio = align_audio_to_video(path, audio)
    return Video(frames, out_fps, audio, SAMPLE_RATE)


def _collect_frames(path: str, frames: Iterator[np.ndarray], info: VideoInfo, fps: float) -> np.ndarray:
    """Fill one preallocated array (no list-then-stack double peak); np.empty pages that stay
    unused are never touched, so over-estimating the count costs no memory."""
    estimate = max(int(round(info.duration * fps)) if fps else info.n_frames, info.n_frames) + 2
    buffer = None
    extra: list[np.ndarray] = []
    count = 0
    for frame in frames:
        if buffer is None:
            buffer = np.empty((estimate, *frame.shape), np.uint8)
        if frame.shape != buffer.shape[1:]:
            raise MediaError(
                f"{path}: frame size changes mid-stream ({buffer.shape[1:]} -> {frame.shape})"
            )
        if count < estimate:
            buffer[count] = frame
        else:
            extra.append(frame)
        count += 1
    if buffer is None:
        raise MediaError(f"{path}: video stream has no frames")
    if extra:
        return np.concatenate([buffer, np.stack(extra)])
    return buffer[:count]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a still image as a BGR uint8 (H, W, 3) frame; MediaError if missing or not an image."""
    path = os.fspath(path)
    check_media_file(path)
    data = np.fromfile(path, dtype=np.uint8)  # imdecode handles non-ASCII paths, imread may not
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(f"{path}: not a readable image")
    return image

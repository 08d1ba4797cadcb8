"""Opening a media file for reading, and the facts of its streams (``probe``, ``VideoInfo``).

``probe`` reads the container's stream headers and decodes at most one video frame, for the
display rotation that ``lipsync.video.colour`` applies to decoded frames. Opening turns a
missing, empty or unreadable file into a MediaError for every reader of streams in this package
(probe, decode, align, the audio pass-through).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av

from lipsync.errors import MediaError, check_media_file


@dataclass
class VideoInfo:
    """What ``probe`` learns without decoding the whole file.

    ``width``/``height`` are the *displayed* size (after rotation, as ``iter_frames`` yields them);
    ``rotation`` is the display rotation in degrees counter-clockwise, normalised to 0/90/180/270;
    ``n_frames`` is the container's count or, failing that, duration * fps (an estimate for VFR).
    """

    path: str
    fps: float
    n_frames: int
    width: int
    height: int
    rotation: int
    duration: float
    has_video: bool
    has_audio: bool
    audio_sample_rate: int | None


def _open(path: str) -> av.container.InputContainer:
    check_media_file(path)
    try:
        return av.open(path)
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise MediaError(f"{path}: not a readable video or audio file ({e})") from e


def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return 0.0


def _normalise_rotation(degrees: int) -> int:
    return int(round(degrees / 90.0)) * 90 % 360


def probe(path: str | os.PathLike) -> VideoInfo:
    """Stream facts of a media file. Decodes at most one video frame (for its rotation).

    Raises MediaError for a missing, empty or unreadable file, or one with neither video nor audio.
    An audio-only file gives ``has_video=False`` with zero fps/size.
    """
    path = os.fspath(path)
    with _open(path) as container:
        has_audio = bool(container.streams.audio)
        audio_rate = container.streams.audio[0].sample_rate if has_audio else None
        if not container.streams.video:
            if not has_audio:
                raise MediaError(f"{path}: contains no video or audio stream")
            duration = _container_duration(container, container.streams.audio[0])
            return VideoInfo(path, 0.0, 0, 0, 0, 0, duration, False, True, audio_rate)

        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        duration = _container_duration(container, stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        rotation = 0
        try:
            for frame in container.decode(stream):
                rotation = _normalise_rotation(frame.rotation)
                width, height = frame.width, frame.height
                break
            else:
                raise MediaError(f"{path}: video stream has no decodable frames")
        except av.error.FFmpegError as e:
            raise MediaError(f"{path}: cannot decode video ({e})") from e
        if rotation in (90, 270):
            width, height = height, width
        n_frames = stream.frames or int(round(duration * fps))
        return VideoInfo(
            path, fps, n_frames, width, height, rotation, duration, True, has_audio, audio_rate
        )


def _container_duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0

"""Video I/O on PyAV: probe, streaming decode with rotation and frame-rate resampling, H.264+AAC mp4 out.

Frames are numpy uint8 (H, W, 3) in BGR order (the library's convention; conversion happens here).

Reading
    * Any container/codec PyAV (FFmpeg) decodes. Only the first video stream is read.
    * Rotation: phone videos store a display matrix instead of rotating pixels. PyAV exposes it per
      decoded frame as ``VideoFrame.rotation`` (degrees counter-clockwise, FFmpeg's convention);
      with ``rotate=True`` frames are turned so they look as a player shows them. Flips in the
      display matrix are rare and ignored.
    * Frame rate: with ``fps`` given, frames are resampled by their timestamps, so variable frame
      rate and any native rate become a constant ``fps``: output frame i (time t0 + i/fps, t0 = first
      frame's timestamp) is the input frame whose presentation time is nearest (ties go to the later
      frame), like FFmpeg's fps filter; frames are dropped or repeated, never blended. The output
      count is round(duration * fps), where duration runs from the first frame to the end of the last.
    * Memory is bounded by one or two decoded frames in ``iter_frames``.

Writing
    ``VideoWriter`` encodes H.264 (libx264 when FFmpeg has it, else another H.264 encoder) in
    yuv420p and AAC audio into one mp4 in a single pass (no temporary AVI, no ffmpeg subprocess).
    yuv420p needs even sizes: an odd width/height is padded by repeating the last column/row.
    Output goes to a temporary file next to the target and is renamed on success (with the
    normal new-file mode, ``lipsync.files.publish``), so a failure never leaves a partial file
    (and never clobbers an existing one); ``lipsync`` turns SIGTERM into an exit that cleans up.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import cv2
import numpy as np

from lipsync.audio import SAMPLE_RATE, load_audio
from lipsync.errors import MediaError, check_media_file
from lipsync.files import publish


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


@dataclass
class Video:
    """A decoded clip: frames (N, H, W, 3) uint8 BGR, their fps, and 16 kHz mono audio (or None)."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None
    sample_rate: int = SAMPLE_RATE


# ------------------------------------------------------------------------------------------ reading


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


# BGR <-> yuv420p goes through OpenCV (BT.601, limited range, rounded), not PyAV's swscale
# default: swscale's fast path darkens by ~2 levels per round trip (mid-grey 128 comes back
# as (123, 126, 124)), which inference would print on every passed-through frame, and its
# encoder-side conversion is ~15x slower at 720p (benchmarks/video_io.py). Frames that are
# not limited-range BT.601 (or untagged) yuv420p -- BT.709 HD video, full-range JPEG-style
# video, other pixel formats -- keep swscale, which honours their tags. Written files are
# tagged BT.601 limited range, the conversion used, so players show the colours we wrote.
_BT601_SPACES = (2, 5, 6)  # AVColorSpace: unspecified, BT470BG, SMPTE170M
_COLOR_RANGE_FULL = 2  # AVColorRange: JPEG


def _i420_to_bgr(frame: av.VideoFrame) -> np.ndarray | None:
    if (frame.format.name != "yuv420p" or frame.width % 2 or frame.height % 2
            or frame.colorspace not in _BT601_SPACES or frame.color_range == _COLOR_RANGE_FULL):
        return None
    return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)


def bgr_to_i420_frame(image: np.ndarray) -> av.VideoFrame:
    """An even-sized BGR uint8 image as a yuv420p VideoFrame (see the note above)."""
    return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")


def _to_bgr(frame: av.VideoFrame, rotate: bool) -> np.ndarray:
    image = _i420_to_bgr(frame)
    if image is None:
        image = frame.to_ndarray(format="bgr24")
    if rotate:
        turn = _normalise_rotation(frame.rotation)
        # frame.rotation is counter-clockwise: turn the pixels the same way a player does.
        if turn == 90:
            image = cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
        elif turn == 180:
            image = cv2.rotate(image, cv2.ROTATE_180)
        elif turn == 270:
            image = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    return np.ascontiguousarray(image)


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

    See the module docstring for the resampling rule. Raises MediaError when the file is missing,
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


# A decoded frame this close after a grid point counts as at it (float error of pts x time_base);
# the seek aims this far after the range's first grid point, so a keyframe exactly there is found.
# (A margin of a second before it, as first written, landed one whole GOP early whenever pieces
# started on keyframes — libx264 puts one every 250 frames, 10 s at 25 fps, the pieces' grid —
# and made a long input cut into 10 s pieces decode 1.8x the frames.)
SEEK_TOLERANCE_S = 1e-3


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


class _SeekedTooFar(Exception):
    pass


def _stop_after(frames: Iterator[np.ndarray], stop: int | None) -> Iterator[np.ndarray]:
    for index, frame in enumerate(frames):
        if stop is not None and index >= stop:
            return
        yield frame


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


def align_audio_to_video(path: str | os.PathLike, audio: np.ndarray) -> np.ndarray:
    """Shift 16 kHz ``audio`` decoded from ``path`` so sample 0 is the first video frame's time.

    Uses the streams' start times in the container: a later audio start is padded with leading
    silence, an earlier one loses the samples before the first frame. Unchanged without video.
    """
    path = os.fspath(path)
    with _open(path) as container:
        if not container.streams.video or not container.streams.audio:
            return audio
        v, a = container.streams.video[0], container.streams.audio[0]
        if v.start_time is None or a.start_time is None:
            return audio
        offset = float(a.start_time * a.time_base) - float(v.start_time * v.time_base)
    shift = int(round(offset * SAMPLE_RATE))
    if shift > 0:  # audio starts after the video: pad the gap with silence
        return np.concatenate([np.zeros(shift, np.float32), audio])
    if shift < 0:  # audio starts before the video: drop what precedes the first frame
        return audio[-shift:]
    return audio


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a still image as a BGR uint8 (H, W, 3) frame; MediaError if missing or not an image."""
    path = os.fspath(path)
    check_media_file(path)
    data = np.fromfile(path, dtype=np.uint8)  # imdecode handles non-ASCII paths, imread may not
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(f"{path}: not a readable image")
    return image


# ------------------------------------------------------------------------------------------ writing

_H264_ENCODERS = ("libx264", "libopenh264", "h264")

# Output container by file extension. Each takes H.264 video; the audio codecs listed are
# copied as they are (no re-encode), anything else is re-encoded to AAC at its own rate.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_COPYABLE_AUDIO = {
    "mp4": {"aac", "mp3", "alac", "ac3", "eac3"},
    "mov": {"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le"},
    "matroska": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "vorbis", "flac", "pcm_s16le", "pcm_s24le",
                 "pcm_f32le"},
}


def container_for(path: str | os.PathLike) -> str:
    """The output container for ``path``'s extension; MediaError (one line) for any other."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in CONTAINERS:
        raise MediaError(f"{os.fspath(path)}: cannot write a {ext or 'extension-less'} file; "
                         f"use {', '.join(CONTAINERS)}")
    return CONTAINERS[ext]


class _AudioPassthrough:
    """The audio stream of a user's file, into an output container at its own rate and quality.

    Packets are copied when the container takes the codec; otherwise the audio is decoded and
    re-encoded to AAC keeping its sample rate and channels (at 96 kb/s per channel). ``pump(t)``
    muxes everything that starts before ``t`` seconds, so audio stays interleaved with the video.
    Timestamps are shifted so the audio starts at 0, as the decoded samples the model heard do.
    """

    def __init__(self, source: str, output, format_name: str):
        self.source = source
        self._input = _open(source)
        if not self._input.streams.audio:
            self._input.close()
            raise MediaError(f"{source}: has no audio stream")
        self._in = self._input.streams.audio[0]
        self.copy = self._in.codec_context.name in _COPYABLE_AUDIO[format_name]
        if self.copy:
            self.stream = output.add_stream_from_template(self._in)
        else:
            rate = int(self._in.codec_context.sample_rate or SAMPLE_RATE)
            self.stream = output.add_stream("aac", rate=rate)
            # By channel count: a WAV's layout can be unordered ("2 channels"), which AAC refuses.
            channels = max(1, int(self._in.codec_context.channels or 1))
            self.stream.layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}.0" if channels < 5 else "5.1")
            self.stream.bit_rate = 96_000 * max(1, self.stream.codec_context.channels)
            self._resampler = av.AudioResampler(format="fltp", layout=self.stream.layout, rate=rate)
        self._output = output
        self._packets = self._packet_iter()
        self._pending = None
        self._offset = None

    def _packet_iter(self):
        try:
            if self.copy:
                for packet in self._input.demux(self._in):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    if self._offset is None:  # a late start moves to 0; negative = encoder priming, kept
                        self._offset = max(0, packet.pts or 0)
                    if packet.pts is not None:
                        packet.pts -= self._offset
                    packet.dts -= self._offset
                    yield packet
                return
            written = 0  # samples: explicit timestamps from 0 let the muxer trim the AAC priming

            def encode(frames):
                nonlocal written
                for resampled in frames:
                    resampled.pts, resampled.time_base = written, Fraction(1, resampled.sample_rate)
                    written += resampled.samples
                    yield from self.stream.encode(resampled)

            for frame in self._input.decode(self._in):
                frame.pts = None
                yield from encode(self._resampler.resample(frame))
            yield from encode(self._resampler.resample(None))
            yield from self.stream.encode(None)
        except av.error.FFmpegError as e:
            raise MediaError(f"{self.source}: cannot read its audio ({e})") from e

    def _seconds(self, packet) -> float:
        if packet.pts is None or packet.time_base is None:
            return 0.0
        return float(packet.pts * packet.time_base)

    def pump(self, until: float | None = None) -> None:
        """Mux the packets that start before ``until`` seconds (all of them with None)."""
        while True:
            if self._pending is None:
                self._pending = next(self._packets, None)
                if self._pending is None:
                    return
            if until is not None and self._seconds(self._pending) >= until:
                return
            packet, self._pending = self._pending, None
            packet.stream = self.stream
            self._output.mux(packet)

    def close(self) -> None:
        self._input.close()


def _h264_encoder() -> str:
    for name in _H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):
            continue
    raise MediaError("this PyAV/FFmpeg build has no H.264 encoder (tried libx264, libopenh264, h264)")


class VideoWriter:
    """H.264 (yuv420p) + audio writer, one pass. Use as a context manager.

    The container follows ``path``'s extension (``CONTAINERS``: .mp4/.m4v, .mov, .mkv; any
    other is refused). ``write(frame)`` takes BGR uint8 (height, width, 3) frames.
    Audio, one of:
    * ``audio_from=<file>``: that file's audio track, at its own rate and quality (copied when
      the container takes its codec, else AAC at its rate), interleaved as frames are written;
    * ``write_audio(samples)``: float32 mono chunks at ``audio_sample_rate`` (AAC), before,
      between or after frames; if a rate is given but no audio is ever written, the track is
      filled with silence as long as the video so the file stays consistent;
    * ``audio_sample_rate=None`` and no ``audio_from``: no audio track.
    On an exception inside the ``with`` block (or ``abort()``), nothing is left at ``path``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        width: int,
        height: int,
        audio_sample_rate: int | None = SAMPLE_RATE,
        crf: int = 18,
        preset: str = "fast",
        audio_bitrate: int = 64_000,
        repeatable: bool = True,
        audio_from: str | os.PathLike | None = None,
    ):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        self.path = os.fspath(path)
        format_name = container_for(self.path)
        self.fps = float(fps)
        self.width, self.height = int(width), int(height)
        self.audio_sample_rate = audio_sample_rate
        self.frames_written = 0
        self.samples_written = 0
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise MediaError(f"{self.path}: output folder {parent} does not exist")
        # A hidden temporary file in the same folder: renamed over `path` only on success.
        handle, self._tmp_path = tempfile.mkstemp(
            prefix=f".{os.path.basename(self.path)}.", suffix=".partial" + os.path.splitext(self.path)[1], dir=parent
        )
        os.close(handle)
        self._passthrough = None
        try:
            self._container = av.open(self._tmp_path, mode="w", format=format_name)
        except (av.error.FFmpegError, OSError) as e:
            os.remove(self._tmp_path)
            raise MediaError(f"{self.path}: cannot create output ({e})") from e
        try:
            encoder = _h264_encoder()
            rate = Fraction(self.fps).limit_denominator(10000)
            self._video = self._container.add_stream(encoder, rate=rate)
            self._video.width = self.width + self.width % 2
            self._video.height = self.height + self.height % 2
            self._video.pix_fmt = "yuv420p"
            self._video.codec_context.colorspace = 6  # SMPTE170M = BT.601, as bgr_to_i420_frame
            self._video.codec_context.color_range = 1  # MPEG = limited range
            if encoder == "libx264":
                self._video.options = {"crf": str(crf), "preset": preset}
                if repeatable:
                    # x264's macroblock-tree rate control reads uninitialised padding when the
                    # width is not a multiple of 64, so identical frames could encode to different
                    # bytes (seen: 1 in 5 encodes at 160x160). Off, encodes repeat exactly.
                    self._video.options["x264-params"] = "mbtree=0"
            else:
                self._video.bit_rate = 8_000_000
            self._video_time_base = Fraction(1) / rate
            self._audio = None
            if audio_from is not None:
                self._passthrough = _AudioPassthrough(os.fspath(audio_from), self._container, format_name)
                self.audio_sample_rate = None
            elif audio_sample_rate is not None:
                self._audio = self._container.add_stream("aac", rate=int(audio_sample_rate))
                self._audio.layout = "mono"
                self._audio.bit_rate = int(audio_bitrate)
        except BaseException:
            self.abort()
            raise
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        """Encode one BGR uint8 frame of the size given at construction."""
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: expected uint8 frame of shape {(self.height, self.width, 3)}, "
                f"got {frame.dtype} {frame.shape}"
            )
        if self.width % 2 or self.height % 2:
            frame = np.pad(frame, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        video_frame = bgr_to_i420_frame(np.ascontiguousarray(frame))
        video_frame.pts = self.frames_written
        video_frame.time_base = self._video_time_base
        self._container.mux(self._video.encode(video_frame))
        self.frames_written += 1
        if self._passthrough is not None:
            self._passthrough.pump(self.frames_written / self.fps)

    def write_audio(self, samples: np.ndarray) -> None:
        """Encode a chunk of float32 mono audio at ``audio_sample_rate`` (clipped to [-1, 1])."""
        if self._audio is None:
            raise ValueError(f"{self.path}: writer was opened without sample audio "
                             "(audio_sample_rate=None, or its audio comes from audio_from)")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"{self.path}: audio must be mono (N,), got shape {samples.shape}")
        if samples.size == 0:
            return
        chunk = np.clip(samples, -1.0, 1.0).reshape(1, -1)
        audio_frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        audio_frame.sample_rate = int(self.audio_sample_rate)
        audio_frame.pts = self.samples_written
        audio_frame.time_base = Fraction(1, int(self.audio_sample_rate))
        self._container.mux(self._audio.encode(audio_frame))
        self.samples_written += samples.size

    def close(self) -> None:
        """Flush encoders, finish the mp4 and move it into place."""
        if self._closed:
            return
        try:
            if self._audio is not None and self.samples_written == 0 and self.frames_written:
                silence = int(round(self.frames_written / self.fps * self.audio_sample_rate))
                self.write_audio(np.zeros(silence, np.float32))
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._container.mux(self._audio.encode(None))
            if self._passthrough is not None:
                self._passthrough.pump()
                self._passthrough.close()
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        publish(self._tmp_path, self.path)

    def abort(self) -> None:
        """Stop writing and delete the partial output."""
        self._closed = True
        for closable in (getattr(self, "_passthrough", None), getattr(self, "_container", None)):
            try:
                if closable is not None:
                    closable.close()
            except Exception:  # the file is discarded anyway; a broken muxer must not mask the cause
                pass
        if os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


def write_video(
    path: str | os.PathLike,
    frames,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 18,
) -> None:
    """Write BGR frames (an (N, H, W, 3) array or any iterable of frames) and optional mono audio."""
    iterator = iter(frames)
    try:
        first = np.asarray(next(iterator))
    except StopIteration:
        raise ValueError(f"{os.fspath(path)}: no frames to write") from None
    height, width = first.shape[:2]
    rate = sample_rate if audio is not None else None
    with VideoWriter(path, fps, width, height, audio_sample_rate=rate, crf=crf) as writer:
        if audio is not None:
            writer.write_audio(audio)
        writer.write(first)
        for frame in iterator:
            writer.write(frame)

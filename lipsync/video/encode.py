"""Writing video: H.264 + audio in one pass (``VideoWriter``, ``write_video``).

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
from fractions import Fraction

import av
import numpy as np

from lipsync.audio import SAMPLE_RATE
from lipsync.errors import MediaError
from lipsync.files import publish
from lipsync.video.colour import bgr_to_i420_frame
from lipsync.video.containers import container_for
from lipsync.video.passthrough import _AudioPassthrough


_H264_ENCODERS = ("libx264", "libopenh264", "h264")


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

"""The face input as a stream of frames, as long as the audio needs.

A video or an image (the original's rule: an image extension forces ``static``). Each frame
goes through the original's per-frame transforms in its order -- ``resize_factor``, then
``rotate`` (90 degrees clockwise), then ``crop`` -- so the output has the transformed size.

Length. The output has one frame per audio frame (``n_out``). A longer video is cut; a
shorter one is repeated: ``loop`` decodes it again from the start, ``pingpong`` plays it
backwards then forwards again (0..n-1, n-2..1, 0..n-1, ...), which needs random access to
past frames, so during the first pass every frame is also spilled to an uncompressed
temporary file on disk (RAM stays bounded; disk use is n * H * W * 3 bytes) when the probe
says the video is shorter than the audio.

Each item is ``(source_index, frame, fresh)``: ``source_index`` identifies the frame within
one pass of the input (face boxes are computed once per source frame and reused on repeats),
``fresh`` is False when the same array may be yielded again (static input), so consumers
must copy before drawing on it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from lipsync.errors import DiskError, MediaError
from lipsync.inference.options import InferenceOptions

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def transform_frame(frame: np.ndarray, opts: InferenceOptions) -> np.ndarray:
    """resize_factor -> rotate 90 cw -> crop, as the original inference.py."""
    if opts.resize_factor > 1:
        h, w = frame.shape[:2]
        frame = cv2.resize(frame, (w // opts.resize_factor, h // opts.resize_factor))
    if opts.rotate:
        frame = cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
    top, bottom, left, right = opts.crop
    if (top, bottom, left, right) != (0, -1, 0, -1):
        h, w = frame.shape[:2]
        bottom = h if bottom == -1 else bottom
        right = w if right == -1 else right
        frame = frame[top:bottom, left:right]
        if frame.size == 0:
            raise MediaError(f"--crop {tuple(opts.crop)} leaves an empty frame (frame is {w}x{h})")
    return np.ascontiguousarray(frame)


@dataclass
class SourceInfo:
    path: str
    is_image: bool
    static: bool
    fps: float
    width: int
    height: int
    n_frames_estimate: int


class FrameSpill:
    """Frames of fixed shape appended to an anonymous temp file in ``folder`` (None: the
    system's temporary folder), read back by index. A full or unwritable folder is a
    DiskError naming it, not a traceback."""

    def __init__(self, shape: tuple[int, int, int], folder: str | None = None):
        self.shape = shape
        self.nbytes = int(np.prod(shape))
        self.folder = folder or tempfile.gettempdir()
        self.count = 0
        try:
            self.file = tempfile.TemporaryFile(prefix="lipsync-frames-", dir=self.folder)
        except OSError as e:
            raise self._error(e, "cannot create the file that keeps frames for --audio-longer pingpong") from e

    def _error(self, error: OSError, what: str) -> DiskError:
        return DiskError(f"{self.folder}: {what}: {error.strerror or error} "
                         f"(choose another folder with --spill-dir)")

    def append(self, frame: np.ndarray) -> None:
        try:
            self.file.seek(self.count * self.nbytes)
            self.file.write(np.ascontiguousarray(frame).data)
        except OSError as e:  # ENOSPC surfaces at a write or at the flush inside seek
            raise self._error(e, f"cannot keep frame {self.count} for --audio-longer pingpong "
                                 f"after {self.count * self.nbytes} bytes") from e
        self.count += 1

    def __getitem__(self, index: int) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        try:
            self.file.seek(index * self.nbytes)
            self.file.readinto(out.data)
        except OSError as e:  # the seek flushes the last frames written
            raise self._error(e, f"cannot keep the last frames for --audio-longer pingpong "
                                 f"({self.count * self.nbytes} bytes)") from e
        return out

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # the flush of a full disk; the error that stopped the run was raised already
            pass


class FaceSource:
    def __init__(self, path: str | os.PathLike, opts: InferenceOptions):
        from lipsync.video import probe, read_image

        self.path = os.fspath(path)
        self.opts = opts
        self._first: np.ndarray | None = None
        if is_image_path(self.path):
            self._first = transform_frame(read_image(self.path), opts)
            info = SourceInfo(self.path, True, True, float(opts.fps), self._first.shape[1],
                              self._first.shape[0], 1)
        else:
            vinfo = probe(self.path)
            if not vinfo.has_video:
                raise MediaError(f"{self.path}: has no video stream (for a still face pass an image file)")
            if not vinfo.fps > 0:
                raise MediaError(f"{self.path}: video stream has no frame rate")
            first = next(self._decode(), None)
            if first is None:
                raise MediaError(f"{self.path}: video stream has no decodable frames")
            if opts.static:
                self._first = first
            info = SourceInfo(self.path, False, bool(opts.static), float(vinfo.fps), first.shape[1],
                              first.shape[0], 1 if opts.static else max(1, vinfo.n_frames))
        self.info = info
        self.n_source: int | None = 1 if info.static else None  # known after the first pass

    def _decode(self) -> Iterator[np.ndarray]:
        from lipsync.video import iter_frames

        for frame in iter_frames(self.path, fps=None, rotate=True):
            yield transform_frame(frame, self.opts)

    def frames(self, n_out: int) -> Iterator[tuple[int, np.ndarray, bool]]:
        """Exactly ``n_out`` items ``(source_index, frame, fresh)``."""
        if self.info.static:
            for _ in range(n_out):
                yield 0, self._first, False
            return
        pingpong = self.opts.audio_longer == "pingpong"
        # Spill only when the probe says repeats are coming (the estimate may be off by a few
        # frames; if it is wrong the other way, ping-pong degrades to loop, see below).
        spill = FrameSpill((self.info.height, self.info.width, 3), self.opts.spill_dir) \
            if pingpong and self.info.n_frames_estimate < n_out else None
        try:
            emitted = 0
            n_src = 0
            for frame in self._decode():
                if emitted == n_out:
                    break
                if frame.shape[:2] != (self.info.height, self.info.width):
                    raise MediaError(f"{self.path}: frame {n_src} changes size to "
                                     f"{frame.shape[1]}x{frame.shape[0]} (expected {self.info.width}x{self.info.height})")
                if spill is not None:
                    spill.append(frame)
                yield n_src, frame, True
                n_src += 1
                emitted += 1
            if emitted == n_out:
                return
            if n_src == 0:
                raise MediaError(f"{self.path}: video stream has no decodable frames")
            self.n_source = n_src
            if spill is not None and n_src > 1:
                order = pingpong_order(n_src)
                i = n_src  # position in the ping-pong cycle; the first forward pass is done
                while emitted < n_out:
                    src = order[i % len(order)]
                    yield src, spill[src], True
                    emitted += 1
                    i += 1
                return
            while emitted < n_out:  # loop: decode again from the start
                for src, frame in enumerate(self._decode()):
                    if emitted == n_out:
                        return
                    yield src, frame, True
                    emitted += 1
        finally:
            if spill is not None:
                spill.close()


def pingpong_order(n: int) -> list[int]:
    """One ping-pong cycle of n frames: 0..n-1 then n-2..1 (no frame shown twice at a turn)."""
    if n <= 1:
        return [0]
    return list(range(n)) + list(range(n - 2, 0, -1))

"""`LipSyncer`: a face video (or image) + an audio track -> a lip-synced mp4, streaming.

    decode ──q── face boxes ──q── generate ──q── blend + encode (+ audio mux)
    (thread)     (thread)         (thread)       (caller's thread)

Every arrow is a bounded queue (``queue_frames`` frames), so memory does not grow with the
video's length: the whole video is never in RAM, nor a file's audio (decoded in chunks
straight into its mel spectrogram, ``lipsync.mel_stream.stream_melspectrogram``); what grows is
that mel, 1.5 MB per minute, and each batch gathers its frames' windows from it. The output
has exactly one frame per audio frame (``lipsync.audio.video_frames_for_audio``) and the
whole audio track, so its duration is the audio's: a longer video is cut, a shorter one
loops or ping-pongs.

Mel windows come from ``lipsync.audio.frame_mel_windows_at`` with its default mode -- the
foundation's choice (``WINDOW_POLICY = "training"``): frame k's window starts at frame k-1,
which is what the generator (ours and the official weights) saw in training, instead of the
original inference script's window one frame (40 ms) later.

Frames without a face are written unchanged (or stop the run with ``on_no_face="error"``);
a video without a face in any frame is an error. The output is written to a temporary file
and moved into place only on success (``lipsync.video.VideoWriter``), so an error never
leaves a partial file.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import cv2
import numpy as np

from lipsync.errors import MediaError, NoFaceError
from lipsync.inference.blend import composite
from lipsync.inference.generator import FaceGenerator
from lipsync.inference.options import InferenceOptions
from lipsync.inference.source import FaceSource
from lipsync.inference.tracking import SparseFaceTracker, pad_box, roi_around, select_face, smooth_stream

AUDIO_CHUNK_SECONDS = 1.0  # audio is muxed in step with the video, one second at a time
# Region searches resize the region so the face is about this big: comfortably above dlib
# HOG's ~80 px window, and a fraction of the pixels of a full-frame search.
ROI_FACE_PX = 110


@dataclass
class InferenceResult:
    out_path: str
    n_frames: int
    fps: float
    width: int
    height: int
    audio_seconds: float
    frames_with_face: int
    frames_passed_through: int
    first_frame_without_face: int | None
    frames_detected: int  # full-frame detector calls
    frames_searched_near: int  # detector calls on a region around the last face
    seconds: float
    step_seconds: dict = field(default_factory=dict)
    generator: dict = field(default_factory=dict)

    @property
    def fps_end_to_end(self) -> float:
        return self.n_frames / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "fps_end_to_end": self.fps_end_to_end}


@dataclass
class _Item:
    index: int  # output frame index
    source: int  # source frame index (boxes are cached per source frame)
    frame: np.ndarray
    fresh: bool  # False: the array is shared (static input), copy before drawing
    box: tuple[int, int, int, int] | None = None
    face: np.ndarray | None = None


class LipSyncer:
    """Lip-sync faces to audio with a Wav2Lip generator.

    ``model``: a checkpoint path (ours or the official wav2lip.pth / wav2lip_gan.pth), an
    MLflow model URI (``models:/wav2lip@champion``, ``runs:/<id>/<path>``), or an already
    built ``lipsync.models.Wav2Lip`` module.
    """

    def __init__(self, model, options: InferenceOptions | None = None, *, tracking_uri: str | None = None):
        import torch

        self.options = (options or InferenceOptions()).check()
        if isinstance(model, torch.nn.Module):
            module, face_size = model, int(getattr(model, "face_size", 96))
            self.model_config = None
        else:
            from lipsync import model_ref

            module, config = model_ref.load(model, kind="wav2lip", trust=self.options.trust_checkpoint,
                                            tracking_uri=tracking_uri)
            face_size = int(getattr(config, "face_size", 96))
            self.model_config = config
        self.face_size = face_size
        self.generator = FaceGenerator(module, face_size, device=self.options.device,
                                       precision=self.options.precision,
                                       channels_last=self.options.channels_last)
        self._detector = None

    # ------------------------------------------------------------------ public

    def sync(self, face: str | os.PathLike, audio, out: str | os.PathLike,
             on_frame: Callable[[int, int], None] | None = None) -> InferenceResult:
        """Write ``out`` (mp4): ``face`` lip-synced to ``audio`` (a path, or float32 16 kHz mono).
        ``on_frame(done, total)`` is called after each frame is written (a service's job progress)."""
        from lipsync.audio import (SAMPLE_RATE, frame_mel_windows_at, iter_audio, melspectrogram,
                                   video_frames_for_audio)
        from lipsync.mel_stream import stream_melspectrogram
        from lipsync.video import VideoWriter

        opts = self.options
        started = time.perf_counter()
        face, out = os.fspath(face), os.fspath(out)
        audio_name = os.fspath(audio) if isinstance(audio, (str, os.PathLike)) else "<audio array>"
        wav = None if isinstance(audio, (str, os.PathLike)) else np.asarray(audio, np.float32)
        if wav is not None and (wav.ndim != 1 or wav.size == 0):
            raise MediaError(f"{audio_name}: audio is empty")
        # A file's audio is decoded in chunks straight into its mel (1.5 MB a minute): the
        # samples are never all in memory (the output carries the file's own track).
        mel, n_samples = (melspectrogram(wav), wav.size) if wav is not None \
            else stream_melspectrogram(iter_audio(audio))
        source = FaceSource(face, opts)  # MediaError for unreadable input, before any output exists
        fps = source.info.fps
        n_out = video_frames_for_audio(n_samples, fps)
        kwargs = {} if opts.mel_mode is None else {"mode": opts.mel_mode}

        def mel_windows_of(frames) -> np.ndarray:
            """The mel window of each output frame in ``frames`` (gathered per batch, never all)."""
            return frame_mel_windows_at(mel, frames, fps=fps, **kwargs)

        try:
            mel_windows_of([0])
        except ValueError as e:
            raise MediaError(f"{audio_name}: audio too short to lip-sync "
                             f"({n_samples / SAMPLE_RATE * 1000:.0f} ms; {e})") from e

        stats = {"detect": 0.0, "generate": 0.0, "compose": 0.0, "encode": 0.0}
        counts = {"with_face": 0, "first_without": None}
        width, height = source.info.width, source.info.height

        from lipsync.inference.threads import StepGroup

        group = StepGroup()
        q = opts.queue_frames
        progress = _progress(n_out, opts.progress)
        try:
            items = group.threaded(self._decode_stage(source, n_out), q, "decode")
            items = group.threaded(self._box_stage(items, source, stats), q, "boxes")
            items = group.threaded(self._generate_stage(items, mel_windows_of, stats, source.info.static,
                                                       lambda line: progress.write(line, file=sys.stderr)),
                                   q, "generate")
            chunk = int(round(AUDIO_CHUNK_SECONDS * SAMPLE_RATE))
            audio_pos = 0
            # The viewer hears the user's own audio (its rate, its codec when the container takes
            # it); the 16 kHz copy is only what the model listens to. An array is written as given.
            audio_file = audio_name if isinstance(audio, (str, os.PathLike)) else None
            with VideoWriter(out, fps, width, height, audio_sample_rate=None if audio_file else SAMPLE_RATE,
                             audio_from=audio_file, crf=opts.crf, preset=opts.preset) as writer:
                for item in items:
                    t0 = time.perf_counter()
                    frame = item.frame
                    if item.face is not None:
                        frame = frame if item.fresh else frame.copy()
                        composite(frame, item.face, item.box, opts.compositing)
                        counts["with_face"] += 1
                    elif counts["first_without"] is None:
                        counts["first_without"] = item.index
                    t1 = time.perf_counter()
                    writer.write(frame)
                    # Audio up to the end of this frame (one chunk at a time) keeps the mux interleaved.
                    due = min(n_samples, int(round((item.index + 1) / fps * SAMPLE_RATE)))
                    if audio_file is None and (due - audio_pos >= chunk or item.index == n_out - 1):
                        writer.write_audio(wav[audio_pos:due])
                        audio_pos = due
                    stats["compose"] += t1 - t0
                    stats["encode"] += time.perf_counter() - t1
                    progress.update(1)
                    if on_frame is not None:
                        on_frame(item.index + 1, n_out)
                if writer.frames_written != n_out:
                    raise RuntimeError(f"pipeline wrote {writer.frames_written} of {n_out} frames")
                if audio_file is None and audio_pos < n_samples:
                    writer.write_audio(wav[audio_pos:])
                if counts["with_face"] == 0:
                    raise NoFaceError(f"{face}: no face found in any frame (try --box, --pads, --resize-factor "
                                      f"or a larger --detect-max-side)")
        finally:
            progress.close()
            group.close()
        seconds = time.perf_counter() - started
        return InferenceResult(
            out_path=out, n_frames=n_out, fps=fps, width=width, height=height,
            audio_seconds=n_samples / SAMPLE_RATE, frames_with_face=counts["with_face"],
            frames_passed_through=n_out - counts["with_face"], first_frame_without_face=counts["first_without"],
            frames_detected=int(stats.pop("frames_detected", 0)),
            frames_searched_near=int(stats.pop("frames_searched_near", 0)), seconds=seconds,
            step_seconds={k: round(v, 3) for k, v in stats.items()}, generator=self.generator.describe(),
        )

    # ------------------------------------------------------------------ steps

    @staticmethod
    def _decode_stage(source: FaceSource, n_out: int) -> Iterator[_Item]:
        for index, (src, frame, fresh) in enumerate(source.frames(n_out)):
            yield _Item(index, src, frame, fresh)

    def _detector_fns(self, stats: dict):
        """(detect, detect_near): list[frame] -> list[box|None] over whole frames, and
        (frame, previous box) -> box|None over a region around the previous box (None when
        the region search is off or the detector is batched on a GPU, where it would not pay)."""
        from lipsync.faces.detect import make_detector

        opts = self.options
        if self._detector is None:
            device = str(self.generator.device)
            self._detector = make_detector(opts.detector, device=device,
                                           downscale_to=opts.detect_max_side or None,
                                           batch_size=opts.face_det_batch_size)
        detector = self._detector

        def timed(frames):
            t0 = time.perf_counter()
            found = detector.detect(frames)
            stats["detect"] += time.perf_counter() - t0
            return found

        def detect(frames: list[np.ndarray]) -> list:
            stats["frames_detected"] = stats.get("frames_detected", 0) + len(frames)
            return [select_face(d, f.shape, opts.face_select) for d, f in zip(timed(frames), frames)]

        def detect_near(frame: np.ndarray, prev) -> np.ndarray | None:
            stats["frames_searched_near"] = stats.get("frames_searched_near", 0) + 1
            x1, y1, x2, y2 = roi_around(prev, frame.shape)
            roi = frame[y1:y2, x1:x2]
            side = max(prev[2] - prev[0], prev[3] - prev[1])
            scale = min(1.0, ROI_FACE_PX / max(side, 1.0))
            if scale < 1.0:
                size = (max(1, round(roi.shape[1] * scale)), max(1, round(roi.shape[0] * scale)))
                roi = cv2.resize(roi, size, interpolation=cv2.INTER_AREA)
            found = timed([np.ascontiguousarray(roi)])[0]
            if not found:
                return None
            cx, cy = ((prev[0] + prev[2]) / 2 - x1) * scale, ((prev[1] + prev[3]) / 2 - y1) * scale
            best = min(found, key=lambda d: (d.center[0] - cx) ** 2 + (d.center[1] - cy) ** 2)
            return np.asarray(best.box, np.float64) / scale + np.array([x1, y1, x1, y1], np.float64)

        use_near = opts.detect_roi and getattr(detector, "name", "") == "dlib-hog"
        return detect, (detect_near if use_near else None)

    def _box_stage(self, items: Iterator[_Item], source: FaceSource, stats: dict) -> Iterator[_Item]:
        opts = self.options
        h, w = source.info.height, source.info.width
        if opts.box is not None:
            top, bottom, left, right = opts.box
            fixed = _int_box(np.array([left, top, right, bottom], float), h, w)
            if fixed is None:
                raise NoFaceError(f"--box {tuple(opts.box)} lies outside the {w}x{h} frame")
            for item in items:
                item.box = fixed
                yield item
            return
        detect, detect_near = self._detector_fns(stats)
        # Boxes of the first pass over the source, reused when the video repeats (loop/ping-pong).
        cache: list = []
        pending: deque = deque()
        leftover: list[_Item] = []

        def first_pass_frames():
            for item in items:
                if item.source != item.index:  # repeats start: boxes come from the cache
                    leftover.append(item)
                    return
                pending.append(item)
                yield item.frame

        if source.info.static:
            frames = first_pass_frames()
            first = next(frames)
            pairs = iter([(first, pad_box(detect([first])[0], opts.pads, first.shape))])
        else:
            tracker = SparseFaceTracker(detect, every=opts.detect_every, chunk=4 * opts.detect_every,
                                        detect_near=detect_near)
            pairs = ((f, pad_box(b, opts.pads, f.shape)) for f, b in tracker.track(first_pass_frames()))
            if not opts.nosmooth:
                pairs = smooth_stream(pairs, opts.smooth_window)
        for _frame, box in pairs:
            item = pending.popleft()
            item.box = _int_box(box, h, w)
            cache.append(item.box)
            yield self._check_face(item, source)
        for item in itertools.chain(leftover, items):
            item.box = cache[item.source % len(cache)]
            yield self._check_face(item, source)

    def _check_face(self, item: _Item, source: FaceSource) -> _Item:
        if item.box is None and self.options.on_no_face == "error":
            raise NoFaceError(f"{source.path}: no face in frame {item.source} "
                              f"(t={item.source / source.info.fps:.2f}s); use --on-no-face pass to keep such frames")
        return item

    def _generate_stage(self, items: Iterator[_Item], mel_windows_of, stats: dict, still: bool,
                        log) -> Iterator[_Item]:
        """Batches of faces through the generator. ``still``: one frame and one box for the whole
        output, so every crop is the same face: it goes in once and the generator reuses its
        face-encoder pass (FaceGenerator)."""
        batch_size = self.options.wav2lip_batch_size
        s = self.face_size
        batch: list[_Item] = []
        n_faces = 0

        def flush():
            with_face = [it for it in batch if it.box is not None]
            if with_face:
                crops = np.stack([_crop(it.frame, it.box, s) for it in with_face[:1 if still else None]])
                windows = mel_windows_of([it.index for it in with_face])
                t0 = time.perf_counter()
                # The backend is chosen on the first real faces (int8 calibrates on them).
                self.generator.prepare(crops, windows, log=log)
                faces = self.generator(crops, windows)
                stats["generate"] += time.perf_counter() - t0
                for it, f in zip(with_face, faces):
                    it.face = f
            yield from batch
            batch.clear()

        for item in items:
            batch.append(item)
            n_faces += item.box is not None
            if n_faces >= batch_size or len(batch) >= 2 * batch_size:
                yield from flush()
                n_faces = 0
        yield from flush()


def _int_box(box, h: int, w: int) -> tuple[int, int, int, int] | None:
    if box is None:
        return None
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return None
    return x1, y1, x2, y2


def _crop(frame: np.ndarray, box, size: int) -> np.ndarray:
    x1, y1, x2, y2 = box
    return cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)


class _NoProgress:
    def update(self, n=1):
        pass

    def write(self, line: str, file=None):
        print(line, file=file or sys.stderr, flush=True)

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="lipsync", dynamic_ncols=True)

"""Before and after, for a person to look at: an input video beside its lip-synced output.

* :func:`side_by_side` writes one video, input on the left and output on the right, with the
  output's audio, so the new lip motion can be watched against the sound that drives it.
* :func:`before_after_strip` writes a PNG: frames of the input above the same frames of the
  output, over the output's waveform, so the change is visible without a player.

The output lasts as long as its audio; an input that is shorter was looped by inference,
so input frame ``k % len(input)`` is shown beside output frame ``k`` here too.
"""

from __future__ import annotations

import os
from typing import Iterator

import cv2
import numpy as np

from lipsync.errors import MediaError


def _fit_height(frame: np.ndarray, height: int) -> np.ndarray:
    if frame.shape[0] == height:
        return frame
    width = max(2, int(round(frame.shape[1] * height / frame.shape[0])))
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def _looped_frames(path: str | os.PathLike, fps: float | None = None) -> Iterator[np.ndarray]:
    """``path``'s frames (at ``fps``, None: its own rate) for ever: 0..n-1, 0..n-1, ... (decoded again each pass,
    never held); MediaError when it has none."""
    from lipsync.video import iter_frames

    while True:
        count = 0
        for frame in iter_frames(path, fps=fps):
            count += 1
            yield frame
        if count == 0:
            raise MediaError(f"{path}: has no frames")


def _frames_at(path: str | os.PathLike, indices) -> dict[int, np.ndarray]:
    """The frames at ``indices`` of ``path``'s frames looped (index k is frame k % n), one
    pass per loop needed, only those frames kept."""
    wanted, found = sorted(set(indices)), {}
    for k, frame in enumerate(_looped_frames(path)):
        if k > wanted[-1]:
            break
        if k in wanted:
            found[k] = frame
    return found


def _audio_until(writer, chunks: Iterator[np.ndarray], pending: list, due: int | None) -> None:
    """Write audio from ``chunks`` until ``due`` samples are written (None: all of it), so the
    mux stays interleaved with the frames."""
    while due is None or writer.samples_written < due:
        if not pending:
            chunk = next(chunks, None)
            if chunk is None:
                return
            pending.append(chunk)
        chunk = pending.pop()
        take = chunk.size if due is None else min(chunk.size, due - writer.samples_written)
        writer.write_audio(chunk[:take])
        if take < chunk.size:
            pending.append(chunk[take:])


def side_by_side(input_video: str | os.PathLike, output_video: str | os.PathLike,
                 out: str | os.PathLike) -> str:
    """Write ``out`` (mp4): input | output, the output's audio; returns the path. Streamed:
    a frame of each at a time, the audio in chunks."""
    from lipsync.audio import SAMPLE_RATE
    from lipsync.video import VideoWriter, iter_aligned_audio, iter_frames, probe

    info = probe(output_video)
    after = iter_frames(output_video, fps=None)
    first = next(after, None)
    if first is None:
        raise MediaError(f"{output_video}: has no frames")
    before = _looped_frames(input_video)
    height = first.shape[0]
    left = _fit_height(next(before), height)
    audio = iter_aligned_audio(output_video) if info.has_audio else None
    pending: list = []
    with VideoWriter(out, info.fps, left.shape[1] + first.shape[1], height,
                     audio_sample_rate=SAMPLE_RATE if audio is not None else None) as writer:
        frame = first
        while frame is not None:
            writer.write(np.concatenate([left, frame], axis=1))
            if audio is not None:
                _audio_until(writer, audio, pending, int(round(writer.frames_written / info.fps * SAMPLE_RATE)))
            frame = next(after, None)
            if frame is not None:
                left = _fit_height(next(before), height)
        if audio is not None:
            _audio_until(writer, audio, pending, None)
    return os.fspath(out)


def with_audio(video: str | os.PathLike, audio_source: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write ``out``: ``video``'s frames (looped as inference loops them) under the audio of
    ``audio_source``, as long as that audio — the *undubbed* input, what sync metrics of a
    dubbed output are compared against. Streamed: frames follow the audio as it is decoded
    (the frame count ``video_frames_for_audio`` gives grows with the samples so far)."""
    from lipsync.audio import SAMPLE_RATE, iter_audio, video_frames_for_audio
    from lipsync.video import VideoWriter

    fps = 25.0  # the rate inference writes
    frames = _looped_frames(video, fps)
    first = next(frames)
    writer = None
    written = n_samples = 0
    try:
        for chunk in iter_audio(audio_source):
            if writer is None:  # after the audio's first chunk: a bad audio file leaves no output
                writer = VideoWriter(out, fps, first.shape[1], first.shape[0], audio_sample_rate=SAMPLE_RATE)
            writer.write_audio(chunk)
            n_samples += chunk.size
            while written < video_frames_for_audio(n_samples, fps):
                writer.write(first if written == 0 else next(frames))
                written += 1
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    writer.close()
    return os.fspath(out)


def before_after_strip(input_video: str | os.PathLike, output_video: str | os.PathLike,
                       out_png: str | os.PathLike, n_frames: int = 8, step: int = 3, dpi: int = 100) -> str:
    """Write ``out_png``: ``n_frames`` frames (every ``step``-th, from where the speech starts)
    of the input above the same frames of the output, over the output's waveform. Streamed:
    the output is decoded to count its frames, its audio to find the speech, then only the
    frames shown (and the audio under them) are kept."""
    from lipsync.audio import SAMPLE_RATE
    from lipsync.figures import frames_over_waveform, speech_start_in
    from lipsync.synth.mouth import stream_frame_loudness_db
    from lipsync.video import iter_aligned_audio, iter_frames, probe

    info = probe(output_video)
    if not info.has_audio:
        raise MediaError(f"{output_video}: has no audio track to draw")
    total = sum(1 for _ in iter_frames(output_video, fps=None))
    if total == 0:
        raise MediaError(f"{output_video}: has no frames")
    fps, sr = info.fps, SAMPLE_RATE
    span = n_frames * step
    db = stream_frame_loudness_db(iter_aligned_audio(output_video), total, fps, sr)
    first = speech_start_in(db, total, span, lead=step)
    indices = [i for i in range(first, first + span, step) if i < total]
    after, before = _frames_at(output_video, indices), _frames_at(input_video, indices)
    height = after[indices[0]].shape[0]
    top = np.concatenate([_fit_height(before[i], height) for i in indices], axis=1)
    bottom = np.concatenate([after[i] for i in indices], axis=1)
    if top.shape[1] != bottom.shape[1]:
        top = cv2.resize(top, (bottom.shape[1], height), interpolation=cv2.INTER_AREA)
    strip = np.concatenate([top, bottom], axis=0)[:, :, ::-1]  # BGR -> RGB for matplotlib
    title = (f"input (top) and lip-synced output (bottom): frames {indices[0]}..{indices[-1]} "
             f"(every {step}) at {fps:g} fps, over the output's audio")
    lo, hi = int(indices[0] / fps * sr), int((indices[-1] + step) / fps * sr)
    under = _audio_span(iter_aligned_audio(output_video), lo, hi)
    return frames_over_waveform(strip, ["input", "output"], under, sr, fps,
                                indices, step, title, out_png, dpi, audio_start=lo)


def _audio_span(chunks: Iterator[np.ndarray], lo: int, hi: int) -> np.ndarray:
    """Samples ``lo`` .. ``hi`` - 1 of a chunked signal (fewer where it ends)."""
    kept, pos = [], 0
    for chunk in chunks:
        a, b = max(lo, pos), min(hi, pos + chunk.size)
        if a < b:
            kept.append(chunk[a - pos : b - pos])
        pos += chunk.size
        if pos >= hi:
            break
    return np.concatenate(kept) if kept else np.zeros(0, np.float32)


# ----------------------------------------------------------------------------- command line


def add_arguments(parser) -> None:
    parser.add_argument("--input", required=True, help="the face video that was lip-synced")
    parser.add_argument("--output", required=True, help="the lip-synced result (lipsync infer --out)")
    parser.add_argument("--side-by-side", default=None, help="write input | output with the output's audio (mp4)")
    parser.add_argument("--strip", default=None, help="write input frames above output frames over the audio (png)")
    parser.add_argument("--undubbed", default=None,
                        help="write the input's frames under the output's audio (mp4): the 'before' of a sync score")


def run(args) -> int:
    from lipsync.errors import ConfigError

    if not (args.side_by_side or args.strip or args.undubbed):
        raise ConfigError("lipsync compare: pass at least one of --side-by-side, --strip, --undubbed")
    for flag, path, write in (("--side-by-side", args.side_by_side, side_by_side),
                              ("--strip", args.strip, before_after_strip),
                              ("--undubbed", args.undubbed, lambda i, o, out: with_audio(i, o, out))):
        if path:
            print(f"{flag}: {write(args.input, args.output, path)}")
    return 0

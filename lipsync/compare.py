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

import cv2
import numpy as np

from lipsync.errors import MediaError


def _fit_height(frame: np.ndarray, height: int) -> np.ndarray:
    if frame.shape[0] == height:
        return frame
    width = max(2, int(round(frame.shape[1] * height / frame.shape[0])))
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def side_by_side(input_video: str | os.PathLike, output_video: str | os.PathLike,
                 out: str | os.PathLike) -> str:
    """Write ``out`` (mp4): input | output, the output's audio; returns the path."""
    from lipsync.video import read_video, write_video

    before, after = read_video(input_video, fps=None), read_video(output_video)
    if len(after.frames) == 0 or len(before.frames) == 0:
        raise MediaError(f"{output_video if len(after.frames) == 0 else input_video}: has no frames")
    height = after.frames.shape[1]
    frames = (np.concatenate([_fit_height(before.frames[k % len(before.frames)], height), frame], axis=1)
              for k, frame in enumerate(after.frames))
    write_video(out, frames, after.fps, audio=after.audio, sample_rate=after.sample_rate)
    return os.fspath(out)


def with_audio(video: str | os.PathLike, audio_source: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write ``out``: ``video``'s frames (looped as inference loops them) under the audio of
    ``audio_source``, as long as that audio — the *undubbed* input, what sync metrics of a
    dubbed output are compared against."""
    from lipsync.audio import SAMPLE_RATE, load_audio, video_frames_for_audio
    from lipsync.video import read_video, write_video

    fps = 25.0  # the rate inference writes
    frames = read_video(video, fps=fps).frames
    if len(frames) == 0:
        raise MediaError(f"{video}: has no frames")
    audio = load_audio(audio_source)
    n = video_frames_for_audio(audio.size, fps)
    write_video(out, (frames[k % len(frames)] for k in range(n)), fps, audio=audio, sample_rate=SAMPLE_RATE)
    return os.fspath(out)


def before_after_strip(input_video: str | os.PathLike, output_video: str | os.PathLike,
                       out_png: str | os.PathLike, n_frames: int = 8, step: int = 3, dpi: int = 100) -> str:
    """Write ``out_png``: ``n_frames`` frames (every ``step``-th, from where the speech starts)
    of the input above the same frames of the output, over the output's waveform."""
    from lipsync.figures import frames_over_waveform, speech_start
    from lipsync.video import read_video

    before, after = read_video(input_video), read_video(output_video)
    if after.audio is None:
        raise MediaError(f"{output_video}: has no audio track to draw")
    total = len(after.frames)
    span = n_frames * step
    first = speech_start(after.audio, total, after.fps, after.sample_rate, span, lead=step)
    indices = [i for i in range(first, first + span, step) if i < total]
    height = after.frames.shape[1]
    top = np.concatenate([_fit_height(before.frames[i % len(before.frames)], height) for i in indices], axis=1)
    bottom = np.concatenate([after.frames[i] for i in indices], axis=1)
    if top.shape[1] != bottom.shape[1]:
        top = cv2.resize(top, (bottom.shape[1], height), interpolation=cv2.INTER_AREA)
    strip = np.concatenate([top, bottom], axis=0)[:, :, ::-1]  # BGR -> RGB for matplotlib
    title = (f"input (top) and lip-synced output (bottom): frames {indices[0]}..{indices[-1]} "
             f"(every {step}) at {after.fps:g} fps, over the output's audio")
    return frames_over_waveform(strip, ["input", "output"], after.audio, after.sample_rate, after.fps,
                                indices, step, title, out_png, dpi)


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

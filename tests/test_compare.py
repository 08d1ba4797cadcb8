"""Before/after outputs for a person: the side-by-side video and the PNG strip."""

from __future__ import annotations

import numpy as np

from lipsync.compare import before_after_strip, side_by_side
from lipsync.video import iter_frames, probe, read_video, write_video


def _clip(path, n, value, size=(64, 80), seconds=None, sr=16000):
    frames = np.full((n, *size, 3), value, np.uint8)
    frames[:, :, : size[1] // 2, 2] = 200  # a red left half, to find the input again
    t = np.arange(int(sr * (seconds or n / 25))) / sr
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.2)).astype(np.float32)
    write_video(path, frames, 25, audio=audio, sample_rate=sr)
    return path


def test_side_by_side_puts_the_looped_input_left_of_the_output_with_its_audio(tmp_path):
    inp = _clip(tmp_path / "in.mp4", 10, 40, size=(32, 40))      # shorter and smaller: looped, scaled
    out = _clip(tmp_path / "out.mp4", 30, 160, size=(64, 80))
    both = side_by_side(inp, out, tmp_path / "both.mp4")
    info, video = probe(both), read_video(both)
    assert (info.width, info.height) == (80 + 80, 64)
    assert len(video.frames) == 30 and info.has_audio
    assert abs(len(video.audio) / video.sample_rate - 30 / 25) < 0.1
    left, right = video.frames[:, :, :80].astype(int), video.frames[:, :, 80:].astype(int)
    assert abs(left[:, :, 60:, 1].mean() - 40) < 8 and abs(right[:, :, 60:, 1].mean() - 160) < 8
    assert left[:, :, :30, 2].mean() > 150  # the input's red half is on the left in every frame


def test_before_after_strip_is_a_picture_of_both_rows(tmp_path):
    import cv2

    inp = _clip(tmp_path / "in.mp4", 40, 40)
    out = _clip(tmp_path / "out.mp4", 40, 160)
    png = before_after_strip(inp, out, tmp_path / "strip.png", n_frames=6, step=2)
    image = cv2.imread(str(png))
    assert image is not None and image.shape[1] >= 6 * 80 * 0.9
    # The input row (dark) sits above the output row (bright) in the picture.
    column = image[:, image.shape[1] // 2, 1].astype(int)
    dark, bright = np.flatnonzero(np.abs(column - 40) < 15), np.flatnonzero(np.abs(column - 160) < 15)
    assert dark.size and bright.size and dark.mean() < bright.mean()


def test_side_by_side_and_strip_memory_does_not_follow_the_videos_length(length_clips, tmp_path):
    """A 4x longer pair costs the same memory: frames are streamed (the shorter input looped
    by decoding it again), not held; a whole-clip reader costs ~1.4 MB more per second here."""
    from conftest import peak_growth_per_second

    short = min(length_clips)
    for name, make in (("side_by_side", lambda s, clip: side_by_side(length_clips[short], clip,
                                                                      tmp_path / f"side_by_side_{s:g}.mp4")),
                       ("strip", lambda s, clip: before_after_strip(length_clips[short], clip, tmp_path / f"strip_{s:g}.png",
                                                                    n_frames=4, step=2))):
        growth, peaks = peak_growth_per_second(make, length_clips)
        assert growth < 100_000, (name, peaks)
    long = max(length_clips)
    assert sum(1 for _ in iter_frames(tmp_path / f"side_by_side_{long:g}.mp4")) == int(long * 25)

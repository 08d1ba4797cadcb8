"""Mel spectrogram + every per-frame window of a 60 s clip: milliseconds, and vectorised vs naive loop.

    python benchmarks/mel.py [--seconds 60] [--fps 25] [--repeats 5]

Prints medians over the repeats. The naive loop is what the original did per sample/chunk (one
slice per video frame, then stack); the vectorised path is ``frame_mel_windows`` (one gather).
"""

import argparse
import statistics
import time

import numpy as np

from lipsync import audio


def _median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def _naive_windows(mel, n_frames, fps):
    total = mel.shape[1]
    windows = []
    for k in range(n_frames):
        start = int(80.0 * ((k - 1) / fps)) if k >= 1 else 0
        start = min(start, total - audio.MEL_STEP)
        windows.append(mel[:, start : start + audio.MEL_STEP])
    return np.stack(windows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n_samples = int(args.seconds * audio.SAMPLE_RATE)
    t = np.arange(n_samples) / audio.SAMPLE_RATE
    voice = 0.2 * np.sin(2 * np.pi * 180 * t * (1 + 0.3 * np.sin(t)))
    wav = (voice + 0.02 * rng.standard_normal(n_samples)).astype(np.float32)
    n_frames = audio.video_frames_for_audio(n_samples, args.fps)

    mel_ms, mel = _median_ms(lambda: audio.melspectrogram(wav), args.repeats)
    vec_ms, vec = _median_ms(lambda: audio.frame_mel_windows(mel, n_frames, args.fps), args.repeats)
    naive_ms, naive = _median_ms(lambda: _naive_windows(mel, n_frames, args.fps), args.repeats)
    assert np.array_equal(vec, naive), "vectorised windows differ from the naive loop"

    print(f"clip: {args.seconds:g} s audio -> mel {mel.shape}, {n_frames} frames at {args.fps:g} fps "
          f"-> windows {vec.shape} ({vec.nbytes / 2**20:.1f} MiB)")
    print(f"melspectrogram:                  {mel_ms:8.2f} ms")
    print(f"per-frame windows, vectorised:   {vec_ms:8.2f} ms")
    print(f"per-frame windows, naive loop:   {naive_ms:8.2f} ms   "
          f"(naive / vectorised = {naive_ms / vec_ms:.1f}x)")
    print(f"mel + all windows (vectorised):  {mel_ms + vec_ms:8.2f} ms   "
          f"({args.seconds / ((mel_ms + vec_ms) / 1000):.0f}x real time)")


if __name__ == "__main__":
    main()

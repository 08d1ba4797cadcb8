"""Synthetic corpus: how fast it is made, and how good it is as training data.

Builds a corpus (default 6 speakers x 4 clips of 2-4 s = 24 clips, the issue's target),
then prints:
- wall time to build it (serial and with 2 processes),
- the offline detector's hit rate on every frame,
- per-clip Pearson r between the mouth opening measured from pixels (dark pixels in the
  lower face of the detected box) and the audio loudness of the same frame, and the same r
  with the audio shifted by 1..8 frames (it should fall off quickly).

    python benchmarks/synth.py [--speakers 6] [--clips 4] [--seed 0] [--size 160x160]

Timings on a shared machine are noisy; other jobs running at the same time slow it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from lipsync.faces import DlibHogDetector
from lipsync.synth import make_corpus
from lipsync.synth.corpus import parse_size
from lipsync.synth.measure import frame_log_rms, lip_audio_correlation, mouth_opening
from lipsync.video import read_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speakers", type=int, default=6)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="160x160")
    args = parser.parse_args()
    size = parse_size(args.size)
    n = args.speakers * args.clips

    with tempfile.TemporaryDirectory() as tmp:
        timings = {}
        for workers in (1, 2):
            start = time.perf_counter()
            info = make_corpus(f"{tmp}/w{workers}", args.speakers, args.clips, seed=args.seed, size=size,
                               workers=workers, progress=False)
            timings[workers] = time.perf_counter() - start
        seconds = sum(c.duration for c in info.clips)
        for workers, t in timings.items():
            print(f"build {n} clips ({seconds:.0f} s of video, {size[0]}x{size[1]}), workers={workers}: "
                  f"{t:.1f} s ({seconds / t:.1f}x real time)")

        detector = DlibHogDetector(expand=(0.0, 0.0, 0.0, 0.0))
        found = total = 0
        r_by_shift = {s: [] for s in range(0, 9)}
        for clip in info.clips:
            video = read_video(info.root / clip.path)
            opening = mouth_opening(video.frames, detector)
            ok = ~np.isnan(opening)
            found += int(ok.sum())
            total += len(ok)
            loud = frame_log_rms(video.audio, len(video.frames), video.fps)
            for s in r_by_shift:
                r_by_shift[s].append(lip_audio_correlation(opening, loud, shift=s))
        print(f"detector (dlib HOG, upsample 0) found the face in {found}/{total} frames ({found / total:.2%})")
        r0 = np.array(r_by_shift[0])
        print(f"mouth opening vs loudness, same frame: mean r {r0.mean():.2f} (min {r0.min():.2f}, "
              f"max {r0.max():.2f} over {len(r0)} clips)")
        print("audio shifted by k frames: " + ", ".join(f"k={s}: {np.mean(v):+.2f}" for s, v in r_by_shift.items()))


if __name__ == "__main__":
    main()

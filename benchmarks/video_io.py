"""BGR <-> yuv420p conversion: PyAV's swscale default against OpenCV (what lipsync.video uses).

Prints ms per 1280x720 frame each way and the colour error of a round trip (mean signed and
mean absolute difference in 8-bit levels, and what mid-grey 128 comes back as).

    python benchmarks/video_io.py [--frames 200]
"""

from __future__ import annotations

import argparse
import time

import av
import cv2
import numpy as np


def per_frame_ms(fn, items) -> float:
    fn(items[0])  # warm-up
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    args = p.parse_args()
    cv2.setNumThreads(1)  # one core each, as in the writer thread
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for _ in range(8)]
    images = [images[i % 8] for i in range(args.frames)]

    def swscale_encode(img):
        return av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")

    def opencv_encode(img):
        return av.VideoFrame.from_ndarray(cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420), format="yuv420p")

    yuv_frames = [opencv_encode(img) for img in images[:8]]
    yuv_frames = [yuv_frames[i % 8] for i in range(args.frames)]

    def swscale_decode(frame):
        return frame.to_ndarray(format="bgr24")

    def opencv_decode(frame):
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)

    enc = {name: per_frame_ms(fn, images) for name, fn in (("swscale", swscale_encode), ("opencv", opencv_encode))}
    dec = {name: per_frame_ms(fn, yuv_frames) for name, fn in (("swscale", swscale_decode), ("opencv", opencv_decode))}
    print(f"{args.width}x{args.height}, {args.frames} frames, ms per frame (lower is better)")
    print(f"  BGR -> yuv420p: swscale {enc['swscale']:.2f}  opencv {enc['opencv']:.2f}  ratio {enc['swscale'] / enc['opencv']:.1f}x")
    print(f"  yuv420p -> BGR: swscale {dec['swscale']:.2f}  opencv {dec['opencv']:.2f}  ratio {dec['swscale'] / dec['opencv']:.1f}x")

    # Colour error: flat 16 px blocks so 4:2:0 chroma subsampling itself costs nothing.
    blocks = rng.integers(16, 240, (45, 80, 3), dtype=np.uint8)
    flat = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)
    grey = np.full((16, 16, 3), 128, np.uint8)
    for name, encode, decode in (("swscale", swscale_encode, swscale_decode), ("opencv", opencv_encode, opencv_decode)):
        diff = decode(encode(flat)).astype(np.int16) - flat
        grey_back = tuple(int(v) for v in decode(encode(grey))[8, 8])
        print(f"  round trip {name:8s}: mean {diff.mean():+.2f} levels, mean |diff| {np.abs(diff).mean():.2f}, "
              f"grey 128 -> {grey_back}")


if __name__ == "__main__":
    main()

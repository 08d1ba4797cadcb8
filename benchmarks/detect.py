"""Face-detection speed on 720p talking-head frames.

Prints frames/s of the dlib HOG detector at several ``downscale_to`` / ``upsample``
settings, and whether each setting still finds a ~200 px and a ~120 px face (the
astronaut from scikit-image pasted into a 1280x720 frame). Optionally times S3FD on CPU
(random weights unless --s3fd-weights is given: speed only, detections meaningless).

    python benchmarks/detect.py [--frames 40] [--s3fd] [--s3fd-weights PATH]

Timings on a shared machine are noisy; read the ratios more than the absolute numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from lipsync.faces import DlibHogDetector, S3FDDetector

ASTRONAUT_FACE = np.array([179.0, 83.0, 267.0, 171.0])  # dlib's box on the 512x512 image


def frame_720p(face_px: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(120, 20, (720, 1280, 3)), 0, 255).astype(np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), 3)
    head = skimage.data.astronaut()[:, :, ::-1][40:260, 120:330]
    scale = face_px / (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0])
    head = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = head.shape[:2]
    x, y = 640 - w // 2 + int(rng.integers(-40, 40)), 360 - h // 2 + int(rng.integers(-20, 20))
    img[y : y + h, x : x + w] = head
    return img, (ASTRONAUT_FACE - [120, 40, 120, 40]) * scale + [x, y, x, y]


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def hit_rate(detector, frames, truths) -> float:
    dets = detector.detect(frames)
    return float(np.mean([any(iou(d.box, t) > 0.5 for d in ds) for ds, t in zip(dets, truths)]))


def time_fps(detector, frames, repeats: int = 2) -> tuple[float, float]:
    """Best wall-clock frames/s, and CPU ms per frame (less disturbed by other processes
    competing for the cores; dlib is single-threaded, so it is close to the quiet wall time)."""
    detector.detect(frames[:2])  # warm-up
    best, cpu_ms = 0.0, float("inf")
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        detector.detect(frames)
        best = max(best, len(frames) / (time.perf_counter() - start))
        cpu_ms = min(cpu_ms, 1000 * (time.process_time() - cpu) / len(frames))
    return best, cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--s3fd", action="store_true", help="also time S3FD on CPU")
    parser.add_argument("--s3fd-weights", type=Path, default=None)
    args = parser.parse_args()

    big = [frame_720p(200, s) for s in range(args.frames)]
    small = [frame_720p(120, 1000 + s) for s in range(args.frames)]
    frames = [f for f, _ in big]
    print(f"dlib HOG on {args.frames} frames of 1280x720 (best of 2; shared machine, noisy)")
    print(
        f"{'downscale_to':>12} {'upsample':>8} {'fps':>8} {'ms/frame':>9} {'cpu ms':>7} {'hit@200px':>10} "
        f"{'hit@120px':>10} {'min face':>9}"
    )
    settings = [(None, 0), (960, 0), (640, 0), (480, 0), (320, 0), (480, 1), (320, 1)]
    baseline = None
    for downscale_to, upsample in settings:
        detector = DlibHogDetector(upsample=upsample, downscale_to=downscale_to)
        fps, cpu_ms = time_fps(detector, frames)
        baseline = baseline or fps
        hits_big = hit_rate(detector, frames[:10], [t for _, t in big[:10]])
        hits_small = hit_rate(detector, [f for f, _ in small[:10]], [t for _, t in small[:10]])
        print(
            f"{str(downscale_to):>12} {upsample:>8} {fps:>8.1f} {1000 / fps:>9.1f} {cpu_ms:>7.1f} "
            f"{hits_big:>10.0%} {hits_small:>10.0%} {detector.min_face_px(720, 1280):>7.0f}px"
            f"   x{fps / baseline:.1f} vs full size"
        )

    if args.s3fd or args.s3fd_weights:
        weights = args.s3fd_weights
        tmp = None
        if weights is None:
            import torch
            from face_alignment.detection.sfd.net_s3fd import s3fd

            tmp = tempfile.TemporaryDirectory()
            weights = Path(tmp.name) / "s3fd-random.pth"
            torch.save(s3fd().state_dict(), weights)
            print("S3FD with random weights: speed of network + decoding only (no NMS)")
        for downscale_to in (640, 480, 320):
            detector = S3FDDetector("cpu", weights_path=weights, downscale_to=downscale_to, batch_size=8)
            if args.s3fd_weights is None:
                detector.threshold = 1.0  # random weights flood NMS; time network + decode only
            fps, cpu_ms = time_fps(detector, frames[:8], repeats=1)
            print(f"S3FD cpu downscale_to={downscale_to}: {fps:.2f} fps ({cpu_ms:.0f} CPU ms/frame)")
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()

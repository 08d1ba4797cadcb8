"""Step 1 of preprocessing (flat_map, CPU): decode an input and cut it into clips.

Probe, decode video resampled to 25 fps and audio to 16 kHz mono (lipsync.video /
lipsync.audio), streaming; cut into clips at scene cuts and at ``max_clip_seconds``. Yields
one row per clip, or one row with the reason the input is rejected / in error.

Scene cuts: a simple detector, not PySceneDetect: the mean absolute difference between
consecutive frames, on 64x64 grayscale copies, above ``scene_cut_threshold`` (0-255 scale)
starts a new clip. Talking heads change by a few levels per frame; a shot change by tens.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator, Optional

import cv2
import numpy as np

from lipsync import audio as lsa
from lipsync import video as lsv
from lipsync.audio import FPS, SAMPLES_PER_FRAME
from lipsync.errors import MediaError
from pipelines.preprocess.detect import face_detector
from pipelines.preprocess.rows import row, task_threads, verdict


def scene_cut_signature(frame: np.ndarray) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (64, 64),
                      interpolation=cv2.INTER_AREA).astype(np.int16)


ASIDE_EVERY = 25  # one frame a second is kept aside, to tell why a video gave no clip
ASIDE_FRAMES = 16


def _tap(frames: Iterator[np.ndarray], kept: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Pass frames through, keeping every ASIDE_EVERY-th (at most ASIDE_FRAMES) in ``kept``."""
    for index, frame in enumerate(frames):
        if index % ASIDE_EVERY == 0 and len(kept) < ASIDE_FRAMES:
            kept.append(frame)
        yield frame


def _segments(frames_iter: Iterator[np.ndarray], max_frames: int, cut_threshold: float,
              usable_frames: int) -> Iterator[tuple[int, list[np.ndarray], bool]]:
    """(start_frame, frames, cut_before_next) for clips cut at scene cuts and max length."""
    current: list[np.ndarray] = []
    start = 0
    prev_sig = None
    for index, frame in enumerate(frames_iter):
        if index >= usable_frames:
            break
        sig = scene_cut_signature(frame) if cut_threshold > 0 else None
        cut = (prev_sig is not None and sig is not None
               and float(np.abs(sig - prev_sig).mean()) > cut_threshold)
        prev_sig = sig
        if current and (cut or (max_frames > 0 and len(current) >= max_frames)):
            yield start, current, cut
            current, start = [], index
        current.append(frame)
    if current:
        yield start, current, False


def decode_input(item: dict, cfg: Any) -> Iterator[dict]:
    """Step 1 (flat_map). ``item``: an input row (sources.InputItem fields + split + order)."""
    t0 = time.perf_counter()
    threads = task_threads()
    path = item["path"]
    if item.get("reject_reason"):
        yield verdict(item, "rejected", item["reject_reason"])
        return
    if not os.path.exists(path):
        yield verdict(item, "error", "missing_file", f"{path}: no such file")
        return
    if os.path.getsize(path) == 0:
        yield verdict(item, "error", "empty_file", f"{path}: file is empty (0 bytes)")
        return
    try:
        info = lsv.probe(path)
    except MediaError as exc:
        yield verdict(item, "error", "unreadable", str(exc))
        return
    source = {"source_duration": float(info.duration), "source_fps": float(info.fps),
              "width": int(info.width), "height": int(info.height), "rotation": int(info.rotation)}
    if not info.has_video:
        yield verdict(item, "rejected", "no_video_stream", f"{path}: no video stream (audio only)", **source)
        return
    if not info.has_audio:
        yield verdict(item, "rejected", "no_audio_stream", f"{path}: video only", **source)
        return
    try:
        wav = lsa.load_audio(path, sr=lsa.SAMPLE_RATE)
        wav = lsv.align_audio_to_video(path, wav)
    except (MediaError, Exception) as exc:  # noqa: BLE001 - any decoder failure is this input's error
        yield verdict(item, "error", "decode_failed", f"{path}: audio: {exc}", **source)
        return
    usable = len(wav) // SAMPLES_PER_FRAME
    # A piece of a long input (pipelines/preprocess/pieces.py): frames first..stop-1 only, decoded from a seek.
    first = int(item.get("start_frame") or 0)
    stop = item.get("stop_frame")
    usable = usable if stop is None else min(usable, int(stop))
    max_frames = int(round(cfg.max_clip_seconds * FPS)) if cfg.max_clip_seconds else 0
    min_frames = max(1, int(round(cfg.min_clip_seconds * FPS)))
    emitted = 0
    n_decoded = 0
    short_segments = 0
    held: Optional[dict] = None  # one clip of lookahead, so the last one can be flagged
    probe: list[np.ndarray] = []  # a few frames, to name the first cause when no clip is kept
    cuts = 0
    decode_s = time.perf_counter() - t0
    try:
        t_seg = time.perf_counter()
        frames_iter = _tap(lsv.iter_frame_range(path, FPS, first, usable, threads=threads) if first
                           else lsv.iter_frames(path, fps=FPS, threads=threads), probe)
        for start, frames, cut in _segments(frames_iter, max_frames, cfg.scene_cut_threshold, usable - first):
            start += first
            n_decoded = start + len(frames)
            cuts += int(cut)
            decode_s += time.perf_counter() - t_seg
            if len(frames) < min_frames:
                short_segments += 1
                t_seg = time.perf_counter()
                continue
            clip = {"status": "ok", "item": item, **source, "start_frame": int(start),
                    "frames": np.stack(frames),
                    "audio": wav[start * SAMPLES_PER_FRAME:(start + len(frames)) * SAMPLES_PER_FRAME],
                    "timings": {"decode": decode_s}}
            decode_s = 0.0
            if held is not None:
                yield row(item, emitted, False, held)
                emitted += 1
            held = clip
            t_seg = time.perf_counter()
    except (MediaError, Exception) as exc:  # noqa: BLE001
        # Clips already yielded are dropped by the driver: an input is all or nothing.
        yield verdict(item, "error", "decode_failed", f"{path}: video: {exc}", **source)
        return
    counts = {"n_frames_source": int(n_decoded), "short_segments": short_segments}
    if held is None:
        yield _no_clipverdict(item, cfg, probe, cuts, n_decoded, len(wav), source, counts)
        return
    held.update(counts)
    yield row(item, emitted, True, held)


def _any_face(frames: list[np.ndarray], cfg: Any) -> bool:
    """Whether the detector finds a face in any of ``frames`` (True when it cannot run: then
    "no face" is not claimed, and the length is reported as before)."""
    try:
        return any(face_detector(cfg).detect(frames))
    except Exception:  # noqa: BLE001 - a detector that cannot load is reported by step 2
        return True


def _no_clipverdict(item: dict, cfg: Any, probe: list[np.ndarray], cuts: int, n_decoded: int,
                     n_samples: int, source: dict, counts: dict) -> dict:
    """Why an input gave no clip, naming the first cause: no face at all beats "too short"
    (which is then only the scene cuts' consequence); then scene cuts, then length."""
    path = item["path"]
    if n_decoded == 0 and n_samples < SAMPLES_PER_FRAME:
        return verdict(item, "error", "decode_failed", f"{path}: no frame or audio could be decoded",
                        **source, **counts)
    if probe and not _any_face(probe, cfg):
        return verdict(item, "rejected", "no_face",
                        f"{path}: no face in any of {len(probe)} frames sampled across the video", **source, **counts)
    seconds = f"{n_decoded / FPS:.2f}s of video, {n_samples / lsa.SAMPLE_RATE:.2f}s of audio"
    if cuts and n_decoded >= cfg.min_clip_seconds * FPS:
        detail = (f"{path}: {cuts} scene cuts split {seconds} into pieces shorter than --min-clip-seconds "
                  f"{cfg.min_clip_seconds} (raise --scene-cut-threshold, now {cfg.scene_cut_threshold}, or 0 to "
                  "turn cuts off)")
    else:
        detail = f"{path}: no clip of at least {cfg.min_clip_seconds}s ({seconds})"
    return verdict(item, "rejected", "too_short", detail, **source, **counts)

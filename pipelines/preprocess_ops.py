"""The preprocessing stages, as plain functions on rows that Ray Data maps over.

Three stages, so face detection can run on a GPU actor pool while decoding and cropping run
as CPU tasks (without GPUs, ``process_input`` chains the three in one task per input):

1. ``decode_input`` (flat_map, CPU): probe, decode video resampled to 25 fps and audio to
   16 kHz mono (lipsync.video / lipsync.audio), streaming; cut into clips at scene cuts and at
   ``max_clip_seconds``. Yields one row per clip, or one row with the reason the input is
   rejected / in error.
2. ``FaceDetectStage`` (map_batches; CPU tasks or GPU actors): batched detection on every
   ``detect_every``-th frame.
3. ``finish_clip`` (map, CPU): tracking with the one-face policy, detection-rate / size
   filters, interpolation of missed frames and temporal smoothing, crops at every configured
   size, mel spectrogram of the clip's audio, statistics, and the encoded shard sample.

Rows are ``{"input_id", "order", "segment", "last", "payload"}``: ``payload`` is a pickled dict
(our own data between our own stages), which keeps the Arrow schema fixed whatever a row
carries (frames, detections, a rejection). The driver (pipelines/preprocess.py) groups rows
by ``input_id``; ``last`` marks an input's final row.

Scene cuts: a simple detector, not PySceneDetect: the mean absolute difference between
consecutive frames, on 64x64 grayscale copies, above ``scene_cut_threshold`` (0-255 scale)
starts a new clip. Talking heads change by a few levels per frame; a shot change by tens.

Statuses and reasons (the manifest's vocabulary):
    error:    missing_file, empty_file, unreadable, decode_failed, internal_error
    rejected: not_in_filelists, no_video_stream, no_audio_stream, too_short, no_face,
              low_detection_rate, multiple_faces, face_too_small, and with a sync filter
              (pipelines/sync_filter.py) low_sync_confidence, sync_offset_too_large,
              sync_unmeasurable
"""

from __future__ import annotations

import os
import pickle
import time
import traceback
from typing import Any, Iterator, Optional

import cv2
import numpy as np

from lipsync import audio as lsa
from lipsync import video as lsv
from lipsync.data.clip_sample import ClipSample, encode_clip_sample, make_sample_key
from lipsync.errors import LipsyncError, MediaError

FPS = 25.0
SAMPLES_PER_FRAME = int(lsa.SAMPLE_RATE / FPS)  # 640


def pack(payload: dict) -> bytes:
    return pickle.dumps(payload, protocol=5)


def unpack(blob: bytes) -> dict:
    return pickle.loads(blob)


def _row(item: dict, segment: int, last: bool, payload: dict) -> dict:
    return {"input_id": item["input_id"], "order": int(item["order"]), "segment": int(segment),
            "last": bool(last), "payload": pack(payload)}


def _verdict(item: dict, status: str, reason: str, detail: str = "", **extra) -> dict:
    return _row(item, 0, True, {"status": status, "reason": reason, "detail": detail[:2000],
                                "item": item, **extra})


# ------------------------------------------------------------------------------ 1. decode


def scene_cut_signature(frame: np.ndarray) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (64, 64),
                      interpolation=cv2.INTER_AREA).astype(np.int16)


PROBE_EVERY = 25  # one frame a second is kept aside, to tell why a video gave no clip
PROBE_FRAMES = 16


def _tap(frames: Iterator[np.ndarray], kept: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Pass frames through, keeping every PROBE_EVERY-th (at most PROBE_FRAMES) in ``kept``."""
    for index, frame in enumerate(frames):
        if index % PROBE_EVERY == 0 and len(kept) < PROBE_FRAMES:
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


def task_threads() -> int | None:
    """Threads this task may use: the CPUs Ray assigned to it (None outside a Ray task).

    FFmpeg's decoder and OpenCV each start about one thread per core of the node, so without a
    cap every 1-CPU task would compete for all cores of a big node (64 tasks x up to 64
    threads each). Sets OpenCV's pool as a side effect.
    """
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - not inside a Ray worker
        return None
    if not cpus:
        return None
    threads = max(1, int(round(cpus)))
    cv2.setNumThreads(threads)
    return threads


def decode_input(item: dict, cfg: Any) -> Iterator[dict]:
    """Stage 1 (flat_map). ``item``: an input row (sources.InputItem fields + split + order)."""
    t0 = time.perf_counter()
    threads = task_threads()
    path = item["path"]
    if item.get("reject_reason"):
        yield _verdict(item, "rejected", item["reject_reason"])
        return
    if not os.path.exists(path):
        yield _verdict(item, "error", "missing_file", f"{path}: no such file")
        return
    if os.path.getsize(path) == 0:
        yield _verdict(item, "error", "empty_file", f"{path}: file is empty (0 bytes)")
        return
    try:
        info = lsv.probe(path)
    except MediaError as exc:
        yield _verdict(item, "error", "unreadable", str(exc))
        return
    source = {"source_duration": float(info.duration), "source_fps": float(info.fps),
              "width": int(info.width), "height": int(info.height), "rotation": int(info.rotation)}
    if not info.has_video:
        yield _verdict(item, "rejected", "no_video_stream", f"{path}: no video stream (audio only)", **source)
        return
    if not info.has_audio:
        yield _verdict(item, "rejected", "no_audio_stream", f"{path}: video only", **source)
        return
    try:
        wav = lsa.load_audio(path, sr=lsa.SAMPLE_RATE)
        wav = lsv.align_audio_to_video(path, wav)
    except (MediaError, Exception) as exc:  # noqa: BLE001 - any decoder failure is this input's error
        yield _verdict(item, "error", "decode_failed", f"{path}: audio: {exc}", **source)
        return
    usable = len(wav) // SAMPLES_PER_FRAME
    # A piece of a long input (pipelines/pieces.py): frames first..stop-1 only, decoded from a seek.
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
                yield _row(item, emitted, False, held)
                emitted += 1
            held = clip
            t_seg = time.perf_counter()
    except (MediaError, Exception) as exc:  # noqa: BLE001
        # Clips already yielded are dropped by the driver: an input is all or nothing.
        yield _verdict(item, "error", "decode_failed", f"{path}: video: {exc}", **source)
        return
    counts = {"n_frames_source": int(n_decoded), "short_segments": short_segments}
    if held is None:
        yield _no_clip_verdict(item, cfg, probe, cuts, n_decoded, len(wav), source, counts)
        return
    held.update(counts)
    yield _row(item, emitted, True, held)


def _any_face(frames: list[np.ndarray], cfg: Any) -> bool:
    """Whether the detector finds a face in any of ``frames`` (True when it cannot run: then
    "no face" is not claimed, and the length is reported as before)."""
    try:
        return any(_detector(cfg).detect(frames))
    except Exception:  # noqa: BLE001 - a detector that cannot load is reported by stage 2
        return True


def _no_clip_verdict(item: dict, cfg: Any, probe: list[np.ndarray], cuts: int, n_decoded: int,
                     n_samples: int, source: dict, counts: dict) -> dict:
    """Why an input gave no clip, naming the first cause: no face at all beats "too short"
    (which is then only the scene cuts' consequence); then scene cuts, then length."""
    path = item["path"]
    if n_decoded == 0 and n_samples < SAMPLES_PER_FRAME:
        return _verdict(item, "error", "decode_failed", f"{path}: no frame or audio could be decoded",
                        **source, **counts)
    if probe and not _any_face(probe, cfg):
        return _verdict(item, "rejected", "no_face",
                        f"{path}: no face in any of {len(probe)} frames sampled across the video", **source, **counts)
    seconds = f"{n_decoded / FPS:.2f}s of video, {n_samples / lsa.SAMPLE_RATE:.2f}s of audio"
    if cuts and n_decoded >= cfg.min_clip_seconds * FPS:
        detail = (f"{path}: {cuts} scene cuts split {seconds} into pieces shorter than --min-clip-seconds "
                  f"{cfg.min_clip_seconds} (raise --scene-cut-threshold, now {cfg.scene_cut_threshold}, or 0 to "
                  "turn cuts off)")
    else:
        detail = f"{path}: no clip of at least {cfg.min_clip_seconds}s ({seconds})"
    return _verdict(item, "rejected", "too_short", detail, **source, **counts)


# ------------------------------------------------------------------------------ 2. detect


class FaceDetectStage:
    """Stage 2 (map_batches). A class so a GPU actor loads its detector once."""

    def __init__(self, cfg: Any, device: str = "cpu"):
        from lipsync.faces import make_detector

        self.cfg = cfg
        self.detector = make_detector(cfg.detector, device=device,
                                      weights_path=cfg.detector_weights,
                                      downscale_to=cfg.detect_downscale_to,
                                      upsample=cfg.detect_upsample,
                                      batch_size=cfg.detect_batch_size)

    def __call__(self, batch: dict) -> dict:
        payloads = []
        for blob in batch["payload"]:
            payload = unpack(blob)
            if payload["status"] == "ok":
                t0 = time.perf_counter()
                try:
                    from lipsync.faces import keyframe_indices

                    frames = payload["frames"]
                    keyframes = keyframe_indices(len(frames), int(self.cfg.detect_every))
                    found = self.detector.detect([frames[i] for i in keyframes])
                    payload["keyframes"] = keyframes.tolist()
                    payload["detections"] = [[(tuple(d.box), float(d.score)) for d in dets] for dets in found]
                    payload["detector"] = self.detector.describe()
                except Exception as exc:  # noqa: BLE001
                    payload = _error_payload(payload, exc)
                payload.setdefault("timings", {})["detect"] = time.perf_counter() - t0
            payloads.append(pack(payload))
        out = dict(batch)
        out["payload"] = np.array(payloads, dtype=object)
        return out


def _cpu_stage(cfg: Any) -> FaceDetectStage:
    """The CPU detection stage for these settings, cached per worker process."""
    key = (cfg.detector, cfg.detector_weights, cfg.detect_downscale_to, cfg.detect_upsample,
           cfg.detect_batch_size, cfg.detect_every)
    stage = _DETECTORS.get(key)
    if stage is None:
        stage = _DETECTORS[key] = FaceDetectStage(cfg, device="cpu")
    return stage


def _detector(cfg: Any):
    return _cpu_stage(cfg).detector


def detect_faces_batch(batch: dict, cfg: Any) -> dict:
    """Function form of stage 2 for CPU tasks; the detector is cached per worker process."""
    return _cpu_stage(cfg)(batch)


_DETECTORS: dict = {}


def process_input(item: dict, cfg: Any) -> Iterator[dict]:
    """All three stages in one task (flat_map), for CPU-only detection.

    Ray Data gives each operator of a pipeline its own share of the CPUs; as separate
    operators, the slowest stage (detection) would run on one CPU of two while decoding
    idles. One task per input keeps every CPU on the whole chain and keeps frames out of
    the object store.
    """
    for row in decode_input(item, cfg):
        detected = detect_faces_batch({"payload": np.array([row["payload"]], dtype=object)}, cfg)
        yield finish_clip({**row, "payload": detected["payload"][0]}, cfg)


def _error_payload(payload: dict, exc: BaseException) -> dict:
    status = "error"
    reason = "internal_error"
    detail = f"{payload['item']['path']}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
    if isinstance(exc, LipsyncError):
        detail = str(exc)
    keep = {k: v for k, v in payload.items() if k not in ("frames", "audio", "detections")}
    return {**keep, "status": status, "reason": reason, "detail": detail[:2000]}


# ------------------------------------------------------------------------------ 3. finish


def finish_clip(row: dict, cfg: Any) -> dict:
    """Stage 3 (map): track, filter, smooth, crop, mel, encode."""
    task_threads()
    payload = unpack(row["payload"])
    if payload["status"] != "ok":
        return row
    t0 = time.perf_counter()
    try:
        payload = _finish(payload, cfg)
    except Exception as exc:  # noqa: BLE001
        payload = _error_payload(payload, exc)
    timings = payload.setdefault("timings", {})
    # "track": tracking, filters and smoothing - the finish stage minus its timed parts.
    timings["track"] = (time.perf_counter() - t0) - sum(timings.get(k, 0.0) for k in ("crop", "mel", "encode"))
    out = dict(row)
    out["payload"] = pack(payload)
    return out


def _reject(payload: dict, reason: str, detail: str, stats: Optional[dict] = None) -> dict:
    keep = {k: v for k, v in payload.items() if k not in ("frames", "audio", "detections")}
    return {**keep, "status": "rejected", "reason": reason, "detail": detail,
            "stats": stats or {}, "n_frames": len(payload["frames"])}


_TRACK_REASONS = (("no face of at least", "face_too_small"), ("no face", "no_face"),
                  ("several faces", "multiple_faces"))


def _finish(payload: dict, cfg: Any) -> dict:
    from lipsync.faces import Detection, interpolate_missing, smooth_boxes, track_keyframes

    item = payload["item"]
    frames = payload["frames"]
    n = len(frames)
    detections = [[Detection(tuple(box), score) for box, score in dets] for dets in payload["detections"]]
    track = track_keyframes(n, payload["keyframes"], detections, policy=cfg.face_policy,
                            min_face=float(cfg.min_face_size), frame_size=frames.shape[1:3])
    ts = track.stats
    stats = {"mean_face_size": float(ts.mean_face_size) if ts.n_found else 0.0,
             "detection_rate": float(ts.detection_rate), "box_jitter": float(ts.jitter),
             "n_faces_max": int(track.n_faces_max), "multi_face_ratio": float(ts.multi_face_ratio)}
    if track.reject_reason is not None:
        reason = next((code for prefix, code in _TRACK_REASONS if track.reject_reason.startswith(prefix)),
                      "no_face")
        return _reject(payload, reason, f"{item['path']}: {track.reject_reason}", stats)
    if stats["detection_rate"] < cfg.min_detection_rate:
        return _reject(payload, "low_detection_rate",
                       f"{item['path']}: face found in {stats['detection_rate']:.0%} of checked frames "
                       f"(< {cfg.min_detection_rate:.0%})", stats)
    # Frames the face was lost on for longer than track_keyframes bridges: hold/interpolate
    # from the nearest detections (the detection-rate filter bounds how much of this there is).
    boxes = smooth_boxes(interpolate_missing(track.boxes, max_gap=n), window=cfg.smooth_window)
    from lipsync.faces import crop_faces

    t_crop = time.perf_counter()
    sizes = list(cfg.crop_sizes)
    crops = {size: crop_faces(frames, boxes, size=size, pads=tuple(cfg.pads)) for size in sizes}
    t_mel = time.perf_counter()
    mel = lsa.melspectrogram(payload["audio"])
    t_enc = time.perf_counter()
    key = make_sample_key(item["corpus"], item["speaker"], item["clip_id"], payload["start_frame"],
                          item["input_id"])
    meta = {
        "source": item["path"], "input_id": item["input_id"], "corpus": item["corpus"],
        "speaker": item["speaker"], "clip_id": item["clip_id"], "split": item["split"],
        "fps": FPS, "sample_rate": lsa.SAMPLE_RATE, "start_frame": int(payload["start_frame"]),
        "boxes": boxes.tolist(), "detector": payload.get("detector"),
        "pads": list(cfg.pads), "face_policy": cfg.face_policy, "sync_offset": None,
        "sync_confidence": None, "stats": stats,
    }
    sample = ClipSample(key, crops[sizes[0]], mel, meta,
                        extra_frames={s: crops[s] for s in sizes[1:]})
    sync = None
    if cfg.sync_filter is not None:
        verdict = cfg.sync_filter(sample, payload["audio"])
        if verdict is not None and not verdict.get("keep", True):
            stats = {**stats, "sync_confidence": verdict.get("confidence")}
            return _reject(payload, str(verdict.get("reason", "sync_filter")), str(verdict.get("detail", "")), stats)
        if verdict is not None:
            sync = {"offset": verdict.get("offset"), "confidence": verdict.get("confidence"),
                    "shift": int(verdict.get("shift") or 0)}
            if sync["shift"]:
                from pipelines.sync_filter import realign

                sample = realign(sample, payload["audio"], sync["shift"])
                n = sample.n_frames
            sample.meta.update(sync_offset=sync["offset"], sync_confidence=sync["confidence"],
                               sync_shift=sync["shift"])
            stats = {**stats, "sync_confidence": sync["confidence"]}
    encoded = encode_clip_sample(sample, codec=cfg.codec, quality=cfg.jpeg_quality)
    t_end = time.perf_counter()
    keep = {k: v for k, v in payload.items() if k not in ("frames", "audio", "detections")}
    timings = dict(payload.get("timings", {}))
    timings.update(crop=t_mel - t_crop, mel=t_enc - t_mel, encode=t_end - t_enc)
    return {**keep, "status": "ok", "reason": "", "detail": "", "sample": encoded, "key": key,
            "n_frames": n, "stats": stats, "timings": timings, "sync": sync,
            "sample_bytes": sum(len(v) for k, v in encoded.items() if not k.startswith("__"))}

"""The preprocessing steps, as plain functions on rows that Ray Data maps over.

Three steps, so face detection can run on a GPU actor pool while decoding and cropping run
as CPU tasks (without GPUs, ``process_input`` chains the three in one task per input):

1. ``decode_input`` (pipelines/preprocess/decode.py; flat_map, CPU): probe, decode video resampled to 25 fps and audio to
   16 kHz mono (lipsync.video / lipsync.audio), streaming; cut into clips at scene cuts and at
   ``max_clip_seconds``. Yields one row per clip, or one row with the reason the input is
   rejected / in error.
2. ``FaceDetectStep`` (pipelines/preprocess/detect.py; map_batches; CPU tasks or GPU actors): batched detection on every
   ``detect_every``-th frame.
3. ``finish_clip`` (here; map, CPU): tracking with the one-face policy, detection-rate / size
   filters, interpolation of missed frames and temporal smoothing, crops at every configured
   size, mel spectrogram of the clip's audio, statistics, and the encoded shard sample.

Rows (pipelines/preprocess/rows.py) are ``{"input_id", "order", "segment", "last", "payload"}``.
The driver (pipelines/preprocess/driver.py) groups rows
by ``input_id``; ``last`` marks an input's final row.

Statuses and reasons (the manifest's vocabulary):
    error:    missing_file, empty_file, unreadable, decode_failed, internal_error
    rejected: not_in_filelists, no_video_stream, no_audio_stream, too_short, no_face,
              low_detection_rate, multiple_faces, face_too_small, and with a sync filter
              (pipelines/preprocess/sync_filter.py) low_sync_confidence, sync_offset_too_large,
              sync_unmeasurable
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional

import numpy as np

from lipsync import audio as lsa
from lipsync.audio import FPS
from lipsync.data.clip_sample import ClipSample, encode_clip_sample, make_sample_key
from pipelines.preprocess.decode import decode_input
from pipelines.preprocess.detect import detect_faces_batch
from pipelines.preprocess.rows import error_payload, pack, task_threads, unpack


def process_input(item: dict, cfg: Any) -> Iterator[dict]:
    """All three steps in one task (flat_map), for CPU-only detection.

    Ray Data gives each operator of a pipeline its own share of the CPUs; as separate
    operators, the slowest step (detection) would run on one CPU of two while decoding
    idles. One task per input keeps every CPU on the whole chain and keeps frames out of
    the object store.
    """
    for row in decode_input(item, cfg):
        detected = detect_faces_batch({"payload": np.array([row["payload"]], dtype=object)}, cfg)
        yield finish_clip({**row, "payload": detected["payload"][0]}, cfg)


# ------------------------------------------------------------------------------ 3. finish


def finish_clip(row: dict, cfg: Any) -> dict:
    """Step 3 (map): track, filter, smooth, crop, mel, encode."""
    task_threads()
    payload = unpack(row["payload"])
    if payload["status"] != "ok":
        return row
    t0 = time.perf_counter()
    try:
        payload = _finish(payload, cfg)
    except Exception as exc:  # noqa: BLE001
        payload = error_payload(payload, exc)
    timings = payload.setdefault("timings", {})
    # "track": tracking, filters and smoothing - the finish step minus its timed parts.
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
                from pipelines.preprocess.sync_filter import realign

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

"""The rows the preprocessing steps pass along (pipelines/preprocess/ops.py has the flow).

A row is ``{"input_id", "order", "segment", "last", "payload"}``; ``payload`` is a pickled dict
(our own data between our own steps), which keeps the Arrow schema fixed whatever a row
carries (frames, detections, a rejection). Also what a task may use: its CPU threads.
"""

from __future__ import annotations

import pickle
import traceback

import cv2

from lipsync.errors import LipsyncError


def pack(payload: dict) -> bytes:
    return pickle.dumps(payload, protocol=5)


def unpack(blob: bytes) -> dict:
    return pickle.loads(blob)


def row(item: dict, segment: int, last: bool, payload: dict) -> dict:
    return {"input_id": item["input_id"], "order": int(item["order"]), "segment": int(segment),
            "last": bool(last), "payload": pack(payload)}


def verdict(item: dict, status: str, reason: str, detail: str = "", **extra) -> dict:
    return row(item, 0, True, {"status": status, "reason": reason, "detail": detail[:2000],
                                "item": item, **extra})


def error_payload(payload: dict, exc: BaseException) -> dict:
    status = "error"
    reason = "internal_error"
    detail = f"{payload['item']['path']}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
    if isinstance(exc, LipsyncError):
        detail = str(exc)
    keep = {k: v for k, v in payload.items() if k not in ("frames", "audio", "detections")}
    return {**keep, "status": status, "reason": reason, "detail": detail[:2000]}


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

"""One preprocessing task: process a planned run of pieces and write their shards, in the worker.

The Ray Data job (pipelines/preprocess/driver.py) maps :func:`process_and_write` over task rows
(``{"task", "pieces"}``, planned by pipelines/preprocess/pieces.py). The crops are made, encoded and
written to shards here (pipelines/dataset/shards.py ``TaskShardWriter``, one per split), straight to
the output filesystem; what goes back to the driver is one small row per piece (status,
counts, step timings). Detection runs in this task on CPU, or on GPU actors when the job
gives their handles (the frames go to the actor, the boxes come back).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from pipelines.dataset import manifest as mf
from pipelines.preprocess.decode import decode_input
from pipelines.preprocess.detect import FaceDetectStep
from pipelines.preprocess.ops import finish_clip, process_input
from pipelines.preprocess.rows import task_threads, unpack
from pipelines.dataset.shards import Output, TaskShardWriter


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return ""


class GpuFaceDetector(FaceDetectStep):
    """Detection on a GPU: a Ray actor (``num_gpus=1``) loading its detector once."""

    def detect(self, blob: bytes) -> bytes:
        return self({"payload": np.array([blob], dtype=object)})["payload"][0]


def _piece_payloads(piece: dict, cfg: Any, detectors: Optional[Sequence], turn: int) -> list[dict]:
    """Every clip payload of one piece: decode -> detect -> finish (the stages, chained here)."""
    if not detectors:
        return [unpack(row["payload"]) for row in process_input(piece, cfg)]
    import ray

    payloads = []
    for n, row in enumerate(decode_input(piece, cfg)):
        detector = detectors[(turn + n) % len(detectors)]
        blob = ray.get(detector.detect.remote(row["payload"]))
        payloads.append(unpack(finish_clip({**row, "payload": blob}, cfg)["payload"]))
    return payloads


def run_task(task: str, pieces: list[dict], cfg: Any, out: Output,
             detectors: Optional[Sequence] = None) -> list[dict]:
    """Process and write one task; returns one summary row per piece."""
    TaskShardWriter.clear_task(out, task)
    writers: dict[str, TaskShardWriter] = {}
    results = []
    try:
        for n, piece in enumerate(pieces):
            t0 = time.perf_counter()
            payloads = _piece_payloads(piece, cfg, detectors, n)
            for p in payloads:
                p.pop("frames", None)
                p.pop("audio", None)
            row = {**mf.input_row(payloads), "piece": int(piece["piece"]), "n_pieces": int(piece["n_pieces"])}
            samples = [p["sample"] for p in payloads if p["status"] == "ok"] if row["status"] == "ok" else []
            writer = writers.get(piece["split"])
            if writer is None:
                writer = writers[piece["split"]] = TaskShardWriter(out, piece["split"], task, cfg.shard_size)
            writer.add_piece(samples, row)
            timings: dict[str, float] = {}
            for p in payloads:
                for step, seconds in p.get("timings", {}).items():
                    timings[step] = timings.get(step, 0.0) + float(seconds)
            results.append({"task": task, "input_id": piece["input_id"], "piece": int(piece["piece"]),
                            "status": row["status"], "n_clips": row["n_clips"], "pid": os.getpid(), "node": _node_id(),
                            "seconds": time.perf_counter() - t0, "timings": json.dumps(timings)})
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        writer.finish()
    return results


def process_and_write(batch: dict, cfg: Any, out: Output, detectors: Optional[Sequence] = None) -> dict:
    """map_batches UDF over task rows; returns the pieces' summary rows as columns."""
    task_threads()
    results = []
    for task, pieces in zip(batch["task"], batch["pieces"]):
        results.extend(run_task(str(task), json.loads(pieces), cfg, out, detectors))
    keys = ("task", "input_id", "piece", "status", "n_clips", "pid", "node", "seconds", "timings")
    return {k: [r[k] for r in results] for k in keys}

"""Step 2 of preprocessing (map_batches; CPU tasks or GPU actors): batched face detection on
every ``detect_every``-th frame of a clip."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipelines.preprocess.rows import error_payload, pack, unpack


class FaceDetectStep:
    """Step 2 (map_batches). A class so a GPU actor loads its detector once."""

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
                    payload = error_payload(payload, exc)
                payload.setdefault("timings", {})["detect"] = time.perf_counter() - t0
            payloads.append(pack(payload))
        out = dict(batch)
        out["payload"] = np.array(payloads, dtype=object)
        return out


def _cpu_step(cfg: Any) -> FaceDetectStep:
    """The CPU detection step for these settings, cached per worker process."""
    key = (cfg.detector, cfg.detector_weights, cfg.detect_downscale_to, cfg.detect_upsample,
           cfg.detect_batch_size, cfg.detect_every)
    step = _DETECTORS.get(key)
    if step is None:
        step = _DETECTORS[key] = FaceDetectStep(cfg, device="cpu")
    return step


def face_detector(cfg: Any):
    """The CPU detector for these settings (cached per worker process)."""
    return _cpu_step(cfg).detector


def detect_faces_batch(batch: dict, cfg: Any) -> dict:
    """Function form of step 2 for CPU tasks; the detector is cached per worker process."""
    return _cpu_step(cfg)(batch)


_DETECTORS: dict = {}

"""The detector interface: ``Detection`` and the batched ``FaceDetector`` base class.

Every detector returns, per frame, a list of ``Detection`` sorted by score (best first),
with boxes in full-frame pixel coordinates (x1, y1, x2, y2), clipped to the frame.
Frames are BGR uint8 (H, W, 3), the library-wide convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from lipsync.errors import ConfigError


@dataclass(frozen=True)
class Detection:
    """One face: box (x1, y1, x2, y2) in full-frame pixels and the detector's score."""

    box: tuple[float, float, float, float]
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)


def _as_frame_list(frames) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            raise ValueError("detect() takes a batch of frames; wrap a single frame in a list")
        frames = list(frames)
    out = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", type(frame).__name__)
            raise ValueError(f"frame {i}: expected a BGR array (H, W, 3), got {shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame {i}: expected uint8 pixels, got {frame.dtype}")
        out.append(frame)
    return out


class FaceDetector:
    """Batched face detection with optional detection on a downscaled copy.

    ``downscale_to``: when a frame's longer side exceeds it, detection runs on a copy
    resized (INTER_AREA) so that the longer side equals it, and the boxes are mapped back
    to full-frame coordinates. ``None`` detects at full size.

    Subclasses implement ``_detect_same_size(frames)``: a list of same-shape BGR frames in,
    one float array (K, 5) of (x1, y1, x2, y2, score) per frame out, in the coordinates of
    the frames they were given.
    """

    name = "base"

    def __init__(self, downscale_to: int | None = None, batch_size: int = 16):
        if downscale_to is not None and int(downscale_to) < 32:
            raise ConfigError(f"downscale_to={downscale_to}: must be at least 32 px or None")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size}: must be at least 1")
        self.downscale_to = None if downscale_to is None else int(downscale_to)
        self.batch_size = int(batch_size)

    def scale_for(self, height: int, width: int) -> float:
        """The factor (<= 1) frames of this size are resized by before detection."""
        longer = max(height, width)
        if self.downscale_to is None or longer <= self.downscale_to:
            return 1.0
        return self.downscale_to / longer

    def detect(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[list[Detection]]:
        """Faces in each frame: one list of Detection per frame, best score first."""
        frames = _as_frame_list(frames)
        results: list[list[Detection] | None] = [None] * len(frames)
        # Frames of different sizes cannot share a network batch; group them by shape.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            groups.setdefault(frame.shape, []).append(i)
        for (height, width, _), indices in groups.items():
            scale = self.scale_for(height, width)
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = [self._shrink(frames[i], scale) for i in chunk]
                # Exact per-axis factors of the rounded copy size, for mapping boxes back.
                sy, sx = batch[0].shape[0] / height, batch[0].shape[1] / width
                for i, raw in zip(chunk, self._detect_same_size(batch)):
                    results[i] = _to_detections(raw, sx, sy, height, width)
        return results  # type: ignore[return-value]

    def detect_one(self, frame: np.ndarray) -> list[Detection]:
        return self.detect([frame])[0]

    def describe(self) -> dict:
        """Name and settings, for shard metadata and run parameters."""
        return {"name": self.name, "downscale_to": self.downscale_to}

    @staticmethod
    def _shrink(frame: np.ndarray, scale: float) -> np.ndarray:
        if scale == 1.0:
            return frame
        height, width = frame.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)

    def _detect_same_size(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


def _to_detections(raw: np.ndarray, sx: float, sy: float, height: int, width: int) -> list[Detection]:
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, 5)
    if len(raw) == 0:
        return []
    boxes = raw[:, :4] / np.array([sx, sy, sx, sy])
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    order = np.argsort(-raw[:, 4], kind="stable")
    out = []
    for k in order:
        x1, y1, x2, y2 = boxes[k]
        if x2 > x1 and y2 > y1:
            out.append(Detection((float(x1), float(y1), float(x2), float(y2)), float(raw[k, 4])))
    return out

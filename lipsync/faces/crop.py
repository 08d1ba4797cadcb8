"""Face crops: pad the box like the original's ``--pads``, clip to the frame, resize.

``padded_boxes`` gives the exact integer region each crop is cut from, so compositing
(the inference code) can paste a generated face back into the same pixels.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from lipsync.errors import NoFaceError


def padded_boxes(
    boxes: np.ndarray,
    frame_shape: tuple[int, int] | Sequence[tuple[int, int]],
    pads: tuple[int, int, int, int] = (0, 10, 0, 0),
) -> np.ndarray:
    """Integer crop regions (x1, y1, x2, y2), x2/y2 exclusive.

    ``pads`` = (top, bottom, left, right) pixels added to the box, then clipped to the
    frame (as the original's inference.py: ``y1 = max(0, y1 - top)``, ``y2 = min(H, y2 +
    bottom)``…). Box coordinates are rounded to the nearest pixel (the original truncated
    its detector's floats). ``frame_shape`` is one (height, width) for all boxes or one per
    box. Rows with NaN raise NoFaceError naming the first such frame.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    missing = np.flatnonzero(np.isnan(boxes).any(axis=1))
    if len(missing):
        raise NoFaceError(f"frame {missing[0]}: no face box ({len(missing)} frames without one)")
    shapes = np.asarray(frame_shape, dtype=np.int64).reshape(-1, 2)
    shapes = np.broadcast_to(shapes, (len(boxes), 2))
    height, width = shapes[:, 0], shapes[:, 1]
    top, bottom, left, right = (int(p) for p in pads)
    r = np.rint(boxes).astype(np.int64)
    out = np.stack(
        [
            np.clip(r[:, 0] - left, 0, width),
            np.clip(r[:, 1] - top, 0, height),
            np.clip(r[:, 2] + right, 0, width),
            np.clip(r[:, 3] + bottom, 0, height),
        ],
        axis=1,
    )
    empty = np.flatnonzero((out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1]))
    if len(empty):
        raise NoFaceError(f"frame {empty[0]}: face box {boxes[empty[0]].tolist()} lies outside the frame")
    return out


def crop_faces(
    frames: Sequence[np.ndarray] | np.ndarray,
    boxes: np.ndarray,
    size: int = 96,
    pads: tuple[int, int, int, int] = (0, 10, 0, 0),
    interpolation: int | None = None,
) -> np.ndarray:
    """(N, size, size, 3) uint8 BGR crops of ``frames`` at ``boxes`` padded by ``pads``.

    The padded, clipped region is resized to a square without keeping its aspect ratio,
    as in the original (96x96 there). ``interpolation``: a cv2 flag, or None for INTER_AREA
    when shrinking (no aliasing) and INTER_LINEAR when enlarging.
    """
    if len(frames) != len(np.asarray(boxes).reshape(-1, 4)):
        raise ValueError(f"{len(frames)} frames but {len(np.asarray(boxes).reshape(-1, 4))} boxes")
    regions = padded_boxes(boxes, [f.shape[:2] for f in frames], pads) if len(frames) else np.zeros((0, 4), int)
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, (frame, (x1, y1, x2, y2)) in enumerate(zip(frames, regions)):
        face = frame[y1:y2, x1:x2]
        flag = interpolation
        if flag is None:
            flag = cv2.INTER_AREA if (x2 - x1) >= size and (y2 - y1) >= size else cv2.INTER_LINEAR
        out[i] = cv2.resize(face, (size, size), interpolation=flag)
    return out

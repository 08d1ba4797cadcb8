"""Temporal filtering of a per-frame box track: gap filling, smoothing, jitter.

Boxes are (N, 4) float arrays (x1, y1, x2, y2) with NaN rows where the face is unknown.
"""

from __future__ import annotations

import numpy as np

from lipsync.errors import ConfigError


def box_sizes(box: np.ndarray) -> np.ndarray:
    """Face size sqrt(width * height) of each box (the "face px" used for stats)."""
    return np.sqrt(np.clip(box[..., 2] - box[..., 0], 0, None) * np.clip(box[..., 3] - box[..., 1], 0, None))


def box_jitter(boxes: np.ndarray, frame_index: np.ndarray | None = None) -> float:
    """Mean |second difference| of box coordinates / mean face size, over triples of
    consecutive valid rows. ``frame_index``: the frame number of each row (default 0..N-1);
    only evenly spaced triples count, so sparse keyframes with an irregular last step work."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if len(boxes) < 3:
        return float("nan")
    index = np.arange(len(boxes)) if frame_index is None else np.asarray(frame_index)
    accel = boxes[2:] - 2 * boxes[1:-1] + boxes[:-2]
    even = (index[2:] - index[1:-1]) == (index[1:-1] - index[:-2])
    ok = ~np.isnan(accel).any(axis=1) & even
    sizes = box_sizes(boxes[~np.isnan(boxes).any(axis=1)])
    if not ok.any() or not len(sizes) or sizes.mean() <= 0:
        return float("nan")
    return float(np.abs(accel[ok]).mean() / sizes.mean())


def interpolate_missing(boxes: np.ndarray, max_gap: int = 5, hold_edges: bool = True) -> np.ndarray:
    """Fill NaN rows: gaps of at most ``max_gap`` frames between two known boxes are
    interpolated linearly; with ``hold_edges``, up to ``max_gap`` unknown frames before the
    first / after the last known box copy that box. Longer gaps stay NaN. Returns a copy.
    """
    out = np.array(boxes, dtype=np.float64, copy=True)
    known = np.flatnonzero(~np.isnan(out).any(axis=1))
    if len(known) == 0 or max_gap <= 0:
        return out
    for a, b in zip(known[:-1], known[1:]):
        gap = b - a - 1
        if 0 < gap <= max_gap:
            w = (np.arange(1, gap + 1) / (gap + 1))[:, None]
            out[a + 1 : b] = (1 - w) * out[a] + w * out[b]
    if hold_edges:
        first, last = known[0], known[-1]
        if first <= max_gap:
            out[:first] = out[first]
        if len(out) - 1 - last <= max_gap:
            out[last + 1 :] = out[last]
    return out


def smooth_boxes(boxes: np.ndarray, window: int = 5, mode: str = "centered") -> np.ndarray:
    """Temporal smoothing of a box track; NaN rows stay NaN and are left out of the means.

    ``mode="centered"`` (default): each box becomes the mean of the valid boxes within
    ``window // 2`` frames on either side — no lag. ``mode="forward"`` reproduces the
    original inference.py: the mean of the box and the next ``window - 1`` boxes, the last
    ``window`` boxes at the end of the clip. That forward mean leads the face by
    ``(window - 1) / 2`` frames (2 at window 5), so the box arrives early on a moving head;
    the original also truncated the means to int, which we do not.
    """
    if mode not in ("centered", "forward"):
        raise ConfigError(f"smoothing mode {mode!r}: choose centered or forward")
    boxes = np.asarray(boxes, dtype=np.float64)
    n = len(boxes)
    if window <= 1 or n == 0:
        return boxes.copy()
    valid = ~np.isnan(boxes).any(axis=1)
    values = np.where(valid[:, None], boxes, 0.0)
    csum = np.concatenate([np.zeros((1, 4)), np.cumsum(values, axis=0)])
    ccount = np.concatenate([[0], np.cumsum(valid)])
    idx = np.arange(n)
    if mode == "centered":
        lo = np.clip(idx - window // 2, 0, n)
        hi = np.clip(idx + (window - 1 - window // 2) + 1, 0, n)
    else:
        lo = np.minimum(idx, max(n - window, 0))
        hi = np.minimum(lo + window, n)
    count = ccount[hi] - ccount[lo]
    mean = (csum[hi] - csum[lo]) / np.maximum(count, 1)[:, None]
    return np.where(valid[:, None] & (count[:, None] > 0), mean, np.nan)

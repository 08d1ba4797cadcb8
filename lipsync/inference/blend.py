"""Putting a generated face back into its frame.

The original pastes the generated 96x96 crop, resized to the box, as a hard rectangle;
the seam this leaves around the lower face is one of its users' most reported problems.
`blend_face` instead mixes the generated crop in through a feathered mask that covers the
mouth and lower face (the half the generator actually re-draws) and fades to zero before
the box edge, so the frame outside the mouth region -- and every pixel outside the box --
keeps its original values. `paste_face` keeps the original's behaviour for parity.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

# Region the mask keeps fully generated, as fractions of the box (left, right, top, bottom).
# The generator re-draws rows 48..95 of its 96x96 input (the lower half); the mask is fully
# generated a little inside that and fades out over FEATHER of the box size.
MASK_CORE = (0.18, 0.82, 0.55, 0.90)
MASK_FEATHER = 0.12


def _ramp(n: int, lo: float, hi: float, feather: float) -> np.ndarray:
    """1 inside [lo, hi] (fractions of n), smoothstep down to 0 over `feather` outside it."""
    x = (np.arange(n, dtype=np.float32) + 0.5) / n
    dist = np.maximum(lo - x, x - hi)  # < 0 inside
    t = np.clip(1.0 - dist / feather, 0.0, 1.0)
    t = np.where(dist <= 0, 1.0, t)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


@lru_cache(maxsize=64)
def feather_mask(height: int, width: int) -> np.ndarray:
    """(height, width, 1) float32 weights in [0, 1] for a box of that size; cached."""
    left, right, top, bottom = MASK_CORE
    mask = np.outer(_ramp(height, top, bottom, MASK_FEATHER), _ramp(width, left, right, MASK_FEATHER))
    mask.setflags(write=False)
    return mask[:, :, None]


def _box_region(frame: np.ndarray, box) -> tuple[int, int, int, int]:
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(w, x2), min(h, y2)
    return x1, y1, x2, y2


def _resize_to(face: np.ndarray, width: int, height: int) -> np.ndarray:
    if face.shape[1] == width and face.shape[0] == height:
        return face
    return cv2.resize(face, (width, height), interpolation=cv2.INTER_LINEAR)


def paste_face(frame: np.ndarray, face: np.ndarray, box) -> np.ndarray:
    """Hard paste (the original): the whole box is replaced by the resized face. In place."""
    x1, y1, x2, y2 = _box_region(frame, box)
    if x2 <= x1 or y2 <= y1:
        return frame
    frame[y1:y2, x1:x2] = _resize_to(face, x2 - x1, y2 - y1)
    return frame


def blend_face(frame: np.ndarray, face: np.ndarray, box) -> np.ndarray:
    """Feathered composite of the lower face; pixels outside the mask stay bit-exact. In place."""
    x1, y1, x2, y2 = _box_region(frame, box)
    if x2 <= x1 or y2 <= y1:
        return frame
    h, w = y2 - y1, x2 - x1
    mask = feather_mask(h, w)
    # Only the mask's non-zero rows/columns are touched, so the rest of the box is exact.
    nz_y = np.flatnonzero(mask.max(axis=1)[:, 0] > 0)
    nz_x = np.flatnonzero(mask.max(axis=0)[:, 0] > 0)
    if nz_y.size == 0 or nz_x.size == 0:
        return frame
    ys, ye, xs, xe = nz_y[0], nz_y[-1] + 1, nz_x[0], nz_x[-1] + 1
    gen = _resize_to(face, w, h)[ys:ye, xs:xe].astype(np.float32)
    region = frame[y1 + ys:y1 + ye, x1 + xs:x1 + xe]
    m = mask[ys:ye, xs:xe]
    orig = region.astype(np.float32)
    mixed = orig + (gen - orig) * m
    region[...] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return frame


def composite(frame: np.ndarray, face: np.ndarray, box, mode: str = "blend") -> np.ndarray:
    """Dispatch on `mode` ('blend' | 'paste')."""
    if mode == "paste":
        return paste_face(frame, face, box)
    return blend_face(frame, face, box)

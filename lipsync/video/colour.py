"""Decoded frames as BGR pixels and back: yuv420p <-> BGR, and frames turned upright.

Frames are numpy uint8 (H, W, 3) in BGR order (the library's convention; conversion happens here).

BGR <-> yuv420p goes through OpenCV (BT.601, limited range, rounded), not PyAV's swscale
default: swscale's fast path darkens by ~2 levels per round trip (mid-grey 128 comes back
as (123, 126, 124)), which inference would print on every passed-through frame, and its
encoder-side conversion is ~15x slower at 720p (benchmarks/video_io.py). Frames that are
not limited-range BT.601 (or untagged) yuv420p -- BT.709 HD video, full-range JPEG-style
video, other pixel formats -- keep swscale, which honours their tags. Written files are
tagged BT.601 limited range, the conversion used, so players show the colours we wrote.

Rotation: phone videos store a display matrix instead of rotating pixels. PyAV exposes it per
decoded frame as ``VideoFrame.rotation`` (degrees counter-clockwise, FFmpeg's convention);
with ``rotate=True`` frames are turned so they look as a player shows them. Flips in the
display matrix are rare and ignored.
"""

from __future__ import annotations

import av
import cv2
import numpy as np

from lipsync.video.probing import _normalise_rotation


_BT601_SPACES = (2, 5, 6)  # AVColorSpace: unspecified, BT470BG, SMPTE170M
_COLOR_RANGE_FULL = 2  # AVColorRange: JPEG


def _i420_to_bgr(frame: av.VideoFrame) -> np.ndarray | None:
    if (frame.format.name != "yuv420p" or frame.width % 2 or frame.height % 2
            or frame.colorspace not in _BT601_SPACES or frame.color_range == _COLOR_RANGE_FULL):
        return None
    return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)


def bgr_to_i420_frame(image: np.ndarray) -> av.VideoFrame:
    """An even-sized BGR uint8 image as a yuv420p VideoFrame (see the module docstring)."""
    return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")


def _to_bgr(frame: av.VideoFrame, rotate: bool) -> np.ndarray:
    image = _i420_to_bgr(frame)
    if image is None:
        image = frame.to_ndarray(format="bgr24")
    if rotate:
        turn = _normalise_rotation(frame.rotation)
        # frame.rotation is counter-clockwise: turn the pixels the same way a player does.
        if turn == 90:
            image = cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
        elif turn == 180:
            image = cv2.rotate(image, cv2.ROTATE_180)
        elif turn == 270:
            image = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    return np.ascontiguousarray(image)

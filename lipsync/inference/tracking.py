"""Face boxes for a stream of frames: sparse detection, tracking in between, smoothing.

Detection dominates the original's run time (S3FD on every frame). Here the detector sees
every ``detect_every``-th frame (and the last one); the frames between two keyframes get
boxes interpolated linearly between the keyframes' boxes. Where interpolation would be
wrong -- a face appears or disappears between the keyframes, or the box jumps (a cut, fast
motion: low overlap) -- every frame of that gap is detected instead. Boxes are then padded
(``--pads``) and smoothed over time (the original's rule: the mean of a box and the next
``window - 1`` boxes, the last ``window`` at the end of the sequence), averaging only over
frames that have a face.

Everything is streaming: at most about ``chunk + window`` frames are held at a time.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

Box = np.ndarray  # (4,) float64 x1, y1, x2, y2; None where a frame has no face

# Below this IoU between two consecutive keyframes' boxes, the gap is detected densely.
MIN_KEYFRAME_IOU = 0.4


def iou(a: Box, b: Box) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def select_face(detections: Sequence, frame_shape: tuple[int, ...], policy: str = "largest") -> Box | None:
    """One box out of a frame's detections: the largest, or the one nearest the centre."""
    if not detections:
        return None
    if policy == "central":
        h, w = frame_shape[:2]
        best = min(detections, key=lambda d: (d.center[0] - w / 2) ** 2 + (d.center[1] - h / 2) ** 2)
    else:
        best = max(detections, key=lambda d: d.area)
    return np.asarray(best.box, dtype=np.float64)


def pad_box(box: Box | None, pads: Sequence[int], frame_shape: tuple[int, ...]) -> Box | None:
    """The original's padding: (top, bottom, left, right) pixels added, clipped to the frame."""
    if box is None:
        return None
    h, w = frame_shape[:2]
    top, bottom, left, right = pads
    return np.array([max(0.0, box[0] - left), max(0.0, box[1] - top),
                     min(float(w), box[2] + right), min(float(h), box[3] + bottom)])


def roi_around(box: Box, frame_shape: tuple[int, ...], context: float = 2.2) -> tuple[int, int, int, int]:
    """Square-ish region ``context`` times the box size around its centre, clipped to the frame."""
    h, w = frame_shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = context * max(box[2] - box[0], box[3] - box[1]) / 2
    return (max(0, int(cx - half)), max(0, int(cy - half)), min(w, int(cx + half) + 1), min(h, int(cy + half) + 1))


class SparseFaceTracker:
    """Turns an iterator of frames into (frame, box) pairs, detecting only keyframes.

    ``detect``: a batched function list[frame] -> list[Box | None] (already one face per
    frame). ``detect_near``: optional (frame, previous box) -> Box | None that searches only
    a region around the previous box (a fraction of the cost of a full-frame search); when
    given, keyframes are searched near the last face first and over the whole frame only
    when that fails or every ``full_every``-th keyframe (so a new, larger face is noticed).
    ``chunk``: frames buffered per detection round (memory bound); rounded up to a
    multiple of ``every``.
    """

    def __init__(self, detect: Callable[[list[np.ndarray]], list[Box | None]], every: int = 5,
                 chunk: int = 40, detect_near: Callable[[np.ndarray, Box], Box | None] | None = None,
                 full_every: int = 10):
        self.detect = detect
        self.detect_near = detect_near
        self.every = max(1, int(every))
        self.full_every = max(1, int(full_every))
        self.chunk = max(self.every, -(-int(chunk) // self.every) * self.every)
        self.frames_detected = 0  # full-frame searches
        self.frames_searched_near = 0  # region searches
        self._last_box: Box | None = None
        self._since_full = 0

    def _detect(self, frames: list[np.ndarray], hint: Box | None = None) -> list[Box | None]:
        if not frames:
            return []
        if self.detect_near is None:
            self.frames_detected += len(frames)
            return self.detect(frames)
        out = []
        for frame in frames:
            box = None
            prev = self._last_box if hint is None else hint
            if prev is not None and self._since_full < self.full_every:
                self.frames_searched_near += 1
                self._since_full += 1
                box = self.detect_near(frame, prev)
            if box is None:
                self.frames_detected += 1
                self._since_full = 0
                box = self.detect([frame])[0]
            if box is not None and hint is None:
                self._last_box = box
            out.append(box)
        return out

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, Box | None]]:
        it = iter(frames)
        # Buffer entries: [frame, box, is_keyframe, detected]. After the first round the
        # first entry is the previous round's last keyframe (already detected), the anchor
        # of the next gap.
        buf: list[list] = []
        done = False
        index = 0  # stream index of the next frame read
        while not done:
            while len(buf) < self.chunk + 1:
                try:
                    frame = next(it)
                except StopIteration:
                    done = True
                    break
                buf.append([frame, None, index % self.every == 0, False])
                index += 1
            if not buf:
                return
            if done:
                buf[-1][2] = True  # the last frame bounds the final gap
            todo = [i for i, e in enumerate(buf) if e[2] and not e[3]]
            for i, box in zip(todo, self._detect([buf[i][0] for i in todo])):
                buf[i][1] = box
                buf[i][3] = True
            keys = [i for i, e in enumerate(buf) if e[2]]
            for a, b in zip(keys, keys[1:]):
                self._fill_gap(buf, a, b)
            # Emit everything before the last keyframe; keep it as the next round's anchor.
            last = len(buf) if done else keys[-1]
            for entry in buf[:last]:
                yield entry[0], entry[1]
            buf = buf[last:]

    def _fill_gap(self, buf: list[list], a: int, b: int) -> None:
        if b - a < 2:
            return
        box_a, box_b = buf[a][1], buf[b][1]
        if box_a is None and box_b is None:
            return  # no face at either end: assume none in between
        if box_a is not None and box_b is not None and iou(box_a, box_b) >= MIN_KEYFRAME_IOU:
            for i in range(a + 1, b):
                t = (i - a) / (b - a)
                buf[i][1] = (1 - t) * box_a + t * box_b
            return
        inner = list(range(a + 1, b))
        hint = box_a if box_a is not None else box_b
        for i, box in zip(inner, self._detect([buf[i][0] for i in inner], hint=hint)):
            buf[i][1] = box
            buf[i][3] = True


def smooth_stream(pairs: Iterable[tuple[np.ndarray, Box | None]], window: int = 5
                  ) -> Iterator[tuple[np.ndarray, Box | None]]:
    """The original's box smoothing, streaming: box k becomes the mean of boxes k .. k+window-1
    (at the end of the sequence, of the last ``window``), over the frames that have a face.
    Frames without a face keep None."""
    window = max(1, int(window))
    if window == 1:
        yield from pairs
        return
    pending: deque = deque()  # (frame, box) not yet emitted, at most `window`
    tail: deque = deque(maxlen=window)  # last `window` boxes seen (for the end rule)

    def mean(boxes):
        found = [b for b in boxes if b is not None]
        return np.mean(found, axis=0) if found else None

    for frame, box in pairs:
        pending.append((frame, box))
        tail.append(box)
        if len(pending) == window:
            f0, b0 = pending.popleft()
            yield f0, (mean([b0] + [b for _, b in pending]) if b0 is not None else None)
    # End of sequence: every remaining frame averages over the last `window` boxes.
    end_mean = mean(tail)
    for f, b in pending:
        yield f, (end_mean if b is not None else None)

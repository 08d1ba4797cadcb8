"""Follow one face through a clip: association, one-face policy, gap filling, smoothing.

Input is one entry per frame: a list of ``Detection`` for frames that were run through a
detector, or ``None`` for frames that were not (detection every k-th frame). ``None``
frames are not misses: they do not lower the detection rate, and the interpolation
helpers fill them from the neighbouring keyframes.

Association is greedy and online: each detection joins the live track whose last box
overlaps it best (IoU >= ``iou_threshold``), or, when the face moved too far for any
overlap (sparse keyframes, fast motion), the track whose last box centre is within half a
face size with a similar size; otherwise it starts a new track. A track stays live for
``max_link_gap`` frames after its last detection. The policy then picks one track, and
tracks of the same face that were split by a long gap (no time overlap, close in space) are
merged back into it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from lipsync.errors import ConfigError, NoFaceError
from lipsync.faces.base import Detection
from lipsync.faces.temporal import box_jitter, box_sizes, interpolate_missing, smooth_boxes  # noqa: F401

POLICIES = ("largest", "central", "reject-multiple")


@dataclass
class TrackStats:
    """Per-clip data-quality figures (the preprocessing manifest stores these).

    ``mean_face_size``: mean sqrt(width*height) of the tracked box in px over detected
    frames. ``detection_rate``: detected / evaluated frames (frames given as ``None`` were
    not evaluated). ``jitter``: mean absolute second difference of the box coordinates over
    runs of three consecutive evaluated frames where the face was detected (keyframes when
    detecting every k-th frame), divided by the mean face size — 0 for a box moving at
    constant speed, NaN when there is no such run. ``multi_face_ratio``: share of
    evaluated frames with two or more faces of at least ``min_face`` px.
    """

    n_frames: int
    n_evaluated: int
    n_found: int
    mean_face_size: float
    detection_rate: float
    jitter: float
    multi_face_ratio: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FaceTrack:
    """One face through a clip.

    ``boxes``: (N, 4) float (x1, y1, x2, y2), NaN rows where the face is unknown.
    ``found``: (N,) bool, frames where the detector saw the tracked face (not filled in).
    ``scores``: (N,) detector scores, NaN where not found. ``n_faces_max``: the most faces
    (of at least ``min_face`` px) in one frame. ``reject_reason``: why the clip fails the
    policy, in words, or None; ``reject_code`` the same as a stable code for manifests:
    "no_face", "face_too_small" or "multiple_faces".
    """

    boxes: np.ndarray
    found: np.ndarray
    scores: np.ndarray
    n_faces_max: int
    policy: str
    reject_reason: str | None = None
    stats: TrackStats = field(default=None)  # type: ignore[assignment]
    reject_code: str | None = None

    @property
    def valid(self) -> np.ndarray:
        """Frames that have a box (detected or filled in)."""
        return ~np.isnan(self.boxes).any(axis=1)

    def require(self, source: str = "clip") -> "FaceTrack":
        """Self, or NoFaceError naming ``source`` and the reason the track was rejected."""
        if self.reject_reason is not None:
            raise NoFaceError(f"{source}: {self.reject_reason}")
        return self

    def filled(self, max_gap: int) -> "FaceTrack":
        """A copy with gaps of up to ``max_gap`` frames interpolated (see interpolate_missing)."""
        return FaceTrack(
            boxes=interpolate_missing(self.boxes, max_gap=max_gap),
            found=self.found.copy(),
            scores=self.scores.copy(),
            n_faces_max=self.n_faces_max,
            policy=self.policy,
            reject_reason=self.reject_reason,
            stats=self.stats,
            reject_code=self.reject_code,
        )


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (M, 4) with every box in b (K, 4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _center(box: np.ndarray) -> np.ndarray:
    return np.stack([(box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2], axis=-1)


def _same_face(a: np.ndarray, b: np.ndarray, reach: float = 0.5) -> bool:
    """Close enough in position and size to be the same face after it moved (no IoU
    needed): similar size and centres at most ``reach`` face sizes apart."""
    sa, sb = float(box_sizes(a)), float(box_sizes(b))
    if min(sa, sb) <= 0 or not 0.67 <= sa / sb <= 1.5:
        return False
    return float(np.linalg.norm(_center(a) - _center(b))) <= reach * (sa + sb) / 2


class _Tracklet:
    def __init__(self, frame: int, box: np.ndarray, score: float):
        self.frames = [frame]
        self.boxes = [box]
        self.scores = [score]

    def add(self, frame: int, box: np.ndarray, score: float) -> None:
        self.frames.append(frame)
        self.boxes.append(box)
        self.scores.append(score)

    @property
    def last_frame(self) -> int:
        return self.frames[-1]


def _associate(per_frame: list[list[Detection] | None], iou_threshold: float, max_link_gap: int) -> list[_Tracklet]:
    tracks: list[_Tracklet] = []
    for t, dets in enumerate(per_frame):
        if not dets:
            continue
        boxes = np.array([d.box for d in dets], dtype=np.float64)
        live = [tr for tr in tracks if t - tr.last_frame <= max_link_gap]
        taken_det: set[int] = set()
        if live:
            last = np.array([tr.boxes[-1] for tr in live])
            iou = _iou(last, boxes)
            taken_tr: set[int] = set()
            # Greedy by best overlap first; then unmatched pairs by proximity.
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                i, j = divmod(int(flat), len(dets))
                if iou[i, j] < iou_threshold:
                    break
                if i not in taken_tr and j not in taken_det:
                    live[i].add(t, boxes[j], dets[j].score)
                    taken_tr.add(i)
                    taken_det.add(j)
            for i, tr in enumerate(live):
                if i in taken_tr:
                    continue
                for j in range(len(dets)):
                    if j not in taken_det and _same_face(tr.boxes[-1], boxes[j]):
                        tr.add(t, boxes[j], dets[j].score)
                        taken_det.add(j)
                        break
        for j, det in enumerate(dets):
            if j not in taken_det:
                tracks.append(_Tracklet(t, boxes[j], det.score))
    return tracks


def _merge_split_tracks(main: _Tracklet, others: list[_Tracklet]) -> _Tracklet:
    """Join tracklets of the same face split by a gap longer than the link gap.

    Only tracklets with no frame in common with the main track qualify, and their ends must
    be within one face size of the main track's neighbouring boxes (the face may have
    moved further during a longer gap than between linked frames)."""
    frames = dict(zip(main.frames, zip(main.boxes, main.scores)))
    for other in sorted(others, key=lambda tr: -len(tr.frames)):
        if any(f in frames for f in other.frames):
            continue  # present at the same time: a different face
        known = np.array(sorted(frames))
        # Compare the other tracklet's end nearest in time with the main track there.
        before = known[known < other.frames[0]]
        after = known[known > other.frames[-1]]
        ok = True
        if len(before):
            ok &= _same_face(frames[int(before[-1])][0], other.boxes[0], reach=1.0)
        if len(after):
            ok &= _same_face(frames[int(after[0])][0], other.boxes[-1], reach=1.0)
        if ok:
            frames.update(zip(other.frames, zip(other.boxes, other.scores)))
    merged = _Tracklet(0, np.zeros(4), 0.0)
    merged.frames = sorted(frames)
    merged.boxes = [frames[f][0] for f in merged.frames]
    merged.scores = [frames[f][1] for f in merged.frames]
    return merged


def track_faces(
    detections_per_frame: Sequence[Sequence[Detection] | None],
    policy: str = "largest",
    min_face: float = 0.0,
    frame_size: tuple[int, int] | None = None,
    iou_threshold: float = 0.3,
    max_link_gap: int = 12,
    max_multi_ratio: float = 0.05,
) -> FaceTrack:
    """Pick one face and follow it through the clip.

    ``policy``: "largest" — the track with the largest summed box area (large and
    present longest); "central" — the track staying closest to the frame centre
    (``frame_size=(height, width)`` required); "reject-multiple" — like "largest", but
    the clip is rejected when more than ``max_multi_ratio`` of the evaluated frames hold two
    or more faces (a small tolerance so one spurious detection does not reject a clip).
    ``min_face``: detections whose box is narrower or shorter than this many px are ignored.
    """
    if policy not in POLICIES:
        raise ConfigError(f"face policy {policy!r}: choose one of {', '.join(POLICIES)}")
    if policy == "central" and frame_size is None:
        raise ConfigError("face policy 'central' needs frame_size=(height, width)")
    n = len(detections_per_frame)
    per_frame: list[list[Detection] | None] = []
    n_small_only = 0
    for dets in detections_per_frame:
        if dets is None:
            per_frame.append(None)
            continue
        kept = [d for d in dets if min(d.width, d.height) >= min_face]
        n_small_only += bool(dets) and not kept
        per_frame.append(kept)
    evaluated = [d for d in per_frame if d is not None]
    evaluated_idx = np.array([t for t, d in enumerate(per_frame) if d is not None], dtype=np.int64)
    n_faces_max = max((len(d) for d in evaluated), default=0)
    n_multi = sum(len(d) >= 2 for d in evaluated)
    multi_ratio = n_multi / len(evaluated) if evaluated else 0.0

    boxes = np.full((n, 4), np.nan)
    scores = np.full(n, np.nan)
    found = np.zeros(n, dtype=bool)
    reject = code = None
    tracks = _associate(per_frame, iou_threshold, max_link_gap)
    if not tracks:
        if n_small_only:
            reject, code = f"no face of at least {min_face:g} px", "face_too_small"
        else:
            reject, code = "no face detected", "no_face"
    else:
        if policy == "central":
            height, width = frame_size  # type: ignore[misc]
            mid = np.array([width / 2, height / 2])
            half_diag = float(np.hypot(width, height) / 2)

            def key(tr: _Tracklet) -> float:
                dist = np.linalg.norm(_center(np.array(tr.boxes)) - mid, axis=1)
                return float(np.sum(1.0 - dist / half_diag))
        else:

            def key(tr: _Tracklet) -> float:
                return float(np.sum(box_sizes(np.array(tr.boxes)) ** 2))

        best = max(tracks, key=key)
        main = _merge_split_tracks(best, [tr for tr in tracks if tr is not best])
        idx = np.array(main.frames)
        boxes[idx] = np.array(main.boxes)
        scores[idx] = np.array(main.scores)
        found[idx] = True
        if policy == "reject-multiple" and multi_ratio > max_multi_ratio:
            code = "multiple_faces"
            reject = (
                f"several faces: {n_multi} of {len(evaluated)} frames have 2+ faces "
                f"(up to {n_faces_max}; tolerance {max_multi_ratio:.0%})"
            )

    sizes = box_sizes(boxes[found])
    stats = TrackStats(
        n_frames=n,
        n_evaluated=len(evaluated),
        n_found=int(found.sum()),
        mean_face_size=float(sizes.mean()) if len(sizes) else float("nan"),
        detection_rate=float(found.sum() / len(evaluated)) if evaluated else 0.0,
        jitter=box_jitter(boxes[evaluated_idx], evaluated_idx),
        multi_face_ratio=float(multi_ratio),
    )
    return FaceTrack(boxes, found, scores, n_faces_max, policy, reject, stats, code)


def keyframe_indices(n_frames: int, every: int) -> np.ndarray:
    """Frames to run detection on when detecting every ``every``-th frame: 0, k, 2k, … and
    always the last frame, so interpolation never has to extrapolate at the end."""
    if every < 1:
        raise ConfigError(f"detect every {every} frames: must be at least 1")
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.arange(0, n_frames, every)
    if idx[-1] != n_frames - 1:
        idx = np.append(idx, n_frames - 1)
    return idx


def spread_keyframes(
    n_frames: int, keyframes: Sequence[int], detections: Sequence[Sequence[Detection]]
) -> list[list[Detection] | None]:
    """Per-frame detections from keyframe detections: ``None`` on frames not evaluated."""
    if len(keyframes) != len(detections):
        raise ValueError(f"{len(keyframes)} keyframes but {len(detections)} detection lists")
    out: list[list[Detection] | None] = [None] * n_frames
    for k, dets in zip(keyframes, detections):
        out[int(k)] = list(dets)
    return out


def track_keyframes(
    n_frames: int,
    keyframes: Sequence[int],
    detections: Sequence[Sequence[Detection]],
    max_gap: int | None = None,
    **track_kwargs,
) -> FaceTrack:
    """Track from keyframe detections and interpolate the frames in between.

    ``max_gap`` defaults to bridging one missed keyframe (2 * spacing - 1 frames).
    ``track_kwargs`` go to ``track_faces``; its ``max_link_gap`` defaults to the same span.
    """
    keyframes = np.asarray(keyframes, dtype=np.int64)
    spacing = int(np.diff(keyframes).max()) if len(keyframes) > 1 else 1
    span = 2 * spacing - 1 if max_gap is None else int(max_gap)
    track_kwargs.setdefault("max_link_gap", max(span + 1, 12))
    track = track_faces(spread_keyframes(n_frames, keyframes, detections), **track_kwargs)
    return track.filled(span)

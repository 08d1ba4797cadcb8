"""Whole videos → sync scores: what `lipsync sync-score` runs.

For each video: decode at 25 fps with its 16 kHz mono audio (the reference needs 25 fps input
and does not resample; we resample, which is the identity for 25 fps files), crop, then score
with a judge (``lipsync.metrics.sync``).

Crops (``--crop``):
* ``none``: whole frames resized to the judge's input (224 for SyncNet v2), as the reference's
  ``calculate_scores_LRS.py`` does for face-centred test sets (§3).
* ``face`` (default): detect and track one face (the library's detector and tracker, largest
  face), then crop as the judge was trained:
  - SyncNet v2: the reference pipeline's crop (§4): half-size s = max(w, h)/2 and the box centre,
    each median-filtered over 13 frames; the frame padded by 1.8·s with grey 110; rows
    [y - s, y + 1.8·s], columns [x - 1.4·s, x + 1.4·s]; resized to 224x224;
  - our expert: the preprocessing crop it was trained on (box smoothed over 5 frames, padded
    (0, 10, 0, 0), resized to its face size).
Differences from the reference pipeline (documented, not hidden): faces come from our
detector (dlib HOG on CPU, S3FD when its weights and a GPU are present) rather than S3FD at
0.25 scale, there is no scene split (one track per video), and frames are never re-encoded
as JPEG/XVID before scoring.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy.signal import medfilt

from lipsync.errors import LipsyncError, MediaError, NoFaceError
from lipsync.metrics.sync import ExpertJudge, SyncJudge, SyncNetV2Judge, SyncScore
from lipsync.training.expert import DEFAULT_EXPERT

CROPS = ("none", "face")
JUDGES = ("expert", "syncnet-v2")
REFERENCE_CROP_SCALE = 0.4
REFERENCE_SMOOTH = 13
REFERENCE_PAD_VALUE = 110
EXPERT_PADS = (0, 10, 0, 0)
EXPERT_SMOOTH = 5


def load_expert(model: str | os.PathLike, tracking_uri: str | None = None, trust: bool = False):
    """The expert (nn.Module) from a checkpoint file or an MLflow URI (``models:/…``, ``runs:/…``)."""
    from lipsync import model_ref

    return model_ref.load(model, kind="expert", trust=trust, tracking_uri=tracking_uri)[0]


def make_judge(judge: str, *, weights: str | None = None, model: str | None = None, device: str = "cpu",
               tracking_uri: str | None = None, trust: bool = False) -> SyncJudge:
    """``syncnet-v2`` needs ``weights`` (syncnet_v2.model); ``expert`` takes ``model`` (default champion)."""
    from lipsync.errors import ConfigError

    if judge == "syncnet-v2":
        if not weights:
            raise ConfigError("--judge syncnet-v2 needs --weights PATH (the public syncnet_v2.model)")
        from lipsync.metrics.syncnet_v2 import load_syncnet_v2
        return SyncNetV2Judge(load_syncnet_v2(weights), device=device)
    if judge == "expert":
        return ExpertJudge(load_expert(model or DEFAULT_EXPERT, tracking_uri, trust), device=device)
    raise ConfigError(f"--judge {judge!r}: choose one of {', '.join(JUDGES)}")


# ----------------------------------------------------------------------------- cropping


def face_boxes(frames, source: str, detector=None) -> np.ndarray:
    """(N, 4) boxes of the main face in every frame (gaps filled); NoFaceError naming ``source``.
    ``frames``: any iterable (a stream is detected a few detector batches at a time)."""
    from lipsync.faces import interpolate_missing, make_detector, track_faces

    detector = detector or make_detector("auto", device="cpu", downscale_to=480)
    # Whole detector batches per call, so a stream is detected in the batches a list would be.
    chunk = 4 * int(getattr(detector, "batch_size", 16) or 16)
    detections, pending = [], []
    for frame in frames:
        pending.append(frame)
        if len(pending) == chunk:
            detections += detector.detect(pending)
            pending = []
    if pending:
        detections += detector.detect(pending)
    track = track_faces(detections, policy="largest")
    if track.reject_reason is not None:
        raise NoFaceError(f"{source}: {track.reject_reason}")
    boxes = interpolate_missing(track.boxes, max_gap=len(detections))
    if np.isnan(boxes).any():
        raise NoFaceError(f"{source}: the face is not found in every frame")
    return boxes


def reference_crops(frames, boxes: np.ndarray, size: int = 224):
    """The reference pipeline's ``crop_video`` (see module doc): (size, size, 3) uint8 BGR crops,
    one per frame of ``frames`` (an iterable), yielded as they come."""
    import cv2

    cs = REFERENCE_CROP_SCALE
    half = medfilt(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2, REFERENCE_SMOOTH)
    cy = medfilt((boxes[:, 1] + boxes[:, 3]) / 2, REFERENCE_SMOOTH)
    cx = medfilt((boxes[:, 0] + boxes[:, 2]) / 2, REFERENCE_SMOOTH)
    for i, frame in enumerate(frames):
        bs = half[i]
        bsi = int(bs * (1 + 2 * cs))
        padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), mode="constant",
                        constant_values=REFERENCE_PAD_VALUE)
        my, mx = cy[i] + bsi, cx[i] + bsi
        face = padded[int(my - bs): int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)): int(mx + bs * (1 + cs))]
        yield cv2.resize(face, (size, size))


def expert_crops(frames, boxes: np.ndarray, size: int):
    """The preprocessing crop the expert was trained on, one per frame of ``frames``, yielded."""
    from lipsync.faces import crop_faces, smooth_boxes

    smoothed = smooth_boxes(boxes, window=EXPERT_SMOOTH)
    for i, frame in enumerate(frames):
        yield crop_faces([frame], smoothed[i : i + 1], size=size, pads=EXPERT_PADS)[0]


def crop_for_judge(frames, judge: SyncJudge, crop: str, source: str, detector=None, boxes=None):
    """The frames the judge sees, as an iterator. ``boxes`` (from ``face_boxes``) are needed
    for ``crop="face"``; without them ``frames`` is listed and detected first (small clips)."""
    if crop == "none":
        return iter(frames)
    if boxes is None:
        frames = list(frames)
        boxes = face_boxes(frames, source, detector)
    if isinstance(judge, SyncNetV2Judge):
        return reference_crops(frames, boxes, judge.input_size)
    return expert_crops(frames, boxes, judge.input_size)


# ----------------------------------------------------------------------------- videos


def score_video(path: str | os.PathLike, judge: SyncJudge, crop: str = "face", detector=None) -> SyncScore:
    """One video's scores; LipsyncError (naming the file) for no audio, no face, too short.

    Streamed: the video is decoded once to find the face (only boxes are kept) and once more
    to crop and score, the audio in chunks straight into the judge's features, so memory
    does not follow the video's length (a 10-minute 1080p video is 90 GB of frames)."""
    from lipsync.video import iter_aligned_audio, iter_frames, probe

    path = os.fspath(path)
    info = probe(path)
    if not info.has_video:
        raise MediaError(f"{path}: has no video stream")
    if not info.has_audio:
        raise MediaError(f"{path}: has no audio stream (audio is required)")
    boxes = face_boxes(iter_frames(path, fps=25.0), path, detector) if crop == "face" else None
    frames = crop_for_judge(iter_frames(path, fps=25.0), judge, crop, path, detector, boxes)
    return judge.score_stream(frames, iter_aligned_audio(path), source=path)


@dataclass
class VideoResult:
    video: str
    score: SyncScore | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        if self.score is None:
            return {"video": self.video, "error": self.error}
        return {"video": self.video, **self.score.to_dict()}


def score_videos(paths, judge: SyncJudge, crop: str = "face", detector=None):
    """Yield a VideoResult per path; a bad video is reported (one line) and the others go on."""
    for path in paths:
        try:
            yield VideoResult(str(path), score=score_video(path, judge, crop, detector))
        except LipsyncError as e:
            yield VideoResult(str(path), error=str(e))

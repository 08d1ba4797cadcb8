"""Sync-filtered training data: measure every clip's AV offset and confidence with a sync judge
while preprocessing, reject the clips whose audio does not belong to the face, and realign the
ones whose audio is merely shifted.

Why: a corpus with dubbed, off-sync or voice-over clips gives the expert pairs labelled "in
sync" that are not, which is the usual reason an expert stalls near ln 2. LatentSync keeps clips
with SyncNet confidence >= 3 and |offset| <= 6 and shifts their audio; this is that filter.

The judge is our colour expert (a file or a registry reference; measured on the clip's own shard
crops and mel, so nothing is re-derived) or the public SyncNet v2 (``syncnet-v2`` plus its weights;
measured on the crops and the clip's waveform). Offsets and confidences follow
``lipsync.metrics.sync`` (LSE-C; ``offset = +N``: the audio leads the picture by N frames).

Per clip, in this order:
* the clip is too short to score  -> rejected ``sync_unmeasurable``;
* confidence < ``min_confidence`` -> rejected ``low_sync_confidence``;
* |offset| > ``max_offset``       -> rejected ``sync_offset_too_large``;
* otherwise kept; with ``fix_offset`` an offset N != 0 is removed by trimming N frames of picture
  at one end and N frames of audio at the other (``realign``), so the judge then finds 0.

The sample's meta records ``sync_offset`` and ``sync_confidence`` as measured and ``sync_shift``
(the frames removed; audio of output frame j comes from source frame ``start_frame + j -
sync_shift``); the manifest has the same per input.

Confidence scales differ by judge: SyncNet v2's LSE-C is on the papers' scale (3 is LatentSync's
threshold); our expert's embeddings are L2-normalised, so its LSE-C is a fraction of that (a
well-trained one gives its own audio ~0.5 and another speaker's ~0.1). Default thresholds are
per judge (``DEFAULT_MIN_CONFIDENCE``); check the confidences the run prints and set your own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lipsync import audio as lsa
from lipsync.audio import SAMPLES_PER_FRAME
from lipsync.errors import ConfigError, LipsyncError

SYNCNET_V2 = "syncnet-v2"
DEFAULT_MIN_CONFIDENCE = {"expert": 0.2, SYNCNET_V2: 3.0}
DEFAULT_MAX_OFFSET = 6

_JUDGES: dict = {}  # per worker process: one loaded judge per filter


@dataclass(frozen=True)
class SyncFilter:
    """The ``PreprocessConfig.sync_filter`` hook (picklable: it runs in Ray workers).

    ``model`` is the expert reference, pinned to a version by :func:`make_sync_filter`, or the
    SyncNet v2 weights file when ``judge`` is ``syncnet-v2``."""

    judge: str
    model: str
    min_confidence: float
    max_offset: int = DEFAULT_MAX_OFFSET
    fix_offset: bool = False
    tracking_uri: Optional[str] = None
    trust: bool = False

    def fingerprint(self) -> dict:
        return {"judge": self.judge, "model": self.model, "min_confidence": self.min_confidence,
                "max_offset": self.max_offset, "fix_offset": self.fix_offset}

    def load_judge(self):
        """The judge, loaded once per process."""
        from lipsync.metrics.sync_score import make_judge

        key = (self.judge, self.model, self.tracking_uri)
        if key not in _JUDGES:
            if self.judge == SYNCNET_V2:
                _JUDGES[key] = make_judge(SYNCNET_V2, weights=self.model)
            else:
                _JUDGES[key] = make_judge("expert", model=self.model, tracking_uri=self.tracking_uri,
                                          trust=self.trust)
        return _JUDGES[key]

    def measure(self, sample, audio: np.ndarray, source: str):
        """The clip's SyncScore (LSE-D, LSE-C, offset) by this filter's judge."""
        judge = self.load_judge()
        if self.judge == SYNCNET_V2:
            return judge.score(sample.frames, audio, source=source)
        return judge.score_clip(sample.frames, sample.mel, source=source)

    def __call__(self, sample, audio: np.ndarray) -> dict:
        source = sample.meta.get("source", sample.key)
        try:
            score = self.measure(sample, audio, source)
        except LipsyncError as exc:
            return {"keep": False, "reason": "sync_unmeasurable", "detail": str(exc)}
        offset, confidence = int(score.offset), float(score.lse_c)
        verdict = {"offset": offset, "confidence": confidence, "shift": 0}
        measured = f"{self.judge} LSE-C {confidence:.3f}, offset {offset:+d} frames"
        if confidence < self.min_confidence:
            return {**verdict, "keep": False, "reason": "low_sync_confidence",
                    "detail": f"{source}: low sync confidence ({measured}; keeping >= {self.min_confidence:g})"}
        if abs(offset) > self.max_offset:
            return {**verdict, "keep": False, "reason": "sync_offset_too_large",
                    "detail": f"{source}: audio offset {offset:+d} frames beyond ±{self.max_offset} ({measured})"}
        if self.fix_offset and offset:
            verdict["shift"] = offset
        return {**verdict, "keep": True}


def make_sync_filter(model: str, *, weights: str | None = None, min_confidence: float | None = None,
                     max_offset: int = DEFAULT_MAX_OFFSET, fix_offset: bool = False,
                     tracking_uri: str | None = None, trust: bool = False) -> SyncFilter:
    """The filter for ``--sync-filter MODEL`` (an expert reference, or ``syncnet-v2`` with
    ``weights``), checked on the driver: the registry alias pinned to its version and the model
    loaded once, so a bad reference is one line before any Ray work."""
    from lipsync import model_ref

    if model == SYNCNET_V2:
        if not weights:
            raise ConfigError("--sync-filter syncnet-v2 needs --sync-weights PATH (the public syncnet_v2.model)")
        judge, ref = SYNCNET_V2, os.path.abspath(weights)
    else:
        judge = "expert"
        ref = model_ref.pin(model, tracking_uri)
        if model_ref.is_mlflow_uri(ref):
            tracking_uri = model_ref.resolve_tracking_uri(tracking_uri)
    if min_confidence is None:
        min_confidence = DEFAULT_MIN_CONFIDENCE[judge]
    if max_offset < 0:
        raise ConfigError(f"--max-sync-offset must be >= 0, got {max_offset}")
    found = SyncFilter(judge, ref, float(min_confidence), int(max_offset), bool(fix_offset), tracking_uri, trust)
    found.load_judge()
    return found


def realign(sample, audio: np.ndarray, shift: int):
    """The clip with its audio moved ``shift`` frames later (``shift`` = the measured offset):
    picture and audio each lose |shift| frames at opposite ends, and the mel is recomputed from
    the trimmed waveform (a frame is 3.2 mel steps, so shifting the mel itself would round)."""
    n = sample.n_frames
    if shift > 0:    # audio leads: drop the first frames of picture and the last of audio
        keep, wav = slice(shift, n), audio[: (n - shift) * SAMPLES_PER_FRAME]
    else:            # audio lags: drop the last frames of picture and the first of audio
        keep, wav = slice(0, n + shift), audio[-shift * SAMPLES_PER_FRAME : n * SAMPLES_PER_FRAME]
    meta = dict(sample.meta)
    meta["start_frame"] = int(meta.get("start_frame", 0)) + max(shift, 0)
    if meta.get("boxes") is not None:
        meta["boxes"] = list(meta["boxes"])[keep]
    meta["sync_shift"] = int(shift)
    return type(sample)(sample.key, sample.frames[keep], lsa.melspectrogram(np.ascontiguousarray(wav)), meta,
                        extra_frames={size: frames[keep] for size, frames in sample.extra_frames.items()})

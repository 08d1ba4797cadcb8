"""The expert's evaluation on the test split: pair accuracy, and offset recovery.

* Accuracy: the training's validation protocol on the test split — a fixed, seeded set of
  balanced in-sync / off-sync windows per clip (``fixed_windows``), P(sync) > 0.5 read as
  "in sync" (``lipsync.training.expert``); overall, per |offset| bucket, and per clip.
* Offset recovery: each test clip scored with the reference sync protocol (``ExpertJudge``),
  as it is and with its audio shifted by each of ``shifts`` frames (+N = audio leads); a
  shift is recovered when the AV offset found equals it. Also LSE-D / LSE-C of the in-sync
  clips (shift 0) and of the shifted ones, on the expert's own scale.
Clips run one after another in the driver: the expert is small and the test split is a few
hundred clips at most; the generator's protocol, which generates frames, uses Ray Data.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lipsync.errors import LipsyncError


class ExpertEvaluator:
    name = "lipsync-expert"
    metric_directions = {
        "test_accuracy": True, "test_loss": False, "offset_recovery": True, "offset_recovery_within_1": True,
        "lse_c_in_sync": True, "lse_d_in_sync": False,
    }
    compare = ("test_accuracy", "offset_recovery")

    def __init__(self, cfg):
        self.cfg = cfg

    def settings(self) -> dict:
        c = self.cfg
        return {"windows_per_clip": c.windows_per_clip, "seed": c.seed, "shifts": list(c.shifts),
                "max_clips": c.max_clips}

    def evaluate(self, checkpoint: Path, shards: str):
        import torch

        from lipsync.checkpoints import load_model
        from lipsync.data.shard_stream import fixed_windows, iter_clips
        from pipelines.common.storage import list_shards  # local folders and s3:// / gs:// alike
        from lipsync.data.windows import ExpertSampling
        from lipsync.metrics.sync import ExpertJudge
        from lipsync.training.expert import evaluate_expert, summarize_evaluation
        from pipelines.evaluate.config import Evaluation

        cfg = self.cfg
        model, config = load_model(str(checkpoint), kind="expert")
        device = torch.device(cfg.device)
        paths = list_shards(shards, cfg.split)
        windows = fixed_windows(paths, cfg.windows_per_clip, cfg.seed,
                                       ExpertSampling(face_size=config.face_size), max_clips=cfg.max_clips)
        by_clip: dict[str, list] = {}
        for w in windows:
            by_clip.setdefault(w.key, []).append(w)
        judge = ExpertJudge(model.to(device), device=device)
        rows, total = [], None
        for i, clip in enumerate(iter_clips(paths)):
            if cfg.max_clips is not None and i >= cfg.max_clips:
                break
            row = {"clip": clip.key, "speaker": clip.meta.get("speaker"), "frames": int(clip.n_frames)}
            if by_clip.get(clip.key):
                sums = evaluate_expert(model, by_clip[clip.key], device=device)
                total = sums if total is None else total + sums
                row.update(accuracy=float(sums[:, 0].sum() / sums[:, 1].sum()), pairs=int(sums[:, 1].sum()))
            faces = np.asarray(clip.frames)
            if faces.shape[1] != config.face_size:
                faces = np.stack([cv2.resize(f, (config.face_size, config.face_size)) for f in faces])
            for shift in cfg.shifts:
                try:
                    s = judge.score_clip(faces, clip.mel, source=clip.key, shift=shift)
                except LipsyncError as e:
                    row[f"error@{shift:+d}"] = str(e)
                    continue
                row.update({f"offset@{shift:+d}": s.offset, f"lse_d@{shift:+d}": s.lse_d,
                            f"lse_c@{shift:+d}": s.lse_c})
            rows.append(row)
        if total is None:
            raise LipsyncError(f"{shards}: no test clip gave an evaluation window")
        metrics = summarize_evaluation(total, prefix="test")
        metrics.update(offset_metrics(rows, cfg.shifts))
        metrics["test_clips"] = float(len(rows))
        return Evaluation(rows=rows, metrics=metrics)


def offset_metrics(rows: list[dict], shifts) -> dict[str, float]:
    found, near, out = [], [], {}
    for shift in shifts:
        got = [r[f"offset@{shift:+d}"] for r in rows if f"offset@{shift:+d}" in r]
        found += [g == shift for g in got]
        near += [abs(g - shift) <= 1 for g in got]
    if found:
        out["offset_recovery"] = float(np.mean(found))
        out["offset_recovery_within_1"] = float(np.mean(near))
    if 0 in shifts:
        for metric in ("lse_d", "lse_c"):
            vals = [r[f"{metric}@+0"] for r in rows if f"{metric}@+0" in r]
            if vals:
                out[f"{metric}_in_sync"] = float(np.mean(vals))
    return out

"""The generator's evaluation, the paper's protocol on the test split, parallel over clips with Ray Data.

For each test clip (``GenerateAndScore``, a Ray Data actor: CPU actors here, one GPU each when
the cluster has GPUs):
* generate every frame's lower half with a **random reference window** (identity input) rather
  than the current frame: one start r drawn per clip (seeded by the clip key), at least 5 frames
  away from most targets; output frame k takes reference frame ``(r + k) mod n``;
* once with the clip's **own audio** and once with **another clip's audio** (the next test clip
  in order, cut to the shorter of the two);
* sync of both, judged by the expert with the reference protocol (LSE-D / LSE-C / offset,
  ``lipsync.metrics.sync``; on the expert's scale, see there);
* image quality of the own-audio generation vs the ground truth: SSIM / PSNR, whole face and
  mouth (lower half);
* with ``fid_weights``: Inception pool3 features of generated and ground-truth faces, pooled
  over all clips into one FID.
Per frame the audio window is the library's policy (``frame_mel_windows``), as in training.
The judge is resolved once per evaluator (an alias pinned to its version, the file fetched once)
and is part of the test-set fingerprint by version and sha256: LSE-C is comparable only within
one judge, so a champion scored by another judge is scored again before the gate compares.
SyncNet v2 needs the raw waveform, which shards do not keep: score rendered videos with
``lipsync sync-score --judge syncnet-v2`` for the papers' scale.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from lipsync.errors import LipsyncError

FRAME_BATCH = 32


class GeneratorEvaluator:
    name = "wav2lip"
    metric_directions = {
        "lse_d_own": False, "lse_c_own": True, "lse_d_other": False, "lse_c_other": True,
        "ssim": True, "psnr": True, "ssim_mouth": True, "psnr_mouth": True, "fid": False,
    }
    compare = ("lse_c_own", "ssim_mouth")

    def __init__(self, cfg):
        self.cfg = cfg
        self._judge: tuple[str, Path, str] | None = None
        self._judge_dir = None

    def judge(self) -> tuple[str, Path, str]:
        """(pinned reference, local file, sha256) of the expert that judges sync, resolved once:
        every model this evaluator scores (candidate, re-scored champion) has the same judge."""
        if self._judge is None:
            import tempfile

            from lipsync import model_ref
            from lipsync.training.expert import DEFAULT_EXPERT
            from pipelines.tracking.setup import file_hash

            pinned = model_ref.pin(self.cfg.judge_model or DEFAULT_EXPERT, self.cfg.tracking_uri)
            self._judge_dir = tempfile.TemporaryDirectory(prefix="lipsync-judge-")  # removed with the evaluator
            path = model_ref.fetch(pinned, self._judge_dir.name, self.cfg.tracking_uri)
            self._judge = (pinned, path, file_hash(path))
        return self._judge

    def settings(self) -> dict:
        c = self.cfg
        judge, _, judge_sha256 = self.judge()
        return {"seed": c.seed, "max_clips": c.max_clips, "judge_model": judge, "judge_sha256": judge_sha256,
                "fid": bool(c.fid_weights)}

    def evaluate(self, checkpoint: Path, shards: str):
        import ray

        from pipelines.common.storage import list_shards  # local folders and s3:// / gs:// alike
        from pipelines.common.ray_setup import init_ray

        cfg = self.cfg
        _, judge_path, _ = self.judge()  # one file, shipped to every actor
        items = clip_items(list_shards(shards, cfg.split), cfg.max_clips)
        if not items:
            raise LipsyncError(f"{shards}: no '{cfg.split}' clips to evaluate")
        init_ray(num_cpus=cfg.num_cpus)
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        ds = ray.data.from_items(items).map_batches(
            GenerateAndScore, batch_size=1, concurrency=1 if gpus else max(1, min(2, len(items))),
            num_gpus=gpus, fn_constructor_kwargs=dict(
                generator=str(checkpoint), judge=str(judge_path), fid_weights=cfg.fid_weights, seed=cfg.seed,
                device="cuda" if gpus else "cpu"))
        results = sorted(ds.take_all(), key=lambda r: r["order"])
        return self.summarize(results, f"{shards}: '{cfg.split}'")

    def summarize(self, results: list[dict], source: str):
        """The per-clip rows and the aggregates of the actors' results; an error when no clip
        was scored (the gate must never see an evaluation that measured nothing)."""
        from pipelines.evaluate.config import Evaluation

        rows, gen_feats, gt_feats = [], [], []
        for r in results:
            if r.get("gen_features") is not None and len(r["gen_features"]):
                gen_feats.append(np.asarray(r["gen_features"]).reshape(-1, 2048))
                gt_feats.append(np.asarray(r["gt_features"]).reshape(-1, 2048))
            rows.append({k: v for k, v in r.items() if k not in ("gen_features", "gt_features")})
        scored = sum(1 for r in rows if not r.get("error"))
        if not scored:
            first = next((r["error"] for r in rows if r.get("error")), "no result")
            raise LipsyncError(f"{source}: none of the {len(rows)} clips could be scored (first: {first})")
        metrics = {}
        for key in self.metric_directions:
            vals = [r[key] for r in rows if isinstance(r.get(key), (float, int)) and np.isfinite(r[key])]
            if vals:
                metrics[key] = float(np.mean(vals))
        for key in ("offset_own", "offset_other"):
            vals = [abs(r[key]) for r in rows if isinstance(r.get(key), (int, np.integer))]
            if vals:
                metrics[f"abs_{key}"] = float(np.mean(vals))
        if gen_feats:
            from lipsync.metrics.fid import frechet_distance_of_features
            metrics["fid"] = frechet_distance_of_features(np.concatenate(gen_feats), np.concatenate(gt_feats))
        metrics["test_clips"] = float(scored)
        return Evaluation(rows=rows, metrics=metrics)


def clip_items(shard_paths, max_clips: int | None) -> list[dict]:
    """One item per clip (raw members), each with the next clip's mel as its 'other audio'."""
    from lipsync.data.shard_stream import iter_samples

    raw = []
    for sample in iter_samples(shard_paths):
        if max_clips is not None and len(raw) >= max_clips:
            break
        raw.append(sample)
    # Flat columns of plain bytes/ints: the same Arrow schema for every clip.
    return [{"order": i, "key": s["__key__"], "frames": s["frames.pack"], "mel": s["mel.npy"], "meta": s["meta.json"],
             "other_key": raw[(i + 1) % len(raw)]["__key__"],
             "other_mel": raw[(i + 1) % len(raw)]["mel.npy"] if len(raw) > 1 else b""}
            for i, s in enumerate(raw)]


class GenerateAndScore:
    """Ray Data actor: loads the generator, the judge (and Inception) once, scores one clip per call."""

    def __init__(self, generator: str, judge: str, fid_weights: str | None, seed: int, device: str = "cpu"):
        import torch

        from lipsync.checkpoints import load_model
        from lipsync.metrics.sync import ExpertJudge

        torch.set_num_threads(1)
        self.device = torch.device(device)
        self.generator, self.config = load_model(generator, kind="wav2lip", map_location=device)
        self.judge = ExpertJudge(load_model(judge, kind="expert", map_location=device)[0], device=device)
        self.inception = None
        if fid_weights:
            from lipsync.metrics.inception import load_fid_inception
            self.inception = load_fid_inception(fid_weights).to(self.device)
        self.seed = seed

    def __call__(self, batch: dict) -> dict:
        rows = [self.score_one({k: batch[k][i] for k in batch}) for i in range(len(batch["order"]))]
        return {k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}

    def score_one(self, item: dict) -> dict:
        from lipsync.data.clip_sample import decode_clip_sample

        clip = decode_clip_sample({"__key__": str(item["key"]), "frames.pack": bytes(item["frames"]),
                                   "mel.npy": bytes(item["mel"]), "meta.json": bytes(item["meta"])})
        row = {"order": int(item["order"]), "clip": clip.key, "speaker": clip.meta.get("speaker"),
               "other_audio": str(item["other_key"]), "frames": int(clip.n_frames), "error": ""}
        try:
            row.update(self._score(clip, item))
        except (LipsyncError, ValueError) as e:
            row["error"] = f"{clip.key}: {e}"
        return row

    def _score(self, clip, item) -> dict:
        import io

        import cv2

        from lipsync.metrics.image import face_quality

        s = self.config.face_size
        gt = np.asarray(clip.frames)
        if gt.shape[1] != s:
            gt = np.stack([cv2.resize(f, (s, s)) for f in gt])
        n = len(gt)
        rng = np.random.default_rng([self.seed, zlib.crc32(clip.key.encode())])
        r = int(rng.integers(n))
        refs = gt[(r + np.arange(n)) % n]
        out = {"ref_start": r}
        own = self.generate(gt, refs, clip.mel)
        judged = self.judge.score_clip(own, clip.mel, source=clip.key)
        out.update(lse_d_own=judged.lse_d, lse_c_own=judged.lse_c, offset_own=judged.offset)
        out.update(face_quality(own, gt))
        if len(item["other_mel"]):
            other_mel = np.load(io.BytesIO(bytes(item["other_mel"])), allow_pickle=False)
            m = min(n, int(other_mel.shape[1] * 25 // 80))
            other = self.generate(gt[:m], refs[:m], other_mel)
            judged = self.judge.score_clip(other, other_mel, source=clip.key)
            out.update(lse_d_other=judged.lse_d, lse_c_other=judged.lse_c, offset_other=judged.offset)
        if self.inception is not None:
            out["gen_features"] = self.features(own).ravel()
            out["gt_features"] = self.features(gt).ravel()
        return out

    def generate(self, gt: np.ndarray, refs: np.ndarray, mel: np.ndarray) -> np.ndarray:
        """Frames (N, S, S, 3) uint8 BGR from masked targets + references and per-frame mel windows."""
        import torch

        from lipsync.audio import frame_mel_windows
        from lipsync.models.wav2lip import generator_input

        mels = frame_mel_windows(mel, len(gt))
        out = []
        with torch.no_grad():
            for i in range(0, len(gt), FRAME_BATCH):
                t = torch.from_numpy(gt[i:i + FRAME_BATCH]).permute(0, 3, 1, 2).float().div(255)
                ref = torch.from_numpy(refs[i:i + FRAME_BATCH]).permute(0, 3, 1, 2).float().div(255)
                audio = torch.from_numpy(mels[i:i + FRAME_BATCH])[:, None]
                y = self.generator(audio.to(self.device), generator_input(t, ref).to(self.device))
                out.append(y.float().mul(255).add(0.5).clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)

    def features(self, faces: np.ndarray) -> np.ndarray:
        import torch

        feats = []
        with torch.no_grad():
            for i in range(0, len(faces), FRAME_BATCH):
                rgb = torch.from_numpy(faces[i:i + FRAME_BATCH][..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255
                feats.append(self.inception(rgb.to(self.device)).cpu().numpy())
        return np.concatenate(feats).astype(np.float32)

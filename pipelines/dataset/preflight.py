"""Checks a training driver runs on its shards before Ray starts or an MLflow run opens.

Everything the driver can see for itself — the folder, a split with no shards, splits with
no clip long enough to train on, crops of another size than ``--face-size`` — is reported
here as one ``ConfigError`` line naming the path and the fix, instead of as a worker
traceback a minute later with a FAILED run left in MLflow.

Reading is cheap: only the small ``meta.json`` member of each sample is read, and a split's
scan stops at its first usable clip. When a split has no shards, the manifest (and the
preprocessing summary) say why — usually the speaker split — and the message says so.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lipsync.data.clip_sample import META_MEMBER
from lipsync.data.windows import valid_expert_starts
from lipsync.errors import ConfigError

MANIFEST_NAME = "manifest.parquet"  # pipelines/dataset/manifest.py (not imported: it pulls in pyarrow)
PREPROCESS = "python workflows/preprocess.py --input VIDEOS --output"


@dataclass
class TrainingShards:
    """What the driver passes on to the workers: absolute shard paths per split."""

    train: list[str]
    val: list[str]
    crop_sizes: list[int]


def _metas(shard: Path) -> Iterator[dict]:
    """The meta.json of every sample in a shard, in order (other members are skipped)."""
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("." + META_MEMBER):
                    yield json.loads(tar.extractfile(member).read().decode("utf-8"))
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise ConfigError(f"{shard}: not a readable shard ({exc}); re-run preprocessing with --overwrite") from exc


def _why_no_split(root: Path, split: str) -> str:
    """The cause, from the manifest, of a split that has no shards."""
    manifest = root / MANIFEST_NAME
    if not manifest.exists():
        return f"no '{split}-*.tar' shards and no {MANIFEST_NAME}: preprocess first ({PREPROCESS} {root})"
    import pyarrow.parquet as pq

    rows = pq.read_table(manifest, columns=["status", "reason", "speaker", "split"]).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        reasons = Counter(r["reason"] for r in rows).most_common(3)
        top = ", ".join(f"{n} {reason}" for reason, n in reasons)
        return (f"no '{split}-*.tar' shards: none of the {len(rows)} inputs in {manifest} was usable ({top}); "
                "see the manifest's detail column")
    in_split = [r for r in rows if r["split"] == split]
    listed = sum(1 for r in in_split if r["status"] == "ok")
    if listed:
        return (f"no '{split}-*.tar' shards, though {manifest} lists {listed} usable {split} inputs: their shards "
                "were moved or deleted; copy them back or re-run preprocessing with --overwrite")
    if in_split:  # the split had inputs; none of them was usable
        reasons = Counter(r["reason"] for r in in_split).most_common(3)
        top = ", ".join(f"{n} {reason}" for reason, n in reasons)
        return (f"no '{split}-*.tar' shards: all {len(in_split)} {split} inputs were rejected ({top}); see "
                f"{manifest} and give the {split} speakers usable videos")
    speakers = {r["speaker"] for r in ok}
    by_split = Counter(r["split"] for r in ok)
    where = ", ".join(f"{n} in {s}" for s, n in sorted(by_split.items()))
    if len(speakers) == 1:
        cause = (f"all {len(ok)} usable inputs are one speaker ({next(iter(speakers))!r}) and splits are by "
                 "speaker; with --layout folder pass --speaker-regex (group 1 = the speaker) or give videos "
                 "of more speakers")
    else:
        cause = (f"the {len(ok)} usable inputs of {len(speakers)} speakers went {where}; re-run preprocessing "
                 f"with --split-fractions giving {split} a share (e.g. 0.8,0.1,0.1) and --overwrite")
    return f"no '{split}-*.tar' shards: {cause}"


def _check_split(root: Path, split: str, sampling) -> tuple[list[Path], set[int]]:
    shards = sorted(root.glob(f"{split}-*.tar"))
    if not shards:
        raise ConfigError(f"--shards {root}: {_why_no_split(root, split)}")
    T, min_offset = int(sampling.T), int(getattr(sampling, "min_offset", 0))
    seen, longest, sizes = 0, 0, set()
    for shard in shards:
        for meta in _metas(shard):
            seen += 1
            n_frames, mel_frames = int(meta.get("n_frames", 0)), int(meta.get("mel_frames", 0))
            longest = max(longest, n_frames)
            sizes.update(int(s) for s in meta.get("crop_sizes") or [meta.get("crop_size", 0)])
            if valid_expert_starts(n_frames, mel_frames, float(meta.get("fps", 25.0)), T) > min_offset:
                return shards, sizes
    if seen == 0:
        raise ConfigError(f"--shards {root}: the {split} shards hold no clip; re-run preprocessing with --overwrite")
    raise ConfigError(
        f"--shards {root}: none of the {seen} {split} clips is long enough to train on (longest {longest} "
        f"frames; a window of T={T} frames needs a negative at least --min-offset {min_offset} frames away): "
        f"preprocess longer videos or lower --min-offset")


def check_training_shards(shards: str | Path, sampling) -> TrainingShards:
    """Check ``shards`` for a training stage cutting windows as ``sampling`` says
    (attributes ``T``, ``face_size``, optionally ``min_offset``); ConfigError names the fix."""
    root = Path(shards)
    if not root.is_dir():
        hint = f"preprocess first ({PREPROCESS} {root})" if not root.exists() else "expected a folder of shards"
        raise ConfigError(f"--shards {root}: no such directory; {hint}")
    train, sizes = _check_split(root, "train", sampling)
    val, _ = _check_split(root, "val", sampling)
    face_size = int(sampling.face_size)
    if sizes and face_size not in sizes:
        stored = " ".join(str(s) for s in sorted(sizes))
        raise ConfigError(
            f"--face-size {face_size}: the shards in {root} hold {stored} px face crops; pass --face-size "
            f"{min(sizes)} or preprocess with --crop-size {face_size}")
    return TrainingShards([str(p.resolve()) for p in train], [str(p.resolve()) for p in val], sorted(sizes))

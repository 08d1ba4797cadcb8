"""Per-step logic of the lip-sync expert: loss, accuracy, and evaluation by audio offset.

The expert scores a (5-frame face window, 16-step mel window) pair with the cosine
similarity of the two L2-normalised, non-negative embeddings, read as P(in sync), and is
trained with binary cross-entropy against y = 1 (in sync) / 0 (off sync), as the original.
A pair counts as correct when P > 0.5 matches the label.

Evaluation reports accuracy and loss overall and per |audio offset| bucket: the offsets
close to 0 are the hard ones and the ones a generator's sync loss depends on.
Ray-free: the Ray Train loop (pipelines/train_expert.py) all-reduces the counts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lipsync.data.windows import ExpertWindow, collate_expert
from lipsync.models import sync_probability

# Buckets of |offset| in frames; 1 only occurs with --min-offset 1.
OFFSET_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("0", 0, 0), ("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4", 4, 4), ("5", 5, 5),
    ("6-10", 6, 10), ("11-20", 11, 20), ("21plus", 21, 1 << 30),
)
_EPS = 1e-6


def offset_bucket_index(offsets: np.ndarray | torch.Tensor) -> np.ndarray:
    """Index into OFFSET_BUCKETS for each signed offset."""
    mags = np.abs(np.asarray(offsets, dtype=np.int64))
    out = np.empty(mags.shape, dtype=np.int64)
    for i, (_, lo, hi) in enumerate(OFFSET_BUCKETS):
        out[(mags >= lo) & (mags <= hi)] = i
    return out


def sync_scores(model: torch.nn.Module, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """P(in sync) per pair, (B, 1) float32 in [0, 1]."""
    audio_emb, face_emb = model(mel, face)
    return sync_probability(audio_emb.float(), face_emb.float()).unsqueeze(1)


def expert_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE of P(in sync) against 0/1 labels (computed in float32, clamped away from 0/1)."""
    return F.binary_cross_entropy(scores.float().clamp(_EPS, 1 - _EPS), labels.float())


def correct(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bool (B,): threshold 0.5 decision matches the label."""
    return ((scores > 0.5).float() == labels).reshape(-1)


@torch.no_grad()
def evaluate_expert(
    model: torch.nn.Module,
    windows: list[ExpertWindow],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sums per offset bucket over ``windows``: float64 tensor (len(OFFSET_BUCKETS), 3) of
    [n correct, n pairs, summed BCE]. Sums (not means) so ranks can all-reduce them.
    The model is put in eval mode and restored to its previous mode afterwards."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(OFFSET_BUCKETS), 3, dtype=torch.float64)
    device = torch.device(device)
    try:
        for i in range(0, len(windows), batch_size):
            batch = collate_expert(windows[i : i + batch_size])
            mel, face, label = (batch[k].to(device) for k in ("mel", "face", "label"))
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                scores = sync_scores(model, mel, face)
            ok = correct(scores, label).double().cpu()
            bce = F.binary_cross_entropy(
                scores.float().clamp(_EPS, 1 - _EPS), label, reduction="none"
            ).reshape(-1).double().cpu()
            idx = torch.from_numpy(offset_bucket_index(batch["offset"].numpy()))
            sums[:, 0].index_add_(0, idx, ok)
            sums[:, 1].index_add_(0, idx, torch.ones_like(ok))
            sums[:, 2].index_add_(0, idx, bce)
    finally:
        model.train(was_training)
    return sums


def summarize_evaluation(sums: torch.Tensor, prefix: str = "val") -> dict[str, float]:
    """Metrics from :func:`evaluate_expert` sums: ``{prefix}_loss``, ``{prefix}_accuracy``,
    ``{prefix}_accuracy_offset_<bucket>`` (empty buckets omitted), ``{prefix}_pairs``."""
    sums = sums.double()
    total = float(sums[:, 1].sum())
    out = {f"{prefix}_pairs": total}
    if total == 0:
        return out
    out[f"{prefix}_loss"] = float(sums[:, 2].sum()) / total
    out[f"{prefix}_accuracy"] = float(sums[:, 0].sum()) / total
    for (name, _, _), (c, n, _) in zip(OFFSET_BUCKETS, sums.tolist()):
        if n > 0:
            out[f"{prefix}_accuracy_offset_{name}"] = c / n
    return out

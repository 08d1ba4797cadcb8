"""Split assignment: official lists win; otherwise speaker-disjoint and deterministic.

Speakers without an official split are ordered by a hash of (seed, speaker) and dealt into
train/val/test by the fractions (largest-remainder counts, at least one speaker for every
split with a positive fraction when there are enough speakers). The same corpus and flags
always give the same assignment, and no speaker is in two splits. Speakers that already
have an official split in some file (e.g. VoxCeleb2 test) keep it for all their files.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

from lipsync.errors import ConfigError
from pipelines.preprocess.sources import SPLITS, InputItem


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); must be three non-negative numbers summing to 1."""
    values = [float(v) for v in text.split(",")] if isinstance(text, str) else [float(v) for v in text]
    if len(values) != 3 or any(v < 0 for v in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ConfigError(f"--split-fractions {text!r}: need three non-negative numbers "
                          "(train,val,test) summing to 1")
    return tuple(values)  # type: ignore[return-value]


def speaker_rank_key(speaker: str, seed: str = "") -> str:
    return hashlib.sha1(f"{seed}:{speaker}".encode("utf-8")).hexdigest()


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder counts; every positive fraction gets >= 1 when n allows."""
    raw = [f * n for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    positive = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(positive):
        for i in positive:
            while counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def assign_splits(items: Sequence[InputItem], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: str = "") -> dict[str, str]:
    """input_id -> split for every item."""
    # A speaker with an official split somewhere keeps it for all of its unlisted files.
    fixed: dict[str, str] = {}
    for it in items:
        if it.official_split and not it.reject_reason:
            fixed.setdefault(it.speaker, it.official_split)
    free = sorted({it.speaker for it in items
                   if not it.official_split and not it.reject_reason and it.speaker not in fixed},
                  key=lambda s: speaker_rank_key(s, seed))
    # Splits an official list already fills take no dealt speakers (VoxCeleb2: test/ is the
    # test split, dev/ speakers are dealt into train/val in the given proportion).
    official = {it.official_split for it in items if it.official_split}
    weights = [0.0 if split in official else f for split, f in zip(SPLITS, fractions)]
    if sum(weights) == 0:
        weights = list(fractions)
    total = sum(weights)
    counts = split_counts(len(free), [w / total for w in weights])
    by_speaker: dict[str, str] = {}
    start = 0
    for split, count in zip(SPLITS, counts):
        for speaker in free[start:start + count]:
            by_speaker[speaker] = split
        start += count
    result = {}
    for it in items:
        if it.reject_reason:
            result[it.input_id] = it.official_split or "none"
        elif it.official_split:
            result[it.input_id] = it.official_split
        else:
            result[it.input_id] = fixed.get(it.speaker) or by_speaker[it.speaker]
    return result


def with_splits(items: Sequence[InputItem], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                seed: str = "") -> list[tuple[InputItem, str]]:
    splits = assign_splits(items, fractions, seed)
    return [(it, splits[it.input_id]) for it in items]



def split_warning(items: Sequence[InputItem], splits: dict[str, str], layout: str,
                  fractions: Sequence[float]) -> str | None:
    """One line when the assignment cannot train and validate (one speaker, an empty val or
    test split that was asked for), saying what to pass; None when the split is usable."""
    usable = [it for it in items if not it.reject_reason]
    speakers = {it.speaker for it in usable}
    counts = {split: sum(1 for it in usable if splits[it.input_id] == split) for split in SPLITS}
    empty = [split for split, fraction in zip(SPLITS, fractions) if fraction > 0 and counts[split] == 0]
    if not empty:
        return None
    where = ", ".join(f"{counts[s]} {s}" for s in SPLITS)
    if len(speakers) == 1:
        hint = ("with --layout folder every file's speaker is its parent folder's name: pass --speaker-regex "
                "(group 1 = the speaker, e.g. '^([^_/]+)_' for <speaker>_<clip>.mp4) or give videos of more "
                "speakers" if layout == "folder" else "give videos of more speakers")
        return (f"all {len(usable)} inputs are one speaker ({next(iter(speakers))!r}), so by-speaker splits put "
                f"them all in one ({where}): no {' / '.join(empty)} split (training validates on val, evaluation "
                f"uses test); {hint}")
    return (f"{len(speakers)} speakers give {where} inputs: no {' / '.join(empty)} split (training validates on "
            f"val, evaluation uses test); add speakers or change --split-fractions")

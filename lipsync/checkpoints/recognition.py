"""Recognising a state_dict that comes without a stored config (the official files): which
network it is, from its key names (each network's `ModelKind` signature), and its width and
face size, from its shapes.
"""

from __future__ import annotations

import torch

from lipsync.checkpoints.config import KIND_NAMES, KIND_TABLE, MODEL_CLASSES, ModelConfig
from lipsync.checkpoints.state_dicts import OPTIONAL_SUFFIX, describe_mismatch, shapes_of
from lipsync.errors import CheckpointError

# Face sizes tried when inferring a checkpoint's architecture from its shapes.
CANDIDATE_FACE_SIZES = (96, 128, 192, 256, 384, 512)
# Signatures are tried most specific first: a discriminator's keys are tested before the
# generator's, and those before the expert's plain face/audio encoder prefixes.
DETECTION_ORDER = ("disc", "wav2lip", "expert")
# Channels of every network's bottleneck at width 1.
BOTTLENECK_CHANNELS = 512


def detect_kind(state_dict) -> str | None:
    """Which network a state_dict belongs to, from its key names (None if unknown)."""
    keys = set(state_dict)
    for kind in DETECTION_ORDER:
        if KIND_TABLE[kind].matches(keys):
            return kind
    return None


def infer_config(state_dict, kind: str, name: str = "<state_dict>") -> ModelConfig:
    """Recover width and face size of a state_dict without a stored config (official files).

    The width comes from the 512-channel bottleneck; the face size is the candidate whose
    architecture (built on the meta device, no memory) has exactly these shapes.
    """
    bottleneck_key = KIND_TABLE[kind].bottleneck_key
    if bottleneck_key not in state_dict:
        raise CheckpointError(f"{name}: looks like a {KIND_NAMES[kind]} but has no {bottleneck_key}")
    bottleneck = state_dict[bottleneck_key].shape[KIND_TABLE[kind].bottleneck_dim]
    width = 1.0 if bottleneck == BOTTLENECK_CHANNELS else bottleneck / BOTTLENECK_CHANNELS
    shapes = shapes_of(state_dict)
    first_mismatch = None
    for face_size in CANDIDATE_FACE_SIZES:
        with torch.device("meta"):
            expected = shapes_of(MODEL_CLASSES[kind](width, face_size).state_dict())
        if _same_shapes(expected, shapes):
            return ModelConfig(kind=kind, width=width, face_size=face_size)
        if first_mismatch is None:
            first_mismatch = describe_mismatch(expected, shapes)
    raise CheckpointError(
        f"{name}: looks like a {KIND_NAMES[kind]} (width {width:g}) but its layer shapes match no "
        f"supported face size {CANDIDATE_FACE_SIZES}; at 96 px: {first_mismatch}"
    )


def _same_shapes(expected: dict, shapes: dict) -> bool:
    for key, shape in expected.items():
        if key in shapes:
            if shapes[key] != shape:
                return False
        elif not key.endswith(OPTIONAL_SUFFIX):  # optional in old files (see load_weights)
            return False
    return set(shapes) <= set(expected)

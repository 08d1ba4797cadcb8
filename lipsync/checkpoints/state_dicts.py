"""Plain state_dicts (name → tensor): their keys cleaned of wrapper prefixes, compared with a
model's, and loaded into it strictly with a one-line report of what does not fit.
Also the little the file readers share: the device a `map_location` means, error quoting.
"""

from __future__ import annotations

import torch
from torch import nn

from lipsync.errors import CheckpointError

# Prefixes that training wrappers add to every key: DataParallel/DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# BatchNorm buffers that files from torch < 0.4.1 lack; a model keeps its own for them.
OPTIONAL_SUFFIX = "num_batches_tracked"
# A file reader's error is quoted up to this many characters of its first line.
ERROR_CHARS = 200


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


def all_tensors(d: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def device_of(map_location) -> torch.device:
    """The device a `map_location` (as torch.load takes it) puts tensors on; CPU for a mapping."""
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    return torch.device("cpu")


def shapes_of(state_dict: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def describe_mismatch(expected: dict, shapes: dict) -> str:
    """What differs between two name → shape tables, one line: "2 missing (e.g. a); 1 unexpected
    (e.g. b); 1 wrong shape (e.g. c (3,) vs (4,))". Absent `num_batches_tracked` buffers are not missing."""
    missing = [k for k in expected if k not in shapes and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} {shapes[k]} vs {v}" for k, v in expected.items() if k in shapes and shapes[k] != v]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        parts.append(f"{len(wrong)} wrong shape (e.g. {wrong[0]})")
    return "; ".join(parts) or "no difference"


def load_weights(model: nn.Module, state_dict: dict, name: str) -> nn.Module:
    """Load `state_dict` into `model` strictly: every key consumed, none missing, every shape equal;
    only `num_batches_tracked` buffers may be absent (pre-0.4.1 files; the model keeps its own).
    CheckpointError naming `name` otherwise. Returns `model`."""
    own = model.state_dict()
    state_dict = dict(state_dict)
    for key, value in own.items():
        if key.endswith(OPTIONAL_SUFFIX) and key not in state_dict:
            state_dict[key] = value
    expected, shapes = shapes_of(own), shapes_of(state_dict)
    if expected != shapes:
        raise CheckpointError(f"{name}: weights do not fit the model: {describe_mismatch(expected, shapes)}")
    model.load_state_dict(state_dict, strict=True)
    return model

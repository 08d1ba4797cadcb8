"""Plain state_dicts (name → tensor): their keys cleaned of wrapper prefixes, compared with a
model's, and loaded into it strictly with a one-line report of what does not fit. The same
strict loading serves third-party weight files (the metrics' FID Inception and SyncNet v2).
Also the little the file readers share: the device a `map_location` means, error quoting.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from lipsync.errors import CheckpointError, first_line

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


def describe_mismatch(expected: dict, shapes: dict, keys: bool = False) -> str:
    """What differs between two name → shape tables, one line: "2 missing (e.g. a); 1 unexpected
    (e.g. b); 1 wrong shape (e.g. c (3,) vs (4,))", or with `keys` (third-party weight files)
    "2 missing keys (e.g. a); 1 unexpected keys (e.g. b); 1 wrong shapes (e.g. c: (3,) vs (4,))".
    Absent `num_batches_tracked` buffers are not missing."""
    missing = [k for k in expected if k not in shapes and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [k for k, v in expected.items() if k in shapes and shapes[k] != v]
    noun = " keys" if keys else ""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing{noun} (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected{noun} (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        example = f"{k}: {shapes[k]} vs {expected[k]}" if keys else f"{k} {shapes[k]} vs {expected[k]}"
        parts.append(f"{len(wrong)} wrong shape{'s' if keys else ''} (e.g. {example})")
    return "; ".join(parts) or "no difference"


def load_weights(model: nn.Module, state, name: str, what: str | None = None) -> nn.Module:
    """Load `state` into `model` strictly: every key consumed, none missing, every shape equal;
    only `num_batches_tracked` buffers may be absent (pre-0.4.1 files; the model keeps its own).

    Otherwise CheckpointError naming `name`: "weights do not fit the model: …" for our
    checkpoints, or, given `what` (the network a third-party weight file should hold),
    "not a weight file for {what}: …" — also when `state` is not a name → tensor mapping.
    Returns `model`.
    """
    if what is not None and (not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f"{name}: not a weight file for {what} (expected a plain name -> tensor mapping)")
    own = model.state_dict()
    state = dict(state)
    for key, value in own.items():
        if key.endswith(OPTIONAL_SUFFIX) and key not in state:
            state[key] = value
    expected, shapes = shapes_of(own), shapes_of(state)
    if expected != shapes:
        if what is None:
            raise CheckpointError(f"{name}: weights do not fit the model: {describe_mismatch(expected, shapes)}")
        raise CheckpointError(f"{name}: not a weight file for {what}: {describe_mismatch(expected, shapes, keys=True)}")
    model.load_state_dict(state, strict=True)
    return model


def load_weights_file(path: str | os.PathLike, build: Callable[[], nn.Module], label: str, what: str,
                      unreadable: str, map_location="cpu") -> nn.Module:
    """A third-party network from its weight file (a torch.save'd name → tensor mapping, read
    with weights_only=True) → `build()` with those weights (`load_weights`), in eval mode.

    CheckpointError naming the file when it is absent ("no such {label} weight file"), when
    torch cannot read it (`unreadable`, formatted with the error as {error}, its type's name as
    {error_type} and its first line as {first_line}), or when it holds another network (`what`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such {label} weight file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/format failure means "not this file"
        detail = unreadable.format(error=e, error_type=type(e).__name__, first_line=first_line(e))
        raise CheckpointError(f"{path}: {detail}") from e
    return load_weights(build(), state, path, what).eval()

"""Our format ("lipsync checkpoint"): ONE `.safetensors` file, so it never needs pickle.

- tensors `model.<key>`: the model's state_dict;
- tensors `train.<n>`: every tensor of the optional training state (optimizer moments, …);
- metadata `format` = "lipsync-checkpoint", `format_version`, `config` (ModelConfig as JSON),
  and `train_state` (the training state's structure as JSON, tensors referenced by name).
One file is what MLflow logs as an artifact and what `cp` moves, and it loads bit-exactly.
A plain safetensors state_dict (no such metadata) reads as weights only.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lipsync.checkpoints.config import ModelConfig
from lipsync.checkpoints.state_dicts import ERROR_CHARS, device_of, strip_wrapper_prefixes
from lipsync.errors import CheckpointError, ConfigError, first_line

FORMAT_NAME = "lipsync-checkpoint"
FORMAT_VERSION = 1


@dataclass
class LipsyncFile:
    state_dict: dict
    config: ModelConfig
    train_state: dict | None


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """Whether a file of `size` bytes starting with `head` (its first 9 bytes) is a safetensors file."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def read_lipsync_file(path: Path, map_location) -> LipsyncFile:
    from safetensors import safe_open

    device = str(device_of(map_location))
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 — truncated or corrupt file
        raise CheckpointError(f"{path}: corrupt safetensors file: {first_line(e, ERROR_CHARS)}") from None
    if meta.get("format") != FORMAT_NAME:
        # A plain safetensors state_dict (e.g. exported elsewhere): weights only, config inferred.
        return LipsyncFile(strip_wrapper_prefixes(tensors), None, None)  # type: ignore[arg-type]
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer lipsync (format version {meta['format_version']}); upgrade to load it"
        )
    try:
        config = ModelConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: lipsync checkpoint with a missing or bad config: {e}") from None
    state_dict = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    train_state = None
    if "train_state" in meta:
        train_tensors = {k: v for k, v in tensors.items() if k.startswith("train.")}
        train_state = _unflatten(json.loads(meta["train_state"]), train_tensors)
    return LipsyncFile(state_dict, config, train_state)


def write_lipsync_file(path: Path, state_dict: dict, config: ModelConfig, train_state) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config.to_dict()),
    }
    if train_state is not None:
        meta["train_state"] = json.dumps(_flatten(train_state, tensors))
    tensors.update({f"model.{k}": v for k, v in state_dict.items()})
    save_file(_unshared(tensors), str(path), metadata=meta)


# JSON cannot hold tensors, int dict keys (optimizer state is keyed by parameter index) or
# tuples (Adam betas), so the training state is stored as a small tagged tree:
#   {"t": name} tensor · {"d": [[key, value], …]} dict · {"l": […]} list · {"u": […]} tuple
#   plain JSON value for str / int / float / bool / None.


def _flatten(obj, tensors: dict) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"train.{len(tensors)}"
        tensors[name] = obj
        return {"t": name}
    if isinstance(obj, dict):
        return {"d": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, list):
        return {"l": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, tuple):
        return {"u": [_flatten(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy scalar
        return obj.item()
    if hasattr(obj, "__array__"):  # numpy array
        return _flatten(torch.as_tensor(obj), tensors)
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state")


def _unflatten(node, tensors: dict) -> Any:
    if isinstance(node, dict):
        if "t" in node:
            return tensors[node["t"]]
        if "d" in node:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in node["d"]}
        if "l" in node:
            return [_unflatten(v, tensors) for v in node["l"]]
        if "u" in node:
            return tuple(_unflatten(v, tensors) for v in node["u"])
    return node


def _unshared(tensors: dict) -> dict:
    """Contiguous CPU tensors with no two sharing memory (safetensors refuses shared storage)."""
    seen, out = set(), {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if t.numel():
            storage = t.untyped_storage().data_ptr()
            if storage in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t = t.clone()  # a view into a bigger or already-written buffer
            seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out

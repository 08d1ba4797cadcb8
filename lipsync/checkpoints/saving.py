"""Writing a checkpoint, in one of two layouts.

`save_checkpoint(..., layout="lipsync")` writes our one-file safetensors format
(`lipsync.checkpoints.lipsync_format`). `layout="original"` instead writes the original dict
layout with `torch.save`, so the original repository's scripts can load (and resume from) it;
the config rides along under an extra `lipsync_config` key that the original code ignores.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lipsync.checkpoints.config import MODEL_CLASSES, ModelConfig
from lipsync.checkpoints.lipsync_format import write_lipsync_file
from lipsync.checkpoints.state_dicts import strip_wrapper_prefixes
from lipsync.errors import ConfigError
from lipsync.models.wrappers import unwrap

LAYOUTS = ("lipsync", "original")


def save_checkpoint(path, model, config: ModelConfig, train_state: dict | None = None, layout: str = "lipsync") -> Path:
    """Write `model` (a module or a state_dict) with its config and optional training state.

    layout="lipsync": one safetensors file (see lipsync_format); bit-exact round trip.
    layout="original": torch.save({state_dict, optimizer, global_step, global_epoch, …}) as the
    original scripts write it; `train_state["optimizer"|"global_step"|"global_epoch"]` fill
    those slots, anything else goes under `lipsync_train_state`.
    The file is written to a temporary name first and renamed, so a crash never leaves half a checkpoint.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise ConfigError(f"checkpoint layout must be 'lipsync' or 'original', got {layout!r}")
    state_dict = _model_state_dict(model, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if layout == "lipsync":
            write_lipsync_file(tmp, state_dict, config, train_state)
        else:
            torch.save(_original_payload(state_dict, config, train_state), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _original_payload(state_dict: dict, config: ModelConfig, train_state: dict | None) -> dict:
    """The original scripts' checkpoint dict, with our config (and any other training state) added."""
    state = dict(train_state or {})
    payload = {
        "state_dict": state_dict,
        "optimizer": state.pop("optimizer", None),
        "global_step": state.pop("global_step", 0),
        "global_epoch": state.pop("global_epoch", 0),
        "lipsync_config": config.to_dict(),
    }
    if state:
        payload["lipsync_train_state"] = state
    return payload


def _model_state_dict(model, config: ModelConfig) -> dict:
    if isinstance(model, nn.Module):
        inner = unwrap(model)  # DataParallel / DDP
        inner = getattr(inner, "_orig_mod", inner)  # torch.compile
        expected = MODEL_CLASSES[config.kind]
        if not isinstance(inner, expected):
            raise ConfigError(
                f"config says kind {config.kind!r} ({expected.__name__}) but the model is a {type(inner).__name__}"
            )
        if inner.min_channels != config.min_channels:  # every model class stores its floor
            raise ConfigError(f"config says min_channels {config.min_channels} but the model was built with "
                              f"{inner.min_channels}: the file would not load")
        state_dict = inner.state_dict()
    else:
        state_dict = dict(model)
    return strip_wrapper_prefixes(state_dict)

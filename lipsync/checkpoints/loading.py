"""Loading any supported checkpoint: `load_checkpoint` / `load_model`.

The format is detected from the file's bytes: our safetensors format
(`lipsync.checkpoints.lipsync_format`), or what torch.load reads (`torch_files`: the original
dict layout, a raw state_dict, pickled modules and TorchScript behind the trust gate). Any of
them may carry DataParallel/DDP `module.` (or torch.compile `_orig_mod.`) key prefixes.
A directory holding a `model.safetensors` is accepted in its place. When the kind/width/face
size are not stored, they are recognised from the weights (`recognition`).
"""

from __future__ import annotations

import os
from pathlib import Path

from lipsync.checkpoints.config import KIND_NAMES, Checkpoint, check_kind
from lipsync.checkpoints.lipsync_format import LipsyncFile, looks_like_safetensors, read_lipsync_file
from lipsync.checkpoints.recognition import detect_kind, infer_config
from lipsync.checkpoints.state_dicts import device_of, load_weights, strip_wrapper_prefixes
from lipsync.checkpoints.torch_files import read_torch_file, unpack_torch_object
from lipsync.errors import CheckpointError, ConfigError


def load_model(path_or_obj, kind: str | None = None, trust: bool = False, map_location="cpu"):
    """Load any supported checkpoint → (model in eval mode, ModelConfig). See the module docstring."""
    ckpt = load_checkpoint(path_or_obj, kind=kind, trust=trust, map_location=map_location)
    return ckpt.model, ckpt.config


def load_checkpoint(path_or_obj, kind: str | None = None, trust: bool = False, map_location="cpu") -> Checkpoint:
    """Load a checkpoint file (or an in-memory state_dict / checkpoint dict / module).

    `kind` ("expert" | "wav2lip" | "disc") is checked against what the file holds;
    None accepts any. Raises CheckpointError naming the file for every bad input.
    """
    if kind is not None:
        check_kind(kind)
    if isinstance(path_or_obj, (str, os.PathLike)):
        path = _resolve_path(Path(path_or_obj))
        name = str(path)
        raw, source_format = _read_file(path, trust, map_location)
    else:
        name, raw, source_format = "<in-memory checkpoint>", path_or_obj, None

    config, train_state = None, None
    if isinstance(raw, LipsyncFile):
        state_dict, config, train_state = raw.state_dict, raw.config, raw.train_state
        source_format = "lipsync" if config is not None else "safetensors"
    else:
        state_dict, config, train_state, found_format = unpack_torch_object(raw, name)
        source_format = source_format or found_format

    state_dict = strip_wrapper_prefixes(state_dict)
    found_kind = config.kind if config is not None else detect_kind(state_dict)
    if found_kind is None:
        first = ", ".join(list(state_dict)[:4]) or "none"
        raise CheckpointError(
            f"{name}: its weights match none of the known models (expert, wav2lip, disc); first keys: {first}"
        )
    if kind is not None and found_kind != kind:
        raise CheckpointError(
            f"{name} holds a {KIND_NAMES[found_kind]} checkpoint ({found_kind!r}), "
            f"but a {KIND_NAMES[kind]} ({kind!r}) was expected"
        )
    if config is None:
        config = infer_config(state_dict, found_kind, name)

    try:
        model = config.build()
    except ConfigError as e:  # a stored config this version cannot build
        raise CheckpointError(f"{name}: {e}") from None
    load_weights(model, state_dict, name)
    model.to(device_of(map_location)).eval()
    return Checkpoint(model, config, train_state, source_format, name)


def _resolve_path(path: Path) -> Path:
    if path.is_dir():
        inner = path / "model.safetensors"
        if inner.is_file():
            return inner
        raise CheckpointError(f"{path}: is a directory without a model.safetensors checkpoint")
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty (0 bytes)")
    return path


def _read_file(path: Path, trust: bool, map_location):
    """Read a checkpoint file by sniffing its bytes → (object, format or None)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if looks_like_safetensors(head, path.stat().st_size):
        return read_lipsync_file(path, map_location), "lipsync"
    return read_torch_file(path, head, trust, map_location)

"""Files `torch.load` reads, behind a trust gate.

- the original layout: a `torch.save`d dict {state_dict, optimizer, global_step,
  global_epoch} (`lipsync_expert.pth`, `wav2lip.pth`, `wav2lip_gan.pth`, `disc_*.pth`),
  legacy (torch < 1.6) or zip serialisation;
- a raw state_dict saved with `torch.save`;
- full serialized modules: `torch.save(model)` pickles and TorchScript archives (the
  2025 `Wav2Lip-SD-*.pt` re-uploads). These contain code, so they load only with
  `trust=True`; otherwise a CheckpointError names the file and says how to trust it.
`torch.load` always runs with `weights_only=True` unless `trust=True`.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from lipsync.checkpoints.config import ModelConfig
from lipsync.checkpoints.state_dicts import ERROR_CHARS, all_tensors, device_of
from lipsync.errors import CheckpointError, first_line



def read_torch_file(path: Path, head: bytes, trust: bool, map_location):
    """What torch.load (or torch.jit.load) makes of a file starting with `head` → (object, format or None)."""
    is_zip = head.startswith(b"PK\x03\x04")
    if not is_zip and not head.startswith(b"\x80"):  # neither torch zip nor a (legacy) pickle
        raise CheckpointError(f"{path}: not a checkpoint (neither a safetensors nor a PyTorch file)")
    if is_zip and _is_torchscript(path):
        if not trust:
            raise CheckpointError(untrusted_message(path, "a TorchScript archive (compiled model code)"))
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated, but the re-uploads use it
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location=device_of(map_location)), "torchscript"
        except Exception as e:  # noqa: BLE001 — any failure here is a bad file
            raise CheckpointError(f"{path}: unreadable TorchScript archive: {first_line(e, ERROR_CHARS)}") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True), None
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(
                f"{path}: corrupt or not a PyTorch checkpoint: {first_line(e, ERROR_CHARS)}"
            ) from None
        if not trust:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f"pickled Python objects ({found.group(1)})" if found else "pickled Python objects"
            raise CheckpointError(untrusted_message(path, what)) from None
    except Exception as e:  # noqa: BLE001 — truncated zip, bad magic, …
        raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint: {first_line(e, ERROR_CHARS)}") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_tolerant_pickle), None
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: could not unpickle the trusted file: {first_line(e, ERROR_CHARS)}") from None


def untrusted_message(path: Path, what: str) -> str:
    return (
        f"{path}: the file contains {what}, which can run arbitrary code when loaded. "
        f"Load it only if you trust its source: pass trust=True (CLI: --trust-checkpoint), "
        f"or convert it once to a safe .safetensors checkpoint with save_checkpoint"
    )


def unpack_torch_object(obj, name: str):
    """(state_dict, config or None, train_state or None, format) from what torch.load returned."""
    if isinstance(obj, (nn.Module, torch.jit.ScriptModule)):
        return dict(obj.state_dict()), None, None, "pickled-module"
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: not a model checkpoint (holds a {type(obj).__name__})")
    if "state_dict" in obj:
        state_dict = obj["state_dict"]
        if isinstance(state_dict, nn.Module):
            state_dict = state_dict.state_dict()
        if not isinstance(state_dict, dict) or not all_tensors(state_dict):
            raise CheckpointError(f"{name}: its 'state_dict' entry is not a mapping of tensors")
        config = obj.get("lipsync_config")
        train_state = {k: obj[k] for k in ("optimizer", "global_step", "global_epoch") if k in obj}
        train_state.update(obj.get("lipsync_train_state") or {})
        config = ModelConfig.from_dict(config) if isinstance(config, dict) else None
        return dict(state_dict), config, (train_state or None), "original"
    if obj and all_tensors(obj):
        return dict(obj), None, None, "state_dict"
    keys = ", ".join(map(str, list(obj)[:6])) or "none"
    raise CheckpointError(f"{name}: a dict without a 'state_dict' or tensors (top-level keys: {keys})")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


class _TolerantUnpickler(pickle.Unpickler):
    """For trusted full-module pickles whose classes live in modules we do not have
    (the original repo's `models.wav2lip.Wav2Lip`, …): such a class becomes a bare
    nn.Module subclass, which still carries the parameters so `.state_dict()` works."""

    placeholders: dict = {}

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            key = (module, name)
            if key not in self.placeholders:
                self.placeholders[key] = type(name, (nn.Module,), {"__module__": module})
            return self.placeholders[key]


class _tolerant_pickle:  # noqa: N801 — stands in for the `pickle` module torch.load expects
    Unpickler = _TolerantUnpickler
    load = staticmethod(pickle.load)
    __name__ = "pickle"

"""Checkpoint formats: the official Wav2Lip files, and ours.

Loading (`load_checkpoint` / `load_model`) accepts, detected from the file's bytes:
- the original layout: a `torch.save`d dict {state_dict, optimizer, global_step,
  global_epoch} (`lipsync_expert.pth`, `wav2lip.pth`, `wav2lip_gan.pth`, `disc_*.pth`),
  legacy (torch < 1.6) or zip serialisation;
- a raw state_dict saved with `torch.save`;
- either of the above with DataParallel/DDP `module.` (or torch.compile `_orig_mod.`) prefixes;
- full serialized modules: `torch.save(model)` pickles and TorchScript archives (the
  2025 `Wav2Lip-SD-*.pt` re-uploads). These contain code, so they load only with
  `trust=True`; otherwise a CheckpointError names the file and says how to trust it;
- our format (below).
`torch.load` always runs with `weights_only=True` unless `trust=True`.

Our format ("lipsync checkpoint") is ONE `.safetensors` file, so it never needs pickle:
- tensors `model.<key>`: the model's state_dict;
- tensors `train.<n>`: every tensor of the optional training state (optimizer moments, …);
- metadata `format` = "lipsync-checkpoint", `format_version`, `config` (ModelConfig as JSON),
  and `train_state` (the training state's structure as JSON, tensors referenced by name).
One file is what MLflow logs as an artifact and what `cp` moves, and it loads bit-exactly.
A directory holding a `model.safetensors` is accepted in its place.

`save_checkpoint(..., layout="original")` instead writes the original dict layout with
`torch.save`, so the original repository's scripts can load (and resume from) it; the config
rides along under an extra `lipsync_config` key that the original code ignores.

When the kind/width/face size are not stored (official files), they are inferred from the
state_dict keys and shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipsync.errors import CheckpointError, ConfigError
from lipsync.models import SyncNet, VisualQualityDiscriminator, Wav2Lip
from lipsync.models.blocks import MIN_CHANNELS

FORMAT_NAME = "lipsync-checkpoint"
FORMAT_VERSION = 1
KINDS = ("expert", "wav2lip", "disc")
MODEL_CLASSES = {"expert": SyncNet, "wav2lip": Wav2Lip, "disc": VisualQualityDiscriminator}
KIND_NAMES = {
    "expert": "lip-sync expert (SyncNet)",
    "wav2lip": "Wav2Lip generator",
    "disc": "visual-quality discriminator",
}
# Face sizes tried when inferring a checkpoint's architecture from its shapes.
CANDIDATE_FACE_SIZES = (96, 128, 192, 256, 384, 512)
# Wrapper prefixes that training wrappers add to every key.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class ModelConfig:
    """What is needed to rebuild a model and feed it: architecture plus audio/video framing."""

    kind: str  # "expert" | "wav2lip" | "disc"
    width: float = 1.0
    face_size: int = 96
    min_channels: int = MIN_CHANNELS  # narrowest layer below width 1 (absent in older files: the old floor)
    sample_rate: int = 16000
    fps: float = 25.0
    mel_step: int = 16  # mel frames per window (200 ms)
    num_mels: int = 80
    window_frames: int = 5  # video frames per training window (syncnet_T)
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. source file), kept as is

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"model kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of to_dict; unknown keys (from a newer version) are kept under `extra`."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        unknown = {k: v for k, v in d.items() if k not in names}
        if "kind" not in known:
            raise ConfigError(f"model config has no 'kind': {d!r}")
        known["extra"] = {**known.get("extra", {}), **unknown}
        return cls(**known)

    def build(self) -> nn.Module:
        return MODEL_CLASSES[self.kind](width=self.width, face_size=self.face_size, min_channels=self.min_channels)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode, on `map_location`) and what came with it."""

    model: nn.Module
    config: ModelConfig
    train_state: dict | None  # e.g. {"optimizer": …, "global_step": …, "global_epoch": …}
    source_format: str  # "lipsync" | "original" | "state_dict" | "pickled-module" | "torchscript"
    path: str


# --------------------------------------------------------------------------- loading


def load_model(path_or_obj, kind: str | None = None, trust: bool = False, map_location="cpu"):
    """Load any supported checkpoint → (model in eval mode, ModelConfig). See the module docstring."""
    ckpt = load_checkpoint(path_or_obj, kind=kind, trust=trust, map_location=map_location)
    return ckpt.model, ckpt.config


def load_checkpoint(path_or_obj, kind: str | None = None, trust: bool = False, map_location="cpu") -> Checkpoint:
    """Load a checkpoint file (or an in-memory state_dict / checkpoint dict / module).

    `kind` ("expert" | "wav2lip" | "disc") is checked against what the file holds;
    None accepts any. Raises CheckpointError naming the file for every bad input.
    """
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"model kind must be one of {', '.join(KINDS)}, got {kind!r}")
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
        state_dict, config, train_state, found_format = _unpack_torch_object(raw, name)
        source_format = source_format or found_format

    state_dict = _strip_wrapper_prefixes(state_dict)
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
    _load_strict(model, state_dict, name)
    model.to(_device_of(map_location)).eval()
    return Checkpoint(model, config, train_state, source_format, name)


def detect_kind(state_dict) -> str | None:
    """Which network a state_dict belongs to, from its key names (None if unknown)."""
    keys = set(state_dict)
    if "binary_pred.0.weight" in keys:
        return "disc"
    if "output_block.1.weight" in keys and any(k.startswith("face_decoder_blocks.") for k in keys):
        return "wav2lip"
    if any(k.startswith("face_encoder.") for k in keys) and any(k.startswith("audio_encoder.") for k in keys):
        return "expert"
    return None


def infer_config(state_dict, kind: str, name: str = "<state_dict>") -> ModelConfig:
    """Recover width and face size of a state_dict without a stored config (official files).

    The width comes from the 512-channel bottleneck; the face size is the candidate whose
    architecture (built on the meta device, no memory) has exactly these shapes.
    """
    bottleneck_key = {
        "expert": "audio_encoder.13.conv_block.0.weight",
        "wav2lip": "audio_encoder.12.conv_block.0.weight",
        "disc": "binary_pred.0.weight",
    }[kind]
    if bottleneck_key not in state_dict:
        raise CheckpointError(f"{name}: looks like a {KIND_NAMES[kind]} but has no {bottleneck_key}")
    bottleneck = state_dict[bottleneck_key].shape[1 if kind == "disc" else 0]
    width = 1.0 if bottleneck == 512 else bottleneck / 512
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    first_mismatch = None
    for face_size in CANDIDATE_FACE_SIZES:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in MODEL_CLASSES[kind](width, face_size).state_dict().items()}
        if _same_shapes(expected, shapes):
            return ModelConfig(kind=kind, width=width, face_size=face_size)
        if first_mismatch is None:
            first_mismatch = _describe_mismatch(expected, shapes)
    raise CheckpointError(
        f"{name}: looks like a {KIND_NAMES[kind]} (width {width:g}) but its layer shapes match no "
        f"supported face size {CANDIDATE_FACE_SIZES}; at 96 px: {first_mismatch}"
    )


def _same_shapes(expected: dict, shapes: dict) -> bool:
    for key, shape in expected.items():
        if key in shapes:
            if shapes[key] != shape:
                return False
        elif not key.endswith("num_batches_tracked"):  # optional in old files (see _load_strict)
            return False
    return set(shapes) <= set(expected)


def _describe_mismatch(expected: dict, shapes: dict) -> str:
    missing = [k for k in expected if k not in shapes and not k.endswith("num_batches_tracked")]
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


def _load_strict(model: nn.Module, state_dict: dict, name: str) -> None:
    """Every key consumed, none missing; only BN `num_batches_tracked` may be absent (pre-0.4.1 files)."""
    own = model.state_dict()
    state_dict = dict(state_dict)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = value
    expected = {k: tuple(v.shape) for k, v in own.items()}
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    if expected != shapes:
        raise CheckpointError(f"{name}: weights do not fit the model: {_describe_mismatch(expected, shapes)}")
    model.load_state_dict(state_dict, strict=True)


def _strip_wrapper_prefixes(state_dict: dict) -> dict:
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


def _unpack_torch_object(obj, name: str):
    """(state_dict, config or None, train_state or None, format) from what torch.load returned."""
    if isinstance(obj, (nn.Module, torch.jit.ScriptModule)):
        return dict(obj.state_dict()), None, None, "pickled-module"
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: not a model checkpoint (holds a {type(obj).__name__})")
    if "state_dict" in obj:
        state_dict = obj["state_dict"]
        if isinstance(state_dict, nn.Module):
            state_dict = state_dict.state_dict()
        if not isinstance(state_dict, dict) or not _all_tensors(state_dict):
            raise CheckpointError(f"{name}: its 'state_dict' entry is not a mapping of tensors")
        config = obj.get("lipsync_config")
        train_state = {k: obj[k] for k in ("optimizer", "global_step", "global_epoch") if k in obj}
        train_state.update(obj.get("lipsync_train_state") or {})
        config = ModelConfig.from_dict(config) if isinstance(config, dict) else None
        return dict(state_dict), config, (train_state or None), "original"
    if obj and _all_tensors(obj):
        return dict(obj), None, None, "state_dict"
    keys = ", ".join(map(str, list(obj)[:6])) or "none"
    raise CheckpointError(f"{name}: a dict without a 'state_dict' or tensors (top-level keys: {keys})")


def _all_tensors(d: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


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


def _device_of(map_location) -> torch.device:
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    return torch.device("cpu")


@dataclass
class LipsyncFile:
    state_dict: dict
    config: ModelConfig
    train_state: dict | None


def _read_file(path: Path, trust: bool, map_location):
    """Read a checkpoint file by sniffing its bytes → (object, format or None)."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if _looks_like_safetensors(head, size):
        return _read_lipsync_file(path, map_location), "lipsync"
    is_zip = head.startswith(b"PK\x03\x04")
    if not is_zip and not head.startswith(b"\x80"):  # neither torch zip nor a (legacy) pickle
        raise CheckpointError(f"{path}: not a checkpoint (neither a safetensors nor a PyTorch file)")
    if is_zip and _is_torchscript(path):
        if not trust:
            raise CheckpointError(_untrusted_message(path, "a TorchScript archive (compiled model code)"))
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated, but the re-uploads use it
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location=_device_of(map_location)), "torchscript"
        except Exception as e:  # noqa: BLE001 — any failure here is a bad file
            raise CheckpointError(f"{path}: unreadable TorchScript archive: {_first_line(e)}") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True), None
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint: {_first_line(e)}") from None
        if not trust:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f"pickled Python objects ({found.group(1)})" if found else "pickled Python objects"
            raise CheckpointError(_untrusted_message(path, what)) from None
    except Exception as e:  # noqa: BLE001 — truncated zip, bad magic, …
        raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint: {_first_line(e)}") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_tolerant_pickle), None
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: could not unpickle the trusted file: {_first_line(e)}") from None


def _untrusted_message(path: Path, what: str) -> str:
    return (
        f"{path}: the file contains {what}, which can run arbitrary code when loaded. "
        f"Load it only if you trust its source: pass trust=True (CLI: --trust-checkpoint), "
        f"or convert it once to a safe .safetensors checkpoint with save_checkpoint"
    )


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


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


# --------------------------------------------------------------------------- our format


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def _read_lipsync_file(path: Path, map_location) -> LipsyncFile:
    from safetensors import safe_open

    device = str(_device_of(map_location))
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 — truncated or corrupt file
        raise CheckpointError(f"{path}: corrupt safetensors file: {_first_line(e)}") from None
    if meta.get("format") != FORMAT_NAME:
        # A plain safetensors state_dict (e.g. exported elsewhere): weights only, config inferred.
        return LipsyncFile(_strip_wrapper_prefixes(tensors), None, None)  # type: ignore[arg-type]
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


# --------------------------------------------------------------------------- saving


def save_checkpoint(path, model, config: ModelConfig, train_state: dict | None = None, layout: str = "lipsync") -> Path:
    """Write `model` (a module or a state_dict) with its config and optional training state.

    layout="lipsync": one safetensors file (see module docstring); bit-exact round trip.
    layout="original": torch.save({state_dict, optimizer, global_step, global_epoch, …}) as the
    original scripts write it; `train_state["optimizer"|"global_step"|"global_epoch"]` fill
    those slots, anything else goes under `lipsync_train_state`.
    The file is written to a temporary name first and renamed, so a crash never leaves half a checkpoint.
    """
    path = Path(path)
    if layout not in ("lipsync", "original"):
        raise ConfigError(f"checkpoint layout must be 'lipsync' or 'original', got {layout!r}")
    state_dict = _model_state_dict(model, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if layout == "lipsync":
            _write_lipsync_file(tmp, state_dict, config, train_state)
        else:
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
            torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _model_state_dict(model, config: ModelConfig) -> dict:
    if isinstance(model, nn.Module):
        inner = getattr(model, "module", model)  # DataParallel / DDP
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
    return _strip_wrapper_prefixes(state_dict)


def _write_lipsync_file(path: Path, state_dict: dict, config: ModelConfig, train_state) -> None:
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

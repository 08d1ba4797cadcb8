"""Checkpoint formats: the official Wav2Lip files, and ours.

`load_checkpoint` / `load_model` read any of them, detected from the file's bytes;
`save_checkpoint` writes ours or the original layout. One module per concept:

- `config`: ModelConfig, the loaded Checkpoint, and the kind table (built from the
  `ModelKind` each network in `lipsync.models` declares);
- `loading`: the entry points `load_checkpoint` / `load_model`;
- `recognition`: kind, width and face size of files without a stored config;
- `torch_files`: what torch.load reads (.pth/.tar, pickled modules, TorchScript), behind the
  trust gate: `torch.load` always runs with `weights_only=True` unless `trust=True`;
- `lipsync_format`: our one-file safetensors format;
- `saving`: `save_checkpoint` and its two layouts;
- `state_dicts`: wrapper prefixes, strict loading with its mismatch report, and third-party
  weight files (`load_weights_file`, used by lipsync.metrics).
"""

from lipsync.checkpoints.config import KIND_NAMES, KIND_TABLE, KINDS, MODEL_CLASSES, Checkpoint, ModelConfig
from lipsync.checkpoints.lipsync_format import FORMAT_NAME, FORMAT_VERSION, LipsyncFile
from lipsync.checkpoints.loading import load_checkpoint, load_model
from lipsync.checkpoints.recognition import CANDIDATE_FACE_SIZES, detect_kind, infer_config
from lipsync.checkpoints.saving import save_checkpoint
from lipsync.checkpoints.state_dicts import WRAPPER_PREFIXES, describe_mismatch, load_weights, load_weights_file

__all__ = [
    "CANDIDATE_FACE_SIZES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KINDS",
    "KIND_NAMES",
    "KIND_TABLE",
    "MODEL_CLASSES",
    "WRAPPER_PREFIXES",
    "Checkpoint",
    "LipsyncFile",
    "ModelConfig",
    "describe_mismatch",
    "detect_kind",
    "infer_config",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "load_weights_file",
    "save_checkpoint",
]

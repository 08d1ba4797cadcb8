"""What a checkpoint holds besides its weights: the ModelConfig, and the table of model kinds.

The kind table is built from the `ModelKind` each network declares beside itself
(`lipsync.models`); the kinds are "expert" (SyncNet), "wav2lip" and "disc".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from lipsync.errors import ConfigError
from lipsync.models import MODEL_KINDS
from lipsync.models.blocks import MIN_CHANNELS

KIND_TABLE = {k.name: k for k in MODEL_KINDS}  # kind name → its ModelKind
KINDS = tuple(KIND_TABLE)  # ("expert", "wav2lip", "disc")
MODEL_CLASSES = {name: k.model_class for name, k in KIND_TABLE.items()}
KIND_NAMES = {name: k.display_name for name, k in KIND_TABLE.items()}


def check_kind(kind: str) -> str:
    """`kind` if it is a known model kind; ConfigError naming the known ones otherwise."""
    if kind not in KINDS:
        raise ConfigError(f"model kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


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
        check_kind(self.kind)

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

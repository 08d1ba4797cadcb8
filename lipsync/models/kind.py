"""What the checkpoint loader knows about one network, declared beside the network itself
(as torchtitan keeps a state-dict adapter next to each model): the `kind` name a ModelConfig
stores, a display name for messages, the class, how to recognise the network's state_dict
from its key names, and which tensor tells its width. ``lipsync.checkpoints`` builds its kind
table from these; nothing here imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelKind:
    name: str  # ModelConfig.kind: "expert" | "wav2lip" | "disc"
    display_name: str  # e.g. "Wav2Lip generator"
    model_class: type[nn.Module]  # built as model_class(width, face_size, min_channels)
    # A state_dict of this network holds every one of `signature_keys` and, for each of
    # `signature_prefixes`, some key starting with it (official and our files alike).
    signature_keys: tuple[str, ...]
    signature_prefixes: tuple[str, ...]
    # The 512-channel (at width 1) bottleneck: its tensor and the dimension that counts them.
    bottleneck_key: str
    bottleneck_dim: int

    def matches(self, keys) -> bool:
        """Whether state_dict keys (any collection of names) carry this network's signature."""
        keys = set(keys)
        return all(k in keys for k in self.signature_keys) and all(
            any(k.startswith(prefix) for k in keys) for prefix in self.signature_prefixes
        )

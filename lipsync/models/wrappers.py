"""What training wraps around a network, taken off again."""

from __future__ import annotations

from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DataParallel / DistributedDataParallel wrapper (``.module``);
    a module without one is returned as it is."""
    return module.module if hasattr(module, "module") else module

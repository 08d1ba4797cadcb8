"""Runners: the generator at one precision, behind the same two calls ``encode_face(face)``
(the skips) and ``decode(audio, skips)`` (the faces). ``FaceGenerator`` builds the PyTorch
ones, ``lipsync.inference.precision`` chooses among them and the ONNX Runtime ones.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class TorchRunner:
    """The fused model in PyTorch at one dtype and memory format."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool,
                 copy_model: bool = True):
        self.device, self.dtype = device, dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = copy.deepcopy(model) if copy_model else model  # no copy: converted in place (less memory)
        self.model = model.to(device, dtype).to(memory_format=self.memory_format)

    @torch.inference_mode()
    def encode_face(self, face: torch.Tensor) -> list:
        return self.model.encode_face(face.to(self.device, self.dtype).contiguous(memory_format=self.memory_format))

    @torch.inference_mode()
    def decode(self, audio: torch.Tensor, skips: list) -> torch.Tensor:
        return self.model.decode(audio.to(self.device, self.dtype), skips).float()


class OrtRunner:
    """ONNX Runtime sessions (fp32 or int8) behind the same encode/decode calls."""

    def __init__(self, ort_generator):
        self.ort = ort_generator

    def encode_face(self, face: torch.Tensor) -> list:
        return self.ort.encode_face(face.numpy())

    def decode(self, audio: torch.Tensor, skips: list) -> torch.Tensor:
        return torch.from_numpy(self.ort.decode(audio.numpy(), skips))

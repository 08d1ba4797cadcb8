"""The generator prepared for fast inference: device, precision, fused BatchNorm, batching.

* BatchNorm folded into the preceding (transposed) convolution: in eval mode it is an affine
  map per channel, so folding it is exact up to float rounding and removes ~50 memory passes.
* Precision. ``bf16``: weights and activations in bfloat16 -- on CPUs with AVX-512 BF16 (or
  AMX) oneDNN runs bf16 convolutions ~2x faster than fp32 (measured in benchmarks/infer.py,
  with the pixel difference to fp32 printed there); on CUDA it is the usual bf16.
  No int8: PyTorch's dynamic quantisation covers Linear/RNN layers only and this generator
  is all convolutions (it stayed fp32, measured: same speed, zero pixel difference);
  static int8 convolutions need torchao's PT2E flow, not a dependency here.
  ``auto``: bf16 on CUDA and on CPUs that support it natively, else fp32.
* channels-last memory format for the convolutions.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lipsync.errors import ConfigError
from lipsync.models.wav2lip import generator_input


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX (what oneDNN uses for fast bf16 convolutions)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every (Conv2d|ConvTranspose2d, BatchNorm2d) pair of a Sequential into the conv (eval only)."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(bn, nn.BatchNorm2d) and isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
                module[i] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                module[i + 1] = nn.Identity()
    return model


class FaceGenerator:
    """Callable: (faces uint8 (B,S,S,3) BGR, mels float32 (B,80,16)) -> uint8 (B,S,S,3) BGR."""

    def __init__(self, model: nn.Module, face_size: int, device: str = "auto", precision: str = "auto",
                 channels_last: bool = True):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.face_size = int(face_size)
        model = fuse_batchnorm(copy.deepcopy(model).eval())
        self.dtype = torch.float32
        if self.precision == "bf16":
            self.dtype = torch.bfloat16
        self.channels_last = bool(channels_last)
        model = model.to(self.device, self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def describe(self) -> dict:
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last}

    @torch.inference_mode()
    def __call__(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        s = self.face_size
        if faces.shape[1:] != (s, s, 3):
            raise ValueError(f"faces must be (B,{s},{s},3), got {faces.shape}")
        x = torch.from_numpy(np.ascontiguousarray(faces)).to(self.device)
        # (B,S,S,3) uint8 -> (B,3,S,S) in [0,1]; permute gives a channels-last view for free.
        x = x.permute(0, 3, 1, 2).to(self.dtype).div_(255.0)
        face_in = generator_input(x, x)
        face_in = face_in.contiguous(memory_format=torch.channels_last if self.channels_last
                                     else torch.contiguous_format)
        audio = torch.from_numpy(np.ascontiguousarray(mels, dtype=np.float32))[:, None].to(self.device, self.dtype)
        out = self.model(audio, face_in)  # (B,3,S,S) BGR in [0,1]
        out = out.float().mul_(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)
        return out.permute(0, 2, 3, 1).contiguous().cpu().numpy()

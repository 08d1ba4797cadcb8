"""The generator prepared for fast inference: device, backend/precision, fused BatchNorm, still faces.

* BatchNorm folded into the preceding (transposed) convolution: in eval mode it is an affine
  map per channel, so folding it is exact up to float rounding and removes ~50 memory passes.
* Backends (runners in ``lipsync.inference.runners``; ``lipsync.inference.precision`` chooses
  one per CPU, or ``--precision`` forces it):
  ``fp32`` PyTorch fp32 (channels-last); ``bf16`` PyTorch bfloat16 -- ~2x fp32 on CPUs with
  AVX-512 BF16/AMX, and the usual choice on CUDA; ``ort-fp32`` ONNX Runtime fp32 (same output
  within float tolerance); ``int8`` ONNX Runtime static int8 (lipsync.inference.onnx_backend).
* Still faces. The face encoder never sees the audio (``Wav2Lip.encode_face`` / ``decode``),
  so when the same face is passed again (an image, ``--static``) its output is reused and
  only the audio encoder + decoder run: 0.62 of 7.93 GFLOP per frame saved at full size, and
  the output is the same up to float rounding (the decoder gets the same skips; batch
  shapes differ, so BLAS may round differently: at most 1 in 255 per pixel,
  tests/test_infer_backends.py).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lipsync.errors import ConfigError
from lipsync.inference.runners import TorchRunner
from lipsync.models.wav2lip import generator_input


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


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


def network_inputs(faces: np.ndarray, mels: np.ndarray, face_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B,S,S,3) BGR faces + (B,80,16) mels → the generator's float32 (B,6,S,S) and (B,1,80,16)."""
    s = int(face_size)
    if faces.shape[1:] != (s, s, 3):
        raise ValueError(f"faces must be (B,{s},{s},3), got {faces.shape}")
    x = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float().div_(255.0)
    face_in = generator_input(x, x).contiguous()  # the frame, lower half masked, ++ itself as reference
    audio = torch.from_numpy(np.ascontiguousarray(mels, dtype=np.float32))[:, None]
    return face_in, audio


class FaceGenerator:
    """Callable: (faces uint8 (B,S,S,3) BGR, mels float32 (B,80,16)) -> uint8 (B,S,S,3) BGR.

    ``faces`` with one face and B mel windows is a still face: one encoder pass, reused for
    as long as the same face keeps coming (compared by value, so a new face is never missed).
    The backend is chosen on the first call (``prepare``), from the first real faces: int8
    calibrates on them and the timed probe runs on them.
    """

    def __init__(self, model: nn.Module, face_size: int, device: str = "auto", precision: str = "auto",
                 channels_last: bool = True):
        self.device = resolve_device(device)
        self.requested = precision
        self.face_size = int(face_size)
        self.channels_last = bool(channels_last)
        self.model = fuse_batchnorm(copy.deepcopy(model).float().cpu().eval())
        self.choice = None  # lipsync.inference.precision.Choice once prepared
        self.runner = None
        self.encoder_passes = 0  # faces through the encoder (the still-face path keeps this at 1)
        self._still_face: np.ndarray | None = None
        self._still_skips = None

    @property
    def precision(self) -> str | None:
        return self.choice.precision if self.choice else None

    @torch.inference_mode()
    def prepare(self, faces: np.ndarray, mels: np.ndarray, log=None) -> None:
        """Choose and build the backend (once), using these real faces for calibration/probing."""
        if self.runner is not None:
            return
        from lipsync.inference.precision import choose_backend

        face_in, audio = network_inputs(faces, mels, self.face_size)
        if face_in.shape[0] == 1 and audio.shape[0] > 1:
            face_in = face_in.expand(audio.shape[0], -1, -1, -1).contiguous()
        self.choice, self.runner = choose_backend(self, face_in, audio, log=log)
        self.model = None  # the runner holds its own copy (or ONNX Runtime its weights): free this one

    def make_runner(self, precision: str, last: bool = False):
        """A PyTorch backend (fp32 or bf16). ``last``: no other runner will be made from this
        model, so it is converted in place instead of copied."""
        if precision in ("fp32", "bf16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            return TorchRunner(self.model, self.device, dtype, self.channels_last, copy_model=not last)
        raise ValueError(precision)

    def describe(self) -> dict:
        info = {"device": str(self.device), "precision": self.precision or self.requested,
                "channels_last": self.channels_last, "face_encoder_passes": self.encoder_passes}
        if self.choice is not None:
            info.update(self.choice.to_dict())
        return info

    @torch.inference_mode()
    def __call__(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        if self.runner is None:
            self.prepare(faces, mels)
        face_in, audio = network_inputs(faces, mels, self.face_size)
        still = len(faces) == 1 and len(mels) > 1
        if still and self._still_face is not None and np.array_equal(faces[0], self._still_face):
            skips = self._still_skips
        else:
            skips = self.runner.encode_face(face_in)
            self.encoder_passes += len(face_in)
            if still:
                self._still_face, self._still_skips = faces[0].copy(), skips
        out = self.runner.decode(audio, skips)  # (B,3,S,S) BGR in [0,1]
        out = out.float().mul_(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)
        return out.permute(0, 2, 3, 1).contiguous().cpu().numpy()

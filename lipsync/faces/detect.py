"""Face detectors behind one batched interface, and ``make_detector`` to pick one.

* ``DlibHogDetector`` (dlib_hog.py) — offline, CPU, no weight file: the default on CPU.
* ``S3FDDetector`` (s3fd.py) — the original's S3FD via face-alignment, batched on GPU.

Both share ``FaceDetector`` (base.py): batched ``detect(frames)`` with optional detection
on a downscaled copy (``downscale_to``), boxes mapped back to full-frame pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

from lipsync.errors import ConfigError
from lipsync.faces.base import Detection, FaceDetector
from lipsync.faces.dlib_hog import DlibHogDetector
from lipsync.faces.s3fd import (
    S3FD_FILE_NAME,
    S3FD_URL,
    S3FDDetector,
    download_s3fd_weights,
    resolve_s3fd_weights,
    s3fd_cache_path,
)

__all__ = [
    "S3FD_FILE_NAME",
    "S3FD_URL",
    "Detection",
    "DlibHogDetector",
    "FaceDetector",
    "S3FDDetector",
    "download_s3fd_weights",
    "make_detector",
    "resolve_s3fd_weights",
    "s3fd_cache_path",
]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_detector(
    name: str = "auto",
    device: str | None = "cpu",
    *,
    weights_path: str | os.PathLike | None = None,
    downscale_to: int | None = None,
    upsample: int = 0,
    batch_size: int = 16,
) -> FaceDetector:
    """A detector by name.

    ``"dlib"``: DlibHogDetector(upsample, downscale_to). ``"s3fd"``: S3FDDetector
    (CheckpointError when its weights are missing). ``"auto"``: S3FD when its weights are
    present (``weights_path`` or the cache) and ``device`` is a GPU (S3FD on CPU is far
    slower than HOG), otherwise dlib. ``device=None`` picks cuda when available, else cpu.
    """
    device = _default_device() if device is None else str(device)
    if name == "auto":
        have_weights = (
            Path(weights_path).expanduser().is_file() if weights_path is not None else s3fd_cache_path().is_file()
        )
        name = "s3fd" if have_weights and not device.startswith("cpu") else "dlib"
    if name == "dlib":
        return DlibHogDetector(upsample=upsample, downscale_to=downscale_to)
    if name == "s3fd":
        return S3FDDetector(device, weights_path=weights_path, downscale_to=downscale_to, batch_size=batch_size)
    raise ConfigError(f"detector={name!r}: choose auto, dlib or s3fd")

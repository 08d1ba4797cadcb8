"""S3FD, the detector the original Wav2Lip uses, through face-alignment's loading code.

Batched, on GPU when there is one. Weights come from an explicit path or from
face-alignment's usual cache (``$TORCH_HOME/hub/checkpoints/s3fd-619a316812.pth``); the
official Wav2Lip ``face_detection/detection/sfd/s3fd.pth`` is the same file. Nothing is
downloaded unless asked, so a machine without network fails at once with a message
instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from lipsync.errors import CheckpointError, ConfigError
from lipsync.files import publish
from lipsync.faces.base import FaceDetector

# The URL face-alignment downloads S3FD from; its basename is the cache file name, and the
# 10 hex digits in it are the prefix of the file's sha256 (torch.hub's convention).
S3FD_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
S3FD_FILE_NAME = S3FD_URL.rsplit("/", 1)[-1]
S3FD_SHA256_PREFIX = "619a316812"

# Priors below this face probability are never candidates (the original's constant).
_CANDIDATE_THRESHOLD = 0.05

# S3FD was trained (Caffe) on BGR images with these per-channel means subtracted.
_S3FD_BGR_MEAN = (104.0, 117.0, 123.0)


def s3fd_cache_path() -> Path:
    """Where face-alignment keeps (and looks for) the S3FD weights: torch.hub's cache,
    ``$TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch/hub/checkpoints/``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / S3FD_FILE_NAME


def resolve_s3fd_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """The S3FD weight file to load; CheckpointError naming the path when it is missing."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{path}: S3FD weight file not found")
        return path
    path = s3fd_cache_path()
    if not path.is_file():
        raise CheckpointError(
            f"{path}: S3FD weights not found. Download {S3FD_URL} to that path "
            f"(or set TORCH_HOME, or pass the file explicitly, e.g. Wav2Lip's "
            f"face_detection/detection/sfd/s3fd.pth), or use the offline detector (dlib)"
        )
    return path


def download_s3fd_weights(timeout: float = 20.0) -> Path:
    """Fetch the S3FD weights into face-alignment's cache, verifying the sha256 prefix.

    Uses a socket timeout so an offline machine fails with CheckpointError instead of
    hanging; the file only appears under its final name once complete and verified.
    """
    target = s3fd_cache_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(S3FD_URL, timeout=timeout) as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(S3FD_SHA256_PREFIX):
            raise CheckpointError(f"{S3FD_URL}: downloaded file fails its sha256 check")
        publish(tmp_name, target)  # mkstemp's 0600 would hide the shared cache from other users
    except (urllib.error.URLError, OSError) as exc:
        raise CheckpointError(
            f"{target}: S3FD weights missing and download from {S3FD_URL} failed ({exc}); "
            f"copy the file there by hand or use the offline detector (dlib)"
        ) from exc
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return target


class S3FDDetector(FaceDetector):
    """S3FD (face-alignment's network and weights), batched, with the original's thresholds.

    Post-processing follows the original: candidates are priors whose face probability
    exceeds 0.05, boxes are decoded with variances (0.1, 0.2), non-maximum suppression at
    IoU 0.3, and boxes scoring above ``threshold`` (0.5) are kept. Decoding is vectorised
    over the whole batch instead of face-alignment's per-candidate Python loop, and NMS
    runs only over candidates above ``threshold``: greedy NMS lets a box be suppressed only
    by a kept box with a higher score, so the kept boxes above the threshold are exactly
    the original's. Frames are fed in BGR with the BGR means subtracted, which is what S3FD
    was trained on (face-alignment does the same; the original Wav2Lip copy fed RGB).
    """

    name = "s3fd"

    def __init__(
        self,
        device: str = "cpu",
        weights_path: str | os.PathLike | None = None,
        downscale_to: int | None = None,
        batch_size: int = 16,
        threshold: float = 0.5,
        nms_iou: float = 0.3,
        download: bool = False,
    ):
        super().__init__(downscale_to=downscale_to, batch_size=batch_size)
        import torch
        from face_alignment.detection.sfd.sfd_detector import SFDDetector

        if weights_path is None and download and not s3fd_cache_path().is_file():
            download_s3fd_weights()
        self.device = str(device)
        if not self.device.startswith(("cpu", "cuda", "mps")):
            raise ConfigError(f"device={device!r}: S3FD runs on cpu, cuda or mps")
        self.weights_path = resolve_s3fd_weights(weights_path)
        self.threshold = float(threshold)
        self.nms_iou = float(nms_iou)
        try:
            # face-alignment's own loader: torch.load(weights_only=True) + load_state_dict.
            loader = SFDDetector(self.device, path_to_detector=str(self.weights_path))
        except Exception as exc:  # unpickling refused, wrong keys/shapes, corrupt file
            raise CheckpointError(f"{self.weights_path}: not an S3FD state dict ({exc})") from exc
        self.net = loader.face_detector.eval()
        self._mean = torch.tensor(_S3FD_BGR_MEAN, device=self.device).view(1, 3, 1, 1)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "weights": str(self.weights_path),
            "threshold": self.threshold,
            "nms_iou": self.nms_iou,
        }

    def _detect_same_size(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        try:
            return self._run_batch(frames)
        except torch.OutOfMemoryError as exc:
            # As the original: halve the batch on out-of-memory, give up at one frame.
            if len(frames) == 1:
                raise ConfigError(
                    f"S3FD ran out of memory on one {frames[0].shape[1]}x{frames[0].shape[0]} frame; "
                    f"set a smaller downscale_to"
                ) from exc
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            half = len(frames) // 2
            return self._detect_same_size(frames[:half]) + self._detect_same_size(frames[half:])

    def _run_batch(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        batch = torch.from_numpy(np.stack(frames)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).float() - self._mean
        with torch.inference_mode():
            outputs = self.net(batch)
            scores, boxes = [], []
            for level in range(len(outputs) // 2):
                cls, reg = outputs[2 * level], outputs[2 * level + 1]
                stride = 2 ** (level + 2)  # 4 .. 128, anchors of size 4*stride
                face_prob = torch.softmax(cls, dim=1)[:, 1]  # (B, h, w)
                h, w = face_prob.shape[1:]
                ys, xs = torch.meshgrid(
                    torch.arange(h, device=self.device), torch.arange(w, device=self.device), indexing="ij"
                )
                cx = stride / 2 + xs * stride
                cy = stride / 2 + ys * stride
                anchor = stride * 4.0
                bcx = cx + reg[:, 0] * 0.1 * anchor
                bcy = cy + reg[:, 1] * 0.1 * anchor
                bw = anchor * torch.exp(reg[:, 2] * 0.2)
                bh = anchor * torch.exp(reg[:, 3] * 0.2)
                decoded = torch.stack([bcx - bw / 2, bcy - bh / 2, bcx + bw / 2, bcy + bh / 2], dim=-1)
                scores.append(face_prob.flatten(1))
                boxes.append(decoded.flatten(1, 2))
            scores = torch.cat(scores, dim=1)
            boxes = torch.cat(boxes, dim=1)
        out = []
        for b in range(len(frames)):
            keep = scores[b] > max(self.threshold, _CANDIDATE_THRESHOLD)
            cand = torch.cat([boxes[b][keep], scores[b][keep, None]], dim=1).double().cpu().numpy()
            out.append(cand[_nms(cand, self.nms_iou)] if len(cand) else cand.reshape(0, 5))
        return out


def _nms(dets: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS with the original's +1 pixel area convention; indices, best first."""
    x1, y1, x2, y2, score = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-score, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou_threshold]
    return np.array(keep, dtype=np.int64)

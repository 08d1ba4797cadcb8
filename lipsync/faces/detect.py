"""Face detectors behind one batched interface.

Two detectors:

* ``DlibHogDetector`` — dlib's HOG + linear SVM frontal-face detector. Needs no weight
  file and runs on CPU, so it is the offline default. It is made fast by detecting on a
  downscaled grayscale copy: measured here, a 1280x720 frame costs ~47 ms at full size and
  ~15 ms at ``downscale_to=640`` (benchmarks/detect.py). With ``upsample=0`` dlib finds faces
  whose box is at least ~60 px *in the detection copy*; each ``upsample`` step halves that
  (at 4x the cost).
* ``S3FDDetector`` — the S3FD network the original Wav2Lip uses, loaded through
  face-alignment (``face_alignment.detection.sfd``), batched, on GPU when there is one.
  Weights come from an explicit path or from face-alignment's usual cache
  (``$TORCH_HOME/hub/checkpoints/s3fd-619a316812.pth``); the official Wav2Lip
  ``face_detection/detection/sfd/s3fd.pth`` is the same file. Nothing is downloaded unless
  asked, so a machine without network fails at once with a message instead of hanging.

Every detector returns, per frame, a list of ``Detection`` sorted by score (best first),
with boxes in full-frame pixel coordinates (x1, y1, x2, y2), clipped to the frame.
Frames are BGR uint8 (H, W, 3), the library-wide convention.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from lipsync.errors import CheckpointError, ConfigError

# The URL face-alignment downloads S3FD from; its basename is the cache file name, and the
# 10 hex digits in it are the prefix of the file's sha256 (torch.hub's convention).
S3FD_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
S3FD_FILE_NAME = S3FD_URL.rsplit("/", 1)[-1]
S3FD_SHA256_PREFIX = "619a316812"

# S3FD was trained (Caffe) on BGR images with these per-channel means subtracted.
_S3FD_BGR_MEAN = (104.0, 117.0, 123.0)


@dataclass(frozen=True)
class Detection:
    """One face: box (x1, y1, x2, y2) in full-frame pixels and the detector's score."""

    box: tuple[float, float, float, float]
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)


def _as_frame_list(frames) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            raise ValueError("detect() takes a batch of frames; wrap a single frame in a list")
        frames = list(frames)
    out = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", type(frame).__name__)
            raise ValueError(f"frame {i}: expected a BGR array (H, W, 3), got {shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame {i}: expected uint8 pixels, got {frame.dtype}")
        out.append(frame)
    return out


class FaceDetector:
    """Batched face detection with optional detection on a downscaled copy.

    ``downscale_to``: when a frame's longer side exceeds it, detection runs on a copy
    resized (INTER_AREA) so that the longer side equals it, and the boxes are mapped back
    to full-frame coordinates. ``None`` detects at full size.

    Subclasses implement ``_detect_same_size(frames)``: a list of same-shape BGR frames in,
    one float array (K, 5) of (x1, y1, x2, y2, score) per frame out, in the coordinates of
    the frames they were given.
    """

    name = "base"

    def __init__(self, downscale_to: int | None = None, batch_size: int = 16):
        if downscale_to is not None and int(downscale_to) < 32:
            raise ConfigError(f"downscale_to={downscale_to}: must be at least 32 px or None")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size}: must be at least 1")
        self.downscale_to = None if downscale_to is None else int(downscale_to)
        self.batch_size = int(batch_size)

    def scale_for(self, height: int, width: int) -> float:
        """The factor (<= 1) frames of this size are resized by before detection."""
        longer = max(height, width)
        if self.downscale_to is None or longer <= self.downscale_to:
            return 1.0
        return self.downscale_to / longer

    def detect(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[list[Detection]]:
        """Faces in each frame: one list of Detection per frame, best score first."""
        frames = _as_frame_list(frames)
        results: list[list[Detection] | None] = [None] * len(frames)
        # Frames of different sizes cannot share a network batch; group them by shape.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            groups.setdefault(frame.shape, []).append(i)
        for (height, width, _), indices in groups.items():
            scale = self.scale_for(height, width)
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = [self._shrink(frames[i], scale) for i in chunk]
                # Exact per-axis factors of the rounded copy size, for mapping boxes back.
                sy, sx = batch[0].shape[0] / height, batch[0].shape[1] / width
                for i, raw in zip(chunk, self._detect_same_size(batch)):
                    results[i] = _to_detections(raw, sx, sy, height, width)
        return results  # type: ignore[return-value]

    def detect_one(self, frame: np.ndarray) -> list[Detection]:
        return self.detect([frame])[0]

    def describe(self) -> dict:
        """Name and settings, for shard metadata and run parameters."""
        return {"name": self.name, "downscale_to": self.downscale_to}

    @staticmethod
    def _shrink(frame: np.ndarray, scale: float) -> np.ndarray:
        if scale == 1.0:
            return frame
        height, width = frame.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)

    def _detect_same_size(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


def _to_detections(raw: np.ndarray, sx: float, sy: float, height: int, width: int) -> list[Detection]:
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, 5)
    if len(raw) == 0:
        return []
    boxes = raw[:, :4] / np.array([sx, sy, sx, sy])
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    order = np.argsort(-raw[:, 4], kind="stable")
    out = []
    for k in order:
        x1, y1, x2, y2 = boxes[k]
        if x2 > x1 and y2 > y1:
            out.append(Detection((float(x1), float(y1), float(x2), float(y2)), float(raw[k, 4])))
    return out


_dlib_local = threading.local()
_DLIB_MIN_BOX = 60.0


def _dlib_frontal_detector():
    """dlib's detector, built once per thread: deserialising it costs ~0.3-0.5 s, and one
    shared instance is not documented as safe to call from several threads."""
    detector = getattr(_dlib_local, "detector", None)
    if detector is None:
        import dlib  # imported here: only this detector needs it

        detector = _dlib_local.detector = dlib.get_frontal_face_detector()
    return detector


class DlibHogDetector(FaceDetector):
    """dlib's HOG frontal-face detector on a downscaled grayscale copy.

    ``upsample``: dlib's pyramid upsampling count (0 = none). With 0, faces with a box of
    about 60 px or more in the detection copy are found; 1 reaches ~30 px at 4x the cost.
    ``threshold``: dlib's ``adjust_threshold`` (SVM margin; 0 is dlib's default, higher
    is stricter). ``expand``: (top, bottom, left, right) fractions of the box height/width
    added to each side. dlib's box runs from the brows to just above the chin (on
    skimage's astronaut the chin is ~8% of the box height below it), while S3FD's box,
    which the original's crops and ``--pads`` were made for, reaches the chin; the default
    adds 10% at the bottom so the jaw stays inside the crop when the mouth opens.
    """

    name = "dlib-hog"

    def __init__(
        self,
        upsample: int = 0,
        downscale_to: int | None = None,
        threshold: float = 0.0,
        expand: tuple[float, float, float, float] = (0.0, 0.1, 0.0, 0.0),
    ):
        super().__init__(downscale_to=downscale_to, batch_size=64)
        if int(upsample) < 0:
            raise ConfigError(f"upsample={upsample}: must be 0 or more")
        if len(expand) != 4:
            raise ConfigError(f"expand={expand}: needs (top, bottom, left, right)")
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self.expand = tuple(float(e) for e in expand)

    def min_face_px(self, height: int, width: int) -> float:
        """Roughly the smallest face box (full-frame px) found in frames of this size:
        ~60 px in the detection copy, halved per upsample step (measured on the astronaut:
        found at 60 px, weak at 55, missed at 50)."""
        return _DLIB_MIN_BOX / (self.scale_for(height, width) * 2**self.upsample)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "upsample": self.upsample,
            "threshold": self.threshold,
            "expand": list(self.expand),
        }

    def _detect_same_size(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        # dlib has no batch API for one detector; HOG on gray is ~25% faster than on
        # colour (dlib takes the strongest channel gradient) with the same hits here.
        top, bottom, left, right = self.expand
        detector = _dlib_frontal_detector()
        out = []
        for frame in frames:
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            rects, scores, _ = detector.run(gray, self.upsample, self.threshold)
            rows = []
            for rect, score in zip(rects, scores):
                x1, y1, x2, y2 = rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1
                w, h = x2 - x1, y2 - y1
                rows.append((x1 - left * w, y1 - top * h, x2 + right * w, y2 + bottom * h, score))
            out.append(np.array(rows, dtype=np.float64).reshape(-1, 5))
        return out


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
        os.replace(tmp_name, target)
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
            keep = scores[b] > self.threshold
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

"""What a preprocessing run depends on: inputs, clip cutting, faces, shard format, resources.

``fingerprint`` is the part that changes what goes into the shards: a resumed run refuses
a different one (pipelines/preprocess/driver.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from lipsync.errors import ConfigError
from pipelines.dataset import shards as sh
from pipelines.preprocess.sources import speaker_pattern
from pipelines.preprocess.splits import parse_fractions


@dataclass
class PreprocessConfig:
    input: str
    output: str
    layout: str = "lrs2"
    speaker_regex: Optional[str] = None
    filelists: Optional[str] = None             # dir with train/val/test.txt (lrs2)
    split_fractions: tuple = (0.8, 0.1, 0.1)
    split_seed: str = ""
    # clips
    max_clip_seconds: float = 10.0               # 0 = no segmentation
    min_clip_seconds: float = 1.0
    scene_cut_threshold: float = 25.0            # 0 disables scene-cut splitting
    segment_seconds: float = 20.0                # inputs over 1.5x this: pieces of ~this length, one task each
    # faces
    detector: str = "auto"                       # auto | dlib | s3fd
    detector_weights: Optional[str] = None
    detect_every: int = 1                        # detect on every k-th frame, interpolate between
    detect_downscale_to: Optional[int] = 480
    detect_upsample: int = 0
    detect_batch_size: int = 32
    face_policy: str = "largest"                 # largest | central | reject-multiple
    min_face_size: float = 48.0                  # px, shorter box side
    min_detection_rate: float = 0.5
    smooth_window: int = 5
    crop_sizes: tuple = (96,)
    pads: tuple = (0, 10, 0, 0)                  # top, bottom, left, right
    # shards
    codec: str = "jpeg"                          # jpeg | png (lossless)
    jpeg_quality: int = 95
    shard_size: int = 256 * 10**6                # bytes per shard (target); "256MB" also accepted
    overwrite: bool = False
    # resources
    num_cpus: Optional[int] = None               # local cluster size / CPU cap on a cluster
    num_gpus: Optional[float] = None             # None: use GPUs when the cluster has them
    inputs_per_task: int = 8                     # most inputs one Ray task handles (see input_blocks)
    object_store_memory: Optional[int] = 500 * 2**20
    ray_address: Optional[str] = None
    # tracking
    tracking_uri: Optional[str] = None
    experiment: str = "preprocess"
    sync_filter: Optional[Callable] = field(default=None, repr=False)
    progress: bool = True

    def check(self) -> None:
        """Check the settings and normalise them (fractions/sizes/pads to tuples of numbers)."""
        self.split_fractions = parse_fractions(self.split_fractions)
        self.crop_sizes = tuple(int(s) for s in self.crop_sizes)
        self.pads = tuple(int(p) for p in self.pads)
        if isinstance(self.shard_size, str):
            self.shard_size = sh.parse_size(self.shard_size)
        if self.codec not in ("jpeg", "png"):
            raise ConfigError(f"--codec {self.codec!r}: choose jpeg or png")
        if self.face_policy not in ("largest", "central", "reject-multiple"):
            raise ConfigError(f"--face-policy {self.face_policy!r}: choose largest, central or reject-multiple")
        if not self.crop_sizes or any(int(s) < 16 for s in self.crop_sizes):
            raise ConfigError(f"--crop-size {self.crop_sizes}: sizes must be >= 16")
        if len(self.pads) != 4:
            raise ConfigError(f"--pads {self.pads}: need top bottom left right")
        if self.max_clip_seconds and self.max_clip_seconds < self.min_clip_seconds:
            raise ConfigError(f"--max-clip-seconds {self.max_clip_seconds} < --min-clip-seconds "
                              f"{self.min_clip_seconds}")
        if self.shard_size <= 0:
            raise ConfigError("--shard-size must be positive")
        if self.detect_every < 1:
            raise ConfigError("--detect-every must be >= 1")
        if self.segment_seconds < 0:
            raise ConfigError(f"--segment-seconds must be >= 0 (0: never cut), got {self.segment_seconds}")
        if self.inputs_per_task < 1:
            raise ConfigError(f"--inputs-per-task must be >= 1, got {self.inputs_per_task}")
        if self.speaker_regex:
            speaker_pattern(self.speaker_regex)

    def fingerprint(self) -> dict:
        """Settings that change what goes into the shards (resume refuses a mismatch)."""
        keys = ("layout", "speaker_regex", "split_fractions", "split_seed", "max_clip_seconds",
                "min_clip_seconds", "scene_cut_threshold", "segment_seconds", "detector", "detect_every",
                "detect_downscale_to", "detect_upsample", "face_policy", "min_face_size",
                "min_detection_rate", "smooth_window", "crop_sizes", "pads", "codec",
                "jpeg_quality", "shard_size")
        data = asdict(self)
        out = {k: (list(data[k]) if isinstance(data[k], tuple) else data[k]) for k in keys}
        hook = self.sync_filter
        out["sync_filter"] = (None if hook is None else hook.fingerprint() if hasattr(hook, "fingerprint")
                              else getattr(hook, "__qualname__", type(hook).__name__))
        return out

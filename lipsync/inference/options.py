"""Every knob of `lipsync infer`, in one dataclass.

The flags of the original Wav2Lip ``inference.py`` that still make sense keep their
meanings (pads, resize_factor, crop, box, rotate, nosmooth, static, fps for images, the
two batch sizes); the rest are what its users asked for: pass-through of frames without a
face, blended compositing, loop/ping-pong for long audio, sparse detection with tracking,
device and precision selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from lipsync.errors import ConfigError

NO_FACE_POLICIES = ("pass", "error")
COMPOSITING = ("blend", "paste")
AUDIO_LONGER = ("loop", "pingpong")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "ort-fp32", "int8")  # lipsync.inference.precision
DETECTORS = ("auto", "dlib", "s3fd")
FACE_SELECT = ("largest", "central")


@dataclass
class InferenceOptions:
    # --- flags of the original inference.py (same meanings) ---
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)
    """Pixels added to the detected box: top, bottom, left, right (clipped to the frame)."""
    resize_factor: int = 1
    """Integer downscale applied to every input frame before anything else."""
    crop: tuple[int, int, int, int] = (0, -1, 0, -1)
    """Keep only this region of each frame: top, bottom, left, right; -1 = full size.
    Applied after resize and rotate; the output video has the cropped size."""
    box: tuple[int, int, int, int] | None = None
    """Fixed face box (top, bottom, left, right) for every frame; skips detection (and pads)."""
    rotate: bool = False
    """Rotate every frame 90 degrees clockwise (on top of any container rotation metadata)."""
    nosmooth: bool = False
    """Do not smooth face boxes over time."""
    static: bool = False
    """Use only the first frame of the face input (always on for images)."""
    fps: float = 25.0
    """Frame rate of the output when the face input is an image."""
    face_det_batch_size: int = 16
    """Frames per face-detector call."""
    wav2lip_batch_size: int = 16
    """Faces per generator forward pass. The original's 128 suits a GPU holding the whole
    video; streaming on a CPU gains nothing past ~16 (measured in benchmarks/infer.py) and
    each frame in flight costs memory, so the default is smaller."""

    # --- additions ---
    on_no_face: str = "pass"
    """'pass': frames without a face are written unchanged; 'error': stop at the first one
    (named by index and time). A video with no face in any frame is always an error."""
    compositing: str = "blend"
    """'blend': feathered mask over the lower face; 'paste': the original's hard rectangle."""
    audio_longer: str = "loop"
    """When the audio outlasts the video: 'loop' restarts it, 'pingpong' plays it backwards
    and forwards (no jump cut). Shorter audio always trims the video."""
    spill_dir: str | None = None
    """Folder for the frames 'pingpong' keeps on disk (n * H * W * 3 bytes for an n-frame
    video); None = the system's temporary folder ($TMPDIR, else /tmp)."""
    detect_every: int = 5
    """Run the detector on every k-th frame; frames in between get interpolated boxes
    (re-detected densely where a face appears/disappears or jumps between keyframes)."""
    detect_max_side: int = 640
    """The detector sees a copy whose longer side is at most this many pixels (0 = full size)."""
    detect_roi: bool = True
    """Search keyframes in a region around the last face first (a fraction of a full-frame
    search with the CPU detector); the whole frame is searched when that fails and every
    10th keyframe."""
    detector: str = "auto"
    """'auto' (S3FD where its weights are present, the offline dlib detector otherwise), 'dlib', 's3fd'."""
    face_select: str = "largest"
    """Which face to lip-sync when a frame holds several: 'largest' or 'central'."""
    smooth_window: int = 5
    """Frames averaged when smoothing boxes (the original: the box and the next 4)."""
    device: str = "auto"
    """'auto' = CUDA when available, else CPU."""
    precision: str = "auto"
    """Generator backend: 'fp32' / 'bf16' (PyTorch), 'ort-fp32' / 'int8' (ONNX Runtime).
    'auto' = bf16 on CUDA; on a CPU the fastest by a short timed probe (cached per machine and
    model) among those its features allow, int8 only where it keeps >= 30 dB PSNR vs fp32
    (lipsync.inference.precision)."""
    channels_last: bool = True
    """Run the generator in channels-last memory format (faster convolutions on CPU)."""
    mel_mode: str | None = None
    """Mel window per output frame (lipsync.audio.frame_mel_windows mode); None = that
    function's default, which is the alignment the generator was trained with."""
    trust_checkpoint: bool = False
    """Allow checkpoints that unpickle arbitrary code (e.g. whole pickled modules)."""
    crf: int = 20
    """H.264 quality of the output (libx264 CRF)."""
    preset: str = "veryfast"
    """libx264 preset; 'veryfast' keeps 720p encoding well above real time on 2 cores."""
    queue_frames: int = 16
    """Upper bound of frames buffered between two pipeline stages (memory bound)."""
    progress: bool = True
    """Show a tqdm progress bar with fps."""
    extra: dict = field(default_factory=dict)

    def check(self) -> "InferenceOptions":
        """Raise ConfigError for values that cannot work; returns self for chaining."""
        def choice(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')}: {value!r} is not one of {', '.join(allowed)}")

        choice("on_no_face", NO_FACE_POLICIES)
        choice("compositing", COMPOSITING)
        choice("audio_longer", AUDIO_LONGER)
        choice("device", DEVICES)
        choice("precision", PRECISIONS)
        choice("detector", DETECTORS)
        choice("face_select", FACE_SELECT)
        for name in ("pads", "crop"):
            if len(tuple(getattr(self, name))) != 4:
                raise ConfigError(f"--{name}: expected 4 integers (top bottom left right)")
        if any(p < 0 for p in self.pads):
            raise ConfigError(f"--pads: must be >= 0, got {tuple(self.pads)}")
        if self.box is not None:
            box = tuple(int(v) for v in self.box)
            if len(box) != 4:
                raise ConfigError("--box: expected 4 integers (top bottom left right)")
            if box == (-1, -1, -1, -1):
                self.box = None
            else:
                top, bottom, left, right = box
                if min(box) < 0 or bottom <= top or right <= left:
                    raise ConfigError(f"--box: need 0 <= top < bottom and 0 <= left < right, got {box}")
                self.box = box
        for name in ("resize_factor", "face_det_batch_size", "wav2lip_batch_size", "detect_every",
                     "smooth_window", "queue_frames"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.detect_max_side < 0:
            raise ConfigError(f"--detect-max-side: must be >= 0, got {self.detect_max_side}")
        if not self.fps > 0:
            raise ConfigError(f"--fps: must be > 0, got {self.fps}")
        if self.mel_mode not in (None, "inference", "training"):
            raise ConfigError(f"mel_mode: {self.mel_mode!r} is not one of inference, training")
        return self

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

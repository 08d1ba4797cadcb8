"""The shard sample format: one talking-face clip as one WebDataset sample.

A preprocessed clip is stored as one sample in a WebDataset tar shard
(``{split}-NNNNNN.tar``). Tar members are named ``<key>.<member>``:

========================  ====================================================================
member                    content
========================  ====================================================================
``frames.pack``           face crops of every frame (primary crop size), as a *frame pack*
``frames_<S>.pack``       optional extra crop sizes S (e.g. ``frames_192.pack``), same format
``mel.npy``               the clip's mel spectrogram, ``np.save`` of float32 (80, T),
                          computed by ``lipsync.audio.melspectrogram`` on the clip's 16 kHz audio
``meta.json``             UTF-8 JSON metadata (keys below)
========================  ====================================================================

The key has no dots (WebDataset splits member names at the first dot) and no slashes:
``<corpus>_<speaker>_<clip>_<segment>_<8 hex of a hash of the source path>``, sanitised
to ``[A-Za-z0-9_-]`` (see :func:`make_sample_key`).

Frame pack (little-endian), so a loader can decode 5-10 frames of a clip without
decoding the rest::

    offset 0   4s   magic b"LSFP"
           4   u1   version (1)
           5   u1   codec: 0 = JPEG, 1 = PNG (lossless)
           6   u2   reserved (0)
           8   u4   n_frames N
          12   u2   height
          14   u2   width
          16   u4 * (N + 1)   byte offsets of each image, relative to the end of this table;
                              image i is data[offsets[i]:offsets[i+1]]
          ...  concatenated encoded images (BGR crops, encoded with OpenCV)

The header costs 20 + 4N bytes; at the default JPEG quality 95 a 96x96 crop is about
3-5 kB (``benchmarks/preprocess.py`` prints the measured bytes per frame).

Metadata keys (``meta.json``): ``source`` (input path as given), ``corpus``, ``speaker``,
``clip_id``, ``split``, ``fps``, ``sample_rate``, ``n_frames``, ``start_frame`` (first frame
of this clip in the 25 fps source), ``boxes`` (per frame ``[x1, y1, x2, y2]`` of the smoothed
face box in full-frame pixels, before ``pads``), ``detector``, ``crop_size``, ``crop_sizes``,
``pads`` (top, bottom, left, right), ``codec``, ``quality``, ``sync_offset`` and
``sync_confidence`` (``null`` until a sync filter measures them; see pipelines/preprocess/sync_filter.py),
``sync_shift`` (frames the sync filter realigned the audio by: the audio of frame j comes from
source frame ``start_frame + j - sync_shift``; 0 when not realigned), ``mel_frames``.

Frames are uint8 BGR like everywhere in the library.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from typing import Any, Iterable, Optional, Sequence

import cv2
import numpy as np

FRAME_PACK_MAGIC = b"LSFP"
FRAME_PACK_VERSION = 1
CODECS = {"jpeg": 0, "png": 1}
_CODEC_NAMES = {v: k for k, v in CODECS.items()}
_HEADER = struct.Struct("<4sBBHIHH")  # magic, version, codec, reserved, n, h, w

FRAMES_MEMBER = "frames.pack"
MEL_MEMBER = "mel.npy"
META_MEMBER = "meta.json"

META_KEYS = (
    "source", "corpus", "speaker", "clip_id", "split", "fps", "sample_rate", "n_frames",
    "boxes", "detector", "crop_size", "pads", "codec", "sync_offset", "sync_confidence",
    "sync_shift", "mel_frames",
)


def frames_member(crop_size: Optional[int] = None, primary_size: Optional[int] = None) -> str:
    """Member name holding crops of `crop_size` (the primary size lives in ``frames.pack``)."""
    if crop_size is None or crop_size == primary_size:
        return FRAMES_MEMBER
    return f"frames_{int(crop_size)}.pack"


def make_sample_key(corpus: str, speaker: str, clip_id: str, segment: int, source: str) -> str:
    """A WebDataset-safe, unique, deterministic key for one clip segment."""
    digest = hashlib.sha1(f"{source}#{segment}".encode("utf-8")).hexdigest()[:8]
    readable = f"{corpus}_{speaker}_{clip_id}_{segment:03d}"
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", readable)[:100]
    return f"{readable}_{digest}"


# ---------------------------------------------------------------------------- frame pack


def encode_frame_pack(frames: np.ndarray | Sequence[np.ndarray], codec: str = "jpeg",
                      quality: int = 95) -> bytes:
    """Encode uint8 BGR frames (N, H, W, 3) of one size into a frame pack."""
    if codec not in CODECS:
        raise ValueError(f"unknown frame codec {codec!r}; expected one of {sorted(CODECS)}")
    frames = list(frames)
    if not frames:
        raise ValueError("a frame pack needs at least one frame")
    height, width = frames[0].shape[:2]
    if codec == "jpeg":
        ext, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    else:
        # Level 1: PNG is lossless at every level; low levels are several times faster.
        ext, params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]
    blobs = []
    for i, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
            raise ValueError(f"frame {i}: expected uint8 ({height}, {width}, 3), got "
                             f"{frame.dtype} {frame.shape}")
        ok, buf = cv2.imencode(ext, frame, params)
        if not ok:
            raise ValueError(f"frame {i}: OpenCV could not encode it as {codec}")
        blobs.append(buf.tobytes())
    offsets = np.zeros(len(blobs) + 1, dtype="<u4")
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    header = _HEADER.pack(FRAME_PACK_MAGIC, FRAME_PACK_VERSION, CODECS[codec], 0,
                          len(blobs), height, width)
    return b"".join([header, offsets.tobytes(), *blobs])


class FramePack:
    """Random access to the frames of an encoded frame pack; decodes only what is asked."""

    def __init__(self, data: bytes):
        data = bytes(data) if not isinstance(data, (bytes, memoryview)) else data
        if len(data) < _HEADER.size:
            raise ValueError(f"frame pack too short ({len(data)} bytes)")
        magic, version, codec, _, n, h, w = _HEADER.unpack_from(data, 0)
        if magic != FRAME_PACK_MAGIC:
            raise ValueError(f"not a frame pack (magic {magic!r})")
        if version != FRAME_PACK_VERSION:
            raise ValueError(f"unsupported frame pack version {version}")
        if codec not in _CODEC_NAMES:
            raise ValueError(f"unknown frame pack codec id {codec}")
        self.codec = _CODEC_NAMES[codec]
        self.n_frames, self.height, self.width = n, h, w
        table_end = _HEADER.size + 4 * (n + 1)
        self._offsets = np.frombuffer(data, dtype="<u4", count=n + 1, offset=_HEADER.size)
        if table_end + int(self._offsets[-1]) != len(data):
            raise ValueError(f"frame pack truncated: header says {table_end + int(self._offsets[-1])} "
                             f"bytes, got {len(data)}")
        self._data = memoryview(data)[table_end:]

    def __len__(self) -> int:
        return self.n_frames

    def encoded(self, i: int) -> bytes:
        if not -self.n_frames <= i < self.n_frames:
            raise IndexError(f"frame {i} out of range for a {self.n_frames}-frame pack")
        i %= self.n_frames
        return bytes(self._data[int(self._offsets[i]):int(self._offsets[i + 1])])

    def frame(self, i: int) -> np.ndarray:
        """Decode frame i as uint8 BGR (H, W, 3)."""
        buf = np.frombuffer(self.encoded(i), dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"frame {i} of the pack does not decode")
        return img

    def frames(self, indices: Optional[Iterable[int]] = None) -> np.ndarray:
        """Decode the given frames (all when None) into (K, H, W, 3) uint8."""
        idx = range(self.n_frames) if indices is None else list(indices)
        out = np.empty((len(idx), self.height, self.width, 3), dtype=np.uint8)
        for j, i in enumerate(idx):
            out[j] = self.frame(int(i))
        return out


# ---------------------------------------------------------------------------- clip sample


class ClipSample:
    """One preprocessed clip: key, frames (N, S, S, 3) uint8 BGR, mel (80, T) float32, meta.

    Built in memory with ``frames`` as an array (when writing), or by
    :func:`decode_clip_sample` from a shard: then frames stay encoded, ``frame(i)`` /
    ``frames_at(idx)`` decode only what is asked, and reading ``frames`` decodes them all
    (cached).
    """

    def __init__(self, key: str, frames: Optional[np.ndarray], mel: np.ndarray,
                 meta: Optional[dict] = None, extra_frames: Optional[dict] = None,
                 pack: Optional[FramePack] = None, extra_packs: Optional[dict] = None):
        if frames is None and pack is None:
            raise ValueError("ClipSample needs frames or a frame pack")
        self.key = key
        self._frames = frames
        self.mel = mel
        self.meta = dict(meta or {})
        self.extra_frames = dict(extra_frames or {})  # crop size -> (N, S, S, 3) array
        self._pack = pack
        self._extra_packs = dict(extra_packs or {})  # crop size -> FramePack

    def __repr__(self) -> str:
        return (f"ClipSample(key={self.key!r}, n_frames={self.n_frames}, "
                f"mel={tuple(self.mel.shape)}, split={self.meta.get('split')!r})")

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            self._frames = self._pack.frames()
        return self._frames

    @property
    def n_frames(self) -> int:
        return len(self._frames) if self._frames is not None else len(self._pack)

    def frame(self, i: int) -> np.ndarray:
        return self._frames[i] if self._frames is not None else self._pack.frame(i)

    def frames_at(self, indices: Iterable[int]) -> np.ndarray:
        indices = [int(i) for i in indices]
        if self._frames is not None:
            return self._frames[np.asarray(indices, dtype=np.int64)]
        return self._pack.frames(indices)

    def frames_of_size(self, crop_size: int) -> "FramePack | np.ndarray":
        """Crops at another stored size: an array when built in memory, else a FramePack."""
        if crop_size == self.meta.get("crop_size"):
            return self._pack if self._pack is not None else self.frames
        if crop_size in self.extra_frames:
            return self.extra_frames[crop_size]
        if crop_size in self._extra_packs:
            return self._extra_packs[crop_size]
        raise KeyError(f"sample {self.key} has no {crop_size}px crops "
                       f"(stored: {self.meta.get('crop_sizes')})")


def encode_clip_sample(sample: ClipSample, codec: str = "jpeg", quality: int = 95) -> dict:
    """Turn a ClipSample into the dict ``webdataset.TarWriter.write`` takes (bytes values)."""
    if "." in sample.key or "/" in sample.key:
        raise ValueError(f"sample key {sample.key!r} must not contain '.' or '/'")
    mel = np.ascontiguousarray(sample.mel, dtype=np.float32)
    if mel.ndim != 2:
        raise ValueError(f"mel must be (80, T), got shape {mel.shape}")
    frames = sample.frames
    meta = dict(sample.meta)
    meta.update(codec=codec, quality=int(quality) if codec == "jpeg" else None,
                n_frames=int(len(frames)), mel_frames=int(mel.shape[1]),
                crop_size=int(frames.shape[1]))
    meta["crop_sizes"] = [int(frames.shape[1])] + sorted(int(s) for s in sample.extra_frames)
    meta.setdefault("sync_offset", None)
    meta.setdefault("sync_confidence", None)
    meta.setdefault("sync_shift", 0)
    mel_buf = io.BytesIO()
    np.save(mel_buf, mel, allow_pickle=False)
    out = {
        "__key__": sample.key,
        FRAMES_MEMBER: encode_frame_pack(frames, codec, quality),
        MEL_MEMBER: mel_buf.getvalue(),
        META_MEMBER: json.dumps(meta, sort_keys=True).encode("utf-8"),
    }
    for size, extra in sorted(sample.extra_frames.items()):
        out[frames_member(size)] = encode_frame_pack(extra, codec, quality)
    return out


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected raw bytes, got {type(value).__name__}")


def decode_clip_sample(wds_sample: dict) -> ClipSample:
    """Build a ClipSample from a raw WebDataset sample (members as bytes).

    Also accepts samples that went through ``WebDataset(...).decode()`` (mel already an
    array, meta already a dict). Frames stay encoded until asked for.
    """
    key = wds_sample.get("__key__")
    try:
        pack = FramePack(_as_bytes(wds_sample[FRAMES_MEMBER]))
        mel = wds_sample[MEL_MEMBER]
        meta = wds_sample[META_MEMBER]
    except KeyError as exc:
        raise ValueError(f"sample {key!r} lacks member {exc.args[0]!r}; members: "
                         f"{sorted(k for k in wds_sample if not k.startswith('__'))}") from None
    if not isinstance(mel, np.ndarray):
        mel = np.load(io.BytesIO(_as_bytes(mel)), allow_pickle=False)
    if not isinstance(meta, dict):
        meta = json.loads(_as_bytes(meta).decode("utf-8"))
    extra = {}
    for name, value in wds_sample.items():
        m = re.fullmatch(r"frames_(\d+)\.pack", name)
        if m:
            extra[int(m.group(1))] = FramePack(_as_bytes(value))
    return ClipSample(key=key, frames=None, mel=mel.astype(np.float32, copy=False), meta=meta,
                      pack=pack, extra_packs=extra)

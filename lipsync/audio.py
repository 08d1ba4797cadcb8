"""Audio features exactly as Wav2Lip computes them, and the video-frame <-> mel-window arithmetic.

Loading: any file PyAV can decode (wav, mp3, m4a, the audio track of an mp4 ...) becomes float32
mono at 16 kHz. PyAV decodes to float at the native rate; channels are averaged and the result is
resampled with soxr at "HQ" quality. That is exactly what ``librosa.load(path, sr=16000)`` does on
librosa >= 0.10 (mean downmix, ``res_type="soxr_hq"``), the loader the original code called, so our
features equal what the original's loader gives on current librosa, without an ffmpeg subprocess.
``iter_audio`` yields the same samples in chunks, and ``lipsync.mel_stream`` turns chunks into
the same mel, so long files never need their samples (or STFT) in memory.

Mel spectrogram (``melspectrogram``), the original's hparams (see reference/wav2lip.md §1):
pre-emphasis (1, -0.97) -> |STFT| (n_fft 800, hop 200, Hann window 800, centred with *reflect*
padding as librosa 0.7 did; librosa >= 0.9 defaults to zero padding, which changes the edge frames)
-> Slaney-normalised mel basis, 80 bands, 55-7600 Hz -> 20*log10(max(1e-5, x)) - 20 dB
-> clip(8*(S+100)/100 - 4, -4, 4). Output (80, T) float32 with T = 1 + N // 200; mel frame j is
centred on sample 200*j, so there are 80 mel frames per second.

Windows. A window is 16 mel frames (200 ms = 5 video frames at 25 fps). Video frame k maps to mel
index ``int(80 * k / fps)`` (0, 3, 6, 9, 12, 16, 19, ... at 25 fps). The original starts windows at
different frames in different scripts:

* SyncNet training and the generator's sync-loss window: starts at the *first* frame k0 of the
  5-frame clip, i.e. covers frames k0 .. k0+4 (``mel_windows(mel, [k0])``).
* Generator training, per-frame windows (``get_segmented_mels``): frame k gets the window starting
  at frame **k-1**, covering k-1 .. k+3 (the authors describe it as "centred, i-2 .. i+2"; the
  arithmetic gives -1 .. +3).
* Inference (``inference.py``): frame k gets the window starting at frame **k**, covering k .. k+4,
  i.e. 40 ms later than what the generator saw in training; windows that would run past the end are
  dropped and one final "tail" window (the last 16 mel frames) is appended.

Our policy (``WINDOW_POLICY = "training"``): both our training and our inference use the
generator-training alignment, window for frame k starts at frame k-1. Reasons: it is what the
official ``wav2lip.pth`` / ``wav2lip_gan.pth`` weights learned, so running them with it removes the
original's 40 ms train/inference mismatch; and training our own generator with the same rule keeps
our checkpoints interchangeable with the official ones. ``mode="inference"`` (start at k) is kept
only to reproduce the original inference script.

Edges, one rule everywhere (``mel_windows``): a start index is clamped into ``[0, T - 16]``. A window
that would begin before the audio (frame 0 under the k-1 policy) starts at mel 0; a window that
would run past the end is moved back so that it ends exactly at T, which is the original's tail
chunk generalised to every late frame. A mel shorter than one window (< 16 frames, i.e. < ~190 ms of
audio) cannot give any window and raises ValueError.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Iterator

import av
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lipsync.errors import MediaError, check_media_file

SAMPLE_RATE = 16000  # Hz, the original's hparams.sample_rate
HOP = 200  # samples between mel frames (12.5 ms)
MEL_FPS = SAMPLE_RATE // HOP  # 80 mel frames per second
MEL_STEP = 16  # mel frames per window (200 ms)
FPS = 25.0  # the video rate every clip is resampled to (the original's)
SAMPLES_PER_FRAME = int(SAMPLE_RATE / FPS)  # 640 audio samples per video frame

N_FFT = 800
WIN_LENGTH = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0

WINDOW_POLICY = "training"  # see module docstring: frame k's window starts at frame k-1
_WINDOW_START_OFFSET = {"training": -1, "inference": 0}


# ----------------------------------------------------------------------------------------- loading


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of ``path`` to float32 mono at ``sr`` Hz, shape (N,): the
    chunks of ``iter_audio`` joined (use that to keep memory bounded on long files).

    Raises MediaError (message names the path) for a missing, empty or undecodable file, a file
    without an audio stream, or one whose audio stream holds no samples.
    """
    return np.ascontiguousarray(np.concatenate(list(iter_audio(path, sr))), dtype=np.float32)


def iter_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """``load_audio``'s samples (the same values), one float32 chunk at a time, so memory stays
    bounded whatever the file's length. Chunks follow the decoder's frames (never empty).

    Streaming soxr resampling gives the same samples as resampling the whole signal at once;
    the AAC padding trim (below) holds back at most ``_AAC_MAX_PADDING`` native samples until
    the end decides it. MediaError as ``load_audio``, raised when the problem is reached.
    """
    path = os.fspath(path)
    check_media_file(path)
    produced = 0
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: has no audio stream")
            stream = container.streams.audio[0]
            # Convert every frame to planar float at its native rate/layout; we downmix and
            # resample ourselves so the result matches librosa.load exactly.
            to_float = av.AudioResampler(format="fltp")
            native = _NativeSamples(path, _declared_samples(container, stream))
            resampler = None

            def convert(chunk: np.ndarray) -> np.ndarray:
                nonlocal resampler
                if native.rate == sr:
                    return chunk
                resampler = resampler or _StreamResampler(native.rate, sr)
                return resampler.push(chunk)

            for frame in container.decode(stream):
                native.rate = native.rate or frame.sample_rate
                for out in to_float.resample(frame):
                    for chunk in native.push(out.to_ndarray().mean(axis=0, dtype=np.float32)):
                        chunk = convert(chunk)
                        if chunk.size:
                            produced += chunk.size
                            yield chunk
            for out in [*to_float.resample(None), None]:  # the resampler's flush, then the end
                if out is None:
                    pieces = native.finish()
                else:
                    pieces = native.push(out.to_ndarray().mean(axis=0, dtype=np.float32))
                for chunk in pieces:
                    chunk = convert(chunk)
                    if chunk.size:
                        produced += chunk.size
                        yield chunk
            if resampler is not None:
                tail = resampler.finish()
                if tail.size:
                    produced += tail.size
                    yield tail
    except MediaError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise MediaError(f"{path}: cannot decode audio ({e})") from e
    if produced == 0:
        raise MediaError(f"{path}: audio stream contains no samples")


class _NativeSamples:
    """Native-rate mono chunks on their way to the resampler: checked finite, and cut to the
    container's declared length when the decoder adds AAC padding (see ``_AAC_MAX_PADDING``)."""

    def __init__(self, path: str, declared: int | None):
        self.path, self.declared = path, declared
        self.rate: int | None = None
        self.seen = 0  # native samples decoded so far
        self.held: list[np.ndarray] = []  # samples past `declared`, kept until the end decides

    def push(self, chunk: np.ndarray) -> list[np.ndarray]:
        if not np.all(np.isfinite(chunk)):
            raise MediaError(f"{self.path}: audio contains NaN or infinite samples")
        before, self.seen = self.seen, self.seen + chunk.size
        if self.declared is None or self.seen <= self.declared:
            return [chunk]
        keep = max(0, self.declared - before)
        self.held.append(chunk[keep:])
        if self.seen > self.declared + _AAC_MAX_PADDING:  # not padding: nothing is trimmed
            self.declared, held, self.held = None, self.held, []
            return [chunk[:keep], *held]
        return [chunk[:keep]]

    def finish(self) -> list[np.ndarray]:
        return []  # what is still held is the AAC padding: dropped


class _StreamResampler:
    """soxr HQ in streaming mode, trimmed/padded at the end to ceil(N * target/orig) like
    ``_resample`` (librosa.resample(fix=True)); its samples equal ``_resample``'s."""

    def __init__(self, orig_sr: int, target_sr: int):
        import soxr

        self.orig_sr, self.target_sr = orig_sr, target_sr
        self.stream = soxr.ResampleStream(orig_sr, target_sr, 1, dtype="float32", quality="HQ")
        self.fed = self.out = 0
        self.pending = np.zeros(0, np.float32)

    def _limit(self, chunk: np.ndarray, last: bool) -> np.ndarray:
        # What the input so far justifies goes out; anything past it waits (at the end it is
        # the excess ``_resample`` trims), and the end is padded to the exact count.
        n_max = int(math.ceil(self.fed * self.target_sr / self.orig_sr))
        if self.pending.size:
            chunk = np.concatenate([self.pending, chunk])
        cut = max(0, n_max - self.out)
        chunk, self.pending = chunk[:cut], chunk[cut:]
        if last and self.out + chunk.size < n_max:
            chunk = np.concatenate([chunk, np.zeros(n_max - self.out - chunk.size, np.float32)])
        self.out += chunk.size
        return chunk.astype(np.float32, copy=False)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        self.fed += chunk.size
        return self._limit(self.stream.resample_chunk(np.ascontiguousarray(chunk, np.float32), last=False), False)

    def finish(self) -> np.ndarray:
        return self._limit(self.stream.resample_chunk(np.zeros(0, np.float32), last=True), True)


# AAC decoders return the encoder's zero padding of the last 1024-sample frame; mp4 records the true
# track length, so we trim to it (only for AAC in mp4/mov, where that length is exact).
_AAC_MAX_PADDING = 2048


def _declared_samples(container, stream) -> int | None:
    if stream.codec_context.name != "aac" or "mp4" not in container.format.name:
        return None
    if stream.duration is None or stream.time_base is None or not stream.sample_rate:
        return None
    return int(round(stream.duration * stream.time_base * stream.sample_rate))


def _resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr HQ resampling, trimmed/padded to ceil(N * target/orig) like librosa.resample(fix=True)."""
    import soxr

    out = soxr.resample(wav, orig_sr, target_sr, quality="HQ")
    n_out = int(math.ceil(wav.shape[0] * target_sr / orig_sr))
    if out.shape[0] > n_out:
        out = out[:n_out]
    elif out.shape[0] < n_out:
        out = np.pad(out, (0, n_out - out.shape[0]))
    return out.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    import librosa

    # Keyword arguments: librosa >= 0.10 made filters.mel keyword-only. Slaney scale and area
    # normalisation are the defaults, as they were in librosa 0.7.
    return librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, htk=False, norm="slaney"
    ).astype(np.float64)


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised log-mel spectrogram of 16 kHz mono audio: float32 (80, 1 + N // 200)."""
    import librosa

    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"melspectrogram expects mono audio of shape (N,), got {wav.shape}")
    if wav.size == 0:
        raise ValueError("melspectrogram got empty audio (0 samples)")
    # float64 like the original (scipy lfilter promotes), so near-silent bins keep their precision.
    y = wav.astype(np.float64)
    emphasised = np.empty_like(y)
    emphasised[0] = y[0]
    emphasised[1:] = y[1:] - PREEMPHASIS * y[:-1]
    with warnings.catch_warnings():
        # librosa warns for clips shorter than n_fft; reflect padding still defines every frame.
        warnings.filterwarnings("ignore", message="n_fft=.*is too large")
        spec = np.abs(
            librosa.stft(
                emphasised,
                n_fft=N_FFT,
                hop_length=HOP,
                win_length=WIN_LENGTH,
                window="hann",
                center=True,
                pad_mode="reflect",
            )
        )
    return normalised_mel(spec)


def normalised_mel(spec: np.ndarray) -> np.ndarray:
    """|STFT| (401, T) -> the normalised log-mel (80, T) float32 (melspectrogram's last steps)."""
    mel = _mel_basis() @ spec
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    scaled = 2 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


# ----------------------------------------------------------------------------------------- windows


def mel_start_index(frame_idx, fps: float = 25.0) -> np.ndarray:
    """Mel index where video frame ``frame_idx`` starts: ``int(80 * k / fps)``, vectorised.

    Computed as the original's ``int(80. * (k / fps))``; negative frames give negative indices
    (floor), which ``mel_windows`` clamps to 0.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    k = np.asarray(frame_idx, dtype=np.float64)
    return np.floor(float(MEL_FPS) * (k / float(fps))).astype(np.int64)


def mel_windows(
    mel: np.ndarray, start_frames, fps: float = 25.0, step: int = MEL_STEP
) -> np.ndarray:
    """Windows of ``step`` mel frames starting at each video frame in ``start_frames``: (K, 80, step).

    One gather over a sliding-window view for all K windows (no Python loop). Start indices are
    clamped into ``[0, T - step]``: a window before the audio starts at 0, one past the end ends exactly at T.
    Raises ValueError when the mel is shorter than one window.
    """
    mel = np.asarray(mel)
    if mel.ndim != 2:
        raise ValueError(f"mel must be (n_mels, T), got shape {mel.shape}")
    n_mels, total = mel.shape
    if total < step:
        raise ValueError(
            f"mel has {total} frames, shorter than one window of {step} "
            f"({step / MEL_FPS * 1000:.0f} ms of audio)"
        )
    starts = np.clip(mel_start_index(np.atleast_1d(start_frames), fps), 0, total - step)
    # A zero-copy view of every possible window, (T - step + 1, n_mels, step); one fancy-index
    # gather then copies the K wanted windows into a fresh C-contiguous array (rows of `step`
    # contiguous floats, so the copy streams through memory).
    every_window = sliding_window_view(mel, step, axis=1).transpose(1, 0, 2)
    return np.ascontiguousarray(every_window[starts], dtype=np.float32)


def frame_mel_windows(
    mel: np.ndarray, n_frames: int, fps: float = 25.0, mode: str = WINDOW_POLICY
) -> np.ndarray:
    """One mel window per video frame 0 .. n_frames-1: float32 (n_frames, 80, 16), one gather.

    ``mode="training"`` (our policy for training *and* inference, the default): frame k's window
    starts at frame k-1 and covers frames k-1 .. k+3, as the original generator was trained
    (``get_segmented_mels``). ``mode="inference"``: starts at frame k (k .. k+4), as the original's
    inference script did, 40 ms later than training. Windows at the edges are clamped as in
    ``mel_windows`` (frame 0 under "training" starts at mel 0; late frames end exactly at T, the
    original's tail chunk). See the module docstring for why we chose "training".
    """
    if mode not in _WINDOW_START_OFFSET:
        raise ValueError(f"mode must be 'training' or 'inference', got {mode!r}")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if n_frames == 0:
        return np.zeros((0, np.shape(mel)[0], MEL_STEP), np.float32)
    return frame_mel_windows_at(mel, np.arange(n_frames), fps=fps, mode=mode)


def frame_mel_windows_at(mel: np.ndarray, frames, fps: float = 25.0, mode: str = WINDOW_POLICY) -> np.ndarray:
    """Rows ``frames`` of ``frame_mel_windows(mel, ...)`` without building the others: (K, 80, 16),
    what a streaming consumer gathers one batch at a time."""
    if mode not in _WINDOW_START_OFFSET:
        raise ValueError(f"mode must be 'training' or 'inference', got {mode!r}")
    starts = np.asarray(frames, np.int64) + _WINDOW_START_OFFSET[mode]
    return mel_windows(mel, starts, fps=fps, step=MEL_STEP)


def video_frames_for_audio(n_samples: int, fps: float = 25.0, sr: int = SAMPLE_RATE) -> int:
    """How many video frames at ``fps`` the audio covers: ceil(duration * fps).

    The original inference emitted one frame per complete window plus one tail window, i.e. ~3
    frames fewer than the audio lasts; with clamped windows every frame of the audio gets one.
    """
    return int(math.ceil(n_samples * fps / sr - 1e-9))

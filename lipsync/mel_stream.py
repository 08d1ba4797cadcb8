"""The mel spectrogram of a signal that arrives in chunks (a long file's ``iter_audio``, a live
stream): ``lipsync.audio.melspectrogram``'s numbers, without ever holding the signal or its STFT."""

from __future__ import annotations

import numpy as np

from lipsync.audio import HOP, N_FFT, N_MELS, PREEMPHASIS, WIN_LENGTH, normalised_mel, melspectrogram


_MEL_STREAM_MIN = 4 * N_FFT


class MelStream:
    """``melspectrogram`` of a signal given in chunks, the same numbers, in bounded memory.

    ``push(chunk)`` returns the mel frames (80, k) that chunk completes, ``finish()`` the last
    ones; joined they equal ``melspectrogram`` of the whole signal. Mel frame j is the STFT of
    the reflect-padded signal's samples [200j, 200j + 800), so it is ready once sample
    200j + 400 has arrived; the frames that touch the end need the end (its reflection) and
    come from ``finish``. Only the samples of frames still to come are kept (under 1000).
    A signal shorter than ``_MEL_STREAM_MIN`` samples is done in one piece at the end, where
    np.pad's reflection of a very short signal has its own rules.
    """

    def __init__(self):
        self.raw: list[np.ndarray] = []  # the signal until it is long enough to stream
        self.padded = np.zeros(0, np.float64)  # pre-emphasised, reflect-padded, from sample 200 * next_frame
        self.next_frame = 0
        self.last_sample: float | None = None
        self.n_samples = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk)
        if chunk.ndim != 1:
            raise ValueError(f"melspectrogram expects mono audio of shape (N,), got {chunk.shape}")
        self.n_samples += chunk.size
        if self.raw is not None:
            self.raw.append(chunk)
            if self.n_samples < _MEL_STREAM_MIN:
                return self._empty()
            head = self._emphasise(np.concatenate(self.raw))
            self.raw = None
            # Reflect padding of the start: padded[i] = emphasised[N_FFT // 2 - i] for i < N_FFT // 2.
            self.padded = np.concatenate([head[1 : N_FFT // 2 + 1][::-1], head])
        else:
            self.padded = np.concatenate([self.padded, self._emphasise(chunk)])
        # Frames whose 800 samples are all here and that do not reach the signal's end.
        ready = (self.padded.size - N_FFT) // HOP + 1 if self.padded.size >= N_FFT else 0
        # and keep at least N_FFT // 2 + 1 samples beyond them: finish reflects the end from them
        ready = max(0, min(ready, (self.padded.size - N_FFT // 2 - N_FFT) // HOP + 1))
        return self._frames(ready)

    def finish(self) -> np.ndarray:
        if self.raw is not None:
            if self.n_samples == 0:
                raise ValueError("melspectrogram got empty audio (0 samples)")
            return melspectrogram(np.concatenate(self.raw))
        tail = self.padded[-N_FFT // 2 - 1 : -1][::-1]  # reflection of the end
        self.padded = np.concatenate([self.padded, tail])
        total = 1 + self.n_samples // HOP
        return self._frames(total - self.next_frame)

    def _emphasise(self, chunk: np.ndarray) -> np.ndarray:
        # float64 like melspectrogram; the first sample of a chunk uses the previous chunk's last.
        y = chunk.astype(np.float64)
        out = np.empty_like(y)
        if y.size == 0:
            return out
        out[0] = y[0] if self.last_sample is None else y[0] - PREEMPHASIS * self.last_sample
        out[1:] = y[1:] - PREEMPHASIS * y[:-1]
        self.last_sample = y[-1]
        return out

    def _empty(self) -> np.ndarray:
        return np.zeros((N_MELS, 0), np.float32)

    def _frames(self, count: int) -> np.ndarray:
        import librosa

        if count <= 0:
            return self._empty()
        segment = self.padded[: (count - 1) * HOP + N_FFT]
        spec = np.abs(librosa.stft(segment, n_fft=N_FFT, hop_length=HOP, win_length=WIN_LENGTH,
                                   window="hann", center=False))
        self.padded = self.padded[count * HOP :]
        self.next_frame += count
        return normalised_mel(spec)


def stream_melspectrogram(chunks) -> tuple[np.ndarray, int]:
    """(mel (80, T) float32, number of samples) of a signal given as chunks (``iter_audio``):
    ``melspectrogram`` of the joined signal without ever holding it (the mel is 1.5 MB a minute,
    the 16 kHz signal 3.8 MB, its STFT 30 MB)."""
    stream = MelStream()
    parts = [stream.push(chunk) for chunk in chunks]
    parts.append(stream.finish())
    return np.concatenate(parts, axis=1), stream.n_samples

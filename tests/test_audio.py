"""Audio front-end: the mel against an independent numpy/scipy reference, loading, window arithmetic."""

import numpy as np
import pytest
import scipy.signal
import soundfile

from lipsync import audio
from lipsync.mel_stream import stream_melspectrogram
from lipsync.errors import MediaError

# ----------------------------------------------------------------- independent reference (formula)


def _slaney_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    linear = 3.0 * f / 200.0  # 200/3 Hz per mel below 1 kHz
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, linear)


def _slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    linear = 200.0 * m / 3.0
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log_part, linear)


def _reference_mel_basis(sr=16000, n_fft=800, n_mels=80, fmin=55.0, fmax=7600.0):
    """Triangular Slaney-scale filters with area (2 / bandwidth) normalisation, from the formula."""
    fft_hz = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges_hz = _slaney_mel_to_hz(
        np.linspace(_slaney_hz_to_mel(fmin), _slaney_hz_to_mel(fmax), n_mels + 2)
    )
    basis = np.zeros((n_mels, fft_hz.size))
    for band in range(n_mels):
        lo, centre, hi = edges_hz[band : band + 3]
        rising = (fft_hz - lo) / (centre - lo)
        falling = (hi - fft_hz) / (hi - centre)
        basis[band] = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (hi - lo))
    return basis


def _reference_melspectrogram(wav):
    emphasised = scipy.signal.lfilter([1.0, -0.97], [1.0], wav.astype(np.float64))
    padded = np.pad(emphasised, 400, mode="reflect")
    n_frames = 1 + (padded.size - 800) // 200
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)  # periodic Hann
    frames = np.stack([padded[j * 200 : j * 200 + 800] * window for j in range(n_frames)], axis=1)
    magnitude = np.abs(np.fft.rfft(frames, axis=0))
    mel = _reference_mel_basis() @ magnitude
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - 20.0
    return np.clip(8.0 * (db + 100.0) / 100.0 - 4.0, -4.0, 4.0)


def _speechlike(n, seed=0):
    """Chirp + harmonics + noise bursts + a silent gap + a very quiet stretch: every dB regime."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    wav = 0.3 * scipy.signal.chirp(t, 80, t[-1], 6000) + 0.1 * np.sin(2 * np.pi * 220 * t)
    wav += 0.05 * rng.standard_normal(n) * (np.sin(2 * np.pi * 3 * t) > 0)
    wav[n // 3 : n // 3 + 3000] = 0.0
    wav[n // 2 : n // 2 + 2000] *= 1e-4
    return wav.astype(np.float32)


# ------------------------------------------------------------------------------------ mel values


@pytest.mark.parametrize("n_samples", [16000 * 2 + 123, 16000, 1000, 401])
def test_melspectrogram_matches_independent_reference(n_samples):
    wav = _speechlike(n_samples)
    ours = audio.melspectrogram(wav)
    reference = _reference_melspectrogram(wav)
    assert ours.dtype == np.float32
    assert ours.shape == (80, 1 + n_samples // 200) == reference.shape
    assert np.abs(ours - reference).max() < 1e-4


def test_melspectrogram_uses_reflect_padding_at_the_edges():
    # Zero padding (librosa >= 0.9's default) would change the first and last frames.
    wav = _speechlike(8000, seed=3)
    padded_with_zeros = np.pad(scipy.signal.lfilter([1, -0.97], [1], wav.astype(np.float64)), 400)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)
    zero_first = _reference_mel_basis() @ np.abs(np.fft.rfft(padded_with_zeros[:800] * window))
    zero_first = np.clip(8 * (20 * np.log10(np.maximum(1e-5, zero_first)) - 20 + 100) / 100 - 4, -4, 4)
    ours = audio.melspectrogram(wav)
    assert np.abs(ours[:, 0] - _reference_melspectrogram(wav)[:, 0]).max() < 1e-4
    assert np.abs(ours[:, 0] - zero_first).max() > 1e-2


def test_melspectrogram_range_and_silence():
    mel = audio.melspectrogram(np.zeros(3200, np.float32))
    assert mel.shape == (80, 17)
    assert np.all(mel == -4.0)  # 20*log10(1e-5) - 20 = -120 dB -> clipped to -4
    loud = audio.melspectrogram(_speechlike(16000) * 100)
    assert loud.max() == 4.0 and loud.min() >= -4.0


def test_melspectrogram_rejects_bad_arrays():
    with pytest.raises(ValueError, match="empty"):
        audio.melspectrogram(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="mono"):
        audio.melspectrogram(np.zeros((2, 100), np.float32))


# -------------------------------------------------------------------------------------- loading


def test_load_audio_downmixes_and_resamples_to_16k(tmp_path):
    sr = 44100
    t = np.arange(int(sr * 1.5)) / sr
    # Different content per channel: the mean downmix holds 440 Hz at 0.3 and 660 Hz at 0.1;
    # the left channel alone would give 0.6 and 0, the right alone 0 and 0.2.
    left = 0.6 * np.sin(2 * np.pi * 440 * t)
    right = 0.2 * np.sin(2 * np.pi * 660 * t)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1).astype(np.float32), sr, subtype="FLOAT")

    wav = audio.load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape[0] == int(np.ceil(t.size * 16000 / sr))
    spectrum = np.abs(np.fft.rfft(wav[1000:-1000]))
    peak_hz = spectrum.argmax() * 16000 / (wav.size - 2000)
    assert abs(peak_hz - 440) < 2
    # Amplitude of each tone over exactly 1 s (whole cycles of both), mean downmix as librosa.load.
    seg = wav[2000:18000]
    ts = np.arange(seg.size) / 16000
    amplitude = {f: 2 * abs(np.dot(seg, np.exp(-2j * np.pi * f * ts))) / seg.size for f in (440, 660)}
    assert amplitude[440] == pytest.approx(0.3, abs=0.01), amplitude
    assert amplitude[660] == pytest.approx(0.1, abs=0.01), amplitude


def test_load_audio_of_16k_mono_is_sample_exact(tmp_path):
    wav = _speechlike(16000 + 77)
    path = tmp_path / "mono16k.wav"
    soundfile.write(path, wav, 16000, subtype="FLOAT")
    assert np.array_equal(audio.load_audio(path), wav)


def test_load_audio_bad_inputs_name_the_file(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(MediaError, match="missing.wav"):
        audio.load_audio(missing)

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.wav.*empty"):
        audio.load_audio(empty)

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(MediaError, match="notes.mp4"):
        audio.load_audio(text)

    no_samples = tmp_path / "nosamples.wav"
    soundfile.write(no_samples, np.zeros(0, np.float32), 16000)
    assert no_samples.stat().st_size > 0
    with pytest.raises(MediaError, match="nosamples.wav.*no samples"):
        audio.load_audio(no_samples)


# -------------------------------------------------------------------------------------- windows


def test_mel_start_index_matches_reference_table():
    table = [0, 3, 6, 9, 12, 16, 19, 22, 25, 28, 32]
    assert audio.mel_start_index(np.arange(11), fps=25.0).tolist() == table
    assert audio.mel_start_index(5) == 16


@pytest.mark.parametrize("fps", [25.0, 30.0, 30000 / 1001, 24.0])
def test_mel_start_index_equals_original_int_arithmetic(fps):
    frames = np.arange(0, 20000)
    original = [int(80.0 * (k / float(fps))) for k in frames]
    assert audio.mel_start_index(frames, fps).tolist() == original


def _naive_windows(mel, starts_frames, fps, step=16):
    total = mel.shape[1]
    out = []
    for k in starts_frames:
        start = min(max(int(80.0 * (k / fps)) if k >= 0 else 0, 0), total - step)
        out.append(mel[:, start : start + step])
    return np.stack(out)


@pytest.mark.parametrize("fps", [25.0, 30.0, 30000 / 1001])
@pytest.mark.parametrize("mode,offset", [("training", -1), ("inference", 0)])
def test_frame_mel_windows_equal_naive_loop(fps, mode, offset):
    rng = np.random.default_rng(1)
    mel = rng.standard_normal((80, 1 + 16000 * 3 // 200)).astype(np.float32)
    n_frames = int(3 * fps) + 2  # a little past the audio: exercises the tail clamp
    windows = audio.frame_mel_windows(mel, n_frames, fps=fps, mode=mode)
    assert windows.shape == (n_frames, 80, 16) and windows.dtype == np.float32
    assert windows.flags["C_CONTIGUOUS"]
    naive = _naive_windows(mel, [k + offset for k in range(n_frames)], fps)
    assert np.array_equal(windows, naive)


def test_window_policy_and_edges():
    mel = np.tile(np.arange(100, dtype=np.float32), (80, 1))  # value = mel frame index
    training = audio.frame_mel_windows(mel, 40)  # default policy
    assert audio.WINDOW_POLICY == "training"
    assert training[0, 0, 0] == 0  # frame 0: k-1 would be before the audio -> clamped to 0
    assert training[1, 0, 0] == 0  # frame 1 starts at frame 0
    assert training[6, 0, 0] == 16  # frame 6 starts at frame 5 -> mel 16
    assert training[-1, 0, -1] == 99  # late frames end exactly at T (the tail chunk)
    inference = audio.frame_mel_windows(mel, 40, mode="inference")
    assert inference[5, 0, 0] == 16
    sync = audio.mel_windows(mel, [5])  # SyncNet window: starts at the clip's first frame
    assert sync.shape == (1, 80, 16) and sync[0, 0, 0] == 16
    with pytest.raises(ValueError, match="shorter than one window"):
        audio.mel_windows(mel[:, :15], [0])
    with pytest.raises(ValueError, match="mode"):
        audio.frame_mel_windows(mel, 3, mode="centred")
    assert audio.frame_mel_windows(mel, 0).shape == (0, 80, 16)


def test_video_frames_for_audio():
    assert audio.video_frames_for_audio(16000, fps=25) == 25
    assert audio.video_frames_for_audio(16001, fps=25) == 26
    assert audio.video_frames_for_audio(48000, fps=30000 / 1001) == 90


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread's own imports, via librosa.load
@pytest.mark.parametrize("subtype,fmt,sr", [("PCM_16", "FLAC", 22050), ("PCM_24", "WAV", 48000)])
def test_load_audio_equals_librosa_load(tmp_path, subtype, fmt, sr):
    # The original loaded audio with librosa.load(path, sr=16000); current librosa uses soxr_hq.
    import librosa

    rng = np.random.default_rng(2)
    stereo = (0.2 * rng.standard_normal((int(sr * 0.8), 2))).astype(np.float32)
    path = tmp_path / f"clip.{fmt.lower()}"
    soundfile.write(path, stereo, sr, subtype=subtype, format=fmt)
    expected, _ = librosa.load(path, sr=16000)
    ours = audio.load_audio(path)
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-6


@pytest.mark.parametrize("n_samples", [3000, 16000 * 3 + 17])
def test_streamed_front_ends_equal_the_whole_signal(tmp_path, n_samples):
    """Chunked decoding, mel and MFCC (what sync-score and infer stream) give exactly the numbers
    of the whole-signal functions, whatever the chunking (one that splits every frame included)."""
    from lipsync.metrics.syncnet_v2 import MfccStream, mfcc_features

    rng = np.random.default_rng(n_samples)
    wav = (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
    path = tmp_path / "x.wav"
    soundfile.write(path, (wav * 32767).astype(np.int16), 44100)  # resampled to 16 kHz on the way
    assert np.array_equal(np.concatenate(list(audio.iter_audio(path))), audio.load_audio(path))
    for chunk in (333, 4096):
        pieces = [wav[i:i + chunk] for i in range(0, n_samples, chunk)]
        mel, n = stream_melspectrogram(pieces)
        assert n == n_samples and np.array_equal(mel, audio.melspectrogram(wav)), chunk
        stream = MfccStream()
        mfcc = np.concatenate([stream.push(p) for p in pieces] + [stream.finish()], axis=1)
        assert np.array_equal(mfcc, mfcc_features(wav)), chunk

"""Expert and generator windows cut from a clip sample (unit tests, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipsync.audio import mel_start_index
from lipsync.data.clip_sample import ClipSample, decode_clip_sample, encode_clip_sample
from lipsync.data.generator_windows import generator_tensors, sample_generator_window
from lipsync.data.windows import (
    ExpertSampling,
    augment_window,
    collate_expert,
    expert_face_tensor,
    mel_window_distance,
    sample_expert_windows,
    valid_expert_starts,
)
from lipsync.errors import ConfigError
from lipsync.training.expert import OFFSET_BUCKETS, offset_bucket_index, summarize_evaluation


def indexed_clip(n_frames=60, size=16, fps=25.0, encoded=False) -> ClipSample:
    """Frame i is filled with value i (so windows reveal which frames they hold); mel column j = j."""
    frames = np.stack([np.full((size, size, 3), i, np.uint8) for i in range(n_frames)])
    frames[:, size // 2 :, :, 1] += 100  # lower half differs from the upper half in G
    n_samples = int(n_frames / fps * 16000)
    mel_frames = 1 + n_samples // 200
    mel = np.tile(np.arange(mel_frames, dtype=np.float32), (80, 1))
    clip = ClipSample("clip_a", frames, mel, {"fps": fps, "n_frames": n_frames})
    if encoded:  # through the real shard format (PNG keeps the pixel values exact)
        clip = decode_clip_sample(encode_clip_sample(clip, codec="png"))
    return clip


@pytest.mark.parametrize("encoded", [False, True])
def test_positive_and_negative_windows_are_aligned_and_balanced(encoded):
    clip = indexed_clip(encoded=encoded)
    rng = np.random.default_rng(0)
    windows = sample_expert_windows(clip, 200, rng, ExpertSampling(min_offset=3))
    labels = np.array([w.label for w in windows])
    assert labels.sum() == 100  # exactly balanced
    for w in windows:
        # face: 15 channels, lower half (8 rows) of the 16 px crop, frames start..start+4
        assert w.face.shape == (15, 8, 16) and w.face.dtype == np.uint8
        frame_ids = w.face[0::3, 0, 0]  # B channel of each frame
        assert list(frame_ids) == list(range(w.start, w.start + 5))
        assert (w.face[1::3] >= 100).all()  # G of the lower half only
        audio_start = w.start + w.offset
        assert w.mel.shape == (1, 80, 16)
        assert w.mel[0, 0, 0] == mel_start_index(np.array([audio_start]))[0]
        if w.label == 1.0:
            assert w.offset == 0
        else:
            assert abs(w.offset) >= 3
        assert w.mel[0, 0, -1] < clip.mel.shape[1]


def test_face_tensor_is_frame_major_bgr_scaled():
    frames = np.zeros((5, 4, 4, 3), np.uint8)
    for t in range(5):
        frames[t, :, :] = (10 * t, 10 * t + 1, 10 * t + 2)  # B, G, R
    face = expert_face_tensor(frames)
    assert face.shape == (15, 2, 4) and face.dtype == torch.float32
    expected = torch.tensor([10 * t + c for t in range(5) for c in range(3)], dtype=torch.float32) / 255
    assert torch.allclose(face[:, 0, 0], expected)


def test_face_size_resizes_crops():
    clip = indexed_clip(size=16)
    w = sample_expert_windows(clip, 2, np.random.default_rng(1), ExpertSampling(face_size=32))[0]
    assert w.face.shape == (15, 16, 32)


def test_short_clip_gives_no_windows_and_valid_starts():
    clip = indexed_clip(n_frames=8)
    # 8 frames at 25 fps = 5,120 samples -> 1 + 5120 // 200 = 26 mel steps. Starts k = 0..3
    # (5 frames fit), mel windows begin at floor(3.2 k) = 0, 3, 6, 9 and end at 16..25 <= 26.
    assert clip.mel.shape[1] == 26
    assert valid_expert_starts(8, 26) == 4
    assert valid_expert_starts(8, 24) == 3  # k = 3's window would end at 25 > 24
    assert valid_expert_starts(4, 26) == 0  # fewer frames than T
    assert sample_expert_windows(clip, 4, np.random.default_rng(0), ExpertSampling(min_offset=5)) == []
    with pytest.raises(ConfigError):
        ExpertSampling(min_offset=0)


def paused_clip(n_frames=100, fps=25.0) -> ClipSample:
    """First half of the clip silent (mel floor -4 everywhere), second half "speech" (noise)."""
    clip = indexed_clip(n_frames=n_frames, fps=fps)
    rng = np.random.default_rng(5)
    mel = np.full(clip.mel.shape, -4.0, np.float32)
    half = mel.shape[1] // 2
    mel[:, half:] = rng.uniform(-3.0, 2.0, size=(80, mel.shape[1] - half))
    return ClipSample("paused", clip.frames, mel, clip.meta)


def _negative_distances(clip, sampling):
    windows = sample_expert_windows(clip, 400, np.random.default_rng(2), sampling)
    fps = 25.0
    out = []
    for w in windows:
        if w.label == 0.0:
            s = int(mel_start_index(np.array([w.start]), fps)[0])
            out.append(mel_window_distance(clip.mel[:, s : s + 16], w.mel[0]))
    return np.array(out), windows


def test_negatives_sound_different_from_the_true_window():
    clip = paused_clip()
    # the original sampling pairs silence with silence: indistinguishable from a positive
    original, _ = _negative_distances(clip, ExpertSampling(min_mel_distance=0.0))
    assert (original < 1e-6).sum() > 20
    dist, windows = _negative_distances(clip, ExpertSampling())
    assert len(dist) == 200 and sum(w.label for w in windows) == 200  # still balanced
    assert dist.min() >= 0.5
    # silent video windows still get negatives: their audio comes from the speech half
    assert any(w.label == 0.0 and w.start + 4 < 45 for w in windows)
    with pytest.raises(ConfigError, match="min-mel-distance"):
        ExpertSampling(min_mel_distance=-0.1)


def test_clip_of_one_sound_gives_no_expert_windows():
    clip = indexed_clip(n_frames=60)
    silent = ClipSample("silent", clip.frames, np.full(clip.mel.shape, -4.0, np.float32), clip.meta)
    assert sample_expert_windows(silent, 8, np.random.default_rng(0), ExpertSampling()) == []
    assert len(sample_expert_windows(silent, 8, np.random.default_rng(0), ExpertSampling(min_mel_distance=0))) == 8


def test_augmentation_is_identical_across_frames():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, size=(1, 32, 32, 3), dtype=np.uint8)
    frames = np.repeat(base, 5, axis=0)
    for seed in range(5):
        out = augment_window(frames, np.random.default_rng(seed))
        assert out.shape == frames.shape and out.dtype == np.uint8
        assert all(np.array_equal(out[0], out[t]) for t in range(1, 5))
    assert not np.array_equal(augment_window(frames, np.random.default_rng(0)), frames)


def test_collate_shapes():
    clip = indexed_clip()
    batch = collate_expert(sample_expert_windows(clip, 6, np.random.default_rng(0)))
    assert batch["face"].shape == (6, 15, 8, 16) and batch["face"].max() <= 1.0
    assert batch["mel"].shape == (6, 1, 80, 16)
    assert batch["label"].shape == (6, 1) and batch["offset"].shape == (6,)


@pytest.mark.parametrize("mode,shift", [("inference", 0), ("training", -1)])
def test_generator_window(mode, shift):
    clip = indexed_clip(encoded=True)
    w = sample_generator_window(clip, np.random.default_rng(5), mel_mode=mode)
    assert list(w.gt[:, 0, 0, 0]) == list(range(w.start, w.start + 5))
    assert list(w.ref[:, 0, 0, 0]) == list(range(w.ref_start, w.ref_start + 5))
    assert abs(w.ref_start - w.start) >= 5
    starts = mel_start_index(np.arange(w.start, w.start + 5) + shift)
    assert list(w.indiv_mels[:, 0, 0, 0]) == list(starts)
    assert w.mel[0, 0, 0] == mel_start_index(np.array([w.start]))[0]
    t = generator_tensors(w)
    assert t["x"].shape == (6, 5, 16, 16) and t["gt"].shape == (3, 5, 16, 16)
    assert (t["x"][:3, :, 8:] == 0).all() and (t["x"][:3, :, :8] == t["gt"][:, :, :8]).all()
    assert t["indiv_mels"].shape == (5, 1, 80, 16) and t["mel"].shape == (1, 80, 16)
    assert sample_generator_window(indexed_clip(n_frames=8), np.random.default_rng(0)) is None


def test_offset_buckets_and_summary():
    idx = offset_bucket_index(np.array([0, -2, 2, 7, -15, 40]))
    names = [OFFSET_BUCKETS[i][0] for i in idx]
    assert names == ["0", "2", "2", "6-10", "11-20", "21plus"]
    sums = torch.zeros(len(OFFSET_BUCKETS), 3, dtype=torch.float64)
    sums[0] = torch.tensor([9, 10, 1.0])
    sums[2] = torch.tensor([5, 10, 7.0])
    m = summarize_evaluation(sums)
    assert m["val_accuracy"] == pytest.approx(0.7)
    assert m["val_accuracy_offset_0"] == pytest.approx(0.9)
    assert m["val_loss"] == pytest.approx(0.4)
    assert "val_accuracy_offset_1" not in m

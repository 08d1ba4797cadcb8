"""Reading expert batches from WebDataset shards (unit tests: real tar shards, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import webdataset as wds

from lipsync.data.clip_sample import ClipSample, encode_clip_sample
from lipsync.data.shard_stream import WindowBatchStream, fixed_windows, list_shards
from lipsync.data.windows import ExpertSampling
from lipsync.errors import ConfigError


def write_shards(root, n_shards=2, clips_per_shard=3, n_frames=30, size=16):
    root.mkdir(exist_ok=True)
    for s in range(n_shards):
        with wds.TarWriter(str(root / f"train-{s:06d}.tar")) as w:
            for c in range(clips_per_shard):
                frames = np.full((n_frames, size, size, 3), 10 * s + c, np.uint8)
                # speech-like mel (varies over time): negatives need audio unlike the true window
                mel = np.random.default_rng([s, c]).uniform(-4, 2, (80, 1 + int(n_frames / 25 * 16000) // 200))
                mel = mel.astype(np.float32)
                w.write(encode_clip_sample(ClipSample(f"clip{s}x{c}", frames, mel, {"fps": 25.0}), codec="png"))
    return root


def test_list_shards_names_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        list_shards(tmp_path / "nope", "train")
    with pytest.raises(ConfigError, match="no 'val-"):
        list_shards(write_shards(tmp_path / "s"), "val")


@pytest.mark.parametrize("n_shards", [1, 4])  # fewer shards than readers: split by clip
def test_readers_see_disjoint_parts_covering_every_clip(tmp_path, n_shards):
    paths = list_shards(write_shards(tmp_path / "s", n_shards=n_shards, clips_per_shard=3), "train")
    seen = []
    for rank in range(2):
        stream = WindowBatchStream(paths, sampling=ExpertSampling(), rank=rank, world_size=2, batch_size=4, windows_per_clip=2,
                                   shuffle_buffer=8, epochs=1)
        keys = {w.key for w in stream.windows()}
        seen.append(keys)
    assert not (seen[0] & seen[1])
    assert len(seen[0] | seen[1]) == 3 * n_shards


def test_batches_are_balanced_and_shaped(tmp_path):
    paths = list_shards(write_shards(tmp_path / "s"), "train")
    batch = next(iter(WindowBatchStream(paths, sampling=ExpertSampling(), batch_size=8, windows_per_clip=4, shuffle_buffer=16)))
    assert batch["face"].shape == (8, 15, 8, 16) and batch["mel"].shape == (8, 1, 80, 16)
    stream = WindowBatchStream(paths, sampling=ExpertSampling(), batch_size=8, windows_per_clip=4, shuffle_buffer=16, epochs=1)
    labels = np.concatenate([b["label"].numpy().ravel() for b in stream])
    assert len(labels) == 6 * 4 and labels.sum() == 12


def test_validation_set_does_not_depend_on_world_size(tmp_path):
    paths = list_shards(write_shards(tmp_path / "s"), "train")
    whole = fixed_windows(paths, 4, seed=3, sampling=ExpertSampling())
    parts = [fixed_windows(paths, 4, seed=3, sampling=ExpertSampling(), rank=r, world_size=2) for r in range(2)]
    ident = lambda ws: sorted((w.key, w.start, w.offset) for w in ws)  # noqa: E731
    assert ident(whole) == ident(parts[0] + parts[1])
    assert ident(whole) == ident(fixed_windows(paths, 4, seed=3, sampling=ExpertSampling()))
    assert ident(whole) != ident(fixed_windows(paths, 4, seed=4, sampling=ExpertSampling()))


def test_silent_clips_are_skipped_with_the_reason(tmp_path):
    root = tmp_path / "silent"
    root.mkdir()
    with wds.TarWriter(str(root / "train-000000.tar")) as w:
        frames = np.zeros((30, 16, 16, 3), np.uint8)
        w.write(encode_clip_sample(ClipSample("quiet", frames, np.full((80, 97), -4.0, np.float32), {"fps": 25.0}), codec="png"))
    stream = WindowBatchStream(list_shards(root, "train"), sampling=ExpertSampling(), batch_size=4, epochs=1)
    with pytest.raises(ConfigError, match="one sound throughout.*min-mel-distance 0.5"):
        next(iter(stream))

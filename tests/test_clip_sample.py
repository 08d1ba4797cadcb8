"""The shard sample format: frame packs and ClipSample encode/decode through a real tar shard."""

from __future__ import annotations

import io

import numpy as np
import pytest
import webdataset as wds

from lipsync.data.clip_sample import (
    ClipSample, FramePack, decode_clip_sample, encode_clip_sample, encode_frame_pack, make_sample_key,
)


def _frames(n=12, size=96, seed=0):
    # Smooth images (a gradient plus a moving disc) so JPEG behaves as on faces, not on noise.
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for i in range(n):
        img = np.stack([(xx * 2 + i) % 256, (yy * 2) % 256, ((xx + yy) + 10 * i) % 256], -1).astype(np.uint8)
        disc = (xx - 20 - 4 * i) ** 2 + (yy - 48) ** 2 < 100
        img[disc] = (30, 200, 90)
        out.append(img)
    return np.stack(out)


def _through_tar(encoded: dict, tmp_path) -> dict:
    path = tmp_path / "s.tar"
    with open(path, "wb") as f:
        writer = wds.TarWriter(f, encoder=False, mtime=0)
        writer.write(encoded)
        writer.close()
    return next(iter(wds.WebDataset(str(path), shardshuffle=False)))


def test_png_round_trip_is_exact_and_lazy(tmp_path):
    frames = _frames()
    mel = np.random.default_rng(0).standard_normal((80, 39)).astype(np.float32)
    sample = ClipSample("lrs2_spk_00001_000_abcd1234", frames, mel, {"split": "train", "speaker": "spk"})
    raw = _through_tar(encode_clip_sample(sample, codec="png"), tmp_path)
    assert sorted(k for k in raw if not k.startswith("__")) == ["frames.pack", "mel.npy", "meta.json"]
    clip = decode_clip_sample(raw)
    assert clip.key == sample.key and clip.n_frames == 12
    np.testing.assert_array_equal(clip.frame(5), frames[5])             # one frame, nothing else decoded
    assert clip._frames is None
    np.testing.assert_array_equal(clip.frames_at([11, 0, 3]), frames[[11, 0, 3]])
    np.testing.assert_array_equal(clip.frames, frames)
    np.testing.assert_array_equal(clip.mel, mel)
    assert clip.meta["codec"] == "png" and clip.meta["n_frames"] == 12 and clip.meta["mel_frames"] == 39
    assert clip.meta["crop_size"] == 96 and clip.meta["sync_offset"] is None


def test_jpeg_is_close_and_smaller_and_extra_sizes_are_kept(tmp_path):
    frames = _frames()
    big = np.stack([np.kron(f, np.ones((2, 2, 1), np.uint8)) for f in frames])
    sample = ClipSample("k", frames, np.zeros((80, 20), np.float32), {}, extra_frames={192: big})
    raw = _through_tar(encode_clip_sample(sample, codec="jpeg", quality=95), tmp_path)
    clip = decode_clip_sample(raw)
    diff = np.abs(clip.frames.astype(int) - frames.astype(int))
    assert diff.mean() < 3
    assert clip.meta["crop_sizes"] == [96, 192]
    assert clip.frames_of_size(192).frames([0]).shape == (1, 192, 192, 3)


def test_decode_accepts_webdataset_autodecoded_members(tmp_path):
    sample = ClipSample("k", _frames(3), np.ones((80, 10), np.float32), {"a": 1})
    path = tmp_path / "s.tar"
    with open(path, "wb") as f:
        w = wds.TarWriter(f, encoder=False, mtime=0)
        w.write(encode_clip_sample(sample, codec="png"))
        w.close()
    decoded = next(iter(wds.WebDataset(str(path), shardshuffle=False).decode()))
    clip = decode_clip_sample(decoded)
    assert clip.meta["a"] == 1 and clip.mel.shape == (80, 10) and clip.frame(2).shape == (96, 96, 3)


def test_bad_packs_and_keys_are_refused():
    pack = encode_frame_pack(_frames(2), "png")
    with pytest.raises(ValueError, match="truncated"):
        FramePack(pack[:-10])
    with pytest.raises(ValueError, match="not a frame pack"):
        FramePack(b"XXXX" + pack[4:])
    with pytest.raises(IndexError):
        FramePack(pack).frame(2)
    with pytest.raises(ValueError, match="must not contain"):
        encode_clip_sample(ClipSample("a.b", _frames(1), np.zeros((80, 5), np.float32)))
    with pytest.raises(ValueError, match="lacks member"):
        decode_clip_sample({"__key__": "k", "frames.pack": pack})


def test_sample_keys_are_webdataset_safe_unique_and_stable():
    k1 = make_sample_key("lrs2", "spk.1", "vid/00001", 0, "main/spk.1/00001")
    k2 = make_sample_key("lrs2", "spk.1", "vid/00001", 25, "main/spk.1/00001")
    assert "." not in k1 and "/" not in k1 and k1 != k2
    assert k1 == make_sample_key("lrs2", "spk.1", "vid/00001", 0, "main/spk.1/00001")


def test_mel_member_is_a_plain_npy_without_pickle():
    mel = np.random.default_rng(1).standard_normal((80, 7)).astype(np.float32)
    encoded = encode_clip_sample(ClipSample("k", _frames(1), mel, {}), codec="png")
    loaded = np.load(io.BytesIO(encoded["mel.npy"]), allow_pickle=False)  # raises on pickled content
    assert loaded.dtype == np.float32 and np.array_equal(loaded, mel)

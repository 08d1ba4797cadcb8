"""Preprocessing pieces without Ray: input discovery, splits, crash-safe shard writing, manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lipsync.errors import ConfigError
from pipelines import shards as sh
from pipelines.manifest import input_row, manifest_hash, read_manifest, write_manifest
from pipelines.sources import InputItem, discover_inputs
from pipelines.splits import assign_splits, parse_fractions, split_counts
from pipelines.stages import _segments


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_lrs2_official_lists_win_and_trailing_text_is_dropped(tmp_path):
    for spk, clip in [("111", "00001"), ("111", "00002"), ("222", "00001"), ("333", "00001")]:
        _touch(tmp_path / "main" / spk / f"{clip}.mp4")
    (tmp_path / "train.txt").write_text("111/00001\n111/00002\n")
    (tmp_path / "test.txt").write_text("222/00001 NF\n")
    items = {it.input_id: it for it in discover_inputs(tmp_path, "lrs2")}
    assert sorted(items) == ["111/00001", "111/00002", "222/00001", "333/00001"]
    assert items["222/00001"].official_split == "test"
    assert items["333/00001"].reject_reason == "not_in_filelists"
    splits = assign_splits(list(items.values()))
    assert splits["111/00001"] == splits["111/00002"] == "train" and splits["222/00001"] == "test"


def test_voxceleb2_layout_uses_test_folder_and_deals_dev_speakers(tmp_path):
    for part, spk in [("dev", "id00012"), ("dev", "id00013"), ("dev", "id00014"), ("test", "id09999")]:
        _touch(tmp_path / part / "mp4" / spk / "abcDEF_123" / "00001.mp4")
    items = discover_inputs(tmp_path, "voxceleb2")
    assert [it.speaker for it in items] == ["id00012", "id00013", "id00014", "id09999"]
    assert items[0].clip_id == "abcDEF_123/00001"
    splits = assign_splits(items, (0.8, 0.1, 0.1))
    assert splits["test/mp4/id09999/abcDEF_123/00001"] == "test"
    dev = [splits[it.input_id] for it in items if it.input_id.startswith("dev/")]
    assert "test" not in dev and "train" in dev


def test_folder_layout_with_speaker_regex_and_filelist(tmp_path):
    _touch(tmp_path / "a" / "alice_01.mp4")
    _touch(tmp_path / "a" / "bob_01.mov")
    _touch(tmp_path / "a" / "notes.txt")
    items = discover_inputs(tmp_path, "folder")
    assert [it.speaker for it in items] == ["a", "a"]
    items = discover_inputs(tmp_path, "folder", speaker_regex=r"/(\w+?)_\d+")
    assert [it.speaker for it in items] == ["alice", "bob"]
    with pytest.raises(ConfigError, match="does not match"):
        discover_inputs(tmp_path, "folder", speaker_regex=r"zzz(\d)")
    listfile = tmp_path / "list.txt"
    listfile.write_text("a/alice_01.mp4\tALICE\tval\n# comment\na/missing.mp4\n")
    items = discover_inputs(listfile, "filelist")
    assert [(it.speaker, it.official_split) for it in items] == [("ALICE", "val"), ("a", None)]
    with pytest.raises(ConfigError):
        discover_inputs(tmp_path / "nothing", "lrs2")


def test_speaker_splits_are_disjoint_deterministic_and_fill_every_split():
    items = [InputItem(f"s{s}/{c}", "/x", "folder", f"s{s}", str(c)) for s in range(10) for c in range(3)]
    a = assign_splits(items, (0.8, 0.1, 0.1))
    assert a == assign_splits(list(reversed(items)), (0.8, 0.1, 0.1))
    by_speaker = {}
    for it in items:
        assert by_speaker.setdefault(it.speaker, a[it.input_id]) == a[it.input_id]
    assert sorted(by_speaker.values()).count("train") == 8 and set(by_speaker.values()) == {"train", "val", "test"}
    assert assign_splits(items, (0.8, 0.1, 0.1), seed="other") != a
    assert split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    with pytest.raises(ConfigError):
        parse_fractions("0.5,0.5,0.5")


def test_scene_cuts_and_max_length_split_clips():
    dark, bright = np.full((8, 8, 3), 20, np.uint8), np.full((8, 8, 3), 220, np.uint8)
    frames = [dark] * 10 + [bright] * 30
    clips = [(start, len(f)) for start, f, _ in _segments(iter(frames), max_frames=25, cut_threshold=40,
                                                          usable_frames=38)]
    assert clips == [(0, 10), (10, 25), (35, 3)]
    assert [(s, len(f)) for s, f, _ in _segments(iter(frames), 0, 0, 100)] == [(0, 40)]


def _sample(key, n=3000):
    return {"__key__": key, "frames.pack": bytes([len(key)]) * n, "meta.json": b"{}"}


def _row(input_id, status="ok"):
    return {"input_id": input_id, "status": status}


def test_shard_writer_commits_atomically_and_recovers(tmp_path):
    w = sh.SplitShardWriter(tmp_path, "train", 0, target_bytes=5000)
    w.add_input([_sample("a")], _row("a"))
    w.add_input([], _row("r1", "rejected"))
    w.add_input([_sample("b")], _row("b"))             # reaches the target: shard 0 closes
    w.add_input([_sample("c")], _row("c"))             # shard 1 open, never closed (a "kill")
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000000.tar"]
    assert (tmp_path / "train-000001.tar.partial").exists()
    # An index written just before a kill, its tar never renamed: not a completed shard.
    (tmp_path / "index" / "train-000001.json").write_text(json.dumps({"rows": [_row("c")]}))
    state = sh.recover(tmp_path)
    assert state.done == {"a", "r1", "b"} and state.next_index == {"train": 1}
    assert not (tmp_path / "train-000001.tar.partial").exists()
    assert not (tmp_path / "index" / "train-000001.json").exists()
    rows = json.loads((tmp_path / "index" / "train-000000.json").read_text())["rows"]
    assert [r.get("shard", "") for r in rows] == ["train-000000.tar", "", "train-000000.tar"]
    # Same samples -> same bytes.
    other = tmp_path / "again"
    other.mkdir()
    w2 = sh.SplitShardWriter(other, "train", 0, target_bytes=5000)
    for s, r in [(_sample("a"), _row("a")), (None, _row("r1", "rejected")), (_sample("b"), _row("b"))]:
        w2.add_input([s] if s else [], r)
    assert (other / "train-000000.tar").read_bytes() == (tmp_path / "train-000000.tar").read_bytes()
    assert sh.parse_size("1.5MB") == 1_500_000 and sh.parse_size("64k") == 64_000


def test_manifest_rows_and_content_hash(tmp_path):
    item = {"input_id": "s/1", "path": "/d/s/1.mp4", "corpus": "lrs2", "speaker": "s", "clip_id": "1",
            "split": "train"}
    ok = {"status": "ok", "item": item, "key": "k0", "n_frames": 50, "source_duration": 4.0, "source_fps": 25.0,
          "stats": {"mean_face_size": 100.0, "detection_rate": 1.0, "box_jitter": 0.01}}
    bad = {"status": "rejected", "reason": "no_face", "item": item, "n_frames": 50,
           "stats": {"mean_face_size": 0.0, "detection_rate": 0.0, "box_jitter": float("nan")}}
    row = input_row([ok, bad])
    assert row["status"] == "ok" and row["n_clips"] == 1 and row["clips_rejected"] == "no_face:1"
    assert row["duration"] == 2.0 and row["mean_face_size"] == 100.0
    only_bad = input_row([bad])
    assert (only_bad["status"], only_bad["reason"]) == ("rejected", "no_face")
    p1, p2 = tmp_path / "m1.parquet", tmp_path / "m2.parquet"
    write_manifest([row, {**only_bad, "input_id": "s/2"}], p1)
    write_manifest([{**only_bad, "input_id": "s/2"}, row], p2)
    assert manifest_hash(p1) == manifest_hash(p2)
    assert [r["input_id"] for r in read_manifest(p1)] == ["s/1", "s/2"]
    write_manifest([row], p2)
    assert manifest_hash(p1) != manifest_hash(p2)


def test_inputs_are_grouped_into_tasks_without_starving_cpus():
    from pipelines.preprocess import PreprocessConfig, input_blocks

    assert input_blocks(64, 2) == 8  # 8 inputs per task, 4 tasks per CPU
    assert input_blocks(16, 2) == 8  # fewer inputs: keep 4 tasks per CPU, 2 inputs each
    assert input_blocks(3, 2) == 3 and input_blocks(0, 2) == 1
    assert input_blocks(100_000, 64) == 12_500
    assert input_blocks(10**9, 64) == 20_000  # capped
    assert input_blocks(64, 2, inputs_per_task=1) == 64
    with pytest.raises(ConfigError, match="inputs-per-task"):
        PreprocessConfig(input="in", output="out", inputs_per_task=0).validate()

"""Preprocessing pieces without Ray: input discovery, splits, crash-safe shard writing, manifest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from lipsync.errors import ConfigError
from pipelines.dataset import shards as sh
from pipelines.dataset.manifest import input_row, manifest_hash, read_manifest, write_manifest
from pipelines.preprocess.sources import InputItem, discover_inputs
from pipelines.preprocess.splits import assign_splits, parse_fractions, split_counts
from pipelines.preprocess.decode import _segments

sys.path.insert(0, str(Path(__file__).resolve().parent))


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


def test_files_that_differ_only_by_extension_are_two_inputs_in_every_layout(tmp_path):
    _touch(tmp_path / "main" / "111" / "00001.mp4")
    _touch(tmp_path / "main" / "111" / "00001.mov")
    _touch(tmp_path / "main" / "111" / "00002.mp4")
    for layout in ("lrs2", "folder"):
        ids = [it.input_id for it in discover_inputs(tmp_path, layout)]
        prefix = "" if layout == "lrs2" else "main/"
        assert ids == [f"{prefix}111/00001.mov", f"{prefix}111/00001.mp4", f"{prefix}111/00002"], (layout, ids)
    listfile = tmp_path / "list.txt"
    listfile.write_text("main/111/00001.mp4\nmain/111/00001.mov\n")
    assert len({it.input_id for it in discover_inputs(listfile, "filelist")}) == 2
    listfile.write_text("main/111/00001.mp4\n./main/111/00001.mp4\n")
    with pytest.raises(ConfigError, match="listed twice"):
        discover_inputs(listfile, "filelist")


def test_an_invalid_speaker_regex_is_one_line_naming_the_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "workflows"))
    from preprocess import main

    _touch(tmp_path / "a" / "alice_01.mp4")
    with pytest.raises(ConfigError, match=r"^--speaker-regex '\(a': not a regular expression \(missing \)"):
        discover_inputs(tmp_path, "folder", speaker_regex="(a")
    assert main(["--input", str(tmp_path), "--layout", "folder", "--output", str(tmp_path / "out"),
                 "--speaker-regex", "(a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --speaker-regex '(a': not a regular expression"), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


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


def test_task_shard_writer_commits_atomically_recovers_and_retries_clean(tmp_path):
    out = sh.Output.of(str(tmp_path))
    w = sh.TaskShardWriter(out, "train", sh.task_name(1, 3), target_bytes=5000)
    w.add_piece([_sample("a")], _row("a"))
    w.add_piece([], _row("r1", "rejected"))
    w.add_piece([_sample("b")], _row("b"))             # reaches the target: shard 0 closes
    w.add_piece([_sample("c")], _row("c"))             # shard 1 open, never closed (a "kill")
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-r1t00003-0000.tar"]
    assert (tmp_path / "train-r1t00003-0001.tar.partial").exists()
    # A part written just before a kill, its tar never committed: not a completed shard.
    (tmp_path / "index" / "train-r1t00003-0001.json").write_text(
        json.dumps({"shard": "train-r1t00003-0001.tar", "rows": [_row("c")]}))
    state = sh.recover(out)
    assert state.done == {("a", 0), ("r1", 0), ("b", 0)} and state.last_run == 1
    assert [s["shard"] for s in state.shards] == ["train-r1t00003-0000.tar"]
    assert not (tmp_path / "train-r1t00003-0001.tar.partial").exists()
    assert not (tmp_path / "index" / "train-r1t00003-0001.json").exists()
    rows = json.loads((tmp_path / "index" / "train-r1t00003-0000.json").read_text())["rows"]
    assert [r.get("shard", "") for r in rows] == ["train-r1t00003-0000.tar", "", "train-r1t00003-0000.tar"]
    # Same samples -> same bytes.
    other = sh.Output.of(str(tmp_path / "again"))
    (tmp_path / "again").mkdir()
    w2 = sh.TaskShardWriter(other, "train", sh.task_name(1, 3), target_bytes=5000)
    for s, r in [(_sample("a"), _row("a")), (None, _row("r1", "rejected")), (_sample("b"), _row("b"))]:
        w2.add_piece([s] if s else [], r)
    w2.add_piece([], _row("r2", "rejected"))
    w2.finish()                                        # trailing reject: the task's tail part
    assert (tmp_path / "again" / "train-r1t00003-0000.tar").read_bytes() == \
        (tmp_path / "train-r1t00003-0000.tar").read_bytes()
    assert sh.recover(other).done == {("a", 0), ("r1", 0), ("b", 0), ("r2", 0)}
    # A retried task first removes what its earlier attempt committed: nothing is counted twice.
    sh.TaskShardWriter.clear_task(other, sh.task_name(1, 3))
    assert sh.recover(other).done == set() and not list((tmp_path / "again").glob("*.tar"))
    assert sh.parse_size("1.5MB") == 1_500_000 and sh.parse_size("64k") == 64_000


def test_overwrite_deletes_only_what_preprocessing_wrote_and_refuses_other_folders(tmp_path):
    from pipelines.dataset.compaction import merge_shards, merged_name
    from pipelines.preprocess.driver import PreprocessConfig, _prepare_output

    folder = tmp_path / "shards"
    out = _prepare_output(PreprocessConfig(input="in", output=str(folder)))  # the index fingerprint
    for task in range(3):
        w = sh.TaskShardWriter(out, "train", sh.task_name(1, task), target_bytes=10**6)
        w.add_piece([_sample(f"k{task}")], _row(f"k{task}"))
        w.finish()
    merge_shards(out, ["train-r1t00000-0000.tar", "train-r1t00001-0000.tar"], merged_name("train", 1, 0))
    w = sh.TaskShardWriter(out, "val", sh.task_name(2, 0), target_bytes=10**6)
    w.add_piece([_sample("v")], _row("v"))            # never closed: val-r2t00000-0000.tar.partial
    out.put_json({"ok": 4}, "summary.json")
    (folder / "manifest.parquet").write_bytes(b"rows")
    (folder / "summary.json.tmp").write_text("{}")    # a summary being written when the run died
    theirs = ["notes.tar", "backup.tmp", "draft.partial", "train-final.tar", "index/README.md", "keep/x.tar"]
    for name in theirs:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(name)
    sh.recover(out)                                   # a resume keeps their .tmp / .partial too
    assert all((folder / name).exists() for name in theirs)
    _prepare_output(PreprocessConfig(input="in", output=str(folder), overwrite=True))
    left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert left == sorted(theirs + ["index/config.json"]), left   # the fingerprint is the new run's
    # A folder preprocessing never wrote: refused, one line naming it, nothing deleted.
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.tar").write_text("mine")
    with pytest.raises(ConfigError, match=f"--output {other}: not a shard folder"):
        _prepare_output(PreprocessConfig(input="in", output=str(other), overwrite=True))
    assert sorted(p.name for p in other.iterdir()) == ["holiday.tar"]


def test_long_inputs_become_pieces_and_piece_rows_merge_into_one_input_row():
    from types import SimpleNamespace

    from pipelines.preprocess.pieces import input_rows, piece_frames, plan_pieces, plan_tasks

    cfg = SimpleNamespace(segment_seconds=25.0, max_clip_seconds=10.0)
    assert piece_frames(cfg) == 750 and piece_frames(SimpleNamespace(segment_seconds=0)) == 0
    items = [{"input_id": "long"}, {"input_id": "short"}]
    pieces = plan_pieces(items, {"long": 1600, "short": 1000}, 750)
    assert [(p["input_id"], p["piece"], p["start_frame"], p["stop_frame"]) for p in pieces] == [
        ("long", 0, 0, 750), ("long", 1, 750, 1500), ("long", 2, 1500, None), ("short", 0, 0, None)]
    tasks = plan_tasks(pieces, 8, run=2)
    assert [t["task"] for t in tasks] == ["r2t00000", "r2t00001", "r2t00002", "r2t00003"]
    shorts = plan_pieces([{"input_id": f"s{i}"} for i in range(7)], {}, 750)
    tasks = plan_tasks(shorts[:3] + pieces + shorts[3:], 3, run=1)   # 11 pieces, 4 per task
    assert [[p["input_id"] for p in json.loads(t["pieces"])] for t in tasks] == [
        ["s0", "s1", "s2"], ["long"], ["long"], ["long"], ["short", "s3", "s4", "s5"], ["s6"]]
    base = {"source": "/x.mp4", "corpus": "c", "speaker": "s", "clip_id": "1", "split": "train",
            "source_duration": 64.0, "source_fps": 25.0, "width": 8, "height": 8, "rotation": 0,
            "detail": "", "n_pieces": 3, "input_id": "long"}
    ok = dict(base, status="ok", reason="", n_frames_source=750, n_clips=2, n_frames=500, shard="t-a.tar",
              sample_keys=["k1", "k2"], clips_rejected="", mean_face_size=100.0, detection_rate=1.0,
              box_jitter=0.1)
    rej = dict(base, status="rejected", reason="no_face", n_frames_source=1500, n_clips=0, n_frames=0,
               shard="", sample_keys=[], clips_rejected="no_face:3", mean_face_size=float("nan"),
               detection_rate=0.0, box_jitter=float("nan"))
    ok2 = dict(ok, n_frames_source=1600, n_frames=100, shard="t-b.tar", sample_keys=["k3"], n_clips=1,
               mean_face_size=200.0)
    rows, incomplete = input_rows([dict(ok, piece=0), dict(rej, piece=1)])
    assert rows == [] and incomplete == {"long"}          # piece 2 not recorded yet: not done
    rows, incomplete = input_rows([dict(ok2, piece=2), dict(ok, piece=0), dict(rej, piece=1)])
    (row,) = rows
    assert not incomplete and row["status"] == "ok" and row["n_clips"] == 3 and row["n_frames"] == 600
    assert row["sample_keys"] == ["k1", "k2", "k3"] and row["shard"] == "t-a.tar,t-b.tar"
    assert row["clips_rejected"] == "no_face:3" and row["n_frames_source"] == 1600
    assert row["mean_face_size"] == pytest.approx((100 * 500 + 200 * 100) / 600)
    (row,) = input_rows([dict(rej, piece=k) for k in range(3)])[0]
    assert (row["status"], row["reason"], row["n_clips"]) == ("rejected", "no_face", 0)


def test_frame_range_decode_equals_the_full_decode(tmp_path):
    from preprocess_inputs import mux

    from lipsync import video as lsv

    frames = np.zeros((100, 48, 64, 3), np.uint8)
    for i in range(100):
        frames[i] = (i * 7) % 256
        frames[i, :8, :8] = i
    path = mux(tmp_path / "gop.mp4", frames=frames, fps=30)
    full = list(lsv.iter_frames(path, fps=25))
    for start, stop in [(40, 60), (70, None), (1, 3)]:
        part = list(lsv.iter_frame_range(path, 25, start, stop))
        assert len(part) == len(full[start:stop])
        assert all(np.array_equal(a, b) for a, b in zip(part, full[start:stop]))


def test_frame_range_seeks_to_the_keyframe_at_its_start(tmp_path, monkeypatch):
    """A piece that starts on a keyframe decodes from that keyframe, not from the one before
    (pieces of long inputs start on a 10 s grid, where libx264 puts its keyframes)."""
    from preprocess_inputs import mux

    from lipsync import video as lsv
    from lipsync.video import decode

    frames = np.zeros((100, 48, 64, 3), np.uint8)
    for i in range(100):
        frames[i] = (i * 5) % 256
    path = mux(tmp_path / "gop25.mp4", frames=frames, fps=25,
               options={"g": "25", "keyint_min": "25", "sc_threshold": "0", "bf": "0"})
    full = list(lsv.iter_frames(path, fps=25))
    decoded = []
    timed = decode._timed_frames

    def counting(*args):
        for frame, t in timed(*args):
            decoded.append(t)
            yield frame, t

    monkeypatch.setattr(decode, "_timed_frames", counting)
    part = list(lsv.iter_frame_range(path, 25, 50, 75))
    assert all(np.array_equal(a, b) for a, b in zip(part, full[50:75])) and len(part) == 25
    after_seek = [t for t in decoded[1:]]  # decoded[0]: the first frame, read for t0
    assert after_seek and min(after_seek) == pytest.approx(2.0, abs=1e-3), after_seek[:3]  # the keyframe at 50
    assert len(after_seek) <= 28, len(after_seek)  # 25 + the next to place the last (a GOP early: 52)


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
    from pipelines.preprocess.driver import PreprocessConfig, input_blocks

    assert input_blocks(64, 2) == 8  # 8 inputs per task, 4 tasks per CPU
    assert input_blocks(16, 2) == 8  # fewer inputs: keep 4 tasks per CPU, 2 inputs each
    assert input_blocks(3, 2) == 3 and input_blocks(0, 2) == 1
    assert input_blocks(100_000, 64) == 12_500
    assert input_blocks(10**9, 64) == 20_000  # capped
    assert input_blocks(64, 2, inputs_per_task=1) == 64
    with pytest.raises(ConfigError, match="inputs-per-task"):
        PreprocessConfig(input="in", output="out", inputs_per_task=0).check()


def test_small_shards_are_merged_exactly_once_even_when_interrupted(tmp_path):
    from pipelines.dataset.compaction import merge_shards, merged_name, plan_merges

    out = sh.Output.of(str(tmp_path))
    for task, keys in enumerate([["a", "b"], ["c"], ["d"], ["e"]]):
        w = sh.TaskShardWriter(out, "train", sh.task_name(1, task), target_bytes=10**6)
        for key in keys:
            w.add_piece([_sample(key)], _row(key))
        if task == 3:
            w.add_piece([], _row("r", "rejected"))
        w.finish()
    state = sh.recover(out)
    sizes = {s["shard"]: s["bytes"] for s in state.shards}
    assert len(sizes) == 4
    groups = plan_merges(state.shards, target_bytes=3 * max(sizes.values()))
    assert [[s["shard"] for s in g] for g in groups] == [sorted(sizes)]   # one group, under 2x target
    assert plan_merges(state.shards, target_bytes=min(sizes.values())) == []  # none under half of it
    before = {}
    for sample in wds.WebDataset(sorted(str(p) for p in tmp_path.glob("*.tar")), shardshuffle=False):
        before[sample["__key__"]] = sample["frames.pack"]
    sources = [s["shard"] for s in groups[0]]
    name = merged_name("train", 2, 0)
    kept = {p: p.read_bytes() for s in sources
            for p in (tmp_path / s, tmp_path / "index" / (s[:-4] + ".json"))}
    merge_shards(out, sources, name)
    assert not any(p.exists() for p in kept)
    # Interrupted after the merged shard was committed, before the sources were deleted:
    for p, data in kept.items():
        p.write_bytes(data)
    state = sh.recover(out)
    assert [s["shard"] for s in state.shards] == [name]
    assert state.done == {(k, 0) for k in "abcder"}
    after = {s["__key__"]: s["frames.pack"] for s in wds.WebDataset(str(tmp_path / name), shardshuffle=False)}
    assert after == before
    rows = json.loads((tmp_path / "index" / (name[:-4] + ".json")).read_text())["rows"]
    assert {r.get("shard", "") for r in rows} == {name, ""}
    # A retried merge task finds its shard committed and only removes what is left of the sources.
    assert merge_shards(out, sources, name)["samples"] == 5
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [name]

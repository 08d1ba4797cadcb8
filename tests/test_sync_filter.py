"""Sync-filtered preprocessing (pipelines/preprocess/sync_filter.py) on the real Ray Data pipeline, judged by
the tiny expert trained in-process (conftest ``trained_expert``): a clip whose audio leads by 3
frames comes out realigned (its metadata and the manifest record the shift, and the expert then
finds offset 0 on the shard sample); a clip carrying another speaker's audio is rejected for low
sync confidence; an in-sync clip passes unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from lipsync.video import read_video, write_video
from test_sync_score import REPO, shifted_copy, train_clips

# The tiny expert's LSE-C on these clips when the filter was written: 0.34 in sync, 0.30 shifted
# by 3 frames, 0.12 with another speaker's audio (sync-score on other clips: 0.15-0.36 own audio,
# 0.04-0.11 another's). 0.2 is the expert judge's default threshold too.
MIN_CONFIDENCE = 0.2


def other_speakers_audio(face_clip: Path, voice_clip: Path, dst: Path) -> Path:
    """``face_clip``'s picture with ``voice_clip``'s audio (cut or padded to the picture)."""
    face, voice = read_video(face_clip, fps=25.0), read_video(voice_clip, fps=25.0, require_audio=True)
    n = len(face.frames) * 640
    audio = np.zeros(n, np.float32)
    audio[: min(n, len(voice.audio))] = voice.audio[:n]
    write_video(dst, face.frames, 25.0, audio=audio)
    return dst


def test_sync_filter_realigns_shifted_clips_and_rejects_other_speakers_audio(trained_expert, synth_corpus,
                                                                             ray_local, tmp_path):
    from lipsync.data.shard_stream import iter_clips, list_shards
    from lipsync.metrics.sync import ExpertJudge
    from pipelines.dataset.manifest import read_manifest
    from pipelines.preprocess.driver import PreprocessConfig, run_preprocess
    from pipelines.preprocess.sync_filter import make_sync_filter

    ckpt, model = trained_expert
    clips = train_clips(synth_corpus, 12)
    face = clips[0]
    voice = next(c for c in clips if c.parent.name != face.parent.name)  # another speaker
    corpus = tmp_path / "corpus"
    for name in ("insync", "shifted", "dubbed"):
        (corpus / name).mkdir(parents=True)
    shutil.copy(face, corpus / "insync" / "clip.mp4")
    shifted_copy(face, corpus / "shifted" / "clip.mp4", 3)
    other_speakers_audio(face, voice, corpus / "dubbed" / "clip.mp4")

    sync_filter = make_sync_filter(str(ckpt), min_confidence=MIN_CONFIDENCE, fix_offset=True)
    out = tmp_path / "shards"
    summary = run_preprocess(PreprocessConfig(input=str(corpus), output=str(out), layout="folder", num_cpus=2,
                                              split_fractions=(1.0, 0.0, 0.0), progress=False,
                                              max_clip_seconds=0, sync_filter=sync_filter))
    rows = {Path(r["source"]).parent.name: r for r in read_manifest(out / "manifest.parquet")}
    print({k: (r["status"], r["reason"], r["sync_confidence"], r["sync_offsets"], r["detail"]) for k, r in rows.items()})

    dubbed = rows["dubbed"]
    assert dubbed["status"] == "rejected" and dubbed["reason"] == "low_sync_confidence", dubbed
    assert "low sync confidence" in dubbed["detail"] and "dubbed/clip.mp4" in dubbed["detail"], dubbed["detail"]
    assert dubbed["sync_confidence"] < MIN_CONFIDENCE
    assert summary["rejected_by_reason"] == {"low_sync_confidence": 1}, summary
    assert summary["sync"]["realigned_clips"] == 1 and summary["sync"]["shifts"] == [0, 3], summary["sync"]

    assert rows["insync"]["status"] == "ok" and rows["insync"]["sync_offsets"] == [0]
    assert rows["insync"]["sync_shifts"] == [0]
    assert rows["shifted"]["status"] == "ok", rows["shifted"]
    assert rows["shifted"]["sync_offsets"] == [3] and rows["shifted"]["sync_shifts"] == [3], rows["shifted"]
    assert rows["shifted"]["sync_confidence"] >= MIN_CONFIDENCE

    samples = {Path(s.meta["source"]).parent.name: s for s in iter_clips(list_shards(out, "train"))}
    assert set(samples) == {"insync", "shifted"}
    original, fixed = samples["insync"], samples["shifted"]
    assert fixed.meta["sync_offset"] == 3 and fixed.meta["sync_shift"] == 3
    assert fixed.meta["start_frame"] == original.meta["start_frame"] + 3
    assert fixed.n_frames == original.n_frames - 3 and len(fixed.meta["boxes"]) == fixed.n_frames
    assert original.meta["sync_shift"] == 0 and original.meta["sync_offset"] == 0
    # The realigned clip's picture is the original's from frame 3 on (JPEG both times).
    diff = np.abs(fixed.frames.astype(int) - original.frames[3:].astype(int)).mean()
    assert diff < 2.0, diff
    judge = ExpertJudge(model)
    after = judge.score_clip(fixed.frames, fixed.mel, source="shifted")
    assert after.offset == 0, after


def test_sync_filter_flag_errors_are_one_line_before_any_work(tmp_path):
    missing = tmp_path / "nope.safetensors"
    for flags, needle in ((["--sync-filter", str(missing)], "nope.safetensors"),
                          (["--sync-filter", "syncnet-v2"], "--sync-weights")):
        run = subprocess.run([sys.executable, "workflows/preprocess.py", "--input", str(tmp_path),
                              "--output", str(tmp_path / "out"), *flags],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, (run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], run.stderr
        assert not (tmp_path / "out").exists()


def test_sync_filter_keeps_its_settings_in_the_fingerprint(trained_expert):
    from pipelines.preprocess.driver import PreprocessConfig
    from pipelines.preprocess.sync_filter import make_sync_filter

    ckpt, _ = trained_expert
    a = PreprocessConfig(input="x", output="y", sync_filter=make_sync_filter(str(ckpt), fix_offset=True))
    b = PreprocessConfig(input="x", output="y", sync_filter=make_sync_filter(str(ckpt), fix_offset=False))
    assert a.fingerprint()["sync_filter"] != b.fingerprint()["sync_filter"]
    assert json.dumps(a.fingerprint())  # stored in index/config.json
    assert a.fingerprint()["sync_filter"]["min_confidence"] == 0.2  # the expert judge's default


def test_a_lagging_clip_is_realigned_and_one_off_by_more_than_the_limit_is_rejected(trained_expert, shards):
    """The negative branch of realign (audio lagging) and the sync_offset_too_large verdict, on a
    shard sample of the session corpus made to lag by realign's positive branch."""
    from lipsync.data.shard_stream import iter_clips, list_shards
    from pipelines.preprocess.sync_filter import make_sync_filter, realign

    ckpt, _ = trained_expert
    keep = make_sync_filter(str(ckpt), min_confidence=0.0, max_offset=6, fix_offset=True)
    strict = make_sync_filter(str(ckpt), min_confidence=0.0, max_offset=2, fix_offset=True)
    for clip in iter_clips(list_shards(shards, "train")):
        start, n = int(clip.meta["start_frame"]), clip.n_frames
        audio = read_video(clip.meta["source"], fps=25.0, require_audio=True).audio[start * 640:(start + n) * 640]
        if keep(clip, audio)["offset"] == 0:          # the tiny judge finds this clip in sync
            break
    else:
        raise AssertionError("the tiny expert finds no train clip in sync")
    lagging = realign(clip, audio, 3)                 # picture from frame 3, audio 3 frames behind it
    lag_audio = audio[: (n - 3) * 640]
    verdict = keep(lagging, lag_audio)
    assert verdict["keep"] and verdict["offset"] == -3 and verdict["shift"] == -3, verdict
    fixed = realign(lagging, lag_audio, verdict["shift"])
    assert fixed.n_frames == n - 6 and fixed.meta["sync_shift"] == -3 and len(fixed.meta["boxes"]) == n - 6
    assert fixed.meta["start_frame"] == start + 3                # the lagging clip's start: picture cut at the end
    assert np.array_equal(fixed.frames, clip.frames[3:n - 3])
    assert keep(fixed, lag_audio[3 * 640:])["offset"] == 0
    rejected = strict(lagging, lag_audio)
    assert not rejected["keep"] and rejected["reason"] == "sync_offset_too_large", rejected
    assert rejected["detail"].startswith(f"{clip.meta['source']}: audio offset -3 frames beyond ±2"), rejected

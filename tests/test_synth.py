"""The synthetic corpus: real files in the right layouts, real speech, detectable faces,
mouths that follow the audio, and the same output for the same seed."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from lipsync.errors import ConfigError
from lipsync.faces import DlibHogDetector
from lipsync.synth import make_corpus
from lipsync.synth.corpus import parse_seconds, parse_size
from lipsync.synth.measure import lip_audio_correlation, mouth_opening
from lipsync.synth.speech import SpeechError, Voice, random_sentence, synthesize
from lipsync.video import probe, read_video

SEED = 11
SECONDS = (2.0, 2.6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_corpus(out, speakers=4, clips_per_speaker=2, seed=SEED, seconds=SECONDS, workers=1,
                       progress=False)


@pytest.fixture(scope="module")
def decoded(corpus):
    return {c.entry: read_video(corpus.root / c.path) for c in corpus.clips}


def _frame_rms(audio: np.ndarray, n_frames: int, fps: float, sr: int = 16000) -> np.ndarray:
    spf = sr / fps
    return np.array([np.sqrt(np.mean(audio[int(k * spf):int((k + 1) * spf)].astype(np.float64) ** 2) + 1e-12)
                     for k in range(n_frames)])


# ------------------------------------------------------------------------------ layouts


def test_lrs2_layout_and_speaker_disjoint_filelists(corpus):
    root = corpus.root
    mp4s = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp4"))
    assert mp4s == sorted(c.path for c in corpus.clips)
    assert len(mp4s) == 8
    for rel in mp4s:
        assert re.fullmatch(r"main/\d{19}/\d{5}\.mp4", rel), rel

    lists = {s: (root / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    entries = [e for s in lists.values() for e in s]
    assert sorted(entries) == sorted(p[len("main/"):-len(".mp4")] for p in mp4s)  # each clip exactly once
    speakers = {s: {e.split("/")[0] for e in lists[s]} for s in lists}
    assert all(speakers.values()), speakers  # 4 speakers: every split has one
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"]
                or speakers["val"] & speakers["test"])
    assert corpus.splits == lists
    assert set(corpus.speakers) == set().union(*speakers.values())

    description = json.loads((root / "synth.json").read_text())
    assert description["seed"] == SEED and len(description["clips"]) == 8


def test_voxceleb2_and_folder_layouts(tmp_path):
    vox = make_corpus(tmp_path / "vox", speakers=2, clips_per_speaker=4, seed=3, layout="voxceleb2",
                      seconds=(1.0, 1.0), workers=1, progress=False)
    rels = sorted(p.relative_to(vox.root).as_posix() for p in vox.root.rglob("*.mp4"))
    assert len(rels) == 8
    for rel in rels:
        assert re.fullmatch(r"dev/mp4/id\d{5}/[A-Za-z0-9_-]{11}/\d{5}\.mp4", rel), rel
    videos = {rel.rsplit("/", 1)[0] for rel in rels}
    assert len(videos) == 4  # 4 clips per speaker come from 2 source videos each
    assert not list(vox.root.glob("*.txt"))

    flat = make_corpus(tmp_path / "flat", speakers=2, clips_per_speaker=1, seed=3, layout="folder",
                       seconds=(1.0, 1.0), workers=1, progress=False)
    names = sorted(p.name for p in flat.root.glob("*.mp4"))
    assert names == ["spk000_00001.mp4", "spk001_00001.mp4"]
    assert not [p for p in flat.root.iterdir() if p.is_dir()]


# ------------------------------------------------------------------------------ the files


def test_clips_decode_with_expected_duration_fps_and_audio(corpus, decoded):
    for clip in corpus.clips:
        info = probe(corpus.root / clip.path)
        assert info.has_video and info.has_audio
        assert (info.width, info.height) == (160, 160)
        assert info.fps == pytest.approx(25.0)
        video = decoded[clip.entry]
        assert len(video.frames) == clip.n_frames
        assert SECONDS[0] - 0.04 <= len(video.frames) / 25.0 <= SECONDS[1] + 0.04
        assert video.audio is not None
        assert abs(len(video.audio) - clip.n_frames * 640) <= 640  # audio as long as the video, +- 1 frame
        assert np.abs(video.audio).max() > 0.2  # real speech, not silence


def test_30_fps_option(tmp_path):
    info = make_corpus(tmp_path, speakers=1, clips_per_speaker=1, seed=5, fps=30, seconds=(1.5, 1.5),
                       size=(192, 160), workers=1, progress=False)
    meta = probe(info.files[0])
    assert meta.fps == pytest.approx(30.0)
    assert (meta.width, meta.height) == (192, 160)
    assert len(read_video(info.files[0]).frames) == 45


def test_offline_detector_finds_the_face_in_99_percent_of_frames(corpus, decoded):
    detector = DlibHogDetector()
    frames = [f for video in decoded.values() for f in video.frames[::2]]
    found = sum(bool(d) for d in detector.detect(frames))
    assert found / len(frames) >= 0.99, f"{found}/{len(frames)}"


def test_mouth_opening_follows_the_audio_and_breaks_when_shifted(decoded):
    """Dark pixels of the open mouth, measured below the detected face centre, track loudness."""
    detector = DlibHogDetector(expand=(0.0, 0.0, 0.0, 0.0))
    r_same, r_shift = [], []
    for video in decoded.values():
        opening = mouth_opening(video.frames, detector)
        loud = np.log(_frame_rms(video.audio, len(video.frames), video.fps))
        r_same.append(lip_audio_correlation(opening, loud))
        r_shift.append(lip_audio_correlation(opening, loud, shift=5))
    r_same, r_shift = float(np.mean(r_same)), float(np.mean(r_shift))
    assert r_same >= 0.5, r_same
    assert r_shift < r_same - 0.3, (r_same, r_shift)


def test_visemes_close_the_lips_on_bilabials_and_narrow_rounded_vowels():
    from lipsync.synth.mouth import mouth_track

    fps, sr = 25.0, 16000
    t = np.arange(int(sr * 0.8)) / sr
    # loud all through (20 frames), bright enough to be drawn wide without visemes
    audio = (0.25 * np.sin(2 * np.pi * 220 * t) + 0.25 * np.sin(2 * np.pi * 2400 * t)).astype(np.float32)
    plain = mouth_track(audio, 20, fps, sr)
    assert (plain.opening > 0.8).all() and (plain.width > 0.85).all()
    phonemes = [(0.0, 0.2, "a"), (0.2, 0.28, "m"), (0.28, 0.5, "'u:"), (0.5, 0.8, "i")]
    track = mouth_track(audio, 20, fps, sr, phonemes)
    assert (track.opening[5:7] < 0.1).all()          # frames 5, 6 lie inside the "m"
    assert (track.opening[:5] > 0.8).all() and (track.opening[8:] > 0.8).all()
    assert (track.width[8:12] <= 0.78).all()          # rounded "u:" narrows the mouth
    assert track.width[15] > 0.78


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_files_other_seed_differs(corpus, tmp_path):
    again = make_corpus(tmp_path / "again", speakers=4, clips_per_speaker=2, seed=SEED, seconds=SECONDS,
                        workers=2, progress=False)
    assert [c.path for c in again.clips] == [c.path for c in corpus.clips]
    for a, b in zip(corpus.files, again.files):
        assert a.read_bytes() == b.read_bytes(), a.name  # mp4 bytes: audio and frames identical
    first, second = read_video(corpus.files[0]), read_video(again.files[0])
    assert np.array_equal(first.frames, second.frames)
    assert first.audio.tobytes() == second.audio.tobytes()

    other = make_corpus(tmp_path / "other", speakers=1, clips_per_speaker=1, seed=SEED + 1, seconds=SECONDS,
                        workers=1, progress=False)
    assert other.files[0].read_bytes() != corpus.files[0].read_bytes()


def test_speech_is_repeatable_in_any_order_and_varied():
    rng = np.random.default_rng(0)
    cases = [(random_sentence(rng), Voice.random(rng)) for _ in range(4)]

    def digest(i):
        return hashlib.sha256(synthesize(cases[i][0], cases[i][1], seed=i).audio.tobytes()).hexdigest()

    forward = [digest(i) for i in range(4)]
    backward = [digest(i) for i in reversed(range(4))][::-1]
    assert forward == backward  # espeak state does not leak from one utterance into the next
    assert len(set(forward)) == 4

    sentences = {random_sentence(np.random.default_rng(s)) for s in range(60)}
    assert len(sentences) >= 50

    utterance = synthesize("hello there my friend", Voice("en-us"))
    assert utterance.sample_rate == 16000 and utterance.audio.dtype == np.float32
    assert 0.8 < utterance.duration < 3.0
    assert [w for _, w in utterance.words] == ["hello", "there", "my", "friend"]
    starts = [t for t, _ in utterance.words]
    assert starts == sorted(starts)
    assert len(utterance.phonemes) > 8

    with pytest.raises(SpeechError, match="no voice"):
        synthesize("hello", Voice("xx-nonexistent"))


# ------------------------------------------------------------------------------ CLI and preview


def test_bad_flags_raise_config_errors(tmp_path):
    for text in ("160", "axb", "10x10"):
        with pytest.raises(ConfigError, match="--size"):
            parse_size(text)
    with pytest.raises(ConfigError, match="--seconds"):
        parse_seconds("4-2")
    assert parse_size("192x160") == (192, 160) and parse_seconds("2-4") == (2.0, 4.0)
    with pytest.raises(ConfigError, match="--layout"):
        make_corpus(tmp_path, speakers=1, clips_per_speaker=1, layout="lrs3", progress=False)


def test_rerun_replaces_the_previous_corpus_and_refuses_foreign_folders(tmp_path):
    root = tmp_path / "corpus"
    first = make_corpus(root, speakers=2, clips_per_speaker=2, seed=1, seconds=(1.0, 1.0), workers=1,
                        progress=False)
    second = make_corpus(root, speakers=1, clips_per_speaker=1, seed=2, seconds=(1.0, 1.0), workers=1,
                         progress=False)
    assert sorted(root.rglob("*.mp4")) == second.files  # nothing of the first corpus is left
    assert not set(first.speakers) & {p.name for p in (root / "main").iterdir()}
    lines = [line for s in ("train", "val", "test") for line in (root / f"{s}.txt").read_text().split()]
    assert lines == [second.clips[0].entry]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        make_corpus(foreign, speakers=1, clips_per_speaker=1, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli_synth_and_preview(tmp_path, capsys):
    from lipsync.cli import main

    out = tmp_path / "corpus"
    assert main(["synth", "--out", str(out), "--speakers", "1", "--clips-per-speaker", "1", "--seed", "2",
                 "--seconds", "1.2-1.2", "--workers", "1"]) == 0
    clip = next(out.rglob("*.mp4"))
    png = tmp_path / "strip.png"
    assert main(["synth-preview", str(clip), "--out", str(png), "--frames", "6"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import cv2

    image = cv2.imread(str(png))
    assert image.shape[1] >= 6 * 160 * 0.5 and image.shape[0] > 160

    assert main(["synth", "--out", str(out), "--size", "12x12"]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["synth-preview", str(tmp_path / "missing.mp4"), "--out", str(png)]) == 2


def test_synth_and_preview_in_an_empty_folder_write_only_what_they_were_asked_for(tmp_path):
    """The two synth commands, run as commands with relative paths in an empty folder, leave
    exactly their outputs there (the demo's test does the same for every other entry point)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(repo)

    def lipsync(*args):
        done = subprocess.run([sys.executable, "-m", "lipsync", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    lipsync("synth", "--out", "corpus", "--speakers", "1", "--clips-per-speaker", "1", "--seed", "3",
            "--seconds", "1.2-1.2", "--workers", "1")
    clip = next((tmp_path / "corpus").rglob("*.mp4")).relative_to(tmp_path)
    lipsync("synth-preview", str(clip), "--out", "strip.png", "--frames", "4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "strip.png"]

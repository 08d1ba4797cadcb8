"""What a new user hits first (issue 16), through the real command lines.

- relative paths: `workflows/train.py --shards <relative>` trains (Ray workers do not share
  the driver's working directory);
- up-front checks: missing shards, a missing split, a face size the shards do not hold,
  clips too short to train on -> one line, exit 2, before Ray starts, no MLflow run;
- a user error raised inside a Ray Train worker reaches the user as that one line;
- (output files get the umask's mode and SIGTERM leaves no hidden partial file: `lipsync infer`,
  in test_infer.py);
- inference muxes the user's own audio at its own rate and channels; the container follows
  the extension (an unsupported one is refused in one line); the speed line says what it counts;
- every flag of every command has a help text and shows its default;
- a folder of one speaker warns at preprocessing and training names that cause; the manifest
  names first causes (no face, not "too short"), lists audio-only files and counts the rest.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def load_workflow(name: str):
    """workflows/<name>.py as a module (the same file `python workflows/<name>.py` runs)."""
    spec = importlib.util.spec_from_file_location(f"workflow_{name}", REPO / "workflows" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RAY_FORWARDED = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")  # a worker's output that Ray forwards


def one_line_error(stderr: str) -> str:
    """The driver's own stderr (lines Ray forwards from workers set aside) is one error line."""
    lines = [line for line in stderr.strip().splitlines() if line.strip() and not RAY_FORWARDED.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


TINY_TRAIN = ["--width", "0.0625", "--batch-size", "8", "--max-steps", "2", "--log-every", "1",
              "--checkpoint-every", "2", "--num-workers", "1", "--windows-per-clip", "4", "--shuffle-buffer", "8",
              "--val-windows-per-clip", "2", "--val-max-clips", "2", "--no-register", "--no-system-metrics",
              "--max-failures", "0"]


# ------------------------------------------------------------------ 1 + 2. relative paths, worker errors


def test_relative_shards_reach_the_workers_and_a_worker_user_error_is_one_line(
        shards, ray_local, mlflow_server, tmp_path, monkeypatch, capsys):
    """One real training run from a relative --shards path: the workers read the shards (no
    FileNotFoundError), then find no clip with audibly different audio for a negative (a
    user error only a worker sees) - which reaches the user as its one line, exit 2."""
    from pipelines.train.worker_errors import ERROR_LOG

    work = tmp_path / "project"
    work.mkdir()
    (work / "data").symlink_to(shards, target_is_directory=True)
    monkeypatch.chdir(work)
    code = load_workflow("train").main(["--stage", "expert", "--shards", "data", "--storage-path", "runs",
                                        "--run-name", "rel", "--tracking-uri", mlflow_server.uri,
                                        "--experiment", "ux-relative", "--min-mel-distance", "1000", *TINY_TRAIN])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    line = one_line_error(err)
    assert "reader 0/1 got no usable clip" in line and "clips seen 0" not in line, line
    log = work / "runs" / "rel" / ERROR_LOG
    assert f"full trace: {log}" in line and "Traceback" in log.read_text()


# ------------------------------------------------------------------ 2. one-line errors up front


def partial_shards(shards: Path, dest: Path, splits: tuple[str, ...]) -> Path:
    dest.mkdir()
    for split in splits:
        for tar in shards.glob(f"{split}-*.tar"):
            (dest / tar.name).symlink_to(tar)
    shutil.copy(shards / "manifest.parquet", dest / "manifest.parquet")
    return dest


def test_missing_shards_fail_in_one_line_before_ray_and_mlflow(tmp_path, capsys):
    db = tmp_path / "mlruns.db"
    code = load_workflow("train").main(["--stage", "expert", "--shards", str(tmp_path / "nope"),
                                        "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "runs")])
    assert code == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(tmp_path / "nope") in line and "workflows/preprocess.py" in line
    assert not db.exists() and not (tmp_path / "runs").exists()  # no MLflow run, no Ray run


def test_shard_problems_are_named_up_front(shards, tmp_path, capsys):
    from pipelines.dataset.manifest import read_manifest

    train = load_workflow("train")
    db = tmp_path / "mlruns.db"
    common = ["--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "runs")]

    no_val = partial_shards(shards, tmp_path / "no_val", ("train",))
    assert train.main(["--stage", "expert", "--shards", str(no_val), *common]) == 2
    line = one_line_error(capsys.readouterr().err)
    listed = sum(1 for r in read_manifest(shards / "manifest.parquet") if r["split"] == "val" and r["status"] == "ok")
    assert "no 'val-*.tar' shards" in line and f"lists {listed} usable val inputs" in line and "--overwrite" in line

    assert train.main(["--stage", "expert", "--shards", str(shards), "--face-size", "192", *common]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--face-size 192" in line and "96 px" in line and "--crop-size 192" in line

    # Every clip is far shorter than a window with a negative 10 000 frames away.
    assert train.main(["--stage", "expert", "--shards", str(shards), "--min-offset", "10000", *common]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "none of the" in line and "long enough" in line and "--min-offset" in line
    assert not db.exists() and not (tmp_path / "runs").exists()


def test_a_flag_only_the_other_stage_reads_is_refused(tmp_path, capsys):
    # It used to be dropped silently: `--stage generator --lr-schedule cosine` trained at a constant rate.
    train = load_workflow("train")
    db = tmp_path / "mlruns.db"
    common = ["--shards", str(tmp_path / "shards"), "--tracking-uri", f"sqlite:///{db}"]
    assert train.main(["--stage", "generator", "--min-offset", "3", "--augment", *common]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--min-offset, --augment" in line and "--stage expert" in line and "--stage generator would ignore" in line
    assert train.main(["--stage", "expert", "--expert", "e.pth", *common]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("error: --expert:") and "only --stage generator reads this" in line
    assert not db.exists()


# ------------------------------------------------------------------ 6. help that explains


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from lipsync.cli import SUBCOMMANDS, build_parser

    parsers = {f"workflows/{name}.py": load_workflow(name).build_parser() for name in ("preprocess", "train")}
    for name in SUBCOMMANDS:
        top = build_parser(name)
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        parsers[f"lipsync {name}"] = sub.choices[name]
    return parsers


def test_every_flag_has_help_and_shows_its_default():
    for command, parser in _parsers().items():
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            flag = action.option_strings[-1] if action.option_strings[0] == "-h" else action.option_strings[0]
            assert action.help and len(action.help) > 8, f"{command} {flag}: no help text"
            entry = parser._get_formatter()._format_action(action)
            if action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
                assert "default" in entry.lower(), f"{command} {flag}: default not shown:\n{entry}"
        assert "(default: 0.0001)" in text or command != "workflows/train.py"


# ------------------------------------------------------------------ 7 + 8. folder layouts, manifest reasons


def no_face_with_scene_cuts(path: Path) -> Path:
    """4 s of two face-less pictures alternating every 10 frames (scene cuts), with a tone."""
    import numpy as np

    from preprocess_inputs import mux

    a = np.zeros((160, 160, 3), np.uint8)
    a[:, :80] = 230
    b = np.full((160, 160, 3), 20, np.uint8)
    b[40:120, 40:120] = (200, 60, 30)
    frames = np.stack([a if (i // 10) % 2 == 0 else b for i in range(100)])
    tone = (0.1 * np.sin(np.arange(100 * 640) / 16000 * 2 * np.pi * 220)).astype(np.float32)
    return mux(path, frames=frames, audio=tone)


def test_folder_of_one_speaker_warns_and_the_manifest_names_first_causes(
        synth_corpus, ray_local, tmp_path, monkeypatch, capsys):
    import numpy as np

    from pipelines.dataset.manifest import read_manifest
    from preprocess_inputs import mux

    videos = tmp_path / "my_videos"
    videos.mkdir()
    for clip in sorted((synth_corpus / "main").glob("*/*.mp4"))[:2]:
        shutil.copy(clip, videos / f"{clip.parent.name}_{clip.name}")
    mux(videos / "voice_memo.m4a", audio=np.zeros(16000, np.float32))
    no_face_with_scene_cuts(videos / "cat.mp4")
    (videos / "notes.txt").write_text("shot on my phone\n")
    (videos / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a photo")
    monkeypatch.chdir(tmp_path)

    code = load_workflow("preprocess").main(["--input", "my_videos", "--layout", "folder", "--output", "shards",
                                             "--num-cpus", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warnings and "one speaker" in warnings[0] and "--speaker-regex" in warnings[0], err[-3000:]

    rows = {r["input_id"]: r for r in read_manifest(tmp_path / "shards" / "manifest.parquet")}
    assert set(rows) == {"voice_memo", "cat", *(p.stem for p in videos.glob("*_*.mp4"))}
    assert (rows["voice_memo"]["status"], rows["voice_memo"]["reason"]) == ("rejected", "no_video_stream")
    assert "no video stream" in rows["voice_memo"]["detail"]
    assert (rows["cat"]["status"], rows["cat"]["reason"]) == ("rejected", "no_face"), rows["cat"]["detail"]
    summary = json.loads((tmp_path / "shards" / "summary.json").read_text())
    assert summary["skipped_files"] == 2 and summary["ok"] == 2

    # Training names the real cause, not "run workflows/preprocess.py first".
    code = load_workflow("train").main(["--stage", "expert", "--shards", "shards", "--storage-path", "runs",
                                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"])
    line = one_line_error(capsys.readouterr().err)
    assert code == 2 and "one speaker" in line and "--speaker-regex" in line, line


# ------------------------------------------------------------------ 5. the audio the user gave


def stereo_wav(path: Path, rate: int = 48000, seconds: float = 2.0) -> Path:
    """A 48 kHz stereo 16-bit WAV: a different tone in each ear."""
    import av
    import numpy as np

    n = int(rate * seconds)
    t = np.arange(n) / rate
    pcm = (np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]).T * 0.3 * 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "stereo"
        for start in range(0, n, 4096):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[start:start + 4096].reshape(1, -1)),
                                               format="s16", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_infer_keeps_the_users_audio_and_picks_the_container_from_the_extension(synth_corpus, tmp_path, capsys):
    import av
    import torch

    from lipsync.checkpoints import ModelConfig, save_checkpoint
    from lipsync.cli import main as lipsync_main
    from lipsync.models import Wav2Lip

    torch.manual_seed(0)
    model = save_checkpoint(tmp_path / "g.safetensors", Wav2Lip(width=0.0625),
                            ModelConfig(kind="wav2lip", width=0.0625))
    face = sorted((synth_corpus / "main").glob("*/*.mp4"))[0]
    speech = stereo_wav(tmp_path / "speech.wav")
    base = ["infer", "--face", str(face), "--audio", str(speech), "--model", str(model), "--no-progress"]

    assert lipsync_main([*base, "--out", str(tmp_path / "result.avi")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "result.avi" in line and ".mkv" in line and not list(tmp_path.glob("*result*"))

    # WAV is not an mp4 codec: re-encoded to AAC, at its own 48 kHz and two channels (was 16 kHz mono).
    assert lipsync_main([*base, "--out", str(tmp_path / "result.mp4")]) == 0
    err = capsys.readouterr().err
    assert "end to end" in err and "including start-up" in err, err[-2000:]
    with av.open(str(tmp_path / "result.mp4")) as container:
        audio = container.streams.audio[0]
        assert (audio.codec_context.name, audio.sample_rate, audio.codec_context.channels) == ("aac", 48000, 2)
        seconds = sum(frame.samples for frame in container.decode(audio)) / audio.sample_rate
    assert abs(seconds - 2.0) < 0.05, seconds


def test_writer_copies_audio_the_container_takes(tmp_path):
    import av
    import numpy as np

    from lipsync.video import VideoWriter

    speech = stereo_wav(tmp_path / "speech.wav", seconds=1.0)
    for name, codec in (("out.mkv", "pcm_s16le"), ("out.mov", "pcm_s16le"), ("out.mp4", "aac")):
        with VideoWriter(tmp_path / name, 25, 64, 48, audio_from=speech) as writer:
            for i in range(25):
                writer.write(np.full((48, 64, 3), 8 * i, np.uint8))
        with av.open(str(tmp_path / name)) as container:
            audio = container.streams.audio[0]
            assert (audio.codec_context.name, audio.sample_rate, audio.codec_context.channels) == (codec, 48000, 2)
            assert sum(f.samples for f in container.decode(audio)) == pytest.approx(48000, abs=2048)

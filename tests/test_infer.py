"""`lipsync infer` / LipSyncer: real videos (PyAV), a real face photo, real models and checkpoints.

Inputs are made here: skimage's astronaut photo (a real face dlib finds) as a short mp4,
optionally followed by frames without a face, and a synthetic voiced-like audio track.
The generator is a tiny-width Wav2Lip with random weights where the model is not the point;
its output is garbage, which is what lets the tests see exactly which pixels it touched.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from lipsync.audio import SAMPLE_RATE, load_audio
from lipsync.checkpoints import ModelConfig, save_checkpoint
from lipsync.errors import MediaError, NoFaceError
from lipsync.inference import InferenceOptions, LipSyncer
from lipsync.inference.blend import blend_face, feather_mask, paste_face
from lipsync.inference.source import pingpong_order
from lipsync.inference.tracking import SparseFaceTracker, smooth_stream
from lipsync.models import SyncNet, Wav2Lip
from lipsync.video import iter_frames, probe, write_video

from conftest import face_image, speech_like

REPO = Path(__file__).resolve().parent.parent
FPS = 25
FACE_FRAMES = 25  # frames 0..24 show the face
BLANK_FRAMES = 15  # frames 25..39 show no face
# Outputs are encoded losslessly (crf 0) in tests, so the only change to a frame that passes
# through is the BGR -> yuv420p -> BGR conversion, which a plain re-encode of the input with
# lipsync.video.write_video reproduces. "Unchanged" = equal to that re-encode, up to this.
CODEC_TOL = 1.0


def blank_image(i: int) -> np.ndarray:
    y, x = np.mgrid[0:256, 0:256]
    return np.dstack([(x + 3 * i) % 256, (y // 2) % 256, np.full_like(x, 90)]).astype(np.uint8)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_media")
    face = face_image()
    frames = [np.roll(face, i % 3, axis=1) for i in range(FACE_FRAMES)]
    frames += [blank_image(i) for i in range(BLANK_FRAMES)]
    write_video(root / "face_then_blank.mp4", np.stack(frames), FPS, crf=10)
    write_video(root / "face.mp4", np.stack(frames[:FACE_FRAMES]), FPS, crf=10)
    write_video(root / "noface.mp4", np.stack([blank_image(i) for i in range(20)]), FPS, crf=10)
    cv2.imwrite(str(root / "face.png"), face)
    sf.write(root / "speech_1_4s.wav", speech_like(1.4), SAMPLE_RATE)  # 35 frames: shorter than the video
    sf.write(root / "speech_2_3s.wav", speech_like(2.3, 1), SAMPLE_RATE)  # 58 frames: longer
    sf.write(root / "empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    (root / "not_a_video.mp4").write_text("this is not a video\n")

    torch.manual_seed(0)
    tiny = Wav2Lip(width=0.25).eval()
    save_checkpoint(root / "tiny.safetensors", tiny, ModelConfig(kind="wav2lip", width=0.25))
    save_checkpoint(root / "expert.safetensors", SyncNet(width=0.25).eval(), ModelConfig(kind="expert", width=0.25))
    return root


@pytest.fixture(scope="module")
def tiny_model(media):
    return str(media / "tiny.safetensors")


def decoded(path) -> np.ndarray:
    return np.stack(list(iter_frames(path)))


def reencoded(path, tmp_path) -> np.ndarray:
    """The input's frames after the same encode the pipeline does (crf 0), as float32."""
    again = tmp_path / f"reencoded_{Path(path).stem}.mp4"
    write_video(again, decoded(path), FPS, crf=0)
    frames = decoded(again).astype(np.float32)
    again.unlink()
    return frames


def opts(**kw) -> InferenceOptions:
    # PyTorch fp32 unless a test asks: the per-CPU backend choice (export, int8 calibration,
    # timed probe) has its own tests in test_infer_backends.py.
    kw.setdefault("precision", "fp32")
    return InferenceOptions(progress=False, crf=0, **kw)


# ------------------------------------------------------------------ end to end


def test_output_matches_audio_and_passes_faceless_frames_through(media, tiny_model, tmp_path):
    out = tmp_path / "out.mp4"
    wav = load_audio(media / "speech_1_4s.wav")
    result = LipSyncer(tiny_model, opts()).sync(media / "face_then_blank.mp4", media / "speech_1_4s.wav", out)

    n_expected = int(np.ceil(wav.size / SAMPLE_RATE * FPS - 1e-9))  # 35: the video (40) is cut
    info = probe(out)
    assert info.has_audio and info.audio_sample_rate == SAMPLE_RATE
    assert info.fps == pytest.approx(FPS)
    assert info.width == 256 and info.height == 256
    got = decoded(out).astype(np.float32)
    assert len(got) == n_expected == result.n_frames
    assert abs(len(got) / FPS - wav.size / SAMPLE_RATE) <= 1 / FPS
    muxed = load_audio(out)
    assert abs(muxed.size - wav.size) / SAMPLE_RATE < 0.05  # AAC framing only

    assert result.frames_with_face == FACE_FRAMES
    assert result.first_frame_without_face == FACE_FRAMES
    src = reencoded(media / "face_then_blank.mp4", tmp_path)[:n_expected]
    diff = np.abs(got - src).mean(axis=(1, 2, 3))
    # Faceless frames: the input, up to re-encoding. Face frames: the (random) generator drew on them.
    assert diff[FACE_FRAMES:].max() < CODEC_TOL, diff
    assert diff[:FACE_FRAMES].min() > CODEC_TOL, diff


def test_pixels_outside_the_face_box_unchanged(media, tiny_model, tmp_path):
    out = tmp_path / "boxed.mp4"
    top, bottom, left, right = 60, 180, 70, 170
    LipSyncer(tiny_model, opts(box=(top, bottom, left, right))).sync(
        media / "face.mp4", media / "speech_1_4s.wav", out)
    got = decoded(out).astype(np.float32)
    assert len(got) == 35  # 1.4 s of audio > 25 video frames: the video loops
    src = reencoded(media / "face.mp4", tmp_path)[[i % FACE_FRAMES for i in range(35)]]
    outside = np.ones(got.shape[1:3], bool)
    margin = 8  # x264 blocks around the box edge
    outside[top - margin:bottom + margin, left - margin:right + margin] = False
    delta = np.abs(got - src)
    assert delta[:, outside].max() <= CODEC_TOL
    mouth = delta[:, top + (bottom - top) * 2 // 3:bottom - 10, left + 30:right - 30]
    assert mouth.mean() > 10  # the generator's output really was composited there


def test_audio_longer_loops_and_pingpongs(media, tiny_model, tmp_path):
    n_expected = int(np.ceil(2.3 * FPS))
    src = reencoded(media / "face.mp4", tmp_path)
    for mode, order in (("loop", [i % FACE_FRAMES for i in range(n_expected)]),
                        ("pingpong", [pingpong_order(FACE_FRAMES)[i % 48] for i in range(n_expected)])):
        out = tmp_path / f"{mode}.mp4"
        result = LipSyncer(tiny_model, opts(audio_longer=mode, box=(0, 64, 0, 64))).sync(
            media / "face.mp4", media / "speech_2_3s.wav", out)
        got = decoded(out).astype(np.float32)
        assert len(got) == result.n_frames == n_expected
        # Outside the small fixed box every output frame is the scheduled source frame.
        for i in (0, 24, 25, 30, 47, 50, 57):
            assert np.abs(got[i, 100:, 100:] - src[order[i], 100:, 100:]).mean() < CODEC_TOL, (mode, i)


def test_pingpong_order():
    assert pingpong_order(4) == [0, 1, 2, 3, 2, 1]
    assert pingpong_order(2) == [0, 1]
    assert pingpong_order(1) == [0]


def test_image_input(media, tiny_model, tmp_path):
    out = tmp_path / "still.mp4"
    result = LipSyncer(tiny_model, opts(fps=20.0)).sync(media / "face.png", media / "speech_1_4s.wav", out)
    info = probe(out)
    assert info.fps == pytest.approx(20.0) and info.has_audio
    assert len(decoded(out)) == result.n_frames == 28  # 1.4 s at 20 fps
    assert result.frames_with_face == 28


def test_resize_rotate_crop_and_static_like_the_original(media, tiny_model, tmp_path):
    """resize_factor -> rotate 90 cw -> crop, in that order; the output has the cropped size.
    --static repeats the first frame (face boxes are fixed here: a rotated face is not detected)."""
    out = tmp_path / "transformed.mp4"
    o = opts(resize_factor=2, rotate=True, crop=(0, 100, 10, -1), box=(10, 90, 20, 100), static=True)
    result = LipSyncer(tiny_model, o).sync(media / "face.mp4", media / "speech_1_4s.wav", out)
    assert (result.width, result.height) == (118, 100)
    got = decoded(out).astype(np.float32)
    assert got.shape == (35, 100, 118, 3)
    first = cv2.rotate(cv2.resize(decoded(media / "face.mp4")[0], (128, 128)), cv2.ROTATE_90_CLOCKWISE)[0:100, 10:]
    assert np.abs(got[:, :8, :] - first[:8].astype(np.float32)).mean() < 4  # rows above the box: the input
    outside = np.ones((100, 118), bool)
    outside[10 - 8:90 + 8, 20 - 8:100 + 8] = False
    assert np.abs(got[1:] - got[:1])[:, outside].max() <= CODEC_TOL  # static: the same frame throughout


def test_official_format_checkpoint_end_to_end(media, tmp_path):
    """Random full-width weights under the official keys, saved as the original dict (with DataParallel prefixes)."""
    torch.manual_seed(1)
    model = Wav2Lip()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    ckpt = tmp_path / "wav2lip_gan.pth"
    torch.save({"state_dict": state, "optimizer": {}, "global_step": 258000, "global_epoch": 88}, ckpt)
    out = tmp_path / "official.mp4"
    result = LipSyncer(str(ckpt), opts()).sync(media / "face.mp4", media / "speech_1_4s.wav", out)
    assert result.n_frames == 35 and result.frames_with_face == 35
    assert probe(out).has_audio


def test_bf16_close_to_fp32(media, tmp_path):
    """The CPU speed path (bf16) must not change the picture much: mean |diff| of generated faces.

    Random full-width weights give a flat image unless activations are kept in range: the
    BatchNorm statistics are set from the test batch itself (one train-mode pass, cumulative
    average), and the last 1x1 conv is halved so the sigmoid is not saturated. The output's
    spread is checked first, so the comparisons below compare pictures, not two flat images.
    """
    from lipsync.inference.generator import FaceGenerator

    torch.manual_seed(2)
    model = Wav2Lip()
    crop = cv2.resize(face_image()[40:200, 60:200], (96, 96))
    faces = np.stack([np.roll(crop, 3 * i, axis=1) for i in range(4)])
    mels = np.random.default_rng(1).uniform(-4, 0, (4, 80, 16)).astype(np.float32)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running stats = this batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(mels)[:, None], _input(faces))
    model.eval()
    last_conv = model.output_block[1]
    last_conv.weight.data.mul_(0.5)
    last_conv.bias.data.mul_(0.5)

    ref = FaceGenerator(model, 96, "cpu", "fp32", channels_last=False)(faces, mels).astype(np.float32)
    assert ref.std() > 8, f"generated faces are nearly flat (std {ref.std():.2f}): the comparison would prove nothing"
    assert ref.max() - ref.min() > 100
    assert np.abs(ref[1:] - ref[:1]).mean() > 4, "every face in the batch came out the same"
    fast = FaceGenerator(model, 96, "cpu", "bf16", channels_last=True)(faces, mels).astype(np.float32)
    assert np.abs(ref - fast).mean() < 3.0
    # BN folding alone is exact up to float rounding.
    eager = model(torch.from_numpy(mels)[:, None], _input(faces)).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    eager = eager.permute(0, 2, 3, 1).numpy().astype(np.float32)
    assert np.abs(ref - eager).max() <= 1.0


def _input(faces):
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    masked = x.clone()
    masked[:, :, 48:] = 0
    return torch.cat([masked, x], 1)


def test_mlflow_model_uri(mlflow_server, media, tmp_path, monkeypatch):
    """models:/ and runs:/ URIs: the output is exactly what the registered weights give
    (same frames as the local file they were registered from, not those of another version)."""
    import mlflow

    from pipelines.tracking.registry import register_checkpoint

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_registry_uri(mlflow_server.uri)
    mlflow.set_experiment("infer-test")
    runs, versions = {}, {}
    for seed in (5, 0):  # first version: other weights; second (alias champion): the ones to use
        folder = tmp_path / f"checkpoint_{seed}"
        folder.mkdir()
        torch.manual_seed(seed)
        save_checkpoint(folder / "model.safetensors", Wav2Lip(width=0.25), ModelConfig(kind="wav2lip", width=0.25))
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(folder), artifact_path="checkpoint")
        runs[seed] = run.info.run_id
        versions[seed] = register_checkpoint(run.info.run_id, "checkpoint", "wav2lip-infer-test", alias="champion",
                                             tracking_uri=mlflow_server.uri)

    fixed = opts(box=(60, 180, 70, 170))  # no detection: the model is the only thing that varies

    def frames_from(model, name):
        out = tmp_path / f"{name}.mp4"
        result = LipSyncer(model, fixed, tracking_uri=mlflow_server.uri).sync(
            media / "face.mp4", media / "speech_1_4s.wav", out)
        assert result.n_frames == 35
        return decoded(out)

    local = frames_from(str(tmp_path / "checkpoint_0" / "model.safetensors"), "local")
    other = frames_from(str(tmp_path / "checkpoint_5" / "model.safetensors"), "other")
    mouth = (slice(None), slice(140, 175), slice(100, 140))
    gap = float(np.abs(local[mouth].astype(np.float32) - other[mouth]).mean())
    assert gap > 5, f"two different weight sets gave nearly the same mouths ({gap:.2f})"
    assert np.array_equal(frames_from("models:/wav2lip-infer-test@champion", "alias"), local)
    assert np.array_equal(frames_from(f"models:/wav2lip-infer-test/{versions[5]}", "version"), other)
    assert np.array_equal(frames_from(f"runs:/{runs[0]}/checkpoint", "run"), local)
    # The same through the command line, with the tracking server from the environment.
    out2 = tmp_path / "registry_cli.mp4"
    proc = _cli(["--face", media / "face.mp4", "--audio", media / "speech_1_4s.wav", "--out", out2, "--crf", "0",
                 "--box", "60", "180", "70", "170", "--precision", "fp32",  # the library run's precision
                 "--model", "models:/wav2lip-infer-test@champion"],
                env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert proc.returncode == 0, proc.stderr
    assert probe(out2).has_audio and np.array_equal(decoded(out2), local)


def test_registry_lookup_pins_aliases_and_never_creates_a_store(mlflow_server, media, tmp_path):
    """One rule for the embedded store (./mlruns.db unless told otherwise), read-only lookups,
    and aliases pinned to the version they point at (lipsync.model_ref)."""
    from lipsync import model_ref
    from lipsync.errors import ConfigError
    from pipelines.tracking.registry import register_checkpoint

    import mlflow

    folder = tmp_path / "checkpoint"
    folder.mkdir()
    save_checkpoint(folder / "model.safetensors", Wav2Lip(width=0.0625), ModelConfig(kind="wav2lip", width=0.0625))
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment("model-ref-test")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="checkpoint")
    v1 = register_checkpoint(run.info.run_id, "checkpoint", "model-ref-test", alias="candidate",
                             tracking_uri=mlflow_server.uri)
    v2 = register_checkpoint(run.info.run_id, "checkpoint", "model-ref-test", tracking_uri=mlflow_server.uri)
    assert model_ref.pin("models:/model-ref-test@candidate", mlflow_server.uri) == f"models:/model-ref-test/{v1}"
    assert v2 != v1 and model_ref.pin(f"models:/model-ref-test/{v2}", mlflow_server.uri) == f"models:/model-ref-test/{v2}"
    with pytest.raises(ConfigError, match="has no alias 'champion'.*@candidate"):
        model_ref.pin("models:/model-ref-test@champion", mlflow_server.uri)

    # A lookup in a folder with no store: one line naming ./mlruns.db, and no store created.
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "lipsync", "infer", "--no-progress", "--face", str(media / "face.mp4"),
           "--audio", str(media / "speech_1_4s.wav"), "--out", str(empty / "out.mp4"),
           "--model", "models:/wav2lip@champion"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=empty,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no MLflow store at" in lines[0] and "mlruns.db" in lines[0], proc.stderr
    assert sorted(p.name for p in empty.iterdir()) == [], "a lookup created files"

    # A lookup through a store it is told leaves MLflow's process-wide setup alone: nothing pinned
    # to MLflow's own default (./mlflow.db here) for later calls, nothing exported to children.
    script = ("import os, sys; from lipsync import model_ref; "
              "print(model_ref.fetch(sys.argv[1], sys.argv[2], sys.argv[3]).name); "
              "print(os.environ.get('MLFLOW_TRACKING_URI'))")
    proc = subprocess.run([sys.executable, "-c", script, "models:/model-ref-test@candidate", str(tmp_path / "got"),
                           mlflow_server.uri], capture_output=True, text=True, timeout=300, cwd=empty,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["model.safetensors", "None"], proc.stdout
    assert sorted(p.name for p in empty.iterdir()) == [], "a lookup created files"


# ------------------------------------------------------------------ output files users can open


def test_infer_output_gets_the_umask_mode_and_sigterm_leaves_no_partial_file(media, tiny_model, tmp_path):
    """`lipsync infer` under umask 027: a SIGTERM while the video is being written exits 143 and
    leaves neither the output nor its hidden partial file; a finished output is -rw-r----- (the
    umask's mode, not mkstemp's 0600)."""
    import signal
    import stat
    import time

    long_audio = tmp_path / "speech_20s.wav"
    sf.write(long_audio, speech_like(20.0, 2), SAMPLE_RATE)  # 500 frames: still writing when signalled
    interrupted, finished = tmp_path / "interrupted", tmp_path / "finished"
    interrupted.mkdir()
    finished.mkdir()

    def infer(audio, out):
        return [sys.executable, "-m", "lipsync", "infer", "--no-progress", "--precision", "fp32",
                "--audio-longer", "loop", "--face", str(media / "face.mp4"), "--audio", str(audio),
                "--out", str(out), "--model", tiny_model]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(infer(long_audio, interrupted / "out.mp4"), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(0o027))
    def encoding() -> bool:
        """Frames are reaching the hidden partial file (the writer is past its setup)."""
        try:
            return any(p.stat().st_size > 0 for p in interrupted.glob(".out.mp4.*.partial.mp4"))
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 240
    while not encoding():
        assert proc.poll() is None, f"infer ended before it could be interrupted:\n{proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "infer wrote no frames within 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert os.listdir(interrupted) == [], (os.listdir(interrupted), err[-2000:])

    done = subprocess.run(infer(media / "speech_1_4s.wav", finished / "out.mp4"), cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300, preexec_fn=lambda: os.umask(0o027))
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.listdir(finished) == ["out.mp4"], os.listdir(finished)
    mode = stat.S_IMODE((finished / "out.mp4").stat().st_mode)
    assert mode == 0o640, oct(mode)


# ------------------------------------------------------------------ bad input

def _cli(args, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lipsync", "infer", "--no-progress", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.parametrize("case,face,audio,model,needle", [
    ("no face anywhere", "noface.mp4", "speech_1_4s.wav", "tiny.safetensors", "no face found in any frame"),
    ("empty audio", "face.mp4", "empty.wav", "tiny.safetensors", "empty.wav"),
    ("unreadable video", "not_a_video.mp4", "speech_1_4s.wav", "tiny.safetensors", "not_a_video.mp4"),
    ("wrong model kind", "face.mp4", "speech_1_4s.wav", "expert.safetensors", "expert"),
])
def test_bad_input_one_line_error_no_output(media, tmp_path, case, face, audio, model, needle):
    out = tmp_path / "result.mp4"
    proc = _cli(["--face", media / face, "--audio", media / audio, "--out", out, "--model", media / model])
    assert proc.returncode != 0, case
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert not out.exists()
    assert glob.glob(str(tmp_path / "*")) == [], os.listdir(tmp_path)  # no partial/temp file either


def test_on_no_face_error_names_first_frame(media, tiny_model, tmp_path):
    out = tmp_path / "strict.mp4"
    with pytest.raises(NoFaceError, match=rf"frame {FACE_FRAMES}\b"):
        LipSyncer(tiny_model, opts(on_no_face="error")).sync(
            media / "face_then_blank.mp4", media / "speech_2_3s.wav", out)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_audio_shorter_than_one_window_is_a_media_error(media, tiny_model, tmp_path):
    with pytest.raises(MediaError, match="too short"):
        LipSyncer(tiny_model, opts()).sync(media / "face.mp4", np.zeros(800, np.float32), tmp_path / "x.mp4")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ units


def test_blend_touches_only_the_feathered_lower_face():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    orig = frame.copy()
    face = np.full((96, 96, 3), 255, np.uint8)
    box = (100, 40, 220, 180)
    blend_face(frame, face, box)
    changed = np.any(frame != orig, axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.min() >= 40 and ys.max() < 180 and xs.min() >= 100 and xs.max() < 220
    assert ys.min() > 40 + 0.3 * 140  # the upper face (eyes) is left alone
    mask = feather_mask(140, 120)[..., 0]
    assert mask.max() == 1.0 and mask[0].max() == 0 and mask[:, 0].max() == 0
    pasted = orig.copy()
    paste_face(pasted, face, box)
    assert np.all(pasted[40:180, 100:220] == 255) and np.all(pasted[:40] == orig[:40])


class _CountingDetector:
    """Stands in for a face detector with a known answer per frame (frames carry their index)."""

    def __init__(self, boxes):
        self.boxes = boxes
        self.calls = []

    def __call__(self, frames):
        idx = [int(f[0, 0, 0]) for f in frames]
        self.calls.extend(idx)
        return [None if self.boxes[i] is None else np.array(self.boxes[i], float) for i in idx]


def _frames(n):
    return [np.full((4, 4, 3), i, np.uint8) for i in range(n)]


def test_tracker_interpolates_between_keyframes_and_redetects_gaps():
    n = 23
    boxes = [(10 + i, 10, 50 + i, 50) for i in range(n)]
    for i in range(12, 17):
        boxes[i] = None  # face gone for 5 frames, keyframe 15 among them
    det = _CountingDetector(boxes)
    out = list(SparseFaceTracker(det, every=5, chunk=10).track(_frames(n)))
    assert len(out) == n
    assert [int(f[0, 0, 0]) for f, _ in out] == list(range(n))
    assert 0 in det.calls and 5 in det.calls and 22 in det.calls  # keyframes + the last frame
    assert 1 not in det.calls and 7 not in det.calls  # interpolated, not detected
    assert {11, 14, 16, 19} <= set(det.calls)  # gaps 10..15 and 15..20 change face/no-face: dense
    for i, (_, box) in enumerate(out):
        if boxes[i] is None:
            assert box is None, i
        else:
            assert np.allclose(box, boxes[i]), (i, box)


def test_smoothing_is_the_originals_forward_mean():
    boxes = [np.array([i, 0, i + 10, 10], float) for i in range(8)]
    out = [b for _, b in smooth_stream(((None, b) for b in boxes), window=5)]
    assert np.allclose(out[0][0], np.mean(range(0, 5)))
    assert np.allclose(out[3][0], np.mean(range(3, 8)))
    assert np.allclose(out[6][0], np.mean(range(3, 8)))  # end: the last 5


@pytest.mark.parametrize("field,value", [("precision", "int4"), ("device", "tpu"), ("face_select", "loudest")])
def test_bad_options_name_the_flag_and_the_choices(field, value):
    from lipsync.errors import ConfigError

    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')}: '{value}' is not one of"):
        InferenceOptions(**{field: value}).check()


# ------------------------------------------------------------------ untrusted checkpoints


class _RunsCodeWhenUnpickled:
    """Unpickling this calls exec(): it writes `marker` - what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran while unpickling')",)


def _code_running_checkpoint(tmp_path) -> tuple[Path, Path]:
    """A working generator checkpoint in the original's dict layout with a code-running extra entry."""
    marker = tmp_path / "marker_code_ran"
    torch.manual_seed(0)
    path = tmp_path / "wav2lip_gan.pth"
    torch.save({"state_dict": Wav2Lip(width=0.25).state_dict(), "global_step": 1,
                "extra": _RunsCodeWhenUnpickled(marker)}, path)
    return path, marker


def test_code_running_checkpoint_is_refused_and_never_runs(media, tmp_path):
    """Library and `lipsync infer`: refused with a message naming the file; the code never runs.
    With --trust-checkpoint the same file does run its code (so the refusal is what stopped it)."""
    from lipsync.checkpoints import load_model
    from lipsync.errors import CheckpointError

    path, marker = _code_running_checkpoint(tmp_path)
    refusal = None
    try:
        load_model(path)
    except CheckpointError as e:
        refusal = str(e)
    assert not marker.exists(), "loading the checkpoint ran the code pickled in it"
    assert refusal is not None and str(path) in refusal and "--trust-checkpoint" in refusal, refusal
    assert "pickled Python objects (exec)" in refusal
    with pytest.raises(CheckpointError):
        LipSyncer(str(path), opts()).sync(media / "face.mp4", media / "speech_1_4s.wav", tmp_path / "lib.mp4")
    assert not marker.exists() and not (tmp_path / "lib.mp4").exists()

    out = tmp_path / "cli.mp4"
    proc = _cli(["--face", media / "face.mp4", "--audio", media / "speech_1_4s.wav", "--out", out, "--model", path])
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and "trust" in lines[0], proc.stderr
    assert not marker.exists() and not out.exists()

    # The control: trusting the file runs its code, and the weights in it are used.
    proc = _cli(["--face", media / "face.mp4", "--audio", media / "speech_1_4s.wav", "--outfile", out,
                 "--checkpoint_path", path, "--trust-checkpoint", "--box", "60", "180", "70", "170"])
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "code ran while unpickling"
    assert len(decoded(out)) == 35


# ------------------------------------------------------------------ the original's command line


def _infer_options(argv):
    from lipsync.cli import build_parser
    from lipsync.inference.cli import options_from_args

    args = build_parser("infer").parse_args(["infer", *argv])
    return args, options_from_args(args)


def test_original_flags_and_spellings_parse_to_the_same_options():
    underscore = ["--face", "f.mp4", "--audio", "a.wav", "--outfile", "o.mp4", "--checkpoint_path", "m.pth",
                  "--pads", "1", "2", "3", "4", "--nosmooth", "--face_det_batch_size", "3",
                  "--wav2lip_batch_size", "5", "--resize_factor", "2"]
    dash = ["--face", "f.mp4", "--audio", "a.wav", "--out", "o.mp4", "--checkpoint-path", "m.pth",
            "--pads", "1", "2", "3", "4", "--nosmooth", "--face-det-batch-size", "3",
            "--wav2lip-batch-size", "5", "--resize-factor", "2"]
    args_u, opts_u = _infer_options(underscore)
    args_d, opts_d = _infer_options(dash)
    assert (args_u.out, args_u.model) == (args_d.out, args_d.model) == ("o.mp4", "m.pth")
    assert opts_u == opts_d
    assert opts_u.pads == (1, 2, 3, 4) and opts_u.nosmooth is True
    assert (opts_u.face_det_batch_size, opts_u.wav2lip_batch_size, opts_u.resize_factor) == (3, 5, 2)
    assert _infer_options(dash[:6] + ["--model", "m.pth", "--hard-paste"])[1].compositing == "paste"
    defaults = _infer_options(dash[:8])[1]
    assert defaults.compositing == "blend" and defaults.nosmooth is False and defaults.pads == (0, 10, 0, 0)


def _changed_box(frame: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Pixels the generator changed in one frame, and their bounding box (top, bottom, left, right)."""
    changed = np.abs(frame.astype(np.float32) - source).max(axis=2) > 8
    ys, xs = np.nonzero(changed)
    return changed, (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)


def test_original_spellings_and_hard_paste_end_to_end(media, tiny_model, tmp_path):
    """`lipsync infer` with the original's underscore flags: --pads grows the pasted box
    downwards by its pixels, and --hard-paste replaces the whole box, upper face included
    (the feathered blend leaves that alone: test_blend_touches_only_the_feathered_lower_face)."""
    src = reencoded(media / "face.mp4", tmp_path)[0]
    out = tmp_path / "padded.mp4"
    proc = _cli(["--face", media / "face.mp4", "--audio", media / "speech_1_4s.wav", "--outfile", out,
                 "--checkpoint_path", tiny_model, "--pads", "0", "20", "0", "0", "--nosmooth",
                 "--face_det_batch_size", "4", "--wav2lip_batch_size", "8", "--hard-paste", "--crf", "0"])
    assert proc.returncode == 0, proc.stderr
    padded = decoded(out)
    assert len(padded) == 35
    unpadded = tmp_path / "unpadded.mp4"
    LipSyncer(tiny_model, opts(pads=(0, 0, 0, 0), nosmooth=True, compositing="paste")).sync(
        media / "face.mp4", media / "speech_1_4s.wav", unpadded)

    changed, (top, bottom, left, right) = _changed_box(padded[0], src)
    _, (top0, bottom0, left0, right0) = _changed_box(decoded(unpadded)[0], src)
    assert abs(top - top0) <= 2 and abs(left - left0) <= 2 and abs(right - right0) <= 2
    assert abs((bottom - bottom0) - 20) <= 3, (bottom, bottom0)
    box_rows = changed[top:bottom, left:right]
    assert box_rows.mean() > 0.9  # hard paste: the whole box is the generator's output ...
    assert box_rows[: (bottom - top) // 4].mean() > 0.9  # ... its upper face included (a blend leaves it)


def test_memory_does_not_follow_the_audios_length(media, tiny_model, length_clips, tmp_path):
    """4x the audio costs the same memory but its mel (25.6 KB a second): the audio is decoded
    in chunks into the mel and each batch gathers its windows; loading it whole (with its STFT
    and one window per frame) costs ~0.7 MB more per second."""
    from conftest import peak_growth_per_second

    face = tmp_path / "face64.png"
    cv2.imwrite(str(face), cv2.resize(face_image(), (64, 64), interpolation=cv2.INTER_AREA))
    syncer = LipSyncer(tiny_model, InferenceOptions(progress=False, precision="fp32", box=(0, 64, 0, 64),
                                                    preset="ultrafast", crf=35))
    results = {}  # the clips' audio tracks drive a still face
    growth, peaks = peak_growth_per_second(
        lambda seconds, clip: results.__setitem__(seconds, syncer.sync(face, clip, tmp_path / f"out_{seconds:g}.mp4")),
        length_clips)
    assert [results[s].n_frames for s in sorted(length_clips)] == [int(s * 25) for s in sorted(length_clips)]
    assert growth < 150_000, peaks


def test_full_disk_while_spilling_pingpong_frames_is_one_line_naming_the_folder(media, tiny_model, tmp_path):
    """--audio-longer pingpong keeps the video's frames on disk; a full folder ($TMPDIR here: a
    64 KB tmpfs mounted in a private mount namespace, one 256x256 frame is 196 KB) is one line
    naming it, with no output left, instead of an OSError traceback."""
    full = tmp_path / "full"
    full.mkdir()
    out = tmp_path / "result.mp4"
    cmd = ["unshare", "--mount", "--map-root-user", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"',
           str(full), sys.executable, "-m", "lipsync", "infer", "--no-progress", "--face", str(media / "face.mp4"),
           "--audio", str(media / "speech_2_3s.wav"), "--out", str(out), "--model", tiny_model,
           "--audio-longer", "pingpong", "--box", "0", "64", "0", "64", "--precision", "fp32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(full)})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {full}: ") and "No space left on device" in lines[0], lines[0]
    assert not out.exists()

"""Generator backends: ONNX Runtime fp32 = PyTorch, the int8 quality gate, --precision, still faces.

Real exports and real ONNX Runtime sessions of tiny (width 0.25) models; the ONNX cache is a
temporary folder per module ($LIPSYNC_CACHE_DIR), so every run exports and calibrates afresh.
Faces are crops of skimage's astronaut photo (a real face); mels are in the spectrogram's range.
Models whose int8 result must pass or fail the 30 dB gate are made so for real, both with
BatchNorm statistics from real faces (an untrained model at its init statistics has a nearly
flat output, std ~3 levels of 255, that any int8 keeps within 30 dB - it would prove nothing):
with the output layer at 0.35x the faces still spread ~13 levels and int8 keeps them at ~38 dB;
8x sharper, int8 cannot follow within 30 dB (measured: ~19 dB).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from lipsync.audio import SAMPLE_RATE
from lipsync.checkpoints import ModelConfig, save_checkpoint
from lipsync.inference import InferenceOptions, LipSyncer
from lipsync.inference.generator import FaceGenerator, TorchRunner, fuse_batchnorm, network_inputs
from lipsync.inference.onnx_backend import GeneratorCache, OrtExpert, OrtGenerator, psnr
from lipsync.inference.precision import INT8_MIN_PSNR_DB
from lipsync.models import SyncNet, Wav2Lip

REPO = Path(__file__).resolve().parent.parent
B = 8


def astronaut_face() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[20:276, 110:366]


@pytest.fixture(scope="module", autouse=True)
def onnx_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("lipsync_cache")
        mp.setenv("LIPSYNC_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def pairs():
    face = astronaut_face()[40:200, 60:200]
    faces = np.stack([cv2.resize(np.roll(face, 3 * i, axis=1), (96, 96)) for i in range(B)])
    mels = np.random.default_rng(0).uniform(-4, 0, (B, 80, 16)).astype(np.float32)
    return faces, mels


def untrained_model(seed: int = 0) -> Wav2Lip:
    torch.manual_seed(seed)
    return Wav2Lip(width=0.25).eval()


def sharp_model(faces, mels, output_gain: float = 8.0) -> Wav2Lip:
    """BatchNorm statistics from real faces, the output layer scaled by ``output_gain``: at 8x
    int8 falls well below 30 dB, at 0.35x it stays above with a real spread (module docstring)."""
    model = untrained_model(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the passes below
    face_in, audio = network_inputs(faces, mels, 96)
    model.train()
    with torch.no_grad():
        model(audio, face_in)
        model.eval()
        model.output_block[1].weight.mul_(output_gain)
    return model


def test_onnx_generator_matches_torch_and_export_is_cached(pairs):
    faces, mels = pairs
    model = sharp_model(faces, mels)  # an output with real spread, so a wrong graph would show
    fused = fuse_batchnorm(model)
    face_in, audio = network_inputs(faces, mels, 96)
    with torch.inference_mode():
        ref = fused(audio, face_in).numpy()
    cache = GeneratorCache(fused, 96)
    enc, dec = cache.fp32()
    ort = OrtGenerator(enc, dec)
    got = ort.decode(audio.numpy(), ort.encode_face(face_in.numpy()))
    assert ref.std() > 0.05
    # Float rounding only (ORT orders the sums differently; the 8x output layer magnifies it):
    # a tenth of one 8-bit level at most.
    assert np.abs(got - ref).max() < 4e-4, np.abs(got - ref).max()

    stamps = (enc.stat().st_mtime_ns, dec.stat().st_mtime_ns)
    again = GeneratorCache(fuse_batchnorm(sharp_model(faces, mels)), 96)
    assert again.fp32() == (enc, dec)  # same weights, same files: not exported again
    assert (enc.stat().st_mtime_ns, dec.stat().st_mtime_ns) == stamps
    with torch.no_grad():
        model.output_block[1].bias.add_(1e-3)
    assert GeneratorCache(fuse_batchnorm(model), 96).folder != cache.folder  # any weight change: new export


def test_int8_psnr_is_measured_again_on_every_input_not_taken_from_the_cache(pairs):
    from lipsync.inference.onnx_backend import CalibrationSet, run_generator

    faces, mels = pairs
    cache = GeneratorCache(fuse_batchnorm(sharp_model(faces, mels)), 96)

    def calib(f, m):
        face_in, audio = network_inputs(f, m, 96)
        return CalibrationSet(face=face_in.numpy(), audio=audio.numpy())

    first = calib(faces, mels)
    _, db_first = cache.int8(first, reduce_range=True)           # built and calibrated on this input
    flat = np.full_like(faces, 128)                               # another video: a flat grey face, silence
    other = calib(flat, np.full_like(mels, -4.0))
    paths, db_other = cache.int8(other, reduce_range=True)        # the cached model, checked on this input
    measured = psnr(run_generator(OrtGenerator(*cache.fp32()), other), run_generator(OrtGenerator(*paths), other))
    assert db_other == pytest.approx(measured) and abs(db_other - db_first) > 1.0, (db_first, db_other)
    assert cache.int8(None, reduce_range=True)[1] == pytest.approx(db_first)   # no input: the calibration's


def test_onnx_expert_matches_torch():
    torch.manual_seed(0)
    expert = SyncNet(width=0.25).eval()
    gen = torch.Generator().manual_seed(0)
    audio = torch.rand(4, 1, 80, 16, generator=gen) * 4 - 4
    faces = torch.rand(4, 15, 48, 96, generator=gen)
    with torch.inference_mode():
        ref_a, ref_f = expert(audio, faces)
    got_a, got_f = OrtExpert(expert)(audio.numpy(), faces.numpy())
    np.testing.assert_allclose(got_a, ref_a.numpy(), atol=1e-5)
    np.testing.assert_allclose(got_f, ref_f.numpy(), atol=1e-5)


def test_int8_gate_auto_uses_it_only_above_30db_forced_always(pairs):
    faces, mels = pairs
    lines = []

    # Passes: auto keeps int8 among the candidates it times; the PSNR is real (checked here too),
    # measured on faces with a real spread (a flat output passes any int8).
    good = sharp_model(faces, mels, output_gain=0.35)
    fp32 = FaceGenerator(good, 96, "cpu", "fp32", channels_last=False)
    spread = float(np.asarray(fp32(faces, mels), np.float32).std())
    assert spread > 8, f"generated faces nearly flat (std {spread:.1f} of 255): the gate would be untested"
    auto = FaceGenerator(good, 96, "cpu", "auto")
    auto.prepare(faces, mels, log=lines.append)
    assert auto.choice.int8_psnr_db >= INT8_MIN_PSNR_DB
    assert set(auto.choice.probe_fps) >= {"fp32", "ort-fp32", "int8"}
    assert "passes its check" in lines[-1] and "timed probe" in lines[-1]
    assert lines[-1].startswith(f"generator: {auto.precision} (auto;")
    forced = FaceGenerator(good, 96, "cpu", "int8")
    forced.prepare(faces, mels)
    assert psnr(fp32(faces, mels), forced(faces, mels), peak=255.0) >= INT8_MIN_PSNR_DB
    again = FaceGenerator(good, 96, "cpu", "auto")
    again.prepare(faces, mels, log=lines.append)
    assert "cached probe" in lines[-1]  # the probe ran once per machine and model

    # Fails: auto leaves int8 out (and says why); forced int8 is used anyway with its PSNR shown.
    bad = sharp_model(faces, mels)
    auto = FaceGenerator(bad, 96, "cpu", "auto")
    auto.prepare(faces, mels, log=lines.append)
    assert auto.choice.int8_psnr_db < INT8_MIN_PSNR_DB
    assert auto.precision != "int8" and "int8" not in auto.choice.probe_fps
    assert f"int8 rejected: {auto.choice.int8_psnr_db:.1f} dB" in lines[-1]
    forced = FaceGenerator(bad, 96, "cpu", "int8")
    forced.prepare(faces, mels, log=lines.append)
    assert forced.precision == "int8" and "BELOW the 30 dB bar" in lines[-1]
    ref = FaceGenerator(bad, 96, "cpu", "fp32", channels_last=False)(faces, mels)
    assert psnr(ref, forced(faces, mels), peak=255.0) < INT8_MIN_PSNR_DB


@pytest.mark.parametrize("precision", ["fp32", "ort-fp32", "int8"])
def test_still_face_reuses_the_encoder_with_identical_output(pairs, precision):
    faces, mels = pairs
    gen = FaceGenerator(untrained_model(), 96, "cpu", precision)
    gen.prepare(faces, mels)
    one = faces[:1]
    per_frame = gen(np.repeat(one, B, axis=0), mels)  # the face encoder runs on every copy
    passes = gen.encoder_passes
    still = np.concatenate([gen(one, mels[:5]), gen(one, mels[5:])])  # two batches, one encoder pass
    assert gen.encoder_passes == passes + 1
    assert same_up_to_rounding(still, per_frame)
    other = faces[1:2]  # a different face is never served the cached encoder output
    assert same_up_to_rounding(gen(other, mels), gen(np.repeat(other, B, axis=0), mels))
    assert not same_up_to_rounding(gen(other, mels), per_frame)


def same_up_to_rounding(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal but for float rounding: oneDNN's channels-last convolutions are not batch-size
    invariant on every CPU (one face encoded alone vs in a batch of 8 differ by ~1e-7 on a
    2-core EPYC), so a pixel sitting on a .5 boundary may round to the next level. A wrong
    or stale encoder output changes thousands of pixels by far more."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return a.shape == b.shape and int(diff.max()) <= 1 and int((diff > 0).sum()) <= diff.size // 10_000


def test_torch_runner_split_equals_forward(pairs):
    faces, mels = pairs
    model = sharp_model(faces, mels)
    face_in, audio = network_inputs(faces, mels, 96)
    runner = TorchRunner(fuse_batchnorm(model), torch.device("cpu"), torch.float32, channels_last=False)
    with torch.inference_mode():
        ref = model(audio, face_in)
        split = runner.decode(audio, runner.encode_face(face_in))
        skips = runner.encode_face(face_in[:1])
        broadcast = runner.decode(audio[:3], skips)  # batch-1 skips, broadcast inside decode
        copied = runner.decode(audio[:3], [s.expand(3, *s.shape[1:]).contiguous() for s in skips])
        per_frame = runner.decode(audio[:3], runner.encode_face(face_in[:1].expand(3, -1, -1, -1)))
    torch.testing.assert_close(split, ref, atol=2e-5, rtol=0)
    assert torch.equal(broadcast, copied)  # the decoder sees exactly the same numbers
    # The encoder at batch 1 vs 3 may round differently in the last bits (oneDNN picks kernels
    # per shape); the 8-bit output is what must not change (test_still_face_... above).
    torch.testing.assert_close(broadcast, per_frame, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("backend_media")
    cv2.imwrite(str(root / "face.png"), astronaut_face())
    t = np.arange(int(0.8 * SAMPLE_RATE)) / SAMPLE_RATE
    wav = 0.25 * np.sin(2 * np.pi * 140 * t) * (np.sin(2 * np.pi * 3 * t) > -0.2)
    sf.write(root / "speech.wav", wav.astype(np.float32), SAMPLE_RATE)
    save_checkpoint(root / "tiny.safetensors", untrained_model(), ModelConfig(kind="wav2lip", width=0.25))
    return root


def test_image_input_runs_the_face_encoder_once(media, tmp_path):
    o = InferenceOptions(progress=False, crf=0, precision="fp32", wav2lip_batch_size=8)
    result = LipSyncer(str(media / "tiny.safetensors"), o).sync(media / "face.png", media / "speech.wav",
                                                                tmp_path / "still.mp4")
    assert result.n_frames == 20 and result.frames_with_face == 20  # 3 generator batches
    assert result.generator["face_encoder_passes"] == 1


def _cli(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lipsync", "infer", "--no-progress", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_precision_choice_printed_once_and_bad_choice_refused(media, tmp_path):
    out = tmp_path / "int8.mp4"
    common = ["--face", media / "face.png", "--audio", media / "speech.wav", "--model", media / "tiny.safetensors"]
    proc = _cli(*common, "--out", out, "--precision", "int8")
    assert proc.returncode == 0, proc.stderr
    chosen = [line for line in proc.stderr.splitlines() if line.startswith("generator: ")]
    assert len(chosen) == 1 and chosen[0].startswith("generator: int8 (forced;"), proc.stderr
    assert "dB PSNR vs fp32" in chosen[0] and out.exists()

    proc = _cli(*common, "--out", tmp_path / "x.mp4", "--precision", "int4")
    assert proc.returncode != 0 and not (tmp_path / "x.mp4").exists()
    assert "--precision" in proc.stderr and "ort-fp32" in proc.stderr  # names the flag and the choices


def test_cpu_features_follow_the_onednn_isa_cap(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes the choice an AVX2-only CPU's: no native bf16, no VNNI (reduced-range int8)."""
    from lipsync.inference.cpu_features import cpu_features

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = cpu_features()
    assert not capped.native_bf16 and not capped.vnni
    assert not any(f.startswith(("avx512", "amx")) or "vnni" in f for f in capped.flags)
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in capped.summary()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    full = cpu_features()
    assert capped.flags <= full.flags and full.isa_cap is None
    assert ("avx2" in full.flags) == ("avx2" in capped.flags)

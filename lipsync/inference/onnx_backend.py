"""ONNX Runtime backend for the generator (and the expert): export once, cache, run; static int8.

Export. The generator goes out as two graphs, split where ``Wav2Lip.encode_face`` /
``Wav2Lip.decode`` split it: ``encoder`` (face (B,6,S,S) → every encoder level's skip) and
``decoder`` (mel (B,1,80,16) + skips → face (B,3,S,S)), so a still face runs the encoder
once (``FaceGenerator``). BatchNorm is folded first (as for PyTorch). The batch axis is
dynamic. Files are cached under ``$LIPSYNC_CACHE_DIR`` (default ``~/.cache/lipsync``)
in ``onnx/<model digest>-<shapes>/``: the digest covers every tensor of the model, so a
retrained checkpoint never reuses a stale export, and the shapes (face size) are in the name.

Static int8 (``quantize_int8``). ONNX Runtime's static quantisation in QDQ format: u8
activations, s8 weights per output channel, MinMax ranges calibrated on real face/mel pairs
(the first batch of faces of the video at hand, with their mel windows). The int8 files are
cached per model like the fp32 export: the first calibration is kept, and later videos reuse
it together with the PSNR measured then.
Why ONNX Runtime and not PyTorch's PT2E (torchao): the same speed-up on the machine the
issue measured (1.6-1.7x vs 1.5-1.7x at >= 30 dB), but PT2E recompiles (~1 min per batch
size with torch.compile) in every process, while the QDQ model is a file built once and
cached like the fp32 export. ``reduce_range`` (7-bit weights) is used where the CPU lacks
VNNI: without VNNI, u8 x s8 products go through 16-bit saturating adds (vpmaddubsw) and
full-range weights lose ~8 dB of PSNR (issue 17). The quality gate compares the int8
output with fp32 on the calibration pairs (``psnr``); the caller decides what to do with it.

Sessions use as many intra-op threads as PyTorch (the cores the pipeline may use) and no
spin-waiting: a spinning pool would burn the cores that decode, detection and encoding share.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

OPSET = 17
INT8_FORMAT_VERSION = 1  # bump when the quantisation recipe changes (invalidates cached int8 files)


def cache_root() -> Path:
    return Path(os.environ.get("LIPSYNC_CACHE_DIR") or Path.home() / ".cache" / "lipsync")


def model_digest(model: nn.Module) -> str:
    """sha256 over the class and every parameter/buffer (name, dtype, shape, bytes): 16 hex digits."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ export


class _Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, face):
        return tuple(self.model.encode_face(face))


class _Decoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, audio, *skips):
        return self.model.decode(audio, list(skips))


def skip_names(n: int) -> list[str]:
    return [f"skip{i}" for i in range(n)]


def export_generator(model: nn.Module, face_size: int, folder: Path) -> tuple[Path, Path]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` (fp32, dynamic batch) into ``folder``; returns their paths.
    ``model`` must already be in eval mode with BatchNorm folded (what FaceGenerator holds)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model.float().to("cpu", memory_format=torch.contiguous_format).eval()
    face = torch.rand(2, 6, face_size, face_size)
    audio = torch.rand(2, 1, 80, 16) * 8 - 4
    with torch.inference_mode():
        skips = model.encode_face(face)
    names = skip_names(len(skips))
    batch = {0: "batch"}
    encoder, decoder = folder / "encoder.onnx", folder / "decoder.onnx"
    with torch.no_grad():
        _export(_Encoder(model), (face,), encoder, ["face"], names, {n: batch for n in ["face", *names]})
        _export(_Decoder(model), (audio, *skips), decoder, ["audio", *names], ["out"],
                {n: batch for n in ["audio", *names, "out"]})
    return encoder, decoder


def _export(module, args, path: Path, inputs, outputs, dynamic_axes) -> None:
    tmp = path.with_suffix(".tmp")
    # The TorchScript exporter: no onnxscript dependency, and these plain conv nets export exactly.
    torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs, dynamic_axes=dynamic_axes,
                      opset_version=OPSET, dynamo=False, do_constant_folding=True)
    os.replace(tmp, path)


def export_expert(model: nn.Module, folder: Path) -> Path:
    """The SyncNet expert as ``expert.onnx``: (mel (B,1,80,16), faces (B,15,S/2,S)) → (audio, video) embeddings."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    face_size = int(getattr(model, "face_size", 96))
    audio = torch.rand(2, 1, 80, 16)
    faces = torch.rand(2, 15, face_size // 2, face_size)
    path = folder / "expert.onnx"
    with torch.no_grad():
        _export(model, (audio, faces), path, ["audio", "faces"], ["audio_embedding", "face_embedding"],
                {n: {0: "batch"} for n in ("audio", "faces", "audio_embedding", "face_embedding")})
    return path


# ------------------------------------------------------------------ sessions


def session_options(threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def open_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


class OrtGenerator:
    """The two generator graphs in ONNX Runtime sessions, with the same encode/decode split as Wav2Lip."""

    def __init__(self, encoder: Path, decoder: Path, threads: int | None = None):
        self.encoder = open_session(encoder, threads)
        self.decoder = open_session(decoder, threads)
        self.skip_names = [o.name for o in self.encoder.get_outputs()]

    def encode_face(self, face: np.ndarray) -> list[np.ndarray]:
        return self.encoder.run(None, {"face": np.ascontiguousarray(face, np.float32)})

    def decode(self, audio: np.ndarray, skips: list[np.ndarray]) -> np.ndarray:
        b = audio.shape[0]
        feed = {"audio": np.ascontiguousarray(audio, np.float32)}
        for name, s in zip(self.skip_names, skips):
            feed[name] = s if s.shape[0] == b else np.ascontiguousarray(np.broadcast_to(s, (b, *s.shape[1:])))
        return self.decoder.run(None, feed)[0]


class OrtExpert:
    """The SyncNet expert (the sync judge) in ONNX Runtime, exported once into the cache by model digest.
    Call: (mel (B,1,80,16), faces (B,15,S/2,S)) float32 → (audio, face) unit embeddings, as SyncNet.forward."""

    def __init__(self, model: nn.Module, threads: int | None = None):
        face_size = int(getattr(model, "face_size", 96))
        folder = cache_root() / "onnx" / f"expert-{model_digest(model)}-{face_size}px-opset{OPSET}"
        path = folder / "expert.onnx"
        if not path.exists():
            export_expert(model, folder)
        self.session = open_session(path, threads)

    def __call__(self, audio: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, f = self.session.run(None, {"audio": np.ascontiguousarray(audio, np.float32),
                                       "faces": np.ascontiguousarray(faces, np.float32)})
        return a, f


# ------------------------------------------------------------------ int8


@dataclass
class CalibrationSet:
    """Generator inputs as the network takes them: face (N,6,S,S) float32, audio (N,1,80,16) float32."""
    face: np.ndarray
    audio: np.ndarray

    def batches(self, batch_size: int = 8) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(self.face), batch_size):
            yield self.face[i:i + batch_size], self.audio[i:i + batch_size]


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def quantize_int8(fp32: Path, out: Path, feeds: list[dict], reduce_range: bool) -> Path:
    """Static QDQ int8 of one fp32 graph (u8 activations, s8 per-channel weights, MinMax ranges)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    tmp = out.with_suffix(".tmp")
    quantize_static(str(pre), str(tmp), _Reader(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax)
    pre.unlink(missing_ok=True)
    os.replace(tmp, out)
    return out


def quantize_generator(encoder: Path, decoder: Path, calib: CalibrationSet, folder: Path,
                       reduce_range: bool) -> tuple[Path, Path]:
    """int8 encoder + decoder; the decoder is calibrated on the fp32 encoder's real skips."""
    fp32 = OrtGenerator(encoder, decoder)
    enc_feeds, dec_feeds = [], []
    for face, audio in calib.batches():
        enc_feeds.append({"face": face})
        skips = fp32.encode_face(face)
        dec_feeds.append({"audio": audio, **dict(zip(fp32.skip_names, skips))})
    tag = "int8r" if reduce_range else "int8"
    return (quantize_int8(encoder, folder / f"encoder.{tag}.onnx", enc_feeds, reduce_range),
            quantize_int8(decoder, folder / f"decoder.{tag}.onnx", dec_feeds, reduce_range))


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``test`` against ``reference`` (inf when identical)."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(test, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def run_generator(gen, calib: CalibrationSet) -> np.ndarray:
    return np.concatenate([gen.decode(a, gen.encode_face(f)) for f, a in calib.batches()])


# ------------------------------------------------------------------ cache


class GeneratorCache:
    """The cached ONNX files of one model: fp32 export (made on first use) and int8 variants + their PSNR."""

    def __init__(self, model: nn.Module, face_size: int, digest: str | None = None):
        self.model = model
        self.face_size = int(face_size)
        self.digest = digest or model_digest(model)
        self.folder = cache_root() / "onnx" / f"wav2lip-{self.digest}-{self.face_size}px-opset{OPSET}"

    def fp32(self) -> tuple[Path, Path]:
        enc, dec = self.folder / "encoder.onnx", self.folder / "decoder.onnx"
        if not (enc.exists() and dec.exists()):
            export_generator(self.model, self.face_size, self.folder)
        return enc, dec

    def int8(self, calib: CalibrationSet | None, reduce_range: bool) -> tuple[tuple[Path, Path], float]:
        """(encoder, decoder) int8 paths and the PSNR (dB, output in [0,1]) vs fp32 on ``calib``: the
        int8 model is built (and calibrated) on first use from ``calib``, then cached; the PSNR is
        measured again on every ``calib`` given (a model that holds 30 dB on one video's faces need
        not on another's). With ``calib`` None: the cached model and its calibration PSNR."""
        tag = "int8r" if reduce_range else "int8"
        enc, dec = self.folder / f"encoder.{tag}.onnx", self.folder / f"decoder.{tag}.onnx"
        meta = self.folder / f"{tag}.json"
        cached = None
        if enc.exists() and dec.exists() and meta.exists():
            info = json.loads(meta.read_text())
            if info.get("format") == INT8_FORMAT_VERSION:
                cached = float(info["psnr_db"])
        if calib is None:
            if cached is None:
                raise ValueError("int8: no cached model and no calibration data")
            return (enc, dec), cached
        fp32 = self.fp32()
        if cached is None:
            enc, dec = quantize_generator(*fp32, calib, self.folder, reduce_range)
        db = psnr(run_generator(OrtGenerator(*fp32), calib), run_generator(OrtGenerator(enc, dec), calib))
        if cached is None:
            meta.write_text(json.dumps({"format": INT8_FORMAT_VERSION, "psnr_db": db, "reduce_range": reduce_range,
                                        "calibration_pairs": int(len(calib.face))}))
        return (enc, dec), db

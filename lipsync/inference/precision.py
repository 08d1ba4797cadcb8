"""``--precision``: which backend runs the generator, chosen per CPU (or forced), with its reason.

Precisions: ``fp32`` (PyTorch), ``bf16`` (PyTorch), ``ort-fp32`` (ONNX Runtime, same output
within float tolerance), ``int8`` (ONNX Runtime static QDQ int8, lipsync.inference.onnx_backend).

``auto``:
* CUDA: bf16 where supported, else fp32 (ONNX Runtime here is the CPU build).
* CPU: the features decide what is worth trying -- bf16 only with native bf16 (AVX-512 BF16 /
  AMX; emulated it is ~9x slower), int8 with full-range weights only with VNNI (reduced range
  otherwise), and int8 only when its check holds on this input: PSNR of the faces it generates
  from the input's first batch against fp32 >= ``INT8_MIN_PSNR_DB`` (measured for every input,
  lipsync.inference.onnx_backend.GeneratorCache.int8; later frames are not compared). Among those, a short timed probe (a few batches of the
  first real faces per candidate) picks the fastest; its result is cached per machine (CPU,
  ISA cap, threads, library versions) and model (digest, face size, batch size) in
  ``$LIPSYNC_CACHE_DIR/probe.json``, so it runs once.
* forced: that backend; int8 forced below the quality bar is used anyway, with its PSNR printed.
The choice and its reason are reported once through ``log`` (the CLI prints it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from lipsync.errors import ConfigError, first_line
from lipsync.inference.cpu_features import cpu_features
from lipsync.inference.options import PRECISIONS
from lipsync.inference.runners import OrtRunner

INT8_MIN_PSNR_DB = 30.0
PROBE_REPS = 2  # timed batches per candidate, after one warm-up batch


@dataclass
class Choice:
    precision: str
    reason: str
    int8_psnr_db: float | None = None
    probe_fps: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}

    def line(self) -> str:
        return f"generator: {self.precision} ({self.reason})"


def _ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def machine_key() -> str:
    import platform

    feats = cpu_features()
    parts = [feats.model, " ".join(sorted(feats.flags)), str(feats.isa_cap), str(torch.get_num_threads()),
             torch.__version__, platform.machine()]
    if _ort_available():
        import onnxruntime

        parts.append(onnxruntime.__version__)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _probe_cache_path():
    from lipsync.inference.onnx_backend import cache_root

    return cache_root() / "probe.json"


def _load_probe_cache() -> dict:
    path = _probe_cache_path()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _store_probe(key: str, value: dict) -> None:
    path = _probe_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _load_probe_cache()
    data[key] = value
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _time_runner(runner, face_in, audio) -> float:
    """Frames per second of one backend on this batch (one warm-up pass, then PROBE_REPS)."""
    runner.decode(audio, runner.encode_face(face_in))
    t0 = time.perf_counter()
    for _ in range(PROBE_REPS):
        runner.decode(audio, runner.encode_face(face_in))
    return PROBE_REPS * len(face_in) / (time.perf_counter() - t0)


def choose_backend(gen, face_in: torch.Tensor, audio: torch.Tensor, log=None):
    """(Choice, runner) for ``gen`` (a FaceGenerator) on these network inputs."""
    requested = gen.requested
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision: {requested!r} is not one of {', '.join(PRECISIONS)}")
    say = log or (lambda line: None)
    feats = cpu_features()
    on_cuda = gen.device.type == "cuda"
    if on_cuda and requested in ("ort-fp32", "int8"):
        raise ConfigError(f"--precision {requested}: ONNX Runtime runs on the CPU here; use --device cpu, "
                          f"or fp32/bf16 on CUDA")
    if requested in ("ort-fp32", "int8") and not _ort_available():
        raise ConfigError(f"--precision {requested}: needs the 'onnxruntime' package (pip install onnxruntime)")

    cache = None
    if requested in ("ort-fp32", "int8") or (requested == "auto" and not on_cuda and _ort_available()):
        from lipsync.inference.onnx_backend import GeneratorCache

        cache = GeneratorCache(gen.model, gen.face_size)

    def ort_runner(int8: bool):
        from lipsync.inference.onnx_backend import CalibrationSet, OrtGenerator

        if not int8:
            return OrtRunner(OrtGenerator(*cache.fp32())), None
        calib = CalibrationSet(face=face_in.numpy(), audio=audio.numpy())
        paths, db = cache.int8(calib, reduce_range=not feats.vnni)
        return OrtRunner(OrtGenerator(*paths)), db

    int8_kind = "u8/s8 per-channel" + ("" if feats.vnni else ", reduced range (no VNNI)")
    if requested == "int8":
        runner, db = ort_runner(True)
        verdict = "meets" if db >= INT8_MIN_PSNR_DB else "BELOW"
        choice = Choice("int8", f"forced; ONNX Runtime static QDQ {int8_kind}; calibration check "
                                f"{db:.1f} dB PSNR vs fp32 ({verdict} the {INT8_MIN_PSNR_DB:g} dB bar)", db)
    elif requested == "ort-fp32":
        choice, runner = Choice("ort-fp32", "forced; ONNX Runtime fp32"), ort_runner(False)[0]
    elif requested in ("fp32", "bf16"):
        note = ""
        if requested == "bf16" and not on_cuda and not feats.native_bf16:
            note = "; this CPU has no native bf16 (AVX-512 BF16/AMX): emulated, several times slower than fp32"
        choice = Choice(requested, f"forced; PyTorch {requested}{note}")
        runner = gen.make_runner(requested, last=True)
    elif on_cuda:
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        choice, runner = Choice(precision, "auto; CUDA"), gen.make_runner(precision, last=True)
    else:
        choice, runner = _auto_cpu(gen, face_in, audio, feats, cache, ort_runner, int8_kind)
    say(choice.line())
    return choice, runner


def _auto_cpu(gen, face_in, audio, feats, cache, ort_runner, int8_kind):
    """Candidates from the CPU's features and the int8 quality check; the fastest by a cached probe."""
    notes = [feats.summary()]
    candidates = {"fp32": lambda: gen.make_runner("fp32")}
    if feats.native_bf16:
        candidates["bf16"] = lambda: gen.make_runner("bf16")
    else:
        notes.append("bf16 skipped (no native bf16)")
    db = None
    if cache is not None:
        try:
            int8_runner, db = ort_runner(True)  # exports the fp32 graphs first
        except Exception as e:  # noqa: BLE001 - any export/quantiser failure: PyTorch still works
            notes.append(f"ONNX Runtime left out ({type(e).__name__}: {first_line(e, 120)})")
            cache = None
    if cache is not None:
        candidates["ort-fp32"] = lambda: ort_runner(False)[0]
        if db >= INT8_MIN_PSNR_DB:
            candidates["int8"] = lambda: int8_runner
            notes.append(f"int8 ({int8_kind}) passes its check: {db:.1f} dB PSNR vs fp32 >= {INT8_MIN_PSNR_DB:g}")
        else:
            notes.append(f"int8 rejected: {db:.1f} dB PSNR vs fp32 < {INT8_MIN_PSNR_DB:g} (--precision int8 forces it)")
    elif not _ort_available():
        notes.append("onnxruntime not installed: PyTorch only")

    key = "|".join([machine_key(), cache.digest if cache else "torch", f"{gen.face_size}px",
                    f"B{len(face_in)}", ",".join(sorted(candidates))])
    fps = _load_probe_cache().get(key, {}).get("fps")
    kept = None  # (name, runner): only the fastest so far stays in memory during the probe
    if fps is None or set(fps) != set(candidates):
        fps = {}
        for name, make in candidates.items():
            runner = make()
            fps[name] = _time_runner(runner, face_in, audio)
            if kept is None or fps[name] > fps[kept[0]]:
                kept = (name, runner)
            del runner
        _store_probe(key, {"fps": fps})
        how = "timed probe"
    else:
        how = "cached probe"
    best = max(fps, key=fps.get)
    if kept and kept[0] == best:
        runner = kept[1]
    else:  # cached probe: this is the only runner made, so a PyTorch one may take the model over
        runner = gen.make_runner(best, last=True) if best in ("fp32", "bf16") else candidates[best]()
    ranked = ", ".join(f"{k} {v:.1f}" for k, v in sorted(fps.items(), key=lambda kv: -kv[1]))
    reason = f"auto; {'; '.join(notes)}; {how} frames/s at batch {len(face_in)}: {ranked}"
    return Choice(best, reason, db, {k: round(v, 2) for k, v in fps.items()}), runner

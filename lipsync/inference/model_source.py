"""Where the generator comes from: a local checkpoint file, or an MLflow model URI.

* A local file: our own checkpoints or the official ``wav2lip.pth`` / ``wav2lip_gan.pth``,
  loaded by ``lipsync.checkpoints.load_model(kind="wav2lip")`` (which refuses other model
  kinds and untrusted pickled code with CheckpointError).
* ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``runs:/<run_id>/<path>``: the
  registered artifact folder (see pipelines/tracking.register_artifact) is downloaded and
  the checkpoint file inside it is loaded the same way.

The library never imports MLflow at module level (inference must work with only the
library installed); resolving a URI imports it inside ``download_mlflow_artifact`` only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lipsync.errors import CheckpointError, ConfigError

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
DEFAULT_LOCAL_STORE = "mlruns.db"  # the same embedded default as pipelines/tracking.py


def is_mlflow_uri(model: str) -> bool:
    return str(model).startswith(MLFLOW_SCHEMES)


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the project's embedded SQLite store in the cwd."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_LOCAL_STORE}"


def download_mlflow_artifact(uri: str, dst_dir: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """Download what an MLflow URI points at into ``dst_dir``; returns the local path."""
    try:
        import mlflow  # the one lazy MLflow import in the library (see module docstring)
    except ImportError as e:
        raise ConfigError(f"{uri}: resolving an MLflow model URI needs the 'mlflow' package "
                          f"(pip install mlflow), or pass a local checkpoint file") from e
    tracking_uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst_dir))
    except Exception as e:  # noqa: BLE001 - MLflow raises many types; all mean "cannot resolve"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{uri}: cannot fetch the model from MLflow at {tracking_uri} ({first_line})") from e
    return Path(local)


def find_checkpoint_file(path: Path, origin: str) -> Path:
    """The checkpoint inside a downloaded artifact (a file, or a folder holding one)."""
    if path.is_file():
        return path
    candidates = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    if not candidates:
        raise CheckpointError(f"{origin}: the artifact holds no checkpoint file "
                              f"({', '.join(CHECKPOINT_SUFFIXES)})")
    if len(candidates) > 1:
        # Several files: prefer safetensors (no pickle), then the shortest path (top level).
        candidates.sort(key=lambda p: (p.suffix.lower() != ".safetensors", len(p.relative_to(path).parts), p.name))
    return candidates[0]


def load_generator(model: str | os.PathLike, trust: bool = False, tracking_uri: str | None = None,
                   map_location: str = "cpu"):
    """(nn.Module, ModelConfig) of a Wav2Lip generator from a file path or an MLflow URI.

    CheckpointError when the file is another model kind (e.g. the expert) or not a
    checkpoint; MediaError-like problems of a missing file are CheckpointError too, naming it.
    """
    from lipsync.checkpoints import load_model

    model = os.fspath(model)
    if is_mlflow_uri(model):
        with tempfile.TemporaryDirectory(prefix="lipsync-model-") as tmp:
            local = download_mlflow_artifact(model, tmp, tracking_uri)
            ckpt = find_checkpoint_file(local, model)
            return _load(load_model, ckpt, trust, map_location, origin=f"{model} ({ckpt.name})")
    path = Path(model).expanduser()
    if not path.exists():
        raise CheckpointError(f"{model}: no such checkpoint file")
    if path.is_dir():
        path = find_checkpoint_file(path, model)
    return _load(load_model, path, trust, map_location, origin=str(path))


def _load(load_model, path: Path, trust: bool, map_location: str, origin: str):
    try:
        return load_model(str(path), kind="wav2lip", trust=trust, map_location=map_location)
    except CheckpointError as e:
        msg = str(e)
        raise CheckpointError(msg if str(path) in msg or origin in msg else f"{origin}: {msg}") from e

"""Model registry: our checkpoints registered as plain MLflow artifacts.

A registered version's source is the run's checkpoint folder (``runs:/<run>/<path>``)
holding the library's own checkpoint file. We register files, not an MLflow pyfunc, on
purpose: the library loads them with ``lipsync.checkpoints.load_model`` (safe
``weights_only`` loading, official and original layouts) without ever importing mlflow,
and nothing in the registry is pickled Python code that loading would execute.
``resolve_model`` turns ``models:/name@alias`` (or ``runs:/…``) into a local file for it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lipsync.errors import CheckpointError, ConfigError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def register_checkpoint(
    run_id: str,
    artifact_path: str,
    name: str,
    alias: str | None = None,
    tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name``; set ``alias``.
    Returns the version number (string)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(
        name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags or {}
    )
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def resolve_model(uri: str, dst_dir: str | Path | None = None, tracking_uri: str | None = None) -> Path:
    """Local checkpoint file for a local path, ``models:/…`` or ``runs:/…`` URI."""
    if "://" not in uri and not uri.startswith(("models:/", "runs:/")):
        return Path(uri)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    dst = Path(dst_dir) if dst_dir else Path(tempfile.mkdtemp(prefix="lipsync_model_"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:
        raise CheckpointError(f"{uri}: cannot download the registered model ({exc.message})") from None
    if local.is_file():
        return local
    files = sorted(p for p in local.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES)
    if len(files) != 1:
        raise CheckpointError(f"{uri}: expected one checkpoint file, found {[p.name for p in files]}")
    return files[0]


# ---- model references for training (--expert, --init, --init-disc). One place to swap for
# the shared resolver (lipsync/model_ref.py) once it lands.


def pin_reference(ref: str, tracking_uri: str | None = None, flag: str = "--model") -> str:
    """``models:/name@alias`` → ``models:/name/<version>`` (what the alias points at now), so
    a run and all its restarts use one model even if the alias moves; other references as is."""
    if not ref.startswith("models:/") or "@" not in ref:
        return ref
    name, alias = ref[len("models:/"):].split("@", 1)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        hint = (f"pass {flag} models:/{name}@candidate (the newest trained one) or promote one with "
                f"workflows/evaluate.py" if alias == "champion" else f"check the alias, or pass {flag} models:/{name}/<version>")
        raise ConfigError(f"{flag} {ref}: the registered model {name!r} has no alias {alias!r} in the "
                          f"registry at {tracking_uri}; {hint}") from None
    return f"models:/{name}/{version.version}"


def load_reference(ref: str, kind: str, tracking_uri: str | None = None, trust: bool = False):
    """(model in eval mode, ModelConfig) of a file, ``runs:/`` or ``models:/`` reference."""
    from lipsync.checkpoints import load_model

    with tempfile.TemporaryDirectory(prefix="lipsync_ref_") as tmp:
        path = resolve_model(ref, tmp, tracking_uri)
        if not path.exists():
            raise CheckpointError(f"{ref}: no such checkpoint file")
        return load_model(path, kind=kind, trust=trust)

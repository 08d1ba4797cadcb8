"""Model references: the one way every command turns "which model" into a loaded module.

A reference is any of

* a local checkpoint file (ours, or the official ``lipsync_expert.pth`` / ``wav2lip.pth`` /
  ``wav2lip_gan.pth``), or a folder holding one;
* ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (the MLflow registry);
* ``runs:/<run_id>/<path>`` (an artifact of a run).

Inference (``--model``), training (``--expert``, ``--init``) and evaluation all go through
:func:`load`. A registry alias moves over time, so a job that must keep one judge for its
whole life calls :func:`pin` once at the start and uses the pinned ``models:/name/N``.

**Where the embedded MLflow store lives** (one rule for every command): ``--tracking-uri``
when given, else ``$MLFLOW_TRACKING_URI``, else ``mlruns.db`` in the current directory
(artifacts in ``mlartifacts/`` beside it). A lookup only *reads*: when that SQLite file does
not exist it is an error naming it, never a freshly created empty store.

The library never imports MLflow at module level (inference works with only the library
installed); it is imported here, lazily, when a URI has to be resolved.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from lipsync.errors import CheckpointError, ConfigError, first_line

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
DEFAULT_STORE = "mlruns.db"
DEFAULT_ARTIFACTS = "mlartifacts"
_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


def is_mlflow_uri(ref: str | os.PathLike) -> bool:
    return str(ref).startswith(MLFLOW_SCHEMES)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the embedded SQLite store ``./mlruns.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The tracking URI to use: the argument, else the embedded-store rule (module docstring)."""
    return tracking_uri or default_tracking_uri()


def _existing_store(tracking_uri: str, ref: str) -> str:
    """The tracking URI, checked to point at a store that exists when it is a SQLite file
    (MLflow would otherwise create an empty database there just to report "not found")."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            raise CheckpointError(
                f"{ref}: no MLflow store at {db} (pass --tracking-uri or set MLFLOW_TRACKING_URI "
                f"to the store that holds the model; `make demo` writes ./{DEFAULT_STORE})"
            )
    return tracking_uri


def _mlflow(ref: str):
    try:
        import mlflow
    except ImportError as e:
        raise ConfigError(f"{ref}: resolving an MLflow model URI needs the 'mlflow' package "
                          f"(pip install mlflow), or pass a local checkpoint file") from e
    # A lookup is not a training run: MLflow's and alembic's INFO lines are not for the user.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def pin(ref: str | os.PathLike, tracking_uri: str | None = None) -> str:
    """The reference with any registry alias replaced by the version it points at now
    (``models:/wav2lip@champion`` -> ``models:/wav2lip/7``); local paths become absolute;
    other references are returned unchanged."""
    ref = os.fspath(ref)
    if not is_mlflow_uri(ref):
        return str(Path(ref).expanduser().resolve())
    m = _ALIAS_URI.match(ref)
    if not m:
        return ref
    tracking_uri = _existing_store(resolve_tracking_uri(tracking_uri), ref)
    mlflow = _mlflow(ref)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, alias = m["name"], m["alias"]
    try:
        version = client.get_model_version_by_alias(name, alias)
    except Exception as e:  # noqa: BLE001 - MLflow raises several types; all mean "no such alias"
        try:
            aliases = sorted(client.get_registered_model(name).aliases)
        except Exception:  # noqa: BLE001 - the model itself does not exist
            raise ConfigError(f"{ref}: no registered model named {name!r} at {tracking_uri}") from e
        hint = f"; it has {', '.join('@' + a for a in aliases)}" if aliases else "; it has no aliases"
        if alias == "champion":
            hint += f" (pass models:/{name}@candidate, or promote a model with workflows/evaluate.py --promote)"
        raise ConfigError(f"{ref}: model {name!r} has no alias {alias!r} at {tracking_uri}{hint}") from e
    return f"models:/{name}/{version.version}"


def fetch(ref: str | os.PathLike, dst_dir: str | os.PathLike | None = None,
          tracking_uri: str | None = None) -> Path:
    """A local checkpoint file for ``ref`` (downloaded into ``dst_dir`` for a URI)."""
    ref = os.fspath(ref)
    if not is_mlflow_uri(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise CheckpointError(f"{ref}: no such checkpoint file")
        return find_checkpoint_file(path, ref) if path.is_dir() else path
    tracking_uri = _existing_store(resolve_tracking_uri(tracking_uri), ref)
    mlflow = _mlflow(ref)
    dst = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="lipsync-model-"))
    # Resolved through a client that carries the store, never through MLflow's process-wide URIs:
    # setting and restoring them pins MLflow 3's default (./mlflow.db in the working directory)
    # for every later call, and exports it to child processes as MLFLOW_TRACKING_URI.
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        source = ref
        version = _VERSION_URI.match(pin(ref, tracking_uri)) if ref.startswith("models:/") else None
        if version:
            source = client.get_model_version_download_uri(version["name"], version["version"])
        if source.startswith("runs:/"):
            run_id, _, path = source[len("runs:/"):].partition("/")
            local = Path(client.download_artifacts(run_id, path, str(dst)))
        else:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                             tracking_uri=tracking_uri))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow raises many types; all mean "cannot resolve"
        raise CheckpointError(f"{ref}: cannot fetch the model from MLflow at {tracking_uri} ({first_line(e)})") from e
    return find_checkpoint_file(local, ref)


def find_checkpoint_file(path: Path, origin: str) -> Path:
    """The checkpoint inside a downloaded artifact (a file, or a folder holding one)."""
    if path.is_file():
        return path
    candidates = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    if not candidates:
        raise CheckpointError(f"{origin}: holds no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})")
    # Several files: prefer safetensors (no pickle), then the shortest path (top level).
    candidates.sort(key=lambda p: (p.suffix.lower() != ".safetensors", len(p.relative_to(path).parts), p.name))
    return candidates[0]


def load(ref: str | os.PathLike, kind: str | None = None, trust: bool = False,
         tracking_uri: str | None = None, map_location="cpu"):
    """(nn.Module, ModelConfig) for ``ref``; CheckpointError naming the reference when it is
    missing, of another model kind, or untrusted pickled code."""
    from lipsync.checkpoints import load_model

    ref = os.fspath(ref)
    with tempfile.TemporaryDirectory(prefix="lipsync-model-") as tmp:
        path = fetch(ref, tmp, tracking_uri)
        origin = f"{ref} ({path.name})" if is_mlflow_uri(ref) else str(path)
        try:
            return load_model(str(path), kind=kind, trust=trust, map_location=map_location)
        except CheckpointError as e:
            msg = str(e)
            raise CheckpointError(msg if str(path) in msg or origin in msg else f"{origin}: {msg}") from e

"""MLflow plumbing shared by every workflow: where runs go, and what tags tie a run to code and data.

With no tracking URI configured, runs go to the embedded SQLite store (``./mlruns.db``, the
rule in ``lipsync.model_ref`` that every command shares) and its ``mlartifacts/`` folder, so
the model registry works on a laptop with no server.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import mlflow

from lipsync.model_ref import DEFAULT_ARTIFACTS, resolve_tracking_uri  # noqa: F401 - the one rule, re-exported
from pipelines.common import storage

EXPERT_MODEL_NAME = "lipsync-expert"
GENERATOR_MODEL_NAME = "wav2lip"


def configure(uri: str | None = None, experiment: str | None = None) -> str:
    """Point mlflow at the resolved store (and experiment); returns the URI used.

    With a SQLite store, new experiments keep their artifacts in `mlartifacts/` beside the
    database file (not MLflow's default ./mlruns of whatever the working directory is), so
    a store and its artifacts move together.
    """
    uri = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment:
        if mlflow.get_experiment_by_name(experiment) is None:
            artifact_location = None
            if uri.startswith("sqlite:///"):
                db_path = Path(uri[len("sqlite:///"):])
                artifact_location = (db_path.resolve().parent / DEFAULT_ARTIFACTS / experiment).as_uri()
            mlflow.create_experiment(experiment, artifact_location=artifact_location)
        mlflow.set_experiment(experiment)
    return uri


def code_version(repo_dir: str | os.PathLike | None = None) -> str:
    """The git commit of the code (with '-dirty' if the tree has changes), or the package version."""
    repo_dir = Path(repo_dir or Path(__file__).resolve().parent.parent)
    try:
        sha = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo_dir), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        import lipsync
        return f"lipsync-{lipsync.__version__}"


def file_hash(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Content hash of a file (e.g. manifest.parquet), streamed in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with storage.open_input(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_tags(manifest_path: str | os.PathLike | None = None) -> dict[str, str]:
    """Tags every run carries so a model traces back to its code and data."""
    tags = {"lipsync.code_version": code_version()}
    if manifest_path is not None and storage.exists(manifest_path):
        tags["lipsync.manifest_sha256"] = file_hash(manifest_path)
        tags["lipsync.manifest_path"] = storage.resolve(manifest_path)
    return tags


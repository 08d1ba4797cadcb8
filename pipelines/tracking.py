"""MLflow plumbing shared by every workflow: where runs go, and what tags tie a run to code and data.

With no tracking URI configured, runs go to a SQLite store and a local artifact folder
under the working directory, so the model registry works on a laptop with no server.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import mlflow

DEFAULT_DB = "mlruns.db"
DEFAULT_ARTIFACTS = "mlartifacts"

EXPERT_MODEL_NAME = "lipsync-expert"
GENERATOR_MODEL_NAME = "wav2lip"
ALIAS_CANDIDATE = "candidate"
ALIAS_CHAMPION = "champion"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: the argument, else MLFLOW_TRACKING_URI, else local SQLite."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def configure(uri: str | None = None, experiment: str | None = None) -> str:
    """Point mlflow at the resolved store (and experiment); returns the URI used.

    For the local SQLite default, new experiments put their artifacts in ./mlartifacts
    rather than MLflow's default ./mlruns, so the two never get confused.
    """
    uri = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment:
        if mlflow.get_experiment_by_name(experiment) is None:
            artifact_location = None
            if uri.startswith("sqlite:"):
                artifact_location = (Path.cwd() / DEFAULT_ARTIFACTS / experiment).as_uri()
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
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_tags(manifest_path: str | os.PathLike | None = None) -> dict[str, str]:
    """Tags every run carries so a model traces back to its code and data."""
    tags = {"lipsync.code_version": code_version()}
    if manifest_path is not None and Path(manifest_path).exists():
        tags["lipsync.manifest_sha256"] = file_hash(manifest_path)
        tags["lipsync.manifest_path"] = str(Path(manifest_path).resolve())
    return tags


def register_artifact(run_id: str, artifact_path: str, name: str, alias: str | None = ALIAS_CANDIDATE,
                      tags: dict[str, str] | None = None, client: "mlflow.MlflowClient | None" = None):
    """Register a run's logged artifact *folder* (e.g. a checkpoint directory) as a new model version.

    MLflow 3's `register_model("runs:/…")` only accepts logged *models*; our checkpoints are
    plain artifacts the library loads without MLflow, so we create the version from the
    artifact's URI directly. The version is then reachable as `models:/<name>@<alias>`.
    It must be a folder: `models:/` downloads list the source as a directory.
    """
    client = client or mlflow.MlflowClient()
    run = client.get_run(run_id)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path.strip('/')}"
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags or {})
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version


def download_model_artifact(model_uri: str, dst_dir: str | os.PathLike | None = None) -> Path:
    """Fetch what `models:/name@alias` (or `runs:/…`) points at to a local path."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst_dir and str(dst_dir)))

"""Model registry: our checkpoints registered as plain MLflow artifacts.

A registered version's source is the run's checkpoint folder (``runs:/<run>/<path>``)
holding the library's own checkpoint file. We register files, not an MLflow pyfunc, on
purpose: the library loads them with ``lipsync.checkpoints.load_model`` (safe
``weights_only`` loading, official and original layouts) without ever importing mlflow,
and nothing in the registry is pickled Python code that loading would execute.
``lipsync.model_ref`` turns ``models:/name@alias`` (or ``runs:/…``) back into a loaded model.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

ALIAS_CANDIDATE = "candidate"  # newly trained (the training driver sets it)
ALIAS_CHAMPION = "champion"  # passed the evaluation gate (only the gate moves it)


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

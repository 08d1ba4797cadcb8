"""Model registry: our checkpoints registered as MLflow Models.

A registered version's source is an MLflow Model (``runs:/<run>/<path>/mlflow-model``,
``pipelines.tracking.mlflow_model``): the pyfunc flavor from code, a signature, an input
example, and the library's own checkpoint file. MLflow's tools load it as any pyfunc; the
library never needs them: ``lipsync.model_ref`` fetches the version and loads the checkpoint
file inside with ``lipsync.checkpoints.load_model`` (safe ``weights_only`` loading), as it
loads versions registered before (a plain checkpoint folder). Nothing in the registry is
pickled Python code that loading would execute.
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
    """Register the checkpoint in ``runs:/<run_id>/<artifact_path>`` (a folder holding one
    model file) as a new version of ``name``, made an MLflow Model next to it; set ``alias``.
    Returns the version number (string)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    source = _log_mlflow_model(client, run_id, artifact_path)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(name, source, run_id=run_id, tags=tags or {})
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def _log_mlflow_model(client: MlflowClient, run_id: str, artifact_path: str) -> str:
    """The MLflow Model of the checkpoint in ``artifact_path``, logged beside it; its URI (the
    folder's own for a kind without a pyfunc, or a folder holding no model file)."""
    import tempfile
    from pathlib import Path

    from lipsync.checkpoints import load_checkpoint
    from lipsync.errors import CheckpointError
    from lipsync.model_ref import find_checkpoint_file
    from pipelines.tracking.mlflow_model import MODEL_DIR, PYFUNC_KINDS, save_mlflow_model

    with tempfile.TemporaryDirectory(prefix="lipsync-register-") as tmp:
        local = Path(client.download_artifacts(run_id, artifact_path, tmp))
        try:
            checkpoint = find_checkpoint_file(local, f"runs:/{run_id}/{artifact_path}")
            kind = load_checkpoint(checkpoint).config.kind
        except CheckpointError:  # not one of our model files: registered as the folder it is
            kind = None
        if kind not in PYFUNC_KINDS:
            return f"runs:/{run_id}/{artifact_path}"
        model = save_mlflow_model(checkpoint, kind, Path(tmp) / MODEL_DIR)
        client.log_artifacts(run_id, str(model), f"{artifact_path}/{MODEL_DIR}")
    return f"runs:/{run_id}/{artifact_path}/{MODEL_DIR}"

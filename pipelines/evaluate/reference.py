"""Which model an evaluation is about: a reference resolved once to a registry version (or a file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lipsync.errors import ConfigError

KIND_TO_MODEL = {"expert": "lipsync-expert", "wav2lip": "wav2lip"}


@dataclass
class ModelRef:
    """A model reference resolved once: the registry name/version when it has one."""

    uri: str  # what to download (the version, never an alias)
    name: str | None
    version: str | None
    training_run_id: str | None


def parse_registry_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` → (name, alias, None); ``models:/name/3`` → (name, None, "3")."""
    body = uri[len("models:/"):]
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias, None
    if "/" in body:
        name, version = body.rsplit("/", 1)
        return name, None, version
    raise ConfigError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def resolve_reference(model: str, client) -> ModelRef:
    """The model with its alias pinned to a version (``lipsync.model_ref.pin``) and the run that trained it."""
    from mlflow.exceptions import MlflowException

    from lipsync import model_ref

    if not model.startswith("models:/"):
        return ModelRef(uri=model_ref.pin(model), name=None, version=None, training_run_id=None)
    name, _, version = parse_registry_uri(model_ref.pin(model, client.tracking_uri))
    try:
        mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise ConfigError(f"{model}: not in the registry ({e.message.splitlines()[0]})") from None
    return ModelRef(uri=f"models:/{name}/{mv.version}", name=name, version=str(mv.version), training_run_id=mv.run_id)


def model_name_of_file(path: Path) -> str:
    from lipsync.checkpoints import load_checkpoint

    return KIND_TO_MODEL.get(load_checkpoint(str(path)).config.kind, "")

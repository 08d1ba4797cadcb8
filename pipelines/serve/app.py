"""The service as a Serve application builder, for ``serve deploy`` and KubeRay's RayService
(``import_path: pipelines.serve.app:build``; infra/serve/lipsync.yaml).

``args`` are the config file's: ``model`` (required), ``tracking_uri``, ``min_replicas``,
``max_replicas``, ``num_cpus``, ``num_gpus``, ``queue``, ``max_upload_mb``, ``precision``,
``device``. The token is read from ``LIPSYNC_SERVE_TOKEN`` where the application is built (on
a cluster: the pods' environment, from a Kubernetes Secret), never from the config file. The
model reference is pinned to a version here, once per deploy: redeploying the config moves to
where the alias points then.
"""

from __future__ import annotations

import os

from lipsync.errors import ConfigError
from pipelines.serve.auth import TOKEN_ENV, token_digest
from pipelines.serve.service import ServiceConfig, deployment

SCALING = {"min_replicas": int, "max_replicas": int, "num_cpus": float, "num_gpus": float}
OPTIONS = {"tracking_uri": str, "queue": int, "max_upload_mb": float, "precision": str, "device": str}


def build(args: dict):
    from lipsync import model_ref

    unknown = sorted(set(args) - {"model", *SCALING, *OPTIONS})
    if unknown or "model" not in args:
        raise ConfigError(f"lipsync serve config: {'unknown args ' + ', '.join(unknown) if unknown else 'no model'} "
                          f"(args: model, {', '.join([*SCALING, *OPTIONS])})")
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"lipsync serve config: set {TOKEN_ENV} where the application is built")
    model, tracking_uri = str(args["model"]), args.get("tracking_uri")
    version = model_ref.pin(model, tracking_uri)
    config = ServiceConfig(model=model, version=version,
                           tracking_uri=model_ref.resolve_tracking_uri(tracking_uri) if model_ref.is_mlflow_uri(model) else None,
                           token_digest=token_digest(token),
                           **{k: cast(args[k]) for k, cast in OPTIONS.items() if k in args and k != "tracking_uri"})
    scaling = {k: cast(args[k]) for k, cast in SCALING.items() if k in args}
    if scaling.get("min_replicas", 1) > scaling.get("max_replicas", scaling.get("min_replicas", 1)):
        raise ConfigError("lipsync serve config: min_replicas is above max_replicas")
    return deployment(config, **scaling)

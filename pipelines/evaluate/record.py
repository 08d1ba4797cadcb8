"""Recording an evaluation: the evaluation run in MLflow and the figures on the model version.

``evaluate_version`` runs an evaluator on one model, logs a new evaluation run (aggregates
as metrics, the per-clip table as ``evaluation/per_clip.csv``, tags linking it to the model
version and its training run) and records the figures on the version (tags ``eval.<metric>``,
``eval.test_set``, ``eval.run_id``), so the gate can compare models evaluated on the same test
set. ``recorded_metrics`` reads them back, or evaluates the version when they describe
another test set.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from pipelines.evaluate.config import EVAL_TAG_PREFIX, PER_CLIP_ARTIFACT, EvalConfig
from pipelines.evaluate.reference import ModelRef


def test_set_fingerprint(shards: str, split: str, settings: dict) -> str:
    """sha256 of the split's shard files and the evaluator's settings (for the generator, the
    judge's pinned version and file sha256): equal ⇔ same test set, figures comparable."""
    from pipelines.tracking.setup import file_hash
    from pipelines.common.storage import list_shards

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for p in list_shards(shards, split):
        digest.update(file_hash(p).encode())
    return digest.hexdigest()[:16]


def write_table(rows: list[dict], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)


def evaluate_version(evaluator, ref: ModelRef, cfg: EvalConfig, tracking_uri: str, test_set: str):
    """Run the evaluator on one model and log the evaluation run; returns (run_id, Evaluation)."""
    import mlflow
    from mlflow import MlflowClient

    from lipsync import model_ref
    from pipelines.tracking import setup as mlflow_setup

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="lipsync-eval-") as tmp:
        ckpt = model_ref.fetch(ref.uri, Path(tmp) / "model", tracking_uri)
        evaluation = evaluator.evaluate(ckpt, cfg.shards)
        mlflow_setup.configure(tracking_uri, cfg.experiment)
        tags = {**mlflow_setup.run_tags(Path(cfg.shards) / "manifest.parquet"), "lipsync.job": "evaluation",
                "lipsync.evaluated_model": ref.name or "", "lipsync.evaluated_version": ref.version or "",
                "lipsync.evaluated_uri": ref.uri, "lipsync.test_set": test_set}
        if ref.training_run_id:
            tags["lipsync.training_run_id"] = ref.training_run_id
        name = f"eval-{ref.name}-v{ref.version}" if ref.version else f"eval-{Path(ref.uri).name}"
        with mlflow.start_run(run_name=name, tags=tags) as run:
            mlflow.log_params({"split": cfg.split, "shards": str(Path(cfg.shards).resolve()),
                               **{k: str(v) for k, v in evaluator.settings().items()}})
            mlflow.log_metrics({k: float(v) for k, v in evaluation.metrics.items()})
            table = Path(tmp) / Path(PER_CLIP_ARTIFACT).name
            write_table(evaluation.rows, table)
            mlflow.log_artifact(str(table), str(Path(PER_CLIP_ARTIFACT).parent))
            run_id = run.info.run_id
    if ref.name and ref.version:
        for key, value in evaluation.metrics.items():
            client.set_model_version_tag(ref.name, ref.version, f"{EVAL_TAG_PREFIX}{key}", repr(float(value)))
        client.set_model_version_tag(ref.name, ref.version, f"{EVAL_TAG_PREFIX}test_set", test_set)
        client.set_model_version_tag(ref.name, ref.version, f"{EVAL_TAG_PREFIX}run_id", run_id)
    if ref.training_run_id:
        client.set_tag(ref.training_run_id, f"lipsync.evaluation_run.{test_set}", run_id)
    return run_id, evaluation


def recorded_metrics(evaluator, version, cfg, tracking_uri: str, test_set: str) -> dict:
    """A registered version's figures on this test set: from its tags, or by evaluating it now."""
    tags = version.tags or {}
    if tags.get(f"{EVAL_TAG_PREFIX}test_set") == test_set:
        return {k[len(EVAL_TAG_PREFIX):]: float(v) for k, v in tags.items()
                if k.startswith(EVAL_TAG_PREFIX) and k[len(EVAL_TAG_PREFIX):] in evaluator.metric_directions}
    ref = ModelRef(uri=f"models:/{version.name}/{version.version}", name=version.name,
                   version=str(version.version), training_run_id=version.run_id)
    return evaluate_version(evaluator, ref, cfg, tracking_uri, test_set)[1].metrics

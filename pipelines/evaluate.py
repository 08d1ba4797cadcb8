"""Evaluating a registered model on the test split, in MLflow, with one driver for every model kind.

``run_evaluation(cfg)``:
1. resolves the model reference once (``models:/name@alias`` → a version; the version, not the
   alias, is what gets evaluated and recorded);
2. runs the model kind's *evaluator* (``EVALUATORS``: ``lipsync-expert`` → pipelines/evaluate_expert.py,
   ``wav2lip`` → pipelines/evaluate_generator.py) on the test split: a per-clip table and aggregates;
3. logs a new evaluation run: aggregates as metrics, the per-clip table as an artifact
   (``evaluation/per_clip.csv``), tags linking it to the model version and to the version's
   training run (``lipsync.training_run_id``; the run is also nested under no parent, so it is
   never mistaken for a training run);
4. records the figures on the model version (tags ``eval.<metric>``, ``eval.test_set``,
   ``eval.run_id``), so the gate can compare models evaluated on the same test set;
5. with ``promote``, asks the gate (pipelines/promotion.py) whether to move ``champion``.

An evaluator is a small object: ``name`` (registered model), ``metric_directions`` (metric →
True when higher is better; what thresholds and the champion comparison may use),
``compare`` (the metrics compared with the champion by default), ``settings()`` (what makes two
evaluations comparable, part of the test-set fingerprint) and ``evaluate(checkpoint, shards)``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lipsync.errors import ConfigError

EVAL_EXPERIMENT = "evaluation"
PER_CLIP_ARTIFACT = "evaluation/per_clip.csv"
EVAL_TAG_PREFIX = "eval."


@dataclass
class EvalConfig:
    model: str  # models:/name@alias, models:/name/N, runs:/…, or a checkpoint file
    shards: str
    split: str = "test"
    tracking_uri: str | None = None
    experiment: str = EVAL_EXPERIMENT
    seed: int = 0
    max_clips: int | None = None
    device: str = "cpu"
    # expert evaluator
    windows_per_clip: int = 32
    shifts: tuple[int, ...] = (0, 5, -3, 8, -8)
    # generator evaluator
    judge_model: str | None = None  # expert that judges sync (default: models:/lipsync-expert@champion)
    fid_weights: str | None = None  # pytorch-fid Inception weights: FID when given
    num_cpus: int | None = None
    # promotion gate
    promote: bool = False
    thresholds: dict = field(default_factory=dict)  # metric -> bound (>= when higher is better, else <=)
    margin: float = 0.0  # allowed loss vs the champion on each compared metric (absolute)
    compare: tuple[str, ...] | None = None  # metrics compared with the champion (default: evaluator's)


@dataclass
class Evaluation:
    rows: list[dict]  # per clip
    metrics: dict[str, float]  # aggregates


@dataclass
class EvalResult:
    model_name: str | None
    version: str | None
    run_id: str
    metrics: dict
    test_set: str
    decision: dict | None = None  # from the gate when promote

    def to_dict(self) -> dict:
        return asdict(self)


def evaluator_for(name: str, cfg: EvalConfig):
    from pipelines.evaluate_expert import ExpertEvaluator
    from pipelines.evaluate_generator import GeneratorEvaluator

    evaluators = {ExpertEvaluator.name: ExpertEvaluator, GeneratorEvaluator.name: GeneratorEvaluator}
    if name not in evaluators:
        raise ConfigError(f"no evaluator for model {name!r}: choose one of {', '.join(evaluators)}")
    return evaluators[name](cfg)


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


def download_checkpoint(uri: str, dst: Path, tracking_uri: str) -> Path:
    from lipsync import model_ref

    return model_ref.fetch(uri, dst, tracking_uri)


def model_name_of_file(path: Path) -> str:
    from lipsync.checkpoints import load_checkpoint

    return KIND_TO_MODEL.get(load_checkpoint(str(path)).config.kind, "")


def test_set_fingerprint(shards: str, split: str, settings: dict) -> str:
    """sha256 of the split's shard files and the evaluator's settings: equal ⇔ same test set."""
    from pipelines.mlflow_setup import file_hash
    from pipelines.storage import list_shards

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

    from pipelines import mlflow_setup

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="lipsync-eval-") as tmp:
        ckpt = download_checkpoint(ref.uri, Path(tmp) / "model", tracking_uri)
        evaluation = evaluator.evaluate(ckpt, cfg.shards)
        mlflow_setup.configure(tracking_uri, cfg.experiment)
        tags = {**mlflow_setup.run_tags(Path(cfg.shards) / "manifest.parquet"), "lipsync.stage": "evaluation",
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


def run_evaluation(cfg: EvalConfig) -> EvalResult:
    from mlflow import MlflowClient

    from pipelines import mlflow_setup
    from pipelines.promotion import gate

    tracking_uri = mlflow_setup.resolve_tracking_uri(cfg.tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ref = resolve_reference(cfg.model, client)
    if cfg.promote and ref.name is None:
        raise ConfigError(f"--promote needs a registered model (models:/NAME@ALIAS), got {cfg.model}")
    name = ref.name
    if name is None:
        if not Path(cfg.model).exists():
            raise ConfigError(f"{cfg.model}: no such checkpoint file")
        name = model_name_of_file(Path(cfg.model))
    evaluator = evaluator_for(name, cfg)
    test_set = test_set_fingerprint(cfg.shards, cfg.split, {"evaluator": name, **evaluator.settings()})
    run_id, evaluation = evaluate_version(evaluator, ref, cfg, tracking_uri, test_set)
    decision = None
    if cfg.promote:
        decision = gate(client, evaluator, ref, evaluation.metrics, cfg, tracking_uri, test_set)
    return EvalResult(model_name=ref.name, version=ref.version, run_id=run_id, metrics=evaluation.metrics,
                      test_set=test_set, decision=decision)

"""Evaluating a registered model on the test split, in MLflow, with one driver for every model kind.

``run_evaluation(cfg)``:
1. resolves the model reference once (``models:/name@alias`` → a version; the version, not the
   alias, is what gets evaluated and recorded);
2. runs the model kind's *evaluator* (``EVALUATORS``: ``lipsync-expert`` → pipelines/evaluate/expert.py,
   ``wav2lip`` → pipelines/evaluate/generator.py) on the test split: a per-clip table and aggregates;
3. logs a new evaluation run: aggregates as metrics, the per-clip table as an artifact
   (``evaluation/per_clip.csv``), tags linking it to the model version and to the version's
   training run (``lipsync.training_run_id``; the run is also nested under no parent, so it is
   never mistaken for a training run);
4. records the figures on the model version (tags ``eval.<metric>``, ``eval.test_set``,
   ``eval.run_id``), so the gate can compare models evaluated on the same test set;
5. with ``promote``, asks the gate (pipelines/evaluate/gate.py) whether to move ``champion``.

An evaluator is a small object: ``name`` (registered model), ``metric_directions`` (metric →
True when higher is better; what thresholds and the champion comparison may use),
``compare`` (the metrics compared with the champion by default), ``settings()`` (what makes two
evaluations comparable, part of the test-set fingerprint) and ``evaluate(checkpoint, shards)``.
"""

from __future__ import annotations

from pathlib import Path

from lipsync.errors import ConfigError
from pipelines.evaluate.config import EvalConfig, EvalResult
from pipelines.evaluate.gate import compared_metrics, current_champion, gate
from pipelines.evaluate.record import evaluate_version, recorded_metrics, test_set_fingerprint
from pipelines.evaluate.reference import model_name_of_file, resolve_reference


def evaluator_for(name: str, cfg: EvalConfig):
    from pipelines.evaluate.expert import ExpertEvaluator
    from pipelines.evaluate.generator import GeneratorEvaluator

    evaluators = {ExpertEvaluator.name: ExpertEvaluator, GeneratorEvaluator.name: GeneratorEvaluator}
    if name not in evaluators:
        raise ConfigError(f"no evaluator for model {name!r}: choose one of {', '.join(evaluators)}")
    return evaluators[name](cfg)


def run_evaluation(cfg: EvalConfig) -> EvalResult:
    from mlflow import MlflowClient

    from pipelines.tracking import setup as mlflow_setup

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
        compared_metrics(evaluator, cfg)  # a bad --compare fails before the champion is evaluated
        champion = current_champion(client, ref.name)
        champion_figures = None
        if champion is not None and str(champion.version) != ref.version:
            champion_figures = recorded_metrics(evaluator, champion, cfg, tracking_uri, test_set)
        decision = gate(client, evaluator, ref, evaluation.metrics, champion, champion_figures, cfg, test_set)
    return EvalResult(model_name=ref.name, version=ref.version, run_id=run_id, metrics=evaluation.metrics,
                      test_set=test_set, decision=decision)

"""The promotion gate crowns only measured evidence (pipelines/evaluate/gate.py).

Before these rules, a metric missing on either side was skipped in the champion comparison and
a NaN passed a threshold (``nan < bound`` is False), so a generator whose every clip failed its
evaluation (only ``test_clips`` recorded) became champion when no ``--threshold`` was given.
The gate runs here against a real MLflow registry (a SQLite store in the test's folder).
Comparable evidence: the generator's test set names its judge by the version the judge's alias
points at and the file's sha256 (LSE-C is comparable only within one judge).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from mlflow import MlflowClient

from lipsync.errors import LipsyncError
from pipelines.evaluate.config import EvalConfig
from pipelines.evaluate.gate import KEPT, PROMOTED, check_thresholds, compare_with_champion, gate
from pipelines.evaluate.generator import GeneratorEvaluator
from pipelines.evaluate.reference import ModelRef
from pipelines.tracking.registry import ALIAS_CHAMPION

DIRECTIONS = GeneratorEvaluator.metric_directions


def test_a_threshold_on_a_missing_or_non_finite_metric_fails():
    assert check_thresholds({"lse_c_own": 7.0}, {"lse_c_own": 6.0}, DIRECTIONS) == []
    for value in (math.nan, math.inf, -math.inf, "nan"):
        failures = check_thresholds({"lse_c_own": value}, {"lse_c_own": 6.0}, DIRECTIONS)
        assert len(failures) == 1 and "lse_c_own was not measured" in failures[0], (value, failures)
    assert check_thresholds({}, {"fid": 50.0}, DIRECTIONS) == ["fid was not measured"]


def test_a_compared_metric_must_be_measured_on_both_sides():
    figures, failures = compare_with_champion({"lse_c_own": 7.0}, {"lse_c_own": 6.5}, ("lse_c_own",), DIRECTIONS, 0.0)
    assert failures == [] and figures["lse_c_own"]["ok"] is True
    figures, failures = compare_with_champion({"test_clips": 3.0}, {"lse_c_own": 6.5}, ("lse_c_own",), DIRECTIONS, 0.0)
    assert failures == ["lse_c_own was not measured on the candidate"] and figures["lse_c_own"]["ok"] is False
    figures, failures = compare_with_champion({"lse_c_own": 7.0}, {"lse_c_own": math.nan}, ("lse_c_own",),
                                              DIRECTIONS, 0.0)
    assert failures == ["lse_c_own was not measured on the champion"]
    assert json.loads(json.dumps(figures))["lse_c_own"]["champion"] is None  # strict JSON in the gate.compared tag


def _version(client: MlflowClient, tmp_path, name: str, n: int) -> ModelRef:
    folder = tmp_path / f"v{n}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"not read by the gate")
    if n == 1:
        client.create_registered_model(name)
    version = client.create_model_version(name, source=str(folder))
    return ModelRef(uri=f"models:/{name}/{version.version}", name=name, version=str(version.version),
                    training_run_id=None)


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory) -> str:
    """One SQLite registry for this module's tests (creating its schema takes seconds);
    each test registers models of its own name."""
    return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"


def test_the_gate_never_promotes_what_it_did_not_measure(registry_uri, tmp_path):
    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    name = "wav2lip"
    evaluator = GeneratorEvaluator(EvalConfig(model=f"models:/{name}@candidate", shards=str(tmp_path)))
    cfg = evaluator.cfg

    # No champion and no threshold: a candidate without the compared metrics stays a candidate.
    blank = _version(client, tmp_path, name, 1)
    decision = gate(client, evaluator, blank, {"test_clips": 3.0}, None, None, cfg, "set-a")
    assert decision["decision"] == KEPT and "lse_c_own was not measured" in decision["reason"]
    assert client.get_model_version(name, blank.version).tags["gate.decision"] == KEPT
    with pytest.raises(Exception):
        client.get_model_version_by_alias(name, ALIAS_CHAMPION)

    # A measured candidate becomes the first champion.
    good = _version(client, tmp_path, name, 2)
    measured = {"lse_c_own": 6.0, "ssim_mouth": 0.8, "test_clips": 3.0}
    assert gate(client, evaluator, good, measured, None, None, cfg, "set-a")["decision"] == PROMOTED
    champion = client.get_model_version_by_alias(name, ALIAS_CHAMPION)
    assert str(champion.version) == good.version

    # A NaN where the champion has a figure: kept, champion unchanged, the reason recorded.
    broken = _version(client, tmp_path, name, 3)
    decision = gate(client, evaluator, broken, {"lse_c_own": math.nan, "ssim_mouth": 0.9, "test_clips": 3.0},
                    champion, measured, cfg, "set-a")
    assert decision["decision"] == KEPT and "lse_c_own was not measured on the candidate" in decision["reason"]
    assert str(client.get_model_version_by_alias(name, ALIAS_CHAMPION).version) == good.version
    tags = client.get_model_version(name, broken.version).tags
    assert tags["gate.decision"] == KEPT and json.loads(tags["gate.compared"])["lse_c_own"]["ok"] is False


def test_an_evaluation_that_scored_no_clip_is_an_error():
    evaluator = GeneratorEvaluator(EvalConfig(model="x", shards="shards"))
    failed = [{"order": i, "clip": f"spk/{i}", "error": f"spk/{i}: too short"} for i in range(3)]
    with pytest.raises(LipsyncError, match=r"shards: 'test': none of the 3 clips could be scored \(first: spk/0"):
        evaluator.summarize(failed, "shards: 'test'")
    one = [*failed, {"order": 3, "clip": "spk/3", "error": "", "lse_c_own": 5.0, "ssim_mouth": 0.7}]
    metrics = evaluator.summarize(one, "shards: 'test'").metrics
    assert metrics["test_clips"] == 1.0 and metrics["lse_c_own"] == 5.0


def test_the_test_set_names_the_judge_by_version_and_file_hash(registry_uri, tmp_path):
    """Moving the judge's alias (models:/…@champion) to another expert makes another test set,
    so a champion scored by the old judge is evaluated again (record.recorded_metrics)."""
    from lipsync.checkpoints import ModelConfig, save_checkpoint
    from lipsync.models import SyncNet
    from pipelines.evaluate.record import test_set_fingerprint
    from pipelines.tracking.setup import file_hash

    uri = registry_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("judge")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "test-000000.tar").write_bytes(b"the same clips for both judges")

    def test_set() -> tuple[dict, str]:
        evaluator = GeneratorEvaluator(EvalConfig(model="models:/wav2lip@candidate", shards=str(shards),
                                                  tracking_uri=uri, judge_model="models:/judge@champion"))
        settings = evaluator.settings()
        return settings, test_set_fingerprint(str(shards), "test", {"evaluator": evaluator.name, **settings})

    fingerprints = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        folder = tmp_path / f"judge{seed}"
        save_checkpoint(folder / "expert.safetensors", SyncNet(width=0.0625), ModelConfig(kind="expert", width=0.0625))
        version = client.create_model_version("judge", source=str(folder)).version
        client.set_registered_model_alias("judge", ALIAS_CHAMPION, version)
        settings, fingerprint = test_set()
        assert settings["judge_model"] == f"models:/judge/{version}", settings
        assert settings["judge_sha256"] == file_hash(folder / "expert.safetensors")
        assert test_set()[1] == fingerprint  # one judge, one test set
        fingerprints.append(fingerprint)
    assert fingerprints[0] != fingerprints[1]

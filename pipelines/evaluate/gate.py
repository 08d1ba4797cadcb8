"""The promotion gate: the only thing that moves a model's ``champion`` alias.

Rules, all of which must hold for the evaluated version to become champion:
1. thresholds (``--threshold METRIC=VALUE``): each metric at least VALUE when higher is better
   (accuracy, LSE-C, offset recovery, SSIM …), at most VALUE when lower is better (LSE-D, FID …);
2. not worse than the current champion *on the same test set* by more than ``--margin`` on each
   compared metric (the evaluator's default list, or ``--compare``). The champion's figures come
   from its version tags when it was evaluated on the same test set (same fingerprint), otherwise
   it is evaluated now with the same evaluator and shards (pipelines/evaluate/record.py, before
   the gate is asked).
No champion yet → rule 2 holds once the compared metrics were measured. The version evaluated
is already champion → nothing moves.
A metric the gate thresholds or compares must be a measurement on both sides: missing or not
finite (NaN, inf) fails the gate with that reason, never passes it by default.

The decision is recorded on the evaluated version as tags: ``gate.decision`` (promoted / kept),
``gate.reason``, ``gate.compared`` (JSON: metric → candidate, champion, margin, ok),
``gate.champion_version`` (the champion it was compared with), ``gate.test_set``.
"""

from __future__ import annotations

import json
import math

from mlflow.exceptions import MlflowException

from lipsync.errors import ConfigError
from pipelines.tracking.registry import ALIAS_CHAMPION

PROMOTED, KEPT = "promoted", "kept"


def check_thresholds(metrics: dict, thresholds: dict, directions: dict) -> list[str]:
    """Reasons the thresholds fail (empty when they all hold)."""
    failures = []
    for metric, bound in thresholds.items():
        if metric not in directions:
            raise ConfigError(f"--threshold {metric}: not a gated metric (choose from {', '.join(sorted(directions))})")
        value, higher = measured(metrics, metric), directions[metric]
        if value is None:
            failures.append(f"{metric} was not measured" + (f" ({metrics[metric]})" if metric in metrics else ""))
        elif (value < bound) if higher else (value > bound):
            failures.append(f"{metric} {value:.4g} {'<' if higher else '>'} threshold {bound:g}")
    return failures


def compare_with_champion(candidate: dict, champion: dict, compare, directions: dict, margin: float):
    """(figures, reasons): per metric the two values and whether the candidate is within margin."""
    figures, failures = {}, []
    for metric in compare:
        c, ch = measured(candidate, metric), measured(champion, metric)
        unmeasured = [side for side, v in (("candidate", c), ("champion", ch)) if v is None]
        ok = not unmeasured and (c >= ch - margin if directions[metric] else c <= ch + margin)
        figures[metric] = {"candidate": c, "champion": ch, "margin": margin, "ok": ok}
        if unmeasured:
            failures.append(f"{metric} was not measured on the {' nor the '.join(unmeasured)}")
        elif not ok:
            failures.append(f"{metric} {c:.4g} is worse than the champion's {ch:.4g} by more than {margin:g}")
    return figures, failures


def measured(metrics: dict, metric: str) -> float | None:
    """The metric's value when it is a finite number, else None (missing, NaN, inf, not a number)."""
    try:
        value = float(metrics[metric])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def current_champion(client, name: str):
    """The version ``champion`` points at, or None."""
    try:
        return client.get_model_version_by_alias(name, ALIAS_CHAMPION)
    except MlflowException:
        return None


def compared_metrics(evaluator, cfg) -> tuple[str, ...]:
    """The metrics compared with the champion (``--compare`` or the evaluator's), checked."""
    directions = evaluator.metric_directions
    compare = tuple(cfg.compare or evaluator.compare)
    unknown = [m for m in compare if m not in directions]
    if unknown:
        raise ConfigError(f"--compare {unknown[0]}: not a gated metric (choose from {', '.join(sorted(directions))})")
    return compare


def gate(client, evaluator, ref, metrics: dict, champion, champion_metrics: dict | None, cfg,
         test_set: str) -> dict:
    """Decide, record the decision on the version, move ``champion`` when every rule holds.

    ``champion`` is the current champion's version (or None) and ``champion_metrics`` its
    figures on ``test_set`` (pipelines/evaluate/record.py gets them); the gate only decides."""
    directions = evaluator.metric_directions
    compare = compared_metrics(evaluator, cfg)
    failures = check_thresholds(metrics, dict(cfg.thresholds), directions)
    figures: dict = {}
    if champion is not None and str(champion.version) == ref.version:
        decision, reason = KEPT, f"version {ref.version} is already {ALIAS_CHAMPION}"
    else:
        if champion is not None:
            figures, worse = compare_with_champion(metrics, champion_metrics, compare, directions, cfg.margin)
            failures += worse
        else:  # a first champion must hold what its successors will be compared on
            failures += [f"{m} was not measured" for m in compare if measured(metrics, m) is None]
        if failures:
            decision, reason = KEPT, "; ".join(failures)
        else:
            decision = PROMOTED
            reason = "all rules hold" + (f" (champion was version {champion.version})" if champion is not None
                                         else " (no champion before)")
    tags = {"gate.decision": decision, "gate.reason": reason[:4000], "gate.compared": json.dumps(figures),
            "gate.champion_version": str(champion.version) if champion is not None else "",
            "gate.test_set": test_set, "gate.thresholds": json.dumps(dict(cfg.thresholds)),
            "gate.margin": f"{cfg.margin:g}"}
    for key, value in tags.items():
        client.set_model_version_tag(ref.name, ref.version, key, value)
    if decision == PROMOTED:
        client.set_registered_model_alias(ref.name, ALIAS_CHAMPION, ref.version)
    return {"decision": decision, "reason": reason, "compared": figures,
            "champion_version": tags["gate.champion_version"] or None}

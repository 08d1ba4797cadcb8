"""What an evaluation run depends on and what it returns (every evaluator and the gate share these)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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

"""Logging into one MLflow run from a training job that may restart.

A Ray Train job that loses a worker restarts from its last checkpoint and replays the
steps after it; ``--resume`` does the same across driver runs. Both must keep writing to
the *same* MLflow run without duplicating or losing points. ``ResumableRunLogger`` reads,
once at start, the last step already logged for every metric of the run (its high-water
mark) and from then on only logs (key, step) points beyond it. A replayed step therefore
never writes a second point, and every step that was logged before the failure stays.

That is right for training metrics (a lost attempt's step-14 loss is a true figure of that
step), not for the validation metrics of a checkpoint: a lost attempt's step-20 figures
describe weights that were never committed, and the replay commits other weights at step
20. ``CommittedMetricsLogger`` therefore logs what a worker reports with a checkpoint only
once Ray Train's controller has registered that checkpoint (its ``after_report``, called
after the checkpoint manager's): a step whose checkpoint was lost has no point to keep.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from ray.train import UserCallback


class ResumableRunLogger:
    """Metric/artifact logging into an existing run, idempotent per (metric, step)."""

    def __init__(self, run_id: str, tracking_uri: str, system_metrics: bool = False):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        run = self.client.get_run(run_id)
        self.high_water: dict[str, int] = {}
        for key in run.data.metrics:
            history = self.client.get_metric_history(run_id, key)
            if history:
                self.high_water[key] = max(m.step for m in history)
        self._system_run = None
        if system_metrics:
            # Re-attaching with start_run(run_id) makes MLflow continue the system-metric
            # step counter of the run instead of restarting it at 0 (resume_logging).
            self._system_run = mlflow.start_run(run_id=run_id, log_system_metrics=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> int:
        """Log the points not logged before; returns how many were written."""
        now = int(time.time() * 1000)
        fresh = [
            Metric(key, float(value), now, int(step))
            for key, value in metrics.items()
            if step > self.high_water.get(key, -1)
        ]
        if fresh:
            self.client.log_batch(self.run_id, metrics=fresh, synchronous=True)
            for m in fresh:
                self.high_water[m.key] = m.step
        return len(fresh)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        """Upload a directory; a replayed step overwrites the same path (no duplicates)."""
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_image(self, image, artifact_file: str) -> None:
        """Log an (H, W, 3) uint8 RGB image; a replayed step overwrites the same file."""
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def close(self) -> None:
        if self._system_run is not None:
            # Stops the system-metrics thread; the driver sets the run's final status after
            # registering the model (a re-attached run is set back to RUNNING by start_run).
            mlflow.end_run()
            self._system_run = None


class CommittedMetricsLogger(UserCallback):
    """Ray Train controller callback: the metrics reported with each committed checkpoint,
    at the reported ``step``, into the run (idempotent per (metric, step), as above)."""

    def __init__(self, run_id: str, tracking_uri: str):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self._logger: ResumableRunLogger | None = None  # opened in the controller process

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if checkpoint is None:
            return
        reported = dict(metrics[0])  # rank 0's; every rank reports the same all-reduced figures
        step = int(reported.pop("step"))
        if self._logger is None:
            self._logger = ResumableRunLogger(self.run_id, self.tracking_uri)
        self._logger.log_metrics(reported, step)

"""`make demo`'s chain end to end at tiny scale: the same command (workflows/demo.py) with
smaller numbers, every step's output checked, and a re-run that reuses every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = ["--speakers", "4", "--clips-per-speaker", "2", "--expert-steps", "20", "--expert-width", "0.0625",
        "--expert-gate", "0", "--generator-steps", "6", "--generator-width", "0.0625",
        "--generator-batch-size", "4", "--min-sync-confidence", "0", "--max-sync-offset", "15"]
# A 20-step expert is no sync judge: the tiny chain keeps every clip (the filter itself is
# tested in test_sync_filter.py); the step still runs, measures and writes its shards.


def _demo(work: Path, tracking: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, str(REPO / "workflows" / "demo.py"), "--workdir", str(work),
                           "--tracking-uri", tracking, *TINY], capture_output=True, text=True, timeout=1500,
                          cwd=work.parent, env={**env, "PYTHONPATH": str(REPO)})


@pytest.mark.integration
def test_demo_runs_the_whole_chain_and_reuses_finished_steps(tmp_path):
    from mlflow import MlflowClient

    from lipsync.video import probe, read_video

    work, tracking = tmp_path / "demo", f"sqlite:///{tmp_path / 'mlruns.db'}"
    first = _demo(work, tracking)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # Every step (every workflow, and lipsync synth / infer / compare / sync-score) ran in this
    # folder without MLFLOW_TRACKING_URI: it holds what the demo was asked to write, nothing else
    # (no ./mlflow.db from MLflow's default store, no ./mlruns).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "mlartifacts", "mlruns.db"]
    # The console is for a person: the commands' own output is in the log, not on stdout.
    assert "INFO" not in first.stdout and (work / "demo.log").stat().st_size > 10_000

    summary = json.loads((work / "shards" / "summary.json").read_text())
    assert summary["ok"] == 8 and (work / "shards" / "manifest.parquet").exists()
    synced = json.loads((work / "shards_synced" / "summary.json").read_text())
    assert synced["ok"] == 8 and synced["sync"]["measured_inputs"] == 8, synced
    assert synced["config"]["sync_filter"]["model"].startswith("models:/lipsync-expert/"), synced["config"]
    client = MlflowClient(tracking, registry_uri=tracking)
    for name in ("lipsync-expert", "wav2lip"):
        aliases = client.get_registered_model(name).aliases
        assert {"candidate", "champion"} <= set(aliases), (name, aliases)
        version = client.get_model_version(name, aliases["champion"])
        assert any(k.startswith("gate.") for k in version.tags), version.tags  # the gate's decision
        training = client.get_run(version.run_id)
        assert training.data.metrics, name
        images = [a.path for a in client.list_artifacts(version.run_id, "curves")]
        assert images, f"{name}: no curve image"
    generator_run = client.get_model_version("wav2lip", client.get_registered_model("wav2lip").aliases["champion"]).run_id
    assert client.list_artifacts(generator_run, "samples"), "no sample grids"
    evaluations = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                     "tags.`lipsync.training_run_id` != ''")
    assert len(evaluations) >= 2 and all(r.data.metrics for r in evaluations)

    out, both, strip = work / "result.mp4", work / "side_by_side.mp4", work / "strip.png"
    info = probe(out)
    assert info.has_audio and info.n_frames > 10
    result = read_video(out)
    assert abs(len(result.audio) / result.sample_rate - info.n_frames / info.fps) < 0.1
    side = probe(both)
    assert side.has_audio and side.n_frames == info.n_frames and side.width > info.width
    assert strip.stat().st_size > 10_000
    for line in ("dubbed output", "undubbed input", "ground truth", "expert accuracy", "clips processed",
                 "sync filter", "serve the champion (HTTP API and a web page): python "):
        assert line in first.stdout, line

    # A second run changes nothing: every step is reused, and the output is the same file.
    before = out.read_bytes()
    second = _demo(work, tracking)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    reused = [line for line in second.stdout.splitlines() if line.rstrip().endswith("--fresh runs it again)")]
    assert len(reused) == 10, second.stdout  # every step of the chain
    assert np.array_equal(np.frombuffer(out.read_bytes(), np.uint8), np.frombuffer(before, np.uint8))

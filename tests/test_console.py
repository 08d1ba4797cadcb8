"""The workflows' own console (pipelines/common/console.py): run as commands, preprocess and
train print the project's lines and a progress bar; Ray's and MLflow's output (Ray Data's
execution plans, Ray Train's reports, the core worker's C++ lines, MLflow's system-metrics
records, colour codes) goes to a log file named once, or to the console with --verbose
(tests/test_run_status.py checks a terminated training's console too). Each command here
joins the session's Ray cluster (as under `ray job submit`) to stay fast.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.common.console import shown_text

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration

CHATTER = {name: re.compile(pattern) for name, pattern in {
    "Ray Data's executor": r"streaming_executor",
    "Ray Data's bar warning": r"Progress bars disabled",
    "Ray Train's watcher": r"PreemptionWatcher",
    "the core worker": r"core_worker\.cc",
    "Ray Train's reports": r"Reporting training result",
    "MLflow's system metrics": r"system_metrics",
    "MLflow's download bar": r"Downloading artifacts",
    "colour codes": r"\x1b\[",
}.items()}
LOG_NOTICE = re.compile(r"^([\w-]+): Ray's and MLflow's own output goes to (\S+) ", re.M)


def run_workflow(script: str, *flags: str, ray_local) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, f"workflows/{script}", *flags], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def chatter_in(text: str) -> list[str]:
    return [name for name, pattern in CHATTER.items() if pattern.search(text)]


def logged(run: subprocess.CompletedProcess) -> str:
    """The log the run named, exactly once; read and removed."""
    notices = LOG_NOTICE.findall(run.stdout + (run.stderr or ""))
    assert len(notices) == 1, run.stderr[-3000:]
    path = Path(notices[0][1])
    try:
        return path.read_text(errors="replace")
    finally:
        path.unlink()


def test_lines_are_sorted_into_the_projects_and_the_logs():
    # Lines as Ray and MLflow printed them on a run of today's workflows.
    for line in ("2026-12-03 07:19:14,017\tINFO streaming_executor.py:215 -- Starting execution of Dataset d_0.",
                 "2026-12-03 07:19:14,022\tWARNING __init__.py:28 -- Progress bars disabled. To enable, set ...",
                 "\x1b[36m(TrainController pid=8920)\x1b[0m [2026-12-03 07:20:37,631 E 8920 8972] core_worker.cc:2465: "
                 "Actor with class name: 'PreemptionWatcher' ...",
                 "\x1b[36m(RayTrainWorker pid=9145)\x1b[0m Reporting training result 1: TrainingReport(...)",
                 "(RayTrainWorker pid=9145) 2026/12/03 07:20:46 INFO mlflow.system_metrics.system_metrics_monitor: ...",
                 "(MapBatches(process_and_write) pid=77, ip=10.0.0.2) anything a task prints",
                 "2026/12/03 07:19:42 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
                 "Downloading artifacts:  50%|█████     | 1/2 [00:00<00:00, 12.1it/s]",
                 'INFO 2026-12-03 13:51:52,373 serve 29527 -- Started Serve in namespace "serve".'):
        assert shown_text(line) is None, line
    assert shown_text("\x1b[36m(RayTrainWorker pid=9145)\x1b[0m [expert] step 1/2 loss 0.5158") == \
        "[expert] step 1/2 loss 0.5158"
    for line in ("preprocess summary: 6 inputs: 6 ok", "error: --shards x: no such folder", '  "final_step": 2,',
                 "Traceback (most recent call last):"):
        assert shown_text(line) == line


# A workflow in miniature: a Ray-like log record, a worker's counter lines, the JSON result.
_FAKE_RUN = """
import sys, time
from pipelines.common.console import TRAINING_PROGRESS, quiet_console
with quiet_console("fake", progress=TRAINING_PROGRESS, label="[x] step"):
    print("2026-12-03 07:19:14,017\\tINFO streaming_executor.py:215 -- Starting execution", file=sys.stderr, flush=True)
    for i in (1, 2, 3):
        print(f"\\x1b[36m(RayTrainWorker pid=1)\\x1b[0m [x] step {i}/4 loss 0.5", flush=True)
        time.sleep(0.3)
    print('{\\n  "final_step": 3\\n}', flush=True)
"""


def test_in_a_log_every_shown_line_starts_a_line_of_its_own(tmp_path):
    """stdout and stderr merged into one pipe (a CI log, `ray job submit`): the bar's last
    draw ends before a line is shown, so neither the lines nor the JSON result are glued to it."""
    run = subprocess.run([sys.executable, "-c", _FAKE_RUN], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert run.returncode == 0, run.stdout
    lines = re.split(r"[\r\n]", run.stdout)
    for shown in ("[x] step 1/4 loss 0.5", "[x] step 2/4 loss 0.5", "[x] step 3/4 loss 0.5", "{", "}"):
        assert shown in lines, run.stdout
    assert json.loads(run.stdout[run.stdout.rindex("{\n"):run.stdout.rindex("}") + 1]) == {"final_step": 3}
    notice = [line for line in lines if "own output goes to" in line]
    assert len(notice) == 1 and LOG_NOTICE.match(notice[0]), run.stdout
    assert re.search(r"\[x\] step: +75%", run.stdout) and chatter_in(run.stdout) == [], run.stdout
    assert "Ray Data's executor" in chatter_in(logged(run))


def test_preprocess_and_train_show_the_projects_lines_and_log_ray_and_mlflow(synth_corpus, shards, ray_local,
                                                                             tmp_path):
    clips = tmp_path / "clips.txt"
    clips.write_text(f"{next((synth_corpus / 'main').glob('*/*.mp4'))}\n")
    # One clip, one Ray Data job: --segment-seconds 0 plans no pieces, so no probe job runs first.
    preprocess = ["--input", str(clips), "--layout", "filelist", "--num-cpus", "1", "--segment-seconds", "0"]

    quiet = run_workflow("preprocess.py", *preprocess, "--output", str(tmp_path / "quiet"), ray_local=ray_local)
    assert "preprocess summary: 1 inputs: 1 ok" in quiet.stdout, quiet.stdout
    assert chatter_in(quiet.stdout + quiet.stderr) == [], quiet.stdout + quiet.stderr
    assert "Ray Data's executor" in chatter_in(logged(quiet))

    verbose = run_workflow("preprocess.py", *preprocess, "--output", str(tmp_path / "verbose"), "--verbose",
                           ray_local=ray_local)
    assert "Ray Data's executor" in chatter_in(verbose.stdout + verbose.stderr)
    assert not LOG_NOTICE.search(verbose.stdout + verbose.stderr)

    train = run_workflow(
        "train.py", "--stage", "expert", "--shards", str(shards), "--width", "0.0625", "--batch-size", "8",
        "--max-steps", "1", "--log-every", "1", "--checkpoint-every", "1", "--num-workers", "1",
        "--windows-per-clip", "4", "--shuffle-buffer", "8", "--val-windows-per-clip", "2", "--val-max-clips", "1",
        "--max-failures", "0", "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}",
        "--storage-path", str(tmp_path / "ray"), ray_local=ray_local)
    assert "[expert] step 1/1 loss" in train.stdout, train.stdout
    assert json.loads(train.stdout[train.stdout.rindex("{\n"):])["model_version"] == "1"
    assert chatter_in(train.stdout + train.stderr) == [], train.stdout + train.stderr
    assert {"Ray Train's reports", "MLflow's system metrics"} <= set(chatter_in(logged(train)))

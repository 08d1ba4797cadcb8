"""No training run is left RUNNING in MLflow (pipelines/train/driver.py ``end_run``).

Before, a SIGTERM of the driver (what a scheduler or `kubectl delete` sends) killed it where it
stood and the run stayed RUNNING for ever; a resubmit with the same --run-name was then refused
without a word about what happened to the first. Here a real `python workflows/train.py`
(its own local Ray cluster, a SQLite MLflow store) is terminated mid-training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from lipsync.terminate import Terminated, sigterm_raises
from test_console import LOG_NOTICE, chatter_in

REPO = Path(__file__).resolve().parent.parent


def test_sigterm_raises_terminated_in_the_block_and_only_there():
    previous = signal.getsignal(signal.SIGTERM)
    caught = None
    with sigterm_raises():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode boundary
        except Terminated as e:
            caught = e
    assert isinstance(caught, Terminated) and caught.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_terminated_training_ends_its_run_killed_and_a_resubmit_says_how_to_resume(shards, tmp_path):
    db = f"sqlite:///{tmp_path / 'mlruns.db'}"
    flags = ["--stage", "expert", "--shards", str(shards), "--width", "0.0625", "--batch-size", "8",
             "--max-steps", "100000", "--log-every", "1", "--checkpoint-every", "1000", "--num-workers", "1",
             "--tracking-uri", db, "--storage-path", str(tmp_path / "ray"), "--run-name", "doomed",
             "--no-register", "--no-system-metrics"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own cluster, as a user's shell
    proc = subprocess.Popen([sys.executable, "workflows/train.py", *flags], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    client = MlflowClient(tracking_uri=db)
    try:
        deadline = time.monotonic() + 300
        run = None
        while run is None or "train_loss" not in run.data.metrics:  # training is under way
            assert proc.poll() is None, f"training ended before it was terminated:\n{proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "no training step was logged within 300 s"
            time.sleep(0.5)
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()]) \
                if (tmp_path / "mlruns.db").exists() else []
            run = runs[0] if runs else None
        assert run.info.status == "RUNNING"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "terminated: the MLflow run is marked KILLED" in err and "Traceback" not in err, err[-3000:]
    # Through the quiet console (pipelines/common/console.py) too: Ray's own lines are in its log.
    assert chatter_in(err) == [] and len(LOG_NOTICE.findall(err)) == 1, err[-3000:]
    Path(LOG_NOTICE.search(err).group(2)).unlink()
    assert client.get_run(run.info.run_id).info.status == "KILLED"

    resubmit = subprocess.run([sys.executable, "workflows/train.py", *flags], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    assert resubmit.returncode == 2, resubmit.stderr[-3000:]
    line = resubmit.stderr.strip().splitlines()[-1]
    assert f"(MLflow run {run.info.run_id}, KILLED)" in line and "--resume --run-name doomed" in line, line

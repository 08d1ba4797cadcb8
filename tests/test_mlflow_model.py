"""Registered versions are MLflow Models (pipelines/tracking/mlflow_model.py): MLflow's own
loader and `mlflow models serve` use them, against a real MLflow server; the library still
loads them (and versions registered before, as plain checkpoint folders) without pyfunc.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import requests
import soundfile as sf
import torch
from mlflow import MlflowClient

from conftest import REPO, VENV_BIN, face_image, free_port, speech_like, stop_process_group, wait_for_http
from lipsync.checkpoints import ModelConfig, load_model, save_checkpoint
from lipsync.models import SyncNet, Wav2Lip
from lipsync.video import probe, write_video
from pipelines.tracking.registry import register_checkpoint

GENERATOR, EXPERT = "pyfunc-wav2lip", "pyfunc-expert"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyfunc_media")
    face = face_image()
    write_video(root / "face.mp4", np.stack([np.roll(face, i % 3, axis=1) for i in range(25)]), 25, crf=10)
    cv2.imwrite(str(root / "face.png"), face)
    sf.write(root / "speech.wav", speech_like(1.4), 16000)
    return root


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory):
    """A generator and an expert registered the way training registers them, and a generator
    version registered the old way (the plain checkpoint folder as its source)."""
    client = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    run = client.create_run(client.create_experiment("pyfunc-test"))
    root = tmp_path_factory.mktemp("pyfunc_ckpt")
    torch.manual_seed(0)
    for name, model, kind in (("wav2lip", Wav2Lip(width=0.25), "wav2lip"), ("expert", SyncNet(width=0.25), "expert")):
        save_checkpoint(root / name / f"{name}.safetensors", model.eval(), ModelConfig(kind=kind, width=0.25))
        client.log_artifacts(run.info.run_id, str(root / name), f"{name}/step-0000010")
    client.set_terminated(run.info.run_id)
    register_checkpoint(run.info.run_id, "wav2lip/step-0000010", GENERATOR, alias="champion", tracking_uri=mlflow_server.uri)
    register_checkpoint(run.info.run_id, "expert/step-0000010", EXPERT, alias="champion", tracking_uri=mlflow_server.uri)
    old = client.create_model_version(GENERATOR, f"runs:/{run.info.run_id}/wav2lip/step-0000010", run_id=run.info.run_id)
    return {"client": client, "uri": mlflow_server.uri, "old": old.version, "weights": root / "wav2lip" / "wav2lip.safetensors"}


def _pyfunc(script: str, registry, *args) -> dict:
    """Run ``script`` with MLflow's process-wide URIs set (in a child: they stay out of this one)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"], "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_INFO = """
import json, sys
from mlflow.models import get_model_info
info = get_model_info(sys.argv[1])
print(json.dumps({"code": info.flavors["python_function"].get("model_code_path"),
                  "inputs": sorted(c["name"] for c in info.signature.inputs.to_dict()),
                  "example": info.saved_input_example_info is not None}))
"""


def test_a_registered_version_is_an_mlflow_model_with_signature_and_example(registry, tmp_path):
    client = registry["client"]
    for name, inputs in ((GENERATOR, ["audio", "audio_b64", "face", "face_b64", "out"]), (EXPERT, ["video", "video_b64"])):
        version = client.get_model_version_by_alias(name, "champion")
        assert version.source.endswith("/step-0000010/mlflow-model"), version.source
        info = _pyfunc(_INFO, registry, f"models:/{name}/{version.version}")
        assert info["code"] and info["code"].endswith("pyfunc_model.py") and info["example"], info
        assert info["inputs"] == inputs, info
    # The library loads the safetensors file inside, without pyfunc; and the old version too.
    from lipsync.model_ref import fetch

    for ref in (f"models:/{GENERATOR}@champion", f"models:/{GENERATOR}/{registry['old']}"):
        model, config = load_model(str(fetch(ref, tmp_path / ref.rsplit("/", 1)[-1], registry["uri"])), kind="wav2lip")
        want = load_model(str(registry["weights"]), kind="wav2lip")[0].state_dict()
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items()), ref


_PREDICT = """
import base64, json, sys
import mlflow, pandas as pd
gen = mlflow.pyfunc.load_model(sys.argv[1])
paths = gen.predict(pd.DataFrame({"face": [sys.argv[3]], "audio": [sys.argv[4]], "out": [sys.argv[5]]}))
b64 = gen.predict(pd.DataFrame({"face_b64": [base64.b64encode(open(sys.argv[6], "rb").read()).decode()],
                                "audio_b64": [base64.b64encode(open(sys.argv[4], "rb").read()).decode()]}))
open(sys.argv[7], "wb").write(base64.b64decode(b64["video_b64"][0]))
expert = mlflow.pyfunc.load_model(sys.argv[2]).predict(pd.DataFrame({"video": [sys.argv[5]]}))
print(json.dumps({"out": list(paths["out"]), "expert": expert.to_dict("records")}))
"""


def test_pyfunc_predict_dubs_paths_and_base64_and_the_expert_scores(registry, media, tmp_path):
    from lipsync.metrics.sync import ExpertJudge
    from lipsync.metrics.sync_score import load_expert, score_video

    out, photo_out = tmp_path / "dubbed.mp4", tmp_path / "photo.mp4"
    got = _pyfunc(_PREDICT, registry, f"models:/{GENERATOR}@champion", f"models:/{EXPERT}@champion",
                  media / "face.mp4", media / "speech.wav", out, media / "face.png", photo_out)
    assert got["out"] == [str(out)]
    for video in (out, photo_out):
        info = probe(video)
        assert info.n_frames == 35 and info.has_audio, (video, info)
    (scores,) = got["expert"]
    judge = ExpertJudge(load_expert(f"models:/{EXPERT}@champion", registry["uri"]))
    direct = score_video(out, judge)
    assert scores == pytest.approx({"lse_d": direct.lse_d, "lse_c": direct.lse_c, "offset": direct.offset})


def test_mlflow_models_serve_answers_invocations(registry, media, tmp_path):
    port = free_port()
    # MLflow starts `uvicorn` from PATH: the environment's own, as in an activated virtualenv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"], "PYTHONPATH": str(REPO),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{GENERATOR}@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=180, proc=proc)
        payload = {"dataframe_split": {"columns": ["face_b64", "audio_b64"], "data": [[
            base64.b64encode((media / "face.mp4").read_bytes()).decode(),
            base64.b64encode((media / "speech.wav").read_bytes()).decode()]]}}
        r = requests.post(f"http://127.0.0.1:{port}/invocations", json=payload, timeout=300)
        assert r.status_code == 200, r.text[-2000:]
        (row,) = r.json()["predictions"]
        (tmp_path / "served.mp4").write_bytes(base64.b64decode(row["video_b64"]))
        info = probe(tmp_path / "served.mp4")
        assert info.n_frames == 35 and info.has_audio, info
    finally:
        stop_process_group(proc)
        log.close()

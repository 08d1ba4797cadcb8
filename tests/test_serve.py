"""The lip-sync service (workflows/serve.py): a real Ray Serve application on its own local
cluster, serving a generator registered in a real MLflow server, asked by real HTTP clients.

One service for the module (its start is the slow part); the tests run in file order and the
last one stops it with SIGTERM.
"""

from __future__ import annotations

import glob
import os
import queue
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import requests
import soundfile as sf
import torch

from conftest import REPO, face_image, free_port, ray_env, speech_like, stop_process_group
from lipsync.checkpoints import ModelConfig, save_checkpoint
from lipsync.models import Wav2Lip
from lipsync.video import write_video

MODEL_NAME = "serve-test"
MAX_UPLOAD_MB = 4


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_media")
    face = face_image()
    write_video(root / "face.mp4", np.stack([np.roll(face, i % 3, axis=1) for i in range(25)]), 25, crf=10)
    write_video(root / "noface.mp4", np.full((10, 128, 128, 3), 90, np.uint8), 25, crf=10)
    cv2.imwrite(str(root / "face.png"), face)
    sf.write(root / "speech_1_4s.wav", speech_like(1.4), 16000)
    sf.write(root / "speech_12s.wav", speech_like(12.0, 1), 16000)  # 300 frames: long enough to be busy
    sf.write(root / "speech_60s.wav", speech_like(60.0, 2), 16000)  # 1500 frames: in flight across a version move
    (root / "text.mp4").write_text("this is not a video\n")
    (root / "big.mp4").write_bytes(os.urandom((MAX_UPLOAD_MB + 1) * 2**20))
    return root


def register_generator(tracking_uri: str, folder: Path, seed: int, alias: str | None = None) -> str:
    """A small random generator (weights from ``seed``) registered as a new serve-test version."""
    import mlflow

    from pipelines.tracking.registry import register_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(folder / "wav2lip.safetensors", Wav2Lip(width=0.25).eval(), ModelConfig(kind="wav2lip", width=0.25))
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(MODEL_NAME)
    run = client.create_run(experiment.experiment_id if experiment else client.create_experiment(MODEL_NAME))
    client.log_artifacts(run.info.run_id, str(folder), "checkpoint")
    client.set_terminated(run.info.run_id)
    version = register_checkpoint(run.info.run_id, "checkpoint", MODEL_NAME, alias=alias, tracking_uri=tracking_uri)
    return f"models:/{MODEL_NAME}/{version}"


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory):
    """serve-test@champion: version 1."""
    return register_generator(mlflow_server.uri, tmp_path_factory.mktemp("serve_checkpoint"), seed=0, alias="champion")


class Service:
    def __init__(self, proc, url, token, token_file, lines, later):
        self.proc, self.url, self.token, self.token_file = proc, url, token, token_file
        self.lines, self.later = lines, later  # the lines up to "serving ...", and a queue of the rest

    def post(self, face, audio, token=None, **fields):
        headers = {} if token is False else {"Authorization": f"Bearer {token or self.token}"}
        with open(face, "rb") as f, open(audio, "rb") as a:
            return requests.post(f"{self.url}/v1/lipsync", headers=headers, data=fields, timeout=300,
                                 files={"face": (Path(face).name, f), "audio": (Path(audio).name, a)})


@pytest.fixture(scope="module")
def service(mlflow_server, registered, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    token_file = folder / "secrets" / "serve_token"
    port = free_port()
    env = ray_env()
    env.pop("LIPSYNC_SERVE_TOKEN", None)
    cmd = [sys.executable, str(REPO / "workflows" / "serve.py"), "--model", f"models:/{MODEL_NAME}@champion",
           "--tracking-uri", mlflow_server.uri, "--port", str(port), "--token-file", str(token_file),
           "--precision", "fp32", "--queue", "0", "--max-upload-mb", str(MAX_UPLOAD_MB),
           "--follow-alias", "--poll-seconds", "1"]
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + 240
    while not any(line.startswith("serving http://") for line in seen):
        assert proc.poll() is None or not lines.empty(), f"serve.py exited {proc.returncode}:\n" + "\n".join(seen)
        assert time.monotonic() < deadline, "no 'serving' line within 240 s:\n" + "\n".join(seen)
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            pass
    url = f"http://127.0.0.1:{port}"
    assert f"serving {url}" in seen, seen
    yield Service(proc, url, token_file.read_text().strip(), token_file, seen, lines)
    stop_process_group(proc)


def _in_flight(service, face, audio):
    """A request started on a thread, returned once the replica holds it: (thread, {"r": response}
    or {"error": the requests exception})."""
    first: dict = {}

    def send():
        try:
            first["r"] = service.post(face, audio)
        except requests.RequestException as e:
            first["error"] = e

    worker = threading.Thread(target=send)
    worker.start()
    deadline = time.monotonic() + 60
    while requests.get(f"{service.url}/healthz", timeout=30).json()["ongoing"] < 1:
        assert worker.is_alive() and time.monotonic() < deadline, first
        time.sleep(0.05)
    return worker, first


def _our_temp_folders() -> set[str]:
    return {p for p in glob.glob(os.path.join(tempfile.gettempdir(), "lipsync-serve-*")) if os.path.isdir(p)}


def test_start_creates_an_owner_only_token_and_pins_the_alias(service, registered):
    assert stat.S_IMODE(service.token_file.stat().st_mode) == 0o600 and len(service.token) >= 32
    assert f"token: {service.token_file} (created)" in service.lines, service.lines
    assert f"model: models:/{MODEL_NAME}@champion -> {registered}" in service.lines, service.lines
    health = requests.get(f"{service.url}/healthz", timeout=30)  # no token needed
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["model"] == f"models:/{MODEL_NAME}@champion" and body["version"] == registered, body
    assert body["generator"]["precision"] == "fp32" and body["generator"]["device"] == "cpu", body


def test_a_request_gets_a_video_as_long_as_its_audio(service, media, registered, tmp_path):
    before = _our_temp_folders()
    r = service.post(media / "face.mp4", media / "speech_1_4s.wav")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4" and r.headers["x-lipsync-model-version"] == registered
    out = tmp_path / "out.mp4"
    out.write_bytes(r.content)
    with av.open(str(out)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert video.frames == 35 and (video.width, video.height) == (256, 256)
        assert float(audio.duration * audio.time_base) == pytest.approx(1.4, abs=0.03)
    # A photo and the options of `lipsync infer`, as form fields.
    r = service.post(media / "face.png", media / "speech_1_4s.wav", pads="0 20 0 0", nosmooth="true",
                     hard_paste="1", crop="0 -1 0 200")
    assert r.status_code == 200, r.text
    out.write_bytes(r.content)
    with av.open(str(out)) as c:
        assert c.streams.video[0].frames == 35 and (c.streams.video[0].width, c.streams.video[0].height) == (200, 256)
    assert _our_temp_folders() <= before, "a request left its temporary folder behind"


@pytest.mark.parametrize("case,face,audio,kwargs,status,needle", [
    ("no token", "face.mp4", "speech_1_4s.wav", {"token": False}, 401, "bearer token"),
    ("wrong token", "face.mp4", "speech_1_4s.wav", {"token": "not-the-token"}, 401, "bearer token"),
    ("not media", "text.mp4", "speech_1_4s.wav", {}, 415, "face (text.mp4): not a media file"),
    ("no audio track", "face.png", "face.mp4", {}, 400, "audio (face.mp4): media without an audio track"),
    ("no face", "noface.mp4", "speech_1_4s.wav", {}, 400, "face (noface.mp4): no face found"),
    ("an option the service keeps", "face.mp4", "speech_1_4s.wav", {"device": "cuda"}, 400, "unknown field 'device'"),
    ("a bad option value", "face.mp4", "speech_1_4s.wav", {"pads": "1 2"}, 400, "pads: expected 4 integers"),
    ("over the upload limit", "big.mp4", "speech_1_4s.wav", {}, 413, f"limit of {MAX_UPLOAD_MB} MB"),
])
def test_each_refusal_is_its_status_and_one_json_line(service, media, case, face, audio, kwargs, status, needle):
    before = _our_temp_folders()
    r = service.post(media / face, media / audio, **kwargs)
    assert r.status_code == status, (case, r.status_code, r.text)
    message = r.json()["error"]
    assert needle in message and "\n" not in message and "/tmp" not in message, (case, message)
    assert _our_temp_folders() <= before, f"{case}: a temporary folder was left behind"


def test_an_upload_without_content_length_is_411(service):
    chunks = (part for part in (b"--x\r\n", b"not read\r\n"))  # a generator body: sent chunked
    r = requests.post(f"{service.url}/v1/lipsync", data=chunks, timeout=60,
                      headers={"Authorization": f"Bearer {service.token}", "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 411 and "Content-Length" in r.json()["error"], r.text


def test_an_async_job_reports_progress_and_hands_over_its_video(service, media, tmp_path):
    auth = {"Authorization": f"Bearer {service.token}"}
    before = _our_temp_folders()
    r = requests.post(f"{service.url}/v1/lipsync?async=1", headers=auth, timeout=60,
                      files={"face": open(media / "face.mp4", "rb"), "audio": open(media / "speech_12s.wav", "rb")})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status_url"] == f"/v1/jobs/{job['id']}" and job["result_url"] == f"/v1/jobs/{job['id']}/result"
    early = requests.get(f"{service.url}{job['result_url']}", headers=auth, timeout=30)
    assert early.status_code == 409 and "ask again later" in early.json()["error"], early.text
    assert requests.get(f"{service.url}{job['status_url']}", timeout=30).status_code == 401
    seen, deadline = [], time.monotonic() + 240
    while (status := requests.get(f"{service.url}{job['status_url']}", headers=auth, timeout=30).json())["status"] != "done":
        assert status["status"] in ("queued", "running") and time.monotonic() < deadline, status
        seen.append(status["progress"])
        time.sleep(0.05)
    assert status["frames"] == status["frames_done"] == 300 and status["progress"] == 1.0, status
    assert any(0 < p < 1 for p in seen) and seen == sorted(seen), seen
    video = requests.get(f"{service.url}{job['result_url']}", headers=auth, timeout=60)
    assert video.status_code == 200 and video.headers["x-lipsync-frames"] == "300"
    (tmp_path / "job.mp4").write_bytes(video.content)
    with av.open(str(tmp_path / "job.mp4")) as c:
        assert c.streams.video[0].frames == 300
    # A job that fails says why, in its status and at its result; an unknown id is a 404.
    r = requests.post(f"{service.url}/v1/lipsync?async=1", headers=auth, timeout=60,
                      files={"face": open(media / "noface.mp4", "rb"), "audio": open(media / "speech_1_4s.wav", "rb")})
    assert r.status_code == 202, r.text
    failed_url = f"{service.url}/v1/jobs/{r.json()['id']}"
    deadline = time.monotonic() + 120
    while (status := requests.get(failed_url, headers=auth, timeout=30).json())["status"] != "failed":
        assert status["status"] in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.1)
    assert "noface.mp4" in status["error"] and "no face found" in status["error"], status
    result = requests.get(f"{failed_url}/result", headers=auth, timeout=30)
    assert result.status_code == 400 and result.json()["error"] == status["error"]
    missing = requests.get(f"{service.url}/v1/jobs/0123456789abcdef", headers=auth, timeout=30)
    assert missing.status_code == 404 and "no job 0123456789abcdef" in missing.json()["error"]
    assert _our_temp_folders() <= before, "a job left its temporary folder behind"


def test_the_web_page_uploads_waits_and_plays_a_result_as_long_as_the_audio(service, media):
    """The page at / in a real headless browser (Debian's chromium through Selenium)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as Driver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for tool in ("chromium", "chromedriver"):
        assert shutil.which(tool), f"{tool} is missing: make install installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Driver(shutil.which("chromedriver")))
    try:
        browser.get(f"{service.url}/")
        assert browser.title == "lipsync"
        browser.find_element(By.ID, "face").send_keys(str(media / "face.mp4"))
        browser.find_element(By.ID, "audio").send_keys(str(media / "speech_1_4s.wav"))
        browser.find_element(By.ID, "token").send_keys("not-the-token")
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 60).until(lambda b: "bearer token" in b.find_element(By.ID, "status").text)
        token = browser.find_element(By.ID, "token")
        token.clear()
        token.send_keys(service.token)
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 180).until(lambda b: b.execute_script(
            "const v = document.getElementById('result'); return !v.hidden && v.readyState >= 1 || v.error !== null"))
        error = browser.execute_script("const e = document.getElementById('result').error; return e && e.code")
        assert error is None, f"the browser cannot play the result (MediaError {error})"
        duration = browser.execute_script("return document.getElementById('result').duration")
        assert duration == pytest.approx(1.4, abs=0.05)
        played = browser.execute_async_script("""
            const done = arguments[arguments.length - 1], v = document.getElementById('result');
            v.muted = true;
            v.play().then(() => setTimeout(() => done(v.currentTime), 700), (e) => done('play failed: ' + e));""")
        assert isinstance(played, float) and played > 0.2, played
        link = browser.find_element(By.ID, "download")
        assert link.is_displayed() and link.get_attribute("href").startswith("blob:")
        assert browser.find_element(By.ID, "input").get_attribute("src").startswith("blob:")  # the input beside it
    finally:
        browser.quit()


def test_a_busy_replica_answers_503_with_retry_after_and_finishes_the_first(service, media):
    worker, first = _in_flight(service, media / "face.mp4", media / "speech_12s.wav")
    second = service.post(media / "face.mp4", media / "speech_1_4s.wav")
    assert second.status_code == 503 and int(second.headers["retry-after"]) > 0, second.text
    assert "busy" in second.json()["error"]
    worker.join(timeout=300)
    assert first["r"].status_code == 200 and first["r"].headers["x-lipsync-frames"] == "300", first["r"].text
    assert service.post(media / "face.mp4", media / "speech_1_4s.wav").status_code == 200  # serving again


def test_a_replica_killed_mid_request_is_an_error_for_that_caller_and_the_service_recovers(service, media):
    import psutil

    worker, first = _in_flight(service, media / "face.mp4", media / "speech_60s.wav")
    (replica,) = [p for p in psutil.Process(service.proc.pid).children(recursive=True)
                  if (p.cmdline() or [""])[0].startswith("ray::ServeReplica:lipsync")]
    held = [f for f in _our_temp_folders() if f"lipsync-serve-{replica.pid}-" in f]
    assert held, "the replica's request folder was not found"
    replica.kill()
    worker.join(timeout=120)
    # The caller is told: Serve answers 5xx, or the connection is closed without an answer.
    assert isinstance(first.get("error"), requests.ConnectionError) or first["r"].status_code >= 500, first
    deadline = time.monotonic() + 180
    while (r := service.post(media / "face.mp4", media / "speech_1_4s.wav")).status_code != 200:
        assert time.monotonic() < deadline, f"no recovery: {r.status_code} {r.text[:300]}"
        time.sleep(1)
    assert not any(os.path.exists(f) for f in held), "the new replica left the dead one's folder"


def test_an_alias_move_swaps_the_version_without_failing_the_request_in_flight(service, media, registered,
                                                                             mlflow_server, tmp_path):
    import mlflow

    old, new = registered, register_generator(mlflow_server.uri, tmp_path, seed=1)
    client = mlflow.MlflowClient(mlflow_server.uri)
    worker, first = _in_flight(service, media / "face.mp4", media / "speech_60s.wav")
    client.set_registered_model_alias(MODEL_NAME, "champion", new.rsplit("/", 1)[1])
    deadline = time.monotonic() + 180
    while requests.get(f"{service.url}/healthz", timeout=30).json()["version"] != new:
        assert time.monotonic() < deadline, "the service did not move to the new version"
        time.sleep(0.2)
    assert worker.is_alive(), "the long request ended before the move: it proves nothing"
    worker.join(timeout=300)
    assert first["r"].status_code == 200, first["r"].text
    assert first["r"].headers["x-lipsync-model-version"] == old and first["r"].headers["x-lipsync-frames"] == "1500"
    after = service.post(media / "face.mp4", media / "speech_1_4s.wav")
    assert after.status_code == 200 and after.headers["x-lipsync-model-version"] == new, after.text
    seen = []
    while not service.later.empty():
        seen.append(service.later.get())
    assert f"models:/{MODEL_NAME}@champion moved: {old} -> {new}" in seen, seen


def test_sigterm_stops_the_service_and_its_cluster(service):
    import psutil

    cluster = psutil.Process(service.proc.pid).children(recursive=True)  # GCS, raylet, Serve's actors
    assert any((p.cmdline() or [""])[0].startswith("ray::ServeReplica") for p in cluster), cluster
    service.proc.send_signal(signal.SIGTERM)
    service.proc.wait(timeout=120)
    rest = []
    while not service.later.empty():
        rest.append(service.later.get())
    assert service.proc.returncode == 0 and "stopped" in rest, rest
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{service.url}/healthz", timeout=5)
    gone, alive = psutil.wait_procs(cluster, timeout=30)
    assert not alive, f"processes of the service's cluster outlived it: {alive}"

"""Integration tests of the preprocessing job on a real local Ray cluster.

A tiny synthetic LRS2 corpus plus deliberately broken inputs (tests/preprocess_inputs.py)
goes through ``run_preprocess``; the manifest must account for every input with the right
status, and the shards, read back through ``webdataset``, must hold exactly the frames and
mel the library computes for the same clips. Also: idempotent re-run (+ MLflow logging), a
driver killed midway and resumed, and ``ray job submit`` against a token-auth head node.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from lipsync import audio as lsa
from lipsync import video as lsv
from lipsync.data.clip_sample import decode_clip_sample
from lipsync.faces import crop_faces
from pipelines.dataset.manifest import manifest_hash, read_manifest
from pipelines.preprocess.driver import PreprocessConfig, run_preprocess

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess_inputs import EXPECTED, add_broken_inputs, add_long_input  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration

# Small shards so a handful of clips spans several of them (resume has shards to skip).
SHARD_SIZE = 250_000
# Inputs over 1.5 x 2 s are cut into 2 s pieces (clips of at most 2 s): the corpus' "long" input
# (about 5 s) is three pieces, three tasks; the other inputs are one piece each.
PIECE = dict(segment_seconds=2.0, max_clip_seconds=2.0)
LONG = "long"


def _config(corpus: Path, output: Path, **overrides) -> PreprocessConfig:
    base = dict(input=str(corpus), output=str(output), layout="lrs2", codec="png",
                shard_size=SHARD_SIZE, num_cpus=2, progress=False, **PIECE)
    base.update(overrides)
    return PreprocessConfig(**base)


def _cli_args(corpus: Path, output: Path) -> list[str]:
    return ["--input", str(corpus), "--output", str(output), "--layout", "lrs2", "--codec", "png",
            "--shard-size", str(SHARD_SIZE), "--no-progress", "--segment-seconds", str(PIECE["segment_seconds"]),
            "--max-clip-seconds", str(PIECE["max_clip_seconds"])]


def _digest_dir(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.glob("*.tar"))}


def _sample_digests(path: Path) -> dict[str, str]:
    """Every sample's bytes by key, whatever shard holds it (each key must appear once)."""
    digests: dict[str, str] = {}
    for sample in wds.WebDataset(sorted(str(p) for p in path.glob("*.tar")), shardshuffle=False):
        parts = sorted((k, v) for k, v in sample.items() if not k.startswith("__"))
        assert sample["__key__"] not in digests, f"{sample['__key__']} is in two shards"
        digests[sample["__key__"]] = hashlib.sha256(b"".join(k.encode() + v for k, v in parts)).hexdigest()
    return digests


def _rows_without_shard(path: Path) -> dict[str, dict]:
    return {r["input_id"]: {k: v for k, v in r.items() if k != "shard" and v == v}
            for r in read_manifest(path / "manifest.parquet")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from lipsync.synth import make_corpus

    root = tmp_path_factory.mktemp("pp_corpus")
    info = make_corpus(root, speakers=3, clips_per_speaker=2, seed=11, layout="lrs2",
                       seconds=(1.2, 1.6), progress=False)
    add_broken_inputs(root, info.files[0], info.files[-1], speaker="broken")
    add_long_input(root, info.files[0])
    return root


@pytest.fixture(scope="module")
def preprocessed(corpus, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("pp_out")
    summary = run_preprocess(_config(corpus, out))
    return out, summary


def test_manifest_accounts_for_every_input(corpus, preprocessed):
    out, summary = preprocessed
    rows = {r["input_id"]: r for r in read_manifest(out / "manifest.parquet")}
    files = sorted(p.relative_to(corpus / "main").with_suffix("").as_posix() for p in corpus.glob("main/*/*.mp4"))
    assert sorted(rows) == files                      # every input, once
    for name, (status, reason) in EXPECTED.items():
        row = rows[f"broken/{name}"]
        assert (row["status"], row["reason"]) == (status, reason), row
        if status != "ok":
            assert row["shard"] == "" and row["sample_keys"] == []
    good = [r for r in rows.values() if not r["input_id"].startswith("broken/")]
    assert good and all(r["status"] == "ok" for r in good)
    for r in rows.values():
        if r["status"] == "ok":
            clips = {"twoshots": 2, LONG: 3}.get(r["clip_id"], 1)
            assert len(r["sample_keys"]) == r["n_clips"] == clips, r
            assert r["shard"] and all((out / name).exists() for name in r["shard"].split(","))
            assert r["mean_face_size"] > 48 and r["detection_rate"] > 0.9 and np.isfinite(r["box_jitter"])
    # 30 fps input resampled to 25 fps: frame count follows the duration, not the source rate.
    fps30 = rows["broken/fps30"]
    assert fps30["source_fps"] == pytest.approx(30.0)
    assert abs(fps30["n_frames"] - fps30["source_duration"] * 25) <= 1
    # Portrait phone clip: reported as displayed (upright), rotation noted.
    assert (rows["broken/rotated"]["width"], rows["broken/rotated"]["height"]) == (160, 224)
    assert rows["broken/rotated"]["rotation"] == 90
    # Official lists decide splits; speakers are never in two splits.
    speakers = {}
    for r in rows.values():
        if r["status"] == "ok":
            assert speakers.setdefault(r["speaker"], r["split"]) == r["split"]
    assert summary["inputs"] == len(files)
    assert summary["ok"] == sum(r["status"] == "ok" for r in rows.values())
    assert summary["rejected_by_reason"]["no_face"] == 1
    assert summary["errors_by_reason"] == {"empty_file": 1, "unreadable": 2}
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["manifest_sha256"] == manifest_hash(out / "manifest.parquet")
    assert summary["shards"] == len(list(out.glob("*.tar"))) >= 3
    # The long input: one manifest row, its three pieces processed by three tasks (parts of
    # three task names hold its rows), each clip from its own piece.
    (long_row,) = [r for r in rows.values() if r["clip_id"] == LONG]
    assert long_row["n_frames"] == long_row["n_frames_source"] and long_row["status"] == "ok"
    assert summary["pieces"] == summary["inputs"] + 2 and summary["tasks"] >= 4
    tasks = {p.name.split("-")[1] for p in (out / "index").glob("*-r*t*-*.json")
             if any(row["input_id"] == long_row["input_id"] for row in json.loads(p.read_text())["rows"])}
    assert len(tasks) == 3 and len(long_row["shard"].split(",")) == 3


def test_shards_hold_exactly_what_the_library_computes(preprocessed):
    out, _ = preprocessed
    rows = {r["input_id"]: r for r in read_manifest(out / "manifest.parquet")}
    seen = set()
    for sample in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False):
        clip = decode_clip_sample(sample)
        meta = clip.meta
        assert clip.key not in seen
        seen.add(clip.key)
        row = rows[meta["input_id"]]
        assert clip.key in row["sample_keys"] and Path(sample["__url__"]).name in row["shard"].split(",")
        assert sample["__url__"].split("/")[-1].startswith(meta["split"] + "-")
        video = lsv.read_video(meta["source"], fps=25)
        start, n = meta["start_frame"], meta["n_frames"]
        frames = video.frames[start:start + n]
        boxes = np.asarray(meta["boxes"])
        assert boxes.shape == (n, 4)
        expected = crop_faces(frames, boxes, size=meta["crop_size"], pads=tuple(meta["pads"]))
        assert clip.frames.shape == (n, 96, 96, 3)
        np.testing.assert_array_equal(clip.frames, expected)                    # PNG: lossless
        np.testing.assert_array_equal(clip.frames_at([n - 1, 2]), expected[[n - 1, 2]])
        wav = video.audio[start * 640:(start + n) * 640]
        np.testing.assert_array_equal(clip.mel, lsa.melspectrogram(wav))
        assert meta["mel_frames"] == clip.mel.shape[1] == 1 + len(wav) // 200
        assert meta["fps"] == 25.0 and meta["sample_rate"] == 16000 and meta["codec"] == "png"
        assert meta["sync_offset"] is None and meta["sync_confidence"] is None
    assert seen == {k for r in rows.values() for k in r["sample_keys"]}


def test_jpeg_shards_are_close_to_the_lossless_ones(corpus, preprocessed, ray_local, tmp_path):
    out, _ = preprocessed
    cfg = _config(corpus, tmp_path / "jpeg", codec="jpeg", jpeg_quality=95, shard_size=10**9)
    summary = run_preprocess(cfg)
    lossless = {}
    for sample in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False):
        clip = decode_clip_sample(sample)
        lossless[clip.key] = clip
    n = 0
    for sample in wds.WebDataset(sorted(str(p) for p in (tmp_path / "jpeg").glob("*.tar")), shardshuffle=False):
        clip = decode_clip_sample(sample)
        ref = lossless[clip.key]
        diff = np.abs(clip.frames.astype(np.int16) - ref.frames.astype(np.int16))
        assert diff.mean() < 2.5 and np.percentile(diff, 99) < 20, (clip.key, diff.mean())
        np.testing.assert_array_equal(clip.mel, ref.mel)
        n += 1
    assert n == len(lossless)
    # Every task's shards are leftovers under a 1 GB target: merged into one shard per split.
    assert summary["shards"] == len(summary["splits"]) < summary["tasks"]
    assert summary["bytes_per_frame"] < 0.6 * json.loads((out / "summary.json").read_text())["bytes_per_frame"]


def test_rerun_is_idempotent_and_logged_to_mlflow(corpus, preprocessed, mlflow_server):
    import mlflow

    out, first = preprocessed
    before = _digest_dir(out)
    summary = run_preprocess(_config(corpus, out, tracking_uri=mlflow_server.uri, experiment="pp-test"))
    assert summary["processed_inputs"] == 0 and summary["resumed_inputs"] == first["inputs"]
    assert _digest_dir(out) == before
    assert summary["manifest_sha256"] == first["manifest_sha256"]
    run = mlflow.MlflowClient(mlflow_server.uri).get_run(summary["mlflow_run_id"])
    assert run.data.tags["lipsync.manifest_hash"] == first["manifest_sha256"]
    assert run.data.metrics["ok"] == first["ok"] and run.data.metrics["inputs"] == first["inputs"]


def test_killed_driver_resumes_without_loss_or_duplicates(corpus, preprocessed, ray_local, tmp_path):
    ref_out, ref = preprocessed
    out = tmp_path / "killed"
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "workflows" / "preprocess.py"), *_cli_args(corpus, out)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*.tar")):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no shard completed in time"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        proc.stdout.close()
    assert not (out / "summary.json").exists(), "the job finished before it could be killed"
    completed = {p.name for p in out.glob("*.tar")}
    assert 1 <= len(completed) < ref["shards"]

    summary = run_preprocess(_config(corpus, out))
    # What the killed run committed is not redone: fewer pieces are planned (an input counts as
    # resumed only once all its pieces are committed; the first shard may hold a piece of "long").
    assert summary["pieces"] < ref["pieces"] and summary["processed_inputs"] <= ref["inputs"]
    assert not list(out.glob("*.partial"))
    rows = read_manifest(out / "manifest.parquet")
    ids = [r["input_id"] for r in rows]
    assert len(ids) == len(set(ids)) == ref["inputs"]
    keys = [sample["__key__"] for sample in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")),
                                                           shardshuffle=False)]
    assert len(keys) == len(set(keys)) == ref["clips"]
    # The same samples, byte for byte, as the uninterrupted run (the resumed run's tasks have
    # new names, so shard names differ), each once; the same manifest apart from shard names.
    assert _sample_digests(out) == _sample_digests(ref_out)
    assert _rows_without_shard(out) == _rows_without_shard(ref_out)
    assert all(name.split("-")[1].startswith(("r1t", "r2t")) for name in _digest_dir(out))


def _kill_own_worker_once(sample, audio):
    """sync_filter that SIGKILLs the Ray worker running it at the clip of one input, the first
    time only; the marker file records which shards were committed at that moment."""
    from pipelines.common import storage

    marker = Path(os.environ["LIPSYNC_TEST_KILL_MARKER"])
    if sample.meta["input_id"] == os.environ["LIPSYNC_TEST_KILL_INPUT"] and not marker.exists():
        committed = [n for n in storage.listdir(os.environ["LIPSYNC_TEST_KILL_OUTPUT"]) if n.endswith(".tar")]
        marker.write_text(json.dumps(committed))
        os.kill(os.getpid(), signal.SIGKILL)
    return None


def _fetch(uri: str, dest: Path) -> Path:
    """A local copy of an output written to object storage (shards, index, manifest)."""
    from pipelines.common import storage

    for sub in ("", "index"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for name in storage.listdir(storage.join(uri, sub) if sub else uri):
            if "." in name:
                (dest / sub / name).write_bytes(storage.get_bytes(storage.join(uri, sub, name)))
    return dest


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_worker_task_is_retried_and_every_input_counted_once(corpus, tmp_path, where, request):
    """A worker process killed inside a task after that task committed a shard: Ray retries the
    task, the retry first removes what the killed attempt committed, and the job ends with
    every input once and every clip in exactly one shard - on local disk and on an S3 server.
    Five inputs in three tasks on one CPU (2, 2, 1): the worker dies on the first task's second
    input."""
    good = sorted(p for p in corpus.glob("main/*/*.mp4") if p.parent.name not in ("broken",)
                  and p.stem != LONG)[:5]
    ids = [p.with_suffix("").as_posix().lstrip("/") for p in good]
    listfile = tmp_path / "inputs.txt"
    listfile.write_text("".join(f"{p}\t{p.parent.name}\ttrain\n" for p in good))
    out = str(tmp_path / "out") if where == "local" else request.getfixturevalue("s3_server").uri("killed-worker")
    marker = tmp_path / "killed.json"
    script = f"""
import ray
from pipelines.common.ray_setup import init_ray
init_ray(num_cpus=1, object_store_memory=300 * 2**20)
from pipelines.preprocess.driver import PreprocessConfig, run_preprocess
from test_preprocess import _kill_own_worker_once
summary = run_preprocess(PreprocessConfig(input={str(listfile)!r}, output={out!r}, layout="filelist",
    codec="png", shard_size={SHARD_SIZE}, num_cpus=1, progress=False, sync_filter=_kill_own_worker_once))
print("TASKS", summary["tasks"], "PIECES", summary["pieces"])
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # s3_server's AWS_* included
    env.update(LIPSYNC_TEST_KILL_MARKER=str(marker), LIPSYNC_TEST_KILL_INPUT=ids[1],
               LIPSYNC_TEST_KILL_OUTPUT=out, PYTHONPATH=f"{REPO}:{REPO / 'tests'}")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "TASKS 3 PIECES 5" in done.stdout, done.stdout[-2000:]
    local = Path(out) if where == "local" else _fetch(out, tmp_path / "fetched")
    rows = {r["input_id"]: r for r in read_manifest(local / "manifest.parquet")}
    assert sorted(rows) == sorted(ids)
    assert all(r["status"] == "ok" and r["n_clips"] == 1 for r in rows.values()), rows
    # The killed attempt had committed the shard of the task's first input; the retry rewrote it.
    assert rows[ids[0]]["shard"] in json.loads(marker.read_text())
    assert rows[ids[0]]["shard"].split("-")[1] == rows[ids[1]]["shard"].split("-")[1]
    keys = _sample_digests(local)                      # asserts no key is in two shards
    assert sorted(keys) == sorted(k for r in rows.values() for k in r["sample_keys"])
    names = sorted(p.name for p in local.iterdir() if p.is_file())
    assert not [n for n in names if n.endswith((".partial", ".tmp"))], names
    assert len([n for n in names if n.endswith(".tar")]) == len({r["shard"] for r in rows.values()})


def test_ray_job_submit_against_a_token_auth_head(corpus, preprocessed, ray_head, tmp_path):
    ref_out, ref = preprocessed
    out = tmp_path / "job"
    submit = ray_head.submit_job(sys.executable, "workflows/preprocess.py", *_cli_args(corpus, out),
                                 working_dir=REPO)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in (submit.stdout + submit.stderr).lower(), submit.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == ref["ok"] and summary["inputs"] == ref["inputs"]
    assert _digest_dir(out) == _digest_dir(ref_out)
    # Without the token the head refuses: the dashboard's own answer, not just any failure.
    denied = ray_head.job_list_with_a_wrong_token(tmp_path)
    assert denied.returncode != 0 and ray_head.WRONG_TOKEN_REFUSAL in denied.stdout + denied.stderr, \
        denied.stdout[-2000:] + denied.stderr[-2000:]


def test_detection_runs_on_gpu_actors_when_the_cluster_has_gpus(corpus, preprocessed, tmp_path):
    """The GPU branch (one detector actor per GPU, num_gpus=1 each, called by the CPU tasks
    that write the shards) on a cluster that declares one logical GPU. No CUDA here, so make_detector("auto", "cuda") falls back to
    dlib inside the actor: the shards must equal the CPU-task run's, byte for byte."""
    ref_out, _ = preprocessed
    out = tmp_path / "gpu"
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import ray
from pipelines.common.ray_setup import use_loopback
use_loopback()
ray.init(address="local", num_cpus=2, num_gpus=1, object_store_memory=300 * 2**20, include_dashboard=False)
from pipelines.preprocess.driver import PreprocessConfig, run_preprocess
summary = run_preprocess(PreprocessConfig(input={str(corpus)!r}, output={str(out)!r}, codec="png",
                                          shard_size={SHARD_SIZE}, progress=False, **{PIECE!r}))
print("GPU_ACTORS", summary["detect_gpu_actors"])
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "GPU_ACTORS 1" in done.stdout
    assert _digest_dir(out) == _digest_dir(ref_out)

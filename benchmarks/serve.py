"""The service under load: `python benchmarks/serve.py [--clients 1,2,4] [--requests 2] [--work DIR]`.

Starts `workflows/serve.py` on a local cluster with the full-size generator (random weights
with realistic activations, as benchmarks/infer.py) and `--precision auto`, then for each
number of concurrent clients N sends N x --requests POSTs of a 10 s 1280x720 clip (its own
audio track as the audio) and prints, side by side: video-seconds served per wall second,
p50 / p95 latency, and the share of 503 answers. The offline figure is `lipsync infer` on the
same clip in a fresh process; the service's overhead is the difference at N = 1. The CPU
and the features it saw are printed first.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infer import bench_model, cpu_line, make_clip  # noqa: E402  (benchmarks/infer.py's inputs)

CLIP_SECONDS = 10.0


def offline(clip: Path, model: Path, work: Path) -> float:
    out = work / "offline.mp4"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lipsync", "infer", "--no-progress", "--face", str(clip),
                    "--audio", str(clip), "--model", str(model), "--out", str(out)],
                   check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    return time.perf_counter() - started


def start_service(model: Path, port: int, queue_len: int, replicas: int, token: str):
    env = {**os.environ, "PYTHONPATH": str(REPO), "LIPSYNC_SERVE_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "workflows" / "serve.py"), "--model", str(model),
                             "--port", str(port), "--queue", str(queue_len), "--min-replicas", str(replicas),
                             "--max-replicas", str(replicas), "--precision", "auto"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip()) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                raise SystemExit(f"serve.py exited {proc.returncode}")
            continue
        if line.startswith("serving http://"):
            return proc
    proc.terminate()
    raise SystemExit("the service did not start within 300 s")


def load_round(url: str, token: str, clip: Path, clients: int, per_client: int) -> dict:
    import requests

    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(per_client):
            started = time.perf_counter()
            with open(clip, "rb") as face, open(clip, "rb") as audio:
                r = requests.post(f"{url}/v1/lipsync", headers={"Authorization": f"Bearer {token}"}, timeout=1800,
                                  files={"face": ("clip.mp4", face), "audio": ("clip.mp4", audio)})
            with lock:
                results.append((r.status_code, time.perf_counter() - started))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ok = sorted(lat for status, lat in results if status == 200)
    busy = sum(status == 503 for status, _ in results)
    other = [status for status, _ in results if status not in (200, 503)]
    return {"clients": clients, "requests": len(results), "wall": wall,
            "served": len(ok) * CLIP_SECONDS / wall,
            "p50": statistics.median(ok) if ok else float("nan"),
            "p95": ok[min(len(ok) - 1, int(round(0.95 * (len(ok) - 1))))] if ok else float("nan"),
            "busy": busy / len(results), "other": other}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/lipsync-bench-infer", type=Path)
    parser.add_argument("--clients", default="1,2,4", help="numbers of concurrent clients, one round each")
    parser.add_argument("--requests", type=int, default=2, help="requests per client in a round")
    parser.add_argument("--queue", type=int, default=4, help="the service's --queue")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from pipelines.common.ray_setup import free_port

    print(cpu_line(), flush=True)
    clip = make_clip(args.work / "clip_10s.mp4", CLIP_SECONDS)
    model = bench_model(args.work)
    seconds = offline(clip, model, args.work)
    print(f"offline: lipsync infer --precision auto on the {CLIP_SECONDS:g} s 720p clip: {seconds:.1f} s "
          f"wall (start-up included) = {CLIP_SECONDS / seconds:.2f} video-s per wall s", flush=True)

    token = os.urandom(16).hex()
    port = args.port or free_port()
    proc = start_service(model, port, args.queue, args.replicas, token)
    try:
        url = f"http://127.0.0.1:{port}"
        load_round(url, token, clip, 1, 1)  # warm-up: the backend choice happens on the first request
        rows = [load_round(url, token, clip, int(n), args.requests) for n in args.clients.split(",")]
    finally:
        proc.terminate()
        proc.wait(timeout=120)

    print(f"\nservice: {args.replicas} replica(s), --queue {args.queue}, {args.requests} request(s) per client, "
          f"each a {CLIP_SECONDS:g} s 720p clip")
    print(f"{'clients':>7} {'requests':>8} {'wall s':>7} {'video-s/s':>9} {'vs offline':>10} {'p50 s':>7} "
          f"{'p95 s':>7} {'503':>5}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['wall']:>7.1f} {r['served']:>9.2f} "
              f"{r['served'] / (CLIP_SECONDS / seconds):>9.2f}x {r['p50']:>7.1f} {r['p95']:>7.1f} "
              f"{r['busy']:>5.0%}" + (f"  other statuses: {r['other']}" if r["other"] else ""))
    one = rows[0]
    if one["clients"] == 1 and one["p50"] == one["p50"]:
        print(f"\nservice overhead at 1 client: p50 {one['p50']:.1f} s vs offline {seconds:.1f} s "
              f"({one['p50'] - seconds:+.1f} s per request)")


if __name__ == "__main__":
    main()

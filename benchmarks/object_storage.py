"""Reading a shard from object storage: requests and MB/s, buffered vs unbuffered, vs local disk.

Starts a local S3-compatible server (moto) on 127.0.0.1, uploads one shard-sized tar, and
reads it the way the training loader does (tarfile streaming, 10 KiB reads) three ways:
local file, S3 through `lipsync.data.shard_stream.open_shard` (buffered), and S3 through an
unbuffered pyarrow stream (what the loader did before). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/object_storage.py [--mb 8]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tar(path: Path, mb: int) -> None:
    rng = os.urandom
    with tarfile.open(path, "w") as tar:
        for i in range(mb * 4):  # 256 KiB members, like a clip's frame pack
            data = rng(256 * 1024)
            info = tarfile.TarInfo(f"clip{i:05d}.frames")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def read_all(stream) -> int:
    n = 0
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            f = tar.extractfile(member)
            if f is not None:
                n += len(f.read())
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=8, help="shard size in MiB")
    args = ap.parse_args()

    venv_bin = Path(sys.executable).parent
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bench_s3_"))
    log = open(work / "moto.log", "w")
    server = subprocess.Popen([str(venv_bin / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    try:
        for _ in range(60):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        import boto3
        import pyarrow.fs as pafs

        from lipsync.data.shard_stream import open_shard
        from pipelines.common import storage

        boto3.client("s3").create_bucket(Bucket="bench")
        shard = work / "train-000000.tar"
        make_tar(shard, args.mb)
        uri = "s3://bench/shards/train-000000.tar"
        storage.put_file(shard, uri)

        def requests() -> int:
            log.flush()
            return sum("GET /bench/shards/" in line for line in open(work / "moto.log"))

        results = []
        t = time.perf_counter()
        with open(shard, "rb") as f:
            size = read_all(f)
        results.append(("local file", time.perf_counter() - t, 0))
        before = requests()
        t = time.perf_counter()
        with open_shard(uri) as f:
            assert read_all(f) == size
        results.append(("s3, buffered (open_shard)", time.perf_counter() - t, requests() - before))
        before = requests()
        t = time.perf_counter()
        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path, compression=None) as f:
            assert read_all(f) == size
        results.append(("s3, unbuffered", time.perf_counter() - t, requests() - before))

        print(f"CPU features: {cpu_flags()}; {os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.1f}")
        print(f"shard: {size / 2**20:.1f} MiB tar of 256 KiB members, read with tarfile streaming")
        base = results[0][1]
        for name, secs, n in results:
            print(f"  {name:28s} {size / 2**20 / secs:8.1f} MiB/s  {n:6d} GET requests  {secs / base:6.1f}x local time")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serve a registered generator over HTTP: a Ray Serve application on the local cluster (or the
cluster in RAY_ADDRESS) that answers POST /v1/lipsync with the dubbed video.

    LIPSYNC_SERVE_TOKEN=... python workflows/serve.py --model models:/wav2lip@champion
    python workflows/serve.py --model models:/wav2lip@champion --token-file ~/.lipsync/serve_token \\
        --host 127.0.0.1 --port 8000 --min-replicas 1 --max-replicas 4

The model reference is pinned to the version it names when the service starts (printed, and
returned by GET /healthz); with --follow-alias the service moves to the version the alias
names when it moves (new replicas come up, the old ones finish what they hold, then go; no
request is failed, and each is answered by one version, named in X-Lipsync-Model-Version). Prints "serving http://HOST:PORT" once requests are answered; Ctrl-C
or SIGTERM stops the application and the cluster it started. Exit codes: 0 stopped, 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipsync.errors import LipsyncError  # noqa: E402
from lipsync.terminate import Terminated, sigterm_raises  # noqa: E402
from pipelines.common.console import quiet_console  # noqa: E402
from pipelines.serve.auth import load_token, token_digest  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint file")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", default=str(Path("~/.lipsync/serve_token").expanduser()),
                   help="bearer token file, created owner-only when missing (LIPSYNC_SERVE_TOKEN wins)")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=1,
                   help="above --min-replicas: Serve adds replicas while requests are ongoing")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    p.add_argument("--queue", type=int, default=4,
                   help="requests that may wait on a busy replica; past that: 503 with Retry-After")
    p.add_argument("--max-upload-mb", type=float, default=200.0)
    p.add_argument("--precision", default="auto", help="generator backend, as lipsync infer --precision")
    p.add_argument("--device", default="auto")
    p.add_argument("--follow-alias", action="store_true",
                   help="move to the version a models:/NAME@ALIAS reference names whenever the alias moves")
    p.add_argument("--poll-seconds", type=float, default=30.0, help="how often --follow-alias looks (default: 30)")
    p.add_argument("--address", help="Ray cluster to deploy on (default: RAY_ADDRESS, else a new local one)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and Serve's own output")
    return p


def check(args: argparse.Namespace) -> None:
    from lipsync.errors import ConfigError

    if not 1 <= args.min_replicas <= args.max_replicas:
        raise ConfigError(f"--min-replicas {args.min_replicas} / --max-replicas {args.max_replicas}: "
                          f"need 1 <= min <= max")
    if args.queue < 0 or args.max_upload_mb <= 0 or not 0 < args.port < 65536:
        raise ConfigError("--queue must be >= 0, --max-upload-mb > 0 and --port within 1..65535")
    if args.follow_alias and "@" not in args.model:
        raise ConfigError(f"--follow-alias: --model {args.model} names no alias (models:/NAME@ALIAS)")
    if args.poll_seconds <= 0:
        raise ConfigError("--poll-seconds must be > 0")


def serve_until_stopped(args: argparse.Namespace) -> None:
    import urllib.request

    from lipsync import model_ref
    from pipelines.common.ray_setup import init_ray
    from pipelines.serve.jobs import remove_job_board
    from pipelines.serve.service import ServiceConfig, deployment

    check(args)
    token, origin = load_token(args.token_file)
    print(f"token: {origin}", flush=True)
    version = model_ref.pin(args.model, args.tracking_uri)
    tracking_uri = model_ref.resolve_tracking_uri(args.tracking_uri) if model_ref.is_mlflow_uri(args.model) else None
    print(f"model: {args.model} -> {version}", flush=True)
    config = ServiceConfig(model=args.model, version=version, tracking_uri=tracking_uri,
                           token_digest=token_digest(token), max_upload_mb=args.max_upload_mb,
                           queue=args.queue, precision=args.precision, device=args.device)

    init_ray(args.address)
    from ray import serve

    from pipelines.serve.model_store import remove_model_file, ship_model_file

    if not model_ref.is_mlflow_uri(args.model):  # replicas on other nodes have no such path
        config = dataclasses.replace(config, model_store=ship_model_file(version))

    def deploy(config: ServiceConfig) -> None:
        serve.run(deployment(config, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                             num_cpus=args.num_cpus, num_gpus=args.num_gpus),
                  name="lipsync", route_prefix="/")

    serve.start(http_options={"host": args.host, "port": args.port}, logging_config={"log_level": "WARNING"})
    try:
        deploy(config)
        url = f"http://{args.host}:{args.port}"
        with urllib.request.urlopen(f"{url}/healthz", timeout=30) as r:
            r.read()
        print(f"serving {url}", flush=True)
        while True:
            time.sleep(args.poll_seconds if args.follow_alias else 1)
            if not args.follow_alias:
                continue
            try:
                now = model_ref.pin(args.model, args.tracking_uri)
            except LipsyncError as e:  # the registry is away or the alias was deleted: keep serving
                print(f"warning: {e}; still serving {config.version}", file=sys.stderr, flush=True)
                continue
            if now != config.version:
                print(f"{args.model} moved: {config.version} -> {now}", flush=True)
                config = dataclasses.replace(config, version=now)
                deploy(config)
                print(f"serving {now}", flush=True)
    finally:
        serve.shutdown()
        remove_job_board()
        remove_model_file()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with sigterm_raises(), quiet_console("serve", verbose=args.verbose):
        try:
            serve_until_stopped(args)
        except LipsyncError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, Terminated):
            print("stopped", flush=True)
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

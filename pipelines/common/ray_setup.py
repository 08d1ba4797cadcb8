"""Connecting to Ray: a running cluster when one is named, a private local one otherwise.

`ray job submit` sets RAY_ADDRESS for the driver it starts, so the same workflow script
joins the cluster there and starts a local cluster on a laptop. A local cluster binds
127.0.0.1 only (its dashboard too, on a free port) and uses Ray's token authentication: every
RPC and HTTP request must carry the token, which lives in Ray's documented place
(RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token) and is
created there, readable by its owner only, when there is none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import ray

from lipsync.errors import ConfigError

# Ray resolves "127.0.0.1" to the machine's routable address on Linux. Its single-machine
# mode (the flag Ray uses on macOS/Windows) keeps every local service on loopback instead.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
TRAIN_PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_loopback() -> None:
    """Make local Ray processes started from here bind 127.0.0.1 only."""
    os.environ.update(LOOPBACK_ENV)
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False


def default_token_path() -> Path:
    """Where Ray looks for the token when neither RAY_AUTH_TOKEN nor RAY_AUTH_TOKEN_PATH is set."""
    return Path.home() / ".ray" / "auth_token"


def check_token_mode(path: Path) -> None:
    """Refuse a token file that others can read: whoever reads it can run code on the cluster.
    The file is held to what this module creates (0600): no group or other permission bits."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path}: the Ray auth token is readable or writable by others (mode {mode:04o}); "
                          f"make it owner-only with: chmod 600 {path}")


def use_token_auth() -> None:
    """Turn on token authentication for clusters started (and joined) from this process.

    Ray 2.60 turns it on for a new local cluster only while RAY_AUTH_MODE is unset (with a
    warning), and would write a missing token file with the default umask; here the mode
    is explicit, a missing token is written owner-only (0600) before Ray reads it, and an
    existing one that others can read is refused (``check_token_mode``).
    """
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        path = default_token_path()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))  # 256 bits, as `ray get-auth-token --generate`
        else:
            check_token_mode(path)
    os.environ["RAY_AUTH_MODE"] = "token"
    # Ray caches its config (auth mode included) at import time; re-read it from the environment.
    from ray._raylet import Config
    Config.initialize("")


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """Set environment variables for the duration of a block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def sigterm_handler_kept():
    """ray.init installs its own SIGTERM handler, which exits the driver before any ``finally``
    runs (MLflow runs were left RUNNING); a Python handler the command put in place
    (lipsync.terminate) is restored after it."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def init_ray(address: str | None = None, num_cpus: int | None = None,
             object_store_memory: int | None = None, **kwargs: Any) -> dict:
    """Connect to `address` (or RAY_ADDRESS), else start a local cluster on 127.0.0.1 with token auth.

    Returns ray.init()'s context info as a dict. Idempotent: a second call while
    connected returns without restarting anything.
    """
    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address}
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"log_to_driver": True, **kwargs}
    if address:
        with sigterm_handler_kept():
            ctx = ray.init(address=address, **options)
    else:
        options.setdefault("logging_level", logging.WARNING)  # no "Started a local Ray instance" chatter
        use_loopback()
        use_token_auth()
        # Ray Train's placement-group cleaner (and any state-API call inside the cluster) finds
        # the API server through the dashboard named by RAY_API_SERVER_ADDRESS. Without both it
        # guessed a cluster from /tmp/ray (another one, or a dead one), printed a traceback at
        # the start of every training and stalled its end by 12 s. The variable is set only
        # while Ray starts, so the processes it spawns inherit it and this one keeps its own.
        dashboard_env = {}
        if options.setdefault("include_dashboard", True):
            options.setdefault("dashboard_host", "127.0.0.1")
            port = options.setdefault("dashboard_port", free_port())
            dashboard_env[API_SERVER_ENV] = f"http://{options['dashboard_host']}:{port}"
        # "local": always a new private cluster. With no address Ray would join whatever cluster
        # /tmp/ray/ray_current_cluster names (another user's, or a dead one left by a killed run).
        with environment(dashboard_env), sigterm_handler_kept():
            ctx = ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory, **options)
    return {"address": ctx.address_info.get("gcs_address") or ctx.address_info.get("address")}


def quiet_train_options() -> dict:
    """``RunConfig`` options for a readable console (every training stage passes them).

    Ray Train's print patch tees each worker ``print`` into a logger that is echoed too, so
    every "[expert] step ..." line showed twice; its INFO lines (resource requests, worker
    group starts) stay in Ray's log files under the session folder instead of the console.
    """
    from ray.train import LoggingConfig

    return {"logging_config": LoggingConfig(log_level="WARNING"),
            "worker_runtime_env": {"env_vars": {TRAIN_PRINT_PATCH_ENV: "0"}}}

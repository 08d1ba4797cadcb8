"""Connecting to Ray: a running cluster when one is named, a private local one otherwise.

`ray job submit` sets RAY_ADDRESS for the driver it starts, so the same workflow script
joins the cluster there and starts a local cluster on a laptop. A local cluster binds
127.0.0.1 only and has no dashboard unless asked: nothing listens beyond this machine.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

# Ray resolves "127.0.0.1" to the machine's routable address on Linux. Its single-machine
# mode (the flag Ray uses on macOS/Windows) keeps every local service on loopback instead.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
TRAIN_PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"


def use_loopback() -> None:
    """Make local Ray processes started from here bind 127.0.0.1 only."""
    os.environ.update(LOOPBACK_ENV)
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None = None, num_cpus: int | None = None,
             object_store_memory: int | None = None, **kwargs: Any) -> dict:
    """Connect to `address` (or RAY_ADDRESS), else start a local cluster on 127.0.0.1.

    Returns ray.init()'s context info as a dict. Idempotent: a second call while
    connected returns without restarting anything.
    """
    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address}
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"log_to_driver": True, **kwargs}
    if address:
        ctx = ray.init(address=address, **options)
    else:
        options.setdefault("include_dashboard", False)
        options.setdefault("logging_level", logging.WARNING)  # no "Started a local Ray instance" chatter
        use_loopback()
        # address="local": always a new private cluster. Without it ray.init() joins a cluster
        # that `ray start` left running on this machine (and then refuses num_cpus).
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

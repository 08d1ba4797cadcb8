"""A local checkpoint file for replicas on any node: the starter's file rides in the object
store, held by one named actor, and each replica writes it to its own temporary folder.

``--model path.safetensors`` names a file on the machine that starts the service; a replica on
another node of the cluster has no such path. (A ``models:/`` version is fetched by every
replica from the registry instead.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray

STORE_NAME = "lipsync-model-file"
STORE_NAMESPACE = "serve"


@ray.remote(num_cpus=0)
class ModelFile:
    def __init__(self, name: str, data: bytes):
        self.name, self.data = name, data

    def get(self) -> tuple[str, bytes]:
        return self.name, self.data


def ship_model_file(path: str) -> str:
    """Put the starter's checkpoint file where every replica can read it; the store's name."""
    try:  # a previous start's store (a redeploy, --follow-alias) is replaced
        ray.kill(ray.get_actor(STORE_NAME, namespace=STORE_NAMESPACE))
    except ValueError:
        pass
    ModelFile.options(name=STORE_NAME, namespace=STORE_NAMESPACE, lifetime="detached").remote(
        Path(path).name, Path(path).read_bytes())
    return STORE_NAME


def fetch_model_file(store: str, folder: str | None = None) -> Path:
    """The shipped checkpoint, written into a new folder on this node (the replica's own)."""
    name, data = ray.get(ray.get_actor(store, namespace=STORE_NAMESPACE).get.remote())
    path = Path(tempfile.mkdtemp(prefix="lipsync-model-", dir=folder)) / name
    path.write_bytes(data)
    return path


def remove_model_file() -> None:
    try:
        ray.kill(ray.get_actor(STORE_NAME, namespace=STORE_NAMESPACE))
    except ValueError:
        pass

"""Paths a workflow takes, made absolute on the driver before anything is sent to Ray.

Ray workers do not run in the driver's working directory (Ray Train moves each worker to
its run folder; on a cluster the worker is on another machine), so a relative path such
as ``--shards demo/shards`` that the driver could open is a missing file for a worker.
Every workflow resolves its path flags here, once, right after parsing. URIs
(``s3://…``, ``sqlite:///…``, ``http://…``) stay as they are: they are not local paths.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lipsync.locations import is_uri


def resolve_path(value: str | os.PathLike | None) -> str | None:
    """An absolute path (``~`` expanded) for a local path; URIs and None unchanged."""
    if value is None:
        return None
    text = os.fspath(value)
    if not text or is_uri(text):
        return text
    return str(Path(text).expanduser().resolve())


def resolve_path_args(args: argparse.Namespace, *names: str) -> argparse.Namespace:
    """Resolve the named attributes of parsed flags in place (lists element-wise)."""
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, (list, tuple)):
            setattr(args, name, type(value)(resolve_path(v) for v in value))
        else:
            setattr(args, name, resolve_path(value))
    return args

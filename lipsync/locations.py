"""Where data lives: a local path, or an object-storage URI (``s3://bucket/key``, ``gs://bucket/key``).

One predicate for the whole repo. A location with a ``scheme://`` prefix is a *URI*
(:func:`is_uri`: ``s3://``, ``gs://``, ``sqlite:///``, ``http://``, ``file://`` …) and is never
made absolute or joined like a local path; of those, only ``s3`` / ``gs`` / ``gcs`` name
*object storage* (:func:`is_object_storage`), which is read through pyarrow. ``file://`` is a
URI that names a local file. A location kept as a string, never a ``Path``:
``Path("s3://b/k")`` would collapse the ``//``.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlparse

OBJECT_SCHEMES = ("s3", "gs", "gcs")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str | os.PathLike) -> bool:
    """True for ``scheme://…`` (storage, tracking and file URIs), False for a plain local path."""
    return bool(_URI.match(os.fspath(location)))


def is_object_storage(location: str | os.PathLike) -> bool:
    """True for object-storage URIs (``s3://``, ``gs://``); False for local paths and ``file://``."""
    return urlparse(os.fspath(location)).scheme.lower() in OBJECT_SCHEMES

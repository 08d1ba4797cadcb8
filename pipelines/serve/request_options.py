"""The ``lipsync infer`` options a caller may set per request, from multipart text fields.

Fields are named like the command's options with underscores (``pads``, ``resize_factor``,
``nosmooth``, ``hard_paste``, ``static``, ...). Everything about the machine (device, precision,
detector, spill folder, checkpoint trust) is the service's and cannot be set by a caller.
"""

from __future__ import annotations

import dataclasses

from lipsync.errors import ConfigError
from lipsync.inference.options import InferenceOptions
from pipelines.serve.uploads import RequestError

_INTS4 = ("pads", "crop", "box")
_INTS = {"resize_factor": (1, 16), "detect_every": (1, 100), "detect_max_side": (0, 8192),
         "crf": (0, 51), "wav2lip_batch_size": (1, 128), "face_det_batch_size": (1, 128)}
_FLOATS = {"fps": (1.0, 120.0)}
_BOOLS = ("rotate", "nosmooth", "static", "hard_paste")
_CHOICES = ("on_no_face", "compositing", "audio_longer", "face_select")
FIELDS = (*_INTS4, *_INTS, *_FLOATS, *_BOOLS, *_CHOICES)


def _bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on", ""):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise RequestError(400, f"{name}: expected true or false, got {text!r}")


def _number(name: str, text: str, cast, bounds):
    try:
        value = cast(text.strip())
    except ValueError:
        raise RequestError(400, f"{name}: expected a number, got {text!r}") from None
    low, high = bounds
    if not low <= value <= high:
        raise RequestError(400, f"{name}: {value} is outside {low}..{high}")
    return value


def request_options(fields: dict[str, str], base: InferenceOptions) -> InferenceOptions:
    """``base`` (the service's options) with the caller's fields applied and checked."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r}; the options a request may set: {', '.join(FIELDS)}")
    changes: dict = {}
    for name, text in fields.items():
        if name in _INTS4:
            parts = text.replace(",", " ").split()
            if len(parts) != 4:
                raise RequestError(400, f"{name}: expected 4 integers (top bottom left right), got {text!r}")
            changes[name] = tuple(_number(name, p, int, (-1, 100_000)) for p in parts)
        elif name in _INTS:
            changes[name] = _number(name, text, int, _INTS[name])
        elif name in _FLOATS:
            changes[name] = _number(name, text, float, _FLOATS[name])
        elif name == "hard_paste":
            if _bool(name, text):
                changes["compositing"] = "paste"
        elif name in _BOOLS:
            changes[name] = _bool(name, text)
        else:
            changes[name] = text.strip()
    try:
        return dataclasses.replace(base, **changes).check()
    except ConfigError as e:
        raise RequestError(400, str(e)) from e

"""Errors the library raises for bad input.

Every message names the offending file (or flag) and the problem, so the CLI can print
one line and exit non-zero instead of a traceback.
"""

import os


class LipsyncError(Exception):
    """Base class: anything a user can fix by changing their input or flags."""


class MediaError(LipsyncError):
    """A video, image or audio file is missing, empty, unreadable or lacks a needed stream."""


class CheckpointError(LipsyncError):
    """A checkpoint is of the wrong model kind, an unknown format, or untrusted pickled code."""


class NoFaceError(LipsyncError):
    """No face was found where one is required."""


class ConfigError(LipsyncError):
    """Flags or configuration values that cannot work together."""


class DiskError(LipsyncError):
    """A folder the library writes scratch data to is full, missing or not writable."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of an error's message, for a one-line report: its ``message`` attribute
    where it has one (MLflow's exceptions), else ``str(error)``; the type's name if that is
    empty. ``limit`` cuts the line to that many characters."""
    text = str(getattr(error, "message", None) or error).strip()
    if not text:
        return type(error).__name__
    return text.splitlines()[0][:limit]


def check_media_file(path: str) -> None:
    """Fail early, naming the file, when a media path is missing, a folder or empty."""
    if not os.path.exists(path):
        raise MediaError(f"{path}: no such file")
    if os.path.isdir(path):
        raise MediaError(f"{path}: is a directory, not a media file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{path}: file is empty (0 bytes)")

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


def check_media_file(path: str) -> None:
    """Fail early, naming the file, when a media path is missing, a folder or empty."""
    if not os.path.exists(path):
        raise MediaError(f"{path}: no such file")
    if os.path.isdir(path):
        raise MediaError(f"{path}: is a directory, not a media file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{path}: file is empty (0 bytes)")

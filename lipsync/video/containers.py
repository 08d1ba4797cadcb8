"""The output containers ``VideoWriter`` writes, chosen by the file's extension, and the audio
codecs each one takes as they are.
"""

from __future__ import annotations

import os

from lipsync.errors import MediaError


# Output container by file extension. Each takes H.264 video; the audio codecs listed are
# copied as they are (no re-encode), anything else is re-encoded to AAC at its own rate.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


_COPYABLE_AUDIO = {
    "mp4": {"aac", "mp3", "alac", "ac3", "eac3"},
    "mov": {"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le"},
    "matroska": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "vorbis", "flac", "pcm_s16le", "pcm_s24le",
                 "pcm_f32le"},
}


def container_for(path: str | os.PathLike) -> str:
    """The output container for ``path``'s extension; MediaError (one line) for any other."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in CONTAINERS:
        raise MediaError(f"{os.fspath(path)}: cannot write a {ext or 'extension-less'} file; "
                         f"use {', '.join(CONTAINERS)}")
    return CONTAINERS[ext]

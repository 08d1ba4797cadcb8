"""A request's files, checked: saved under a private temporary folder with a size limit, and
recognised from their bytes (never from their names).

Errors are ``RequestError(status, message)``: 413 past the upload limit, 415 for bytes no
demuxer recognises, 400 for media without what the field needs (a picture for ``face``, an
audio track for ``audio``).
"""

from __future__ import annotations

from pathlib import Path

CHUNK = 1 << 20

# PyAV/FFmpeg demuxers that read one still picture: such a face is an image (lipsync treats a
# face with an image suffix as a photo, so the saved file gets one).
IMAGE_FORMATS = {"png_pipe": ".png", "jpeg_pipe": ".jpg", "bmp_pipe": ".bmp", "webp_pipe": ".webp",
                 "tiff_pipe": ".tif", "image2": ".png"}


class RequestError(Exception):
    """A request the service refuses: the HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class UploadBudget:
    """Bytes a request may still upload (``--max-upload-mb`` for all its files together)."""

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.used = 0

    def take(self, n: int, what: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise RequestError(413, f"{what}: the upload is over the service's limit of "
                                    f"{self.limit / 2**20:g} MB")


async def save_upload(upload, folder: Path, field: str, budget: UploadBudget) -> Path:
    """Copy one multipart file to ``folder/field``, counting its bytes against the budget."""
    what = f"{field} ({upload.filename or 'unnamed'})"
    path = folder / field
    with open(path, "wb") as out:
        while chunk := await upload.read(CHUNK):
            budget.take(len(chunk), what)
            out.write(chunk)
    if path.stat().st_size == 0:
        raise RequestError(400, f"{what}: the file is empty")
    return path


def recognise(path: Path, field: str, filename: str | None) -> Path:
    """The saved file, checked and renamed for what its bytes are. ``field`` "face" needs a
    picture (a video or a photo), "audio" an audio track."""
    import av

    what = f"{field} ({filename or 'unnamed'})"
    try:
        with av.open(str(path)) as container:
            fmt = container.format.name
            has_video = bool(container.streams.video)
            has_audio = bool(container.streams.audio)
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise RequestError(415, f"{what}: not a media file (no demuxer recognises its bytes)") from e
    if field == "face":
        if not has_video:
            raise RequestError(400, f"{what}: media without a picture (need a video or a photo)")
        suffix = IMAGE_FORMATS.get(fmt, ".video")
    else:
        if not has_audio:
            raise RequestError(400, f"{what}: media without an audio track")
        suffix = ".audio"
    return path.rename(path.with_suffix(suffix))

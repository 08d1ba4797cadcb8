"""Storage locations as URIs: local paths, `s3://bucket/key` and `gs://bucket/key`.

Every place the pipelines take a path (shards, manifests, Ray Train `storage_path`,
evaluation outputs) goes through here, so the same workflow runs against a laptop folder
or object storage with no code change.

- `filesystem(uri) -> (pyarrow.fs.FileSystem, path)` picks the filesystem. S3 endpoint
  and credentials come from the standard AWS environment (`AWS_ENDPOINT_URL_S3` /
  `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
  `AWS_DEFAULT_REGION` / `AWS_REGION`, or the instance profile); GCS from Application
  Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS` or the node's service account).
  Nothing here takes a secret as an argument, so no secret lands in a config or manifest.
- `resolve(path)`: a relative local path becomes absolute on the driver (Ray workers run
  in another working directory); a URI stays a URI.
- `put_bytes` / `open_output(..., atomic=True)` are atomic: readers never see a half
  written object. Locally the data goes to a temporary name in the same folder and is
  renamed; on object storage an object only appears when its (multipart) upload completes,
  and an aborted upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from lipsync.errors import LipsyncError
from lipsync.locations import OBJECT_SCHEMES, is_object_storage

_CHUNK = 8 << 20


class StorageError(LipsyncError):
    """A storage location that cannot be used (unknown scheme, missing bucket, ...)."""


def _scheme(uri: str) -> str:
    return urlparse(uri).scheme.lower()


def resolve(path: str | os.PathLike) -> str:
    """Absolute local path (resolved on the driver), or the URI unchanged."""
    text = str(path)
    if is_object_storage(text):
        return text
    if text.startswith("file://"):
        text = urlparse(text).path
    return str(Path(text).expanduser().resolve())


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts with `/` for URIs and the OS separator for local paths."""
    text = str(base)
    if is_object_storage(text):
        return posixpath.join(text.rstrip("/"), *(p.strip("/") for p in parts))
    return os.path.join(text, *parts)


def _s3_endpoint() -> str | None:
    # The AWS SDK's service-specific variable wins over the global one (AWS CLI v2 rule).
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_filesystem() -> pafs.S3FileSystem:
    kwargs: dict = {}
    endpoint = _s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if endpoint and "AWS_ALLOW_HTTP" not in os.environ:
        # Local S3-compatible servers (MinIO, moto) address buckets by path, not by virtual host.
        kwargs["force_virtual_addressing"] = False
    # Credentials are left to the AWS SDK's default chain (env vars, profile, instance role).
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for `uri` and the path inside it (bucket/key for object storage)."""
    text = str(uri)
    scheme = _scheme(text)
    if scheme == "s3":
        parsed = urlparse(text)
        if not parsed.netloc:
            raise StorageError(f"{text}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        return _s3_filesystem(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if scheme in ("gs", "gcs"):
        parsed = urlparse(text)
        if not parsed.netloc:
            raise StorageError(f"{text}: a gs:// URI needs a bucket (gs://bucket/prefix)")
        return pafs.GcsFileSystem(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        return pafs.LocalFileSystem(), resolve(text)
    raise StorageError(f"{text}: unsupported storage scheme {scheme!r} (use a local path, s3:// or gs://)")


def _with_scheme(uri: str, inner_path: str) -> str:
    """Turn a filesystem-internal path back into the caller's kind of location."""
    scheme = _scheme(str(uri))
    return f"{scheme}://{inner_path}" if scheme in OBJECT_SCHEMES else inner_path


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri: str | os.PathLike) -> None:
    """Create a local folder (parents included); a no-op on object storage, which has no folders."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path, recursive=True)


def listdir(uri: str | os.PathLike) -> list[str]:
    """Sorted names (not full paths) directly under `uri`; empty when it does not exist."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def glob(uri: str | os.PathLike, pattern: str) -> list[str]:
    """Sorted full locations of the files directly under `uri` whose name matches `pattern`."""
    text = str(uri)
    return [join(text, name) for name in listdir(text) if fnmatch.fnmatchcase(name, pattern)]


def list_shards(shards_dir: str | os.PathLike, split: str) -> list[str]:
    """Sorted `<split>-*.tar` shard locations under a shards folder or URI; an error when none.
    A local folder is listed by the library (`lipsync.data.shard_stream.list_shards`), object
    storage here."""
    if not is_object_storage(shards_dir):
        from lipsync.data.shard_stream import list_shards as list_local

        return [str(p) for p in list_local(resolve(shards_dir), split)]
    found = glob(shards_dir, f"{split}-*.tar")
    if not found:
        what = "does not exist" if not exists(shards_dir) else f"has no '{split}-*.tar' shards"
        raise StorageError(f"{shards_dir}: shard location {what} (run workflows/preprocess.py first)")
    return found


def size(uri: str | os.PathLike) -> int:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{uri}: not found")
    return int(info.size or 0)


def open_input(uri: str | os.PathLike):
    """A readable binary stream (sequential; fine for tar shards and parquet reads)."""
    fs, path = filesystem(uri)
    try:
        # Buffered: without it every small read() on object storage is one ranged GET.
        return fs.open_input_stream(path, compression=None, buffer_size=_CHUNK)
    except FileNotFoundError as e:
        raise StorageError(f"{uri}: not found") from e


def open_input_file(uri: str | os.PathLike):
    """A seekable binary file (random access, e.g. for parquet footers)."""
    fs, path = filesystem(uri)
    try:
        return fs.open_input_file(path)
    except FileNotFoundError as e:
        raise StorageError(f"{uri}: not found") from e


def _temp_sibling(path: str) -> str:
    head, tail = posixpath.split(path) if "/" in path else ("", path)
    name = f".{tail}.tmp-{uuid.uuid4().hex[:12]}"
    return posixpath.join(head, name) if head else name


@contextlib.contextmanager
def open_output(uri: str | os.PathLike, atomic: bool = True):
    """A writable binary stream; with `atomic`, the target appears only if the block exits cleanly.

    Local: written to a hidden temporary name in the same folder, then renamed over the
    target (rename is atomic on POSIX). Object storage: written to a local temporary file
    and uploaded when the block exits cleanly (an object appears only when its upload
    completes, multipart for large ones); a writer that fails uploads nothing.
    """
    fs, path = filesystem(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        if not atomic:
            with fs.open_output_stream(path) as stream:
                yield stream
            return
        with tempfile.TemporaryFile(prefix="lipsync-upload-") as spool:
            yield spool
            spool.seek(0)
            try:
                with fs.open_output_stream(path) as stream:
                    shutil.copyfileobj(spool, stream, _CHUNK)
            except OSError as e:
                raise StorageError(f"{uri}: cannot write: {e}") from e
        return
    fs.create_dir(posixpath.dirname(path) or ".", recursive=True)
    target = _temp_sibling(path) if atomic else path
    stream = fs.open_output_stream(target)
    try:
        yield stream
    except BaseException:
        stream.close()
        if atomic:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(target)
        raise
    stream.close()
    if atomic:
        fs.move(target, path)


def put_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `uri` atomically."""
    with open_output(uri, atomic=True) as f:
        f.write(data)


def get_bytes(uri: str | os.PathLike) -> bytes:
    with open_input(uri) as f:
        return f.read()


def put_file(local_path: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy a finished local file to `uri` atomically (object storage: one upload, no spool)."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        with open(local_path, "rb") as src, open_output(uri, atomic=True) as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        return
    with open(local_path, "rb") as src, fs.open_output_stream(path) as dst:
        shutil.copyfileobj(src, dst, _CHUNK)


def delete(uri: str | os.PathLike, missing_ok: bool = True) -> None:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        if missing_ok:
            return
        raise StorageError(f"{uri}: not found")
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    else:
        fs.delete_file(path)


def local_path(uri: str | os.PathLike) -> Path | None:
    """The local `Path` when `uri` is on local disk, else None (callers that need a real file)."""
    return None if is_object_storage(uri) else Path(resolve(uri))


def pyarrow_location(uri: str | os.PathLike) -> tuple[pafs.FileSystem | None, str]:
    """What APIs taking `(path, filesystem=...)` want (pyarrow.parquet, Ray Data, Ray Train
    `RunConfig(storage_path=, storage_filesystem=)`): None + absolute path locally, so the
    API keeps its own default; the filesystem + bucket/key for object storage."""
    if not is_object_storage(uri):
        return None, resolve(uri)
    return filesystem(uri)

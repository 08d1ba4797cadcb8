"""Storage URIs: the same helpers on local disk and on a real local S3 server (moto)."""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pyarrow as pa
import pytest

from pipelines.common import storage


def test_uri_classification_and_resolve(tmp_path, monkeypatch):
    assert storage.is_object_storage("s3://b/k") and storage.is_object_storage("gs://b/k") and storage.is_object_storage("GS://b/k")
    assert not storage.is_object_storage("/tmp/x") and not storage.is_object_storage("rel/x") and not storage.is_object_storage("file:///tmp/x")
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("shards") == str(tmp_path / "shards")
    assert storage.resolve("file:///tmp/x") == "/tmp/x"
    assert storage.resolve("s3://bucket/a/b") == "s3://bucket/a/b"
    assert storage.join("s3://bucket/a/", "b", "/c") == "s3://bucket/a/b/c"
    assert storage.join(str(tmp_path), "b") == str(tmp_path / "b")
    fs, path = storage.filesystem("gs://bucket/prefix/")
    assert isinstance(fs, pafs.GcsFileSystem) and path == "bucket/prefix"
    with pytest.raises(storage.StorageError, match="hdfs://x/y.*unsupported storage scheme"):
        storage.filesystem("hdfs://x/y")
    with pytest.raises(storage.StorageError, match="needs a bucket"):
        storage.filesystem("s3:///key")


def _roundtrip(base: str) -> None:
    """The whole helper surface against one base location (local folder or s3:// prefix)."""
    target = storage.join(base, "sub", "a.bin")
    assert not storage.exists(target)
    storage.put_bytes(target, b"hello")
    storage.put_bytes(storage.join(base, "sub", "b.txt"), b"x" * 10)
    assert storage.exists(target) and storage.get_bytes(target) == b"hello" and storage.size(target) == 5
    assert storage.listdir(storage.join(base, "sub")) == ["a.bin", "b.txt"]
    assert storage.glob(storage.join(base, "sub"), "*.bin") == [target]
    assert storage.listdir(storage.join(base, "nothing-here")) == []

    # Atomic: a writer that fails leaves neither the object nor a temporary behind.
    broken = storage.join(base, "sub", "broken.bin")
    with pytest.raises(RuntimeError, match="writer died"):
        with storage.open_output(broken) as f:
            f.write(b"partial" * 1000)
            raise RuntimeError("writer died")
    assert not storage.exists(broken)
    assert storage.listdir(storage.join(base, "sub")) == ["a.bin", "b.txt"]

    # Replacing an existing object is atomic too: readers see old or new, never a mix.
    storage.put_bytes(target, b"second")
    assert storage.get_bytes(target) == b"second"

    # Streams plug into pyarrow APIs (parquet manifests).
    table = pa.table({"path": ["a", "b"], "ok": [True, False]})
    manifest = storage.join(base, "manifest.parquet")
    with storage.open_output(manifest) as f:
        pq.write_table(table, f)
    with storage.open_input_file(manifest) as f:
        assert pq.read_table(f).equals(table)
    fs, path = storage.pyarrow_location(manifest)
    assert pq.read_table(path, filesystem=fs).equals(table)

    storage.delete(target)
    assert not storage.exists(target)
    with pytest.raises(storage.StorageError, match="a.bin: not found"):
        storage.get_bytes(target)


def test_local_roundtrip(tmp_path):
    _roundtrip(str(tmp_path / "store"))
    assert not [p for p in (tmp_path / "store" / "sub").iterdir() if ".tmp-" in p.name]


def test_s3_roundtrip(s3_server):
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint
    base = s3_server.uri("roundtrip")
    _roundtrip(base)
    # What the helpers see is what S3 itself holds (checked with a second client, boto3).
    # (Keys ending in "/" are the empty folder markers pyarrow keeps after a delete.)
    keys = [k for k in s3_server.keys("roundtrip/") if not k.endswith("/")]
    assert keys == ["roundtrip/manifest.parquet", "roundtrip/sub/b.txt"], keys
    big = storage.join(base, "big.bin")
    payload = os.urandom(12 << 20)  # > one multipart part: the upload completes on close
    storage.put_bytes(big, payload)
    assert storage.get_bytes(big) == payload


def test_s3_missing_bucket_is_a_clear_error(s3_server):
    with pytest.raises(storage.StorageError, match="s3://no-such-bucket-xyz/k: cannot write: .*bucket does not exist"):
        storage.put_bytes("s3://no-such-bucket-xyz/k", b"x")

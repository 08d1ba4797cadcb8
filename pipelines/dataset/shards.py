"""Shard writing where the crops are made: ``{split}-{task}-{n}.tar`` plus a manifest part each.

Every Ray task of the preprocessing job (pipelines/preprocess/driver.py) writes its own shards,
straight to the output filesystem (a local directory or ``s3://`` / ``gs://`` through
pyarrow), so no crop passes through the driver. Commit protocol, per shard:

1. samples are written (``webdataset.TarWriter``, fixed mtime/owner so bytes are reproducible)
   to ``{split}-{task}-{n}.tar.partial``;
2. on close, the shard's part ``index/{split}-{task}-{n}.json`` is written (temp name, then
   move): the manifest rows of every piece resolved since the task's previous shard of this
   split (the pieces whose clips are in this shard and the rejected ones in between);
3. the tar is moved to ``{split}-{task}-{n}.tar`` - the commit point (a rename on local disk; on
   object storage the final key appears whole, by one copy).

A piece (a whole input, or a time range of a long one, see pipelines/preprocess/pieces.py) never
straddles two shards: a shard closes only between pieces, once it reaches the target size.
Pieces resolved after a task's last shard of a split (trailing rejects) are recorded in
``index/{split}-{task}-tail.json`` when the task ends.

Exactly once: :func:`recover` (run by the driver before and after the job) deletes partial
files and parts whose tar is missing, and reads the committed parts; a piece listed there is
done and is never planned again. A Ray task that is retried (its worker died) first deletes
whatever an earlier attempt of the same task committed (:meth:`TaskShardWriter.clear_task`),
so a shard is never counted twice. Task names carry the run number (``r{run}t{task}``), so a
re-run after a killed driver never overwrites shards the earlier run committed.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Iterable, Optional

import pyarrow.fs as pafs
import webdataset as wds

from lipsync.errors import ConfigError
from pipelines.common import storage

INDEX_DIR = "index"
# Parts of task shards (r{run}t{task}) and of merged ones (r{run}m{n}, pipelines/dataset/compaction.py).
PART_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-r(?P<run>\d+)[tm](?P<task>\d+)-(?P<n>\d+|tail)\.json$")
SPLITS_WRITTEN = ("train", "val", "test", "none")


def parse_size(text: str | int | float) -> int:
    """'256MB' / '1.5G' / '64k' / 1000000 -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgG]?)(i?[bB])?\s*", str(text))
    if not m:
        raise ConfigError(f"--shard-size {text!r}: expected a size like 256MB, 1G or 500000")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


# ------------------------------------------------------------------------------ filesystem


@dataclass(frozen=True)
class Output:
    """Where a job writes: a filesystem and the root path in it (pipelines/common/storage.py resolves
    local paths and ``s3://`` / ``gs://`` URIs). Picklable: pyarrow filesystems are, and the
    workers take credentials from their own environment."""

    fs: pafs.FileSystem
    root: str

    @classmethod
    def of(cls, uri: str) -> "Output":
        fs, root = storage.filesystem(uri)
        return cls(fs, root.rstrip("/"))

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def listdir(self, *parts: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return self.fs.get_file_info(selector)

    def delete(self, *parts: str) -> None:
        try:
            self.fs.delete_file(self.path(*parts))
        except FileNotFoundError:
            pass

    def read_json(self, *parts: str):
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return json.loads(f.read().decode("utf-8"))

    def put_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole file atomically: locally under a temporary name, then renamed; on
        object storage the object appears only when its upload completes."""
        final = self.path(*parts)
        tmp = final + ".tmp" if self.local else final
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        if tmp != final:
            self.fs.move(tmp, final)

    def put_file(self, fileobj, *parts: str) -> None:
        """Copy an open file's contents to a file here, atomically (as ``put_bytes``)."""
        final = self.path(*parts)
        tmp = final + ".partial" if self.local else final
        with self.fs.open_output_stream(tmp) as dest:
            shutil.copyfileobj(fileobj, dest, 8 << 20)
        if tmp != final:
            self.fs.move(tmp, final)

    def put_json(self, data, *parts: str) -> None:
        self.put_bytes(json.dumps(data, indent=1, sort_keys=True, default=_json_default).encode("utf-8"), *parts)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ------------------------------------------------------------------------------ names


def tar_member_bytes(sample: dict) -> int:
    """Bytes a sample takes in a USTAR tar: a 512-byte header per member, data padded to 512.

    Counted here because the tar stream buffers its writes (the file size lags)."""
    return sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if not k.startswith("_"))


def task_name(run: int, task: int) -> str:
    return f"r{run}t{task:05d}"


def shard_name(split: str, task: str, index: int) -> str:
    return f"{split}-{task}-{index:04d}.tar"


# Names preprocessing writes: task shards {split}-r{run}t{task}-{n}.tar (shard_name) and merged ones
# {split}-r{run}m{n}-0000.tar (pipelines/dataset/compaction.py); the index's fingerprint; and the
# suffixes of a file still being written (Output.put_bytes / put_file, TaskShardWriter).
SHARD_RE = re.compile(r"^[A-Za-z0-9_]+-r\d+[tm]\d+-\d+\.tar$")
CONFIG_NAME = "config.json"
UNCOMMITTED = (".partial", ".tmp")


def _uncommitted(name: str, committed) -> bool:
    """Is ``name`` a file being written whose final name ``committed`` accepts?"""
    return any(name.endswith(suffix) and committed(name[:-len(suffix)]) for suffix in UNCOMMITTED)


def _index_file(name: str) -> bool:
    return bool(PART_RE.match(name)) or name == CONFIG_NAME


def clear(out: Output, files: Iterable[str] = ()) -> int:
    """Delete what preprocessing wrote in ``out`` (``--overwrite``), and nothing else: the shards
    its index lists, files being written under its names, the index's own files and ``files`` (the
    driver's manifest and summary). Returns how many files went. A folder that holds files but no
    index fingerprint is not a shard folder: refused, nothing deleted."""
    entries = out.listdir()
    if not entries:
        return 0
    if not out.exists(INDEX_DIR, CONFIG_NAME):
        raise ConfigError(f"--output {out.root}: not a shard folder (no {INDEX_DIR}/{CONFIG_NAME}); "
                          "--overwrite deletes only what preprocessing wrote, so it refuses this folder")
    files = set(files)
    ours = set(files)  # top-level files
    index = []
    for info in out.listdir(INDEX_DIR):
        name = info.base_name
        if PART_RE.match(name):
            shard = out.read_json(INDEX_DIR, name).get("shard")
            if shard:
                ours.add(shard)  # every committed tar has its part: the part is written first
        if _index_file(name) or _uncommitted(name, _index_file):
            index.append(name)
    gone = [info.base_name for info in entries if info.type == pafs.FileType.File and (
        info.base_name in ours
        or _uncommitted(info.base_name, lambda stem: bool(SHARD_RE.match(stem)) or stem in files))]
    for name in gone:
        out.delete(name)
    for name in index:
        out.delete(INDEX_DIR, name)
    if out.exists(INDEX_DIR) and not out.listdir(INDEX_DIR):
        out.fs.delete_dir(out.path(INDEX_DIR))
    return len(gone) + len(index)


# ------------------------------------------------------------------------------ recovery


@dataclass
class ShardState:
    """What earlier runs left in an output directory."""

    rows: list[dict] = field(default_factory=list)          # piece rows of committed parts
    shards: list[dict] = field(default_factory=list)        # {"shard", "samples", "bytes"}
    last_run: int = 0

    @property
    def done(self) -> set[tuple[str, int]]:
        """(input_id, piece) of every piece accounted for."""
        return {(row["input_id"], int(row.get("piece", 0))) for row in self.rows}


def recover(out: Output) -> ShardState:
    """Clean up after killed runs (the shards and parts they were writing) and read what committed
    parts recorded."""
    for info in out.listdir():
        if _uncommitted(info.base_name, SHARD_RE.match):
            out.delete(info.base_name)
    state = ShardState()
    seen: dict[tuple[str, int], str] = {}
    parts = {}
    for info in sorted(out.listdir(INDEX_DIR), key=lambda i: i.base_name):
        name = info.base_name
        if _uncommitted(name, _index_file):
            out.delete(INDEX_DIR, name)
            continue
        m = PART_RE.match(name)
        if m:
            state.last_run = max(state.last_run, int(m.group("run")))
            parts[name] = out.read_json(INDEX_DIR, name)
    # An interrupted merge (pipelines/dataset/compaction.py): once the merged shard is committed, its
    # sources are gone, whatever of them is still there.
    for name, part in list(parts.items()):
        if part.get("replaces") and out.exists(part["shard"]):
            for source in part["replaces"]:
                out.delete(source)
                out.delete(INDEX_DIR, source[:-len(".tar")] + ".json")
                parts.pop(source[:-len(".tar")] + ".json", None)
    for name, part in parts.items():
        if part.get("shard"):
            if not out.exists(part["shard"]):
                out.delete(INDEX_DIR, name)  # part written, tar not committed: never happened
                continue
            state.shards.append({k: part[k] for k in ("shard", "samples", "bytes")})
        for row in part["rows"]:
            key = (row["input_id"], int(row.get("piece", 0)))
            if key in seen:
                raise RuntimeError(f"input {key[0]} (piece {key[1]}) is recorded twice ({seen[key]} and "
                                   f"{name}); the output directory is inconsistent")
            seen[key] = name
            state.rows.append(row)
    return state


# ------------------------------------------------------------------------------ writing


class TaskShardWriter:
    """One task's shards of one split; closes a shard between pieces once it reaches ``target_bytes``."""

    def __init__(self, out: Output, split: str, task: str, target_bytes: int):
        self.out = out
        self.split = split
        self.task = task
        self.index = 0
        self.target_bytes = int(target_bytes)
        self._writer: Optional[wds.TarWriter] = None
        self._stream = None
        self._bytes = 0
        self._samples = 0
        self._rows: list[dict] = []
        self.completed: list[dict] = []  # {"shard", "samples", "bytes"}
        out.fs.create_dir(out.path(INDEX_DIR), recursive=True)

    @staticmethod
    def clear_task(out: Output, task: str) -> None:
        """Delete what an earlier attempt of this task committed (a Ray retry starts clean)."""
        for split in SPLITS_WRITTEN:
            out.delete(INDEX_DIR, f"{split}-{task}-tail.json")
            n = 0
            while out.exists(INDEX_DIR, f"{split}-{task}-{n:04d}.json"):
                out.delete(shard_name(split, task, n))  # the tar first: a tar always has its part
                out.delete(INDEX_DIR, f"{split}-{task}-{n:04d}.json")
                n += 1

    @property
    def current_name(self) -> str:
        return shard_name(self.split, self.task, self.index)

    def add_piece(self, samples: Iterable[dict], row: dict) -> dict:
        """Record one resolved piece: its encoded samples (possibly none) and its row.

        Returns the row as recorded (with ``shard`` set when it has samples)."""
        samples = list(samples)
        if samples:
            if self._writer is None:
                # Local: a .partial file renamed on commit. Object storage: a local spool file,
                # uploaded on commit (the object appears only when the upload completes).
                self._stream = (self.out.fs.open_output_stream(self.out.path(self.current_name + ".partial"))
                                if self.out.local else tempfile.TemporaryFile(prefix="lipsync-shard-"))
                # Fixed mtime/owner: the same samples always give the same bytes.
                self._writer = wds.TarWriter(self._stream, encoder=False, mtime=0, user="lipsync",
                                             group="lipsync", format=tarfile.USTAR_FORMAT)
            for sample in samples:
                self._writer.write(sample)
                self._samples += 1
                self._bytes += tar_member_bytes(sample)
            row = {**row, "shard": self.current_name}
        self._rows.append(row)
        if self._writer is not None and self._bytes >= self.target_bytes:
            self.close_shard()
        return row

    def close_shard(self) -> None:
        if self._writer is None:
            return
        final = self.current_name
        stem = final[:-len(".tar")]
        self._writer.close()  # the end-of-archive blocks (the stream stays open: we passed it in)
        if self.out.local:
            self._stream.close()
            size = self.out.fs.get_file_info(self.out.path(final + ".partial")).size
            self.out.put_json({"shard": final, "samples": self._samples, "bytes": size, "rows": self._rows},
                              INDEX_DIR, f"{stem}.json")
            self.out.fs.move(self.out.path(final + ".partial"), self.out.path(final))
        else:
            spool = self._stream
            size = spool.tell()
            self.out.put_json({"shard": final, "samples": self._samples, "bytes": size, "rows": self._rows},
                              INDEX_DIR, f"{stem}.json")
            spool.seek(0)
            self.out.put_file(spool, final)
            spool.close()
        self.completed.append({"shard": final, "samples": self._samples, "bytes": size})
        self._writer, self._stream = None, None
        self._bytes, self._samples, self._rows = 0, 0, []
        self.index += 1

    def finish(self) -> None:
        """End of the task: close the open shard; trailing rejects go to the task's tail part."""
        self.close_shard()
        if self._rows:
            self.out.put_json({"shard": None, "rows": self._rows}, INDEX_DIR,
                              f"{self.split}-{self.task}-tail.json")
            self._rows = []

    def abort(self) -> None:
        """Drop the open shard (the task failed): its pieces stay unaccounted and are redone."""
        if self._writer is not None:
            try:
                self._stream.close()
            finally:
                self._writer, self._stream = None, None
                if self.out.local:
                    self.out.delete(self.current_name + ".partial")

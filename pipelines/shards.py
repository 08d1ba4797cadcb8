"""Shard writing with crash safety: ``{split}-NNNNNN.tar`` WebDataset shards plus an index.

Commit protocol, per shard:
1. samples are written (``webdataset.TarWriter``, fixed mtime/owner so bytes are reproducible)
   to ``{split}-NNNNNN.tar.partial``;
2. on close, the shard's index ``index/{split}-NNNNNN.json`` is written (temp file + rename):
   the manifest rows of every input resolved since the previous shard of this split (the
   inputs whose clips are in this shard, and the rejected ones in between);
3. the tar is renamed to ``{split}-NNNNNN.tar`` - the commit point.

So a shard that looks complete (``*.tar``) is complete, and its index says which inputs it
accounts for. On start, :func:`recover` deletes ``*.partial`` files and indexes without a tar.
An input's clips never straddle two shards: a shard is closed only between inputs, once it
has reached the target size. Inputs are processed in a fixed order, so a resumed run
continues each split exactly where the killed one stopped and produces the same shards.

Inputs resolved after a split's last shard that produced no sample (trailing rejects) are
recorded in ``index/{split}-tail.json`` at the end of a complete run (appended to by later
runs that add inputs); they count as done too.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import webdataset as wds

from lipsync.errors import ConfigError

INDEX_DIR = "index"
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")


def parse_size(text: str | int | float) -> int:
    """'256MB' / '1.5G' / '64k' / 1000000 -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgG]?)(i?[bB])?\s*", str(text))
    if not m:
        raise ConfigError(f"--shard-size {text!r}: expected a size like 256MB, 1G or 500000")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def tar_member_bytes(sample: dict) -> int:
    """Bytes a sample takes in a USTAR tar: a 512-byte header per member, data padded to 512.

    Counted here because the tar stream buffers its writes (the file size lags)."""
    return sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if not k.startswith("_"))


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


@dataclass
class ShardState:
    """What earlier runs left in an output directory."""

    rows: list[dict] = field(default_factory=list)          # manifest rows of completed shards + tails
    next_index: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)

    @property
    def done(self) -> set[str]:
        return {row["input_id"] for row in self.rows}


def recover(output: Path) -> ShardState:
    """Clean up after a killed run and read what completed runs recorded."""
    index_dir = output / INDEX_DIR
    index_dir.mkdir(parents=True, exist_ok=True)
    for leftover in list(output.glob("*.tar.partial")) + list(index_dir.glob("*.tmp")):
        leftover.unlink()
    state = ShardState()
    seen: dict[str, str] = {}
    for entry in sorted(index_dir.glob("*-*.json")):
        stem = entry.stem
        if stem.endswith("-tail"):
            continue
        if not (output / f"{stem}.tar").exists():
            entry.unlink()  # index written, tar rename not reached: the shard never completed
            continue
        split, index = stem.rsplit("-", 1)
        state.next_index[split] = max(state.next_index.get(split, 0), int(index) + 1)
        state.shards.append(f"{stem}.tar")
        _add_rows(state, seen, entry)
    for entry in sorted(index_dir.glob("*-tail.json")):
        _add_rows(state, seen, entry)
    return state


def _add_rows(state: ShardState, seen: dict, entry: Path) -> None:
    data = json.loads(entry.read_text(encoding="utf-8"))
    for row in data["rows"]:
        if row["input_id"] in seen:
            raise RuntimeError(f"input {row['input_id']} is recorded twice ({seen[row['input_id']]} and "
                               f"{entry.name}); the output directory is inconsistent")
        seen[row["input_id"]] = entry.name
        state.rows.append(row)


class SplitShardWriter:
    """Writes one split's shards; closes a shard between inputs once it reaches ``target_bytes``."""

    def __init__(self, output: Path, split: str, next_index: int, target_bytes: int):
        self.output = Path(output)
        self.split = split
        self.index = next_index
        self.target_bytes = int(target_bytes)
        self._writer: Optional[wds.TarWriter] = None
        self._stream: Optional[io.BufferedWriter] = None
        self._bytes = 0
        self._samples = 0
        self._rows: list[dict] = []
        self.completed: list[dict] = []  # {"shard", "samples", "bytes"}
        (self.output / INDEX_DIR).mkdir(parents=True, exist_ok=True)

    @property
    def current_name(self) -> str:
        return shard_name(self.split, self.index)

    def _partial_path(self) -> Path:
        return self.output / (self.current_name + ".partial")

    def add_input(self, samples: Iterable[dict], row: dict) -> dict:
        """Record one resolved input: its encoded samples (possibly none) and its manifest row.

        Returns the row as recorded (with ``shard`` set when it has samples)."""
        samples = list(samples)
        if samples:
            if self._writer is None:
                self._stream = open(self._partial_path(), "wb")
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
        self._writer.close()  # closes the tar stream (end-of-archive blocks)
        if not self._stream.closed:
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
        final = self.output / self.current_name
        size = self._partial_path().stat().st_size
        write_json_atomic(self.output / INDEX_DIR / f"{final.stem}.json",
                           {"shard": final.name, "samples": self._samples, "bytes": size,
                            "rows": self._rows})
        os.replace(self._partial_path(), final)
        self.completed.append({"shard": final.name, "samples": self._samples, "bytes": size})
        self._writer, self._stream = None, None
        self._bytes, self._samples, self._rows = 0, 0, []
        self.index += 1

    def finish(self) -> None:
        """End of the run: close the open shard; trailing rejects go to the split's tail."""
        self.close_shard()
        if self._rows:
            tail = self.output / INDEX_DIR / f"{self.split}-tail.json"
            earlier = json.loads(tail.read_text(encoding="utf-8"))["rows"] if tail.exists() else []
            write_json_atomic(tail, {"rows": earlier + self._rows})
            self._rows = []

    def abort(self) -> None:
        """Drop the open shard (used when the run fails): it stays unaccounted and is redone."""
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer, self._stream = None, None
                self._partial_path().unlink(missing_ok=True)

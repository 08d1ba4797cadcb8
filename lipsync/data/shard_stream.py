"""Streaming training batches from WebDataset shards, one reader per training process.

One stream for every training stage: what a window is comes from a *sampling* object
(``ExpertSampling``: expert pairs; ``GeneratorSampling``: generator samples, both in
``lipsync.data.windows``) that cuts windows from a clip (``sample``), batches them
(``collate``) and says why a clip gave none (``why_unusable``).

Each reader (Ray Train worker x optional DataLoader worker) gets its own part of the data:
whole shards when there are at least as many shards as readers, otherwise every reader
scans all shards and keeps every ``n_readers``-th clip (small corpora, e.g. one val shard).
The shard order is shuffled per epoch with a seed shared by all readers so the split stays
disjoint; window sampling uses a per-reader seed. Several windows are cut from each
decoded clip (frames decoded once, lazily) and mixed in a shuffle buffer so a batch mixes
clips, speakers and labels.

This module is Ray-free on purpose: the same reader runs inside Ray Train workers, a
plain DataLoader, or the loader benchmark (which measured it against Ray Data ingest, see
benchmarks/loader.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from webdataset.tariterators import group_by_keys, tar_file_expander

from lipsync.data.clip_sample import decode_clip_sample
from lipsync.errors import ConfigError
from lipsync.locations import is_object_storage


def list_shards(shards_dir: str | Path, split: str) -> list[Path]:
    """Sorted ``<split>-*.tar`` shards under ``shards_dir``; ConfigError when there are none."""
    root = Path(shards_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: shard directory does not exist")
    paths = sorted(root.glob(f"{split}-*.tar"))
    if not paths:
        raise ConfigError(f"{root}: no '{split}-*.tar' shards (run workflows/preprocess.py first)")
    return paths


READ_BUFFER = 8 << 20  # bytes per object-storage request when streaming a shard


def open_shard(location: str | Path):
    """A binary stream of one shard: a local file, or an ``s3://`` / ``gs://`` object read
    through pyarrow, which takes the endpoint and credentials from the standard AWS / Google
    environment (the same variables ``pipelines/common/storage.py`` documents)."""
    if is_object_storage(location):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(str(location))
        # Buffered: tarfile reads 10 KiB at a time, and each unbuffered read of an S3 stream
        # is one ranged GET (10 000 requests for a 0.5 MB shard, measured against moto).
        return fs.open_input_stream(path, compression=None, buffer_size=READ_BUFFER)
    return open(str(location).removeprefix("file://"), "rb")


def iter_samples(shard_paths: list[str | Path]) -> Iterator[dict]:
    """The raw samples (member name -> bytes) of the given shards, local or object storage."""
    # webdataset's own opener knows no s3://; hand it opened streams instead of URLs.
    yield from group_by_keys(tar_file_expander(_opened_shards(shard_paths)))


def iter_clips(shard_paths: list[str | Path]) -> Iterator:
    """Decoded ClipSamples of the given shards (local paths or object-storage URIs), in order."""
    for sample in iter_samples(shard_paths):
        yield decode_clip_sample(sample)


def _opened_shards(shard_paths: list[str | Path]) -> Iterator[dict]:
    for p in shard_paths:
        with open_shard(p) as stream:  # read to the end before the next one is asked for
            yield {"url": str(p), "stream": stream}


def _reader_slot(rank: int, world_size: int) -> tuple[int, int]:
    """Global reader index/count: Ray Train rank x DataLoader worker."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return rank, world_size
    return rank * info.num_workers + info.id, world_size * info.num_workers


class WindowBatchStream(torch.utils.data.IterableDataset):
    """Endless (or ``epochs``-long) stream of collated batches for one reader.

    Yields ``sampling.collate`` dicts. ``seed`` should differ per resume (e.g. mix in the
    step) so a restored run does not replay the same windows.
    """

    def __init__(
        self,
        shard_paths: list[str | Path],
        *,
        sampling,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 64,
        windows_per_clip: int = 8,
        shuffle_buffer: int = 2048,
        seed: int = 0,
        epochs: int | None = None,
    ):
        super().__init__()
        if not shard_paths:
            raise ConfigError("no shards given to the training batch stream")
        if batch_size < 1 or windows_per_clip < 1:
            raise ConfigError(f"batch size and windows per clip must be >= 1 (got {batch_size}, {windows_per_clip})")
        self.shard_paths = [str(p) if is_object_storage(p) else Path(p) for p in shard_paths]
        self.rank, self.world_size = rank, world_size
        self.batch_size = batch_size
        self.windows_per_clip = windows_per_clip
        self.shuffle_buffer = max(shuffle_buffer, batch_size)
        self.seed = seed
        self.sampling = sampling
        self.epochs = epochs
        self.clips_seen = 0
        self.clips_skipped = 0

    def _epoch_clips(self, epoch: int, reader: int, n_readers: int) -> Iterator:
        order = np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.shard_paths))
        shards = [self.shard_paths[i] for i in order]
        if len(shards) >= n_readers:
            yield from iter_clips(shards[reader::n_readers])
            return
        for i, clip in enumerate(iter_clips(shards)):
            if i % n_readers == reader:
                yield clip

    def windows(self) -> Iterator:
        """Shuffled windows for this reader (before batching)."""
        reader, n_readers = _reader_slot(self.rank, self.world_size)
        rng = np.random.default_rng([self.seed, reader, 11])
        buffer: list = []
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            produced = 0
            for clip in self._epoch_clips(epoch, reader, n_readers):
                self.clips_seen += 1
                new = self.sampling.sample(clip, self.windows_per_clip, rng)
                if not new:
                    self.clips_skipped += 1
                    continue
                produced += len(new)
                buffer.extend(new)
                while len(buffer) >= self.shuffle_buffer:
                    i = int(rng.integers(len(buffer)))
                    buffer[i], buffer[-1] = buffer[-1], buffer[i]
                    yield buffer.pop()
            if produced == 0:
                raise ConfigError(
                    f"reader {reader}/{n_readers} got no usable clip from {len(self.shard_paths)} shard(s) "
                    f"(clips seen {self.clips_seen}, skipped {self.clips_skipped}: {self.sampling.why_unusable()})"
                )
            epoch += 1
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batch: list = []
        for window in self.windows():
            batch.append(window)
            if len(batch) == self.batch_size:
                yield self.sampling.collate(batch)
                batch = []
        if batch:
            yield self.sampling.collate(batch)


def fixed_windows(
    shard_paths: list[Path],
    windows_per_clip: int,
    seed: int,
    sampling,
    max_clips: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> list:
    """A deterministic evaluation set: the same windows for the same shards and seed.

    With ``world_size > 1`` each rank gets the windows of every ``world_size``-th clip; each
    clip's windows come from its own seed, so the union over ranks is the same set whatever
    the number of ranks (validation numbers stay comparable across scalings) and no rank
    holds the whole set in memory.
    """
    out: list = []
    n_clips = 0
    for i, clip in enumerate(iter_clips(list(shard_paths))):
        if max_clips is not None and i >= max_clips:
            break
        n_clips += 1
        if i % world_size == rank:
            out.extend(sampling.sample(clip, windows_per_clip, np.random.default_rng([seed, i, 13])))
    if n_clips == 0:
        raise ConfigError(f"no evaluation clips in {len(shard_paths)} shard(s)")
    return out

"""Merging small leftover shards, so shard sizes stay within a factor of 2 of the target.

Every task's last shard of a split is a leftover (smaller than the target). After the job,
the driver groups each split's shards under half the target (:func:`plan_merges`, from the
parts' byte counts: metadata only) and Ray tasks concatenate each group into one shard
(:func:`merge_shards`, tar members copied as they are, in order), named
``{split}-r{run}m{n}-0000.tar``.

Exactly once, as for written shards: the merged shard's part lists the rows of its sources and
their names (``replaces``); it is written before the merged tar is committed. Then the sources
are deleted, each tar before its part (a part without its tar is dropped by ``recover``, a tar
is never left without its part). ``recover`` finishes an interrupted merge: for every committed
merged shard it deletes the sources still there. A retried merge task whose shard is already
committed only deletes the sources.
"""

from __future__ import annotations

import tarfile
import tempfile
from typing import Sequence

from pipelines.dataset.shards import INDEX_DIR, Output


def plan_merges(shards: Sequence[dict], target_bytes: int) -> list[list[dict]]:
    """Groups of small shards (``{"shard", "bytes"}``, one split each) to merge: a group closes
    once it reaches the target; a last group under half the target joins the one before.
    Groups end up under 2 x target (each member is under half the target)."""
    by_split: dict[str, list[dict]] = {}
    for shard in sorted(shards, key=lambda s: s["shard"]):
        if shard["bytes"] < target_bytes / 2:
            by_split.setdefault(shard["shard"].split("-")[0], []).append(shard)
    groups: list[list[dict]] = []
    for small in by_split.values():
        split_groups: list[list[dict]] = [[]]
        for shard in small:
            if sum(s["bytes"] for s in split_groups[-1]) >= target_bytes:
                split_groups.append([])
            split_groups[-1].append(shard)
        if len(split_groups) > 1 and sum(s["bytes"] for s in split_groups[-1]) < target_bytes / 2:
            split_groups[-2].extend(split_groups.pop())
        groups.extend(g for g in split_groups if len(g) > 1)
    return groups


def merged_name(split: str, run: int, n: int) -> str:
    return f"{split}-r{run}m{n:05d}-0000.tar"


def _stem(name: str) -> str:
    return name[:-len(".tar")]


def delete_sources(out: Output, sources: Sequence[str]) -> None:
    for name in sources:
        out.delete(name)                                # the tar first: a tar always has its part
        out.delete(INDEX_DIR, f"{_stem(name)}.json")


def merge_shards(out: Output, sources: Sequence[str], name: str) -> dict:
    """Concatenate ``sources`` (shard names, in order) into shard ``name``; returns its record."""
    part_name = f"{_stem(name)}.json"
    if out.exists(name) and out.exists(INDEX_DIR, part_name):  # a retry: already committed
        delete_sources(out, sources)
        part = out.read_json(INDEX_DIR, part_name)
        return {k: part[k] for k in ("shard", "samples", "bytes")}
    rows, samples = [], 0
    for source in sources:
        part = out.read_json(INDEX_DIR, f"{_stem(source)}.json")
        rows += [{**row, "shard": name} if row.get("shard") == source else row for row in part["rows"]]
        samples += part["samples"]
    with tempfile.TemporaryFile(prefix="lipsync-merge-") as spool:
        with tarfile.open(fileobj=spool, mode="w|", format=tarfile.USTAR_FORMAT) as dest:
            for source in sources:
                with out.fs.open_input_stream(out.path(source)) as stream, \
                        tarfile.open(fileobj=stream, mode="r|") as src:
                    for member in src:
                        dest.addfile(member, src.extractfile(member) if member.isfile() else None)
        size = spool.tell()
        out.put_json({"shard": name, "samples": samples, "bytes": size, "rows": rows, "replaces": list(sources)},
                     INDEX_DIR, part_name)
        spool.seek(0)
        out.put_file(spool, name)
    delete_sources(out, sources)
    return {"shard": name, "samples": samples, "bytes": size}

"""Preprocessing end to end for the layouts other than LRS2 and for several crop sizes,
through the real command line (workflows/preprocess.py) on the session's Ray cluster.

The videos are the session corpus's (tests/conftest.py `synth_corpus`), copied into a
VoxCeleb2 tree, a flat folder and a filelist; each layout must give every input its speaker
and split from where the layout says, and each sample must hold its crops at 96 and 192 px,
exactly the library's crops of the source frames.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from lipsync import video as lsv
from lipsync.data.clip_sample import decode_clip_sample
from lipsync.faces import crop_faces
from pipelines.dataset.manifest import read_manifest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def preprocess_cli(*flags: str) -> int:
    """`python workflows/preprocess.py FLAGS` in this process (joins the session's Ray cluster)."""
    sys.path.insert(0, str(REPO / "workflows"))
    try:
        import preprocess as preprocess_workflow
    finally:
        sys.path.pop(0)
    return preprocess_workflow.main(list(flags))


def two_speakers(corpus: Path) -> list[tuple[str, Path]]:
    speakers = sorted(p for p in (corpus / "main").iterdir() if p.is_dir())[:2]
    return [(s.name, s / "00001.mp4") for s in speakers]


def check_output(out: Path, expected: dict[str, tuple[str, str]]) -> None:
    """Manifest: every input ok with its speaker and split; shards: crops at 96 and 192 px."""
    rows = {r["input_id"]: r for r in read_manifest(out / "manifest.parquet")}
    assert {k: (r["status"], r["speaker"], r["split"]) for k, r in rows.items()} == \
        {k: ("ok", speaker, split) for k, (speaker, split) in expected.items()}
    samples = 0
    for sample in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False):
        clip = decode_clip_sample(sample)
        meta = clip.meta
        assert meta["crop_sizes"] == [96, 192] and rows[meta["input_id"]]["split"] == meta["split"]
        video = lsv.read_video(meta["source"], fps=25)
        frames = video.frames[meta["start_frame"]:meta["start_frame"] + meta["n_frames"]]
        boxes, pads = np.asarray(meta["boxes"]), tuple(meta["pads"])
        np.testing.assert_array_equal(clip.frames, crop_faces(frames, boxes, size=96, pads=pads))
        big = clip.frames_of_size(192).frames(list(range(meta["n_frames"])))
        np.testing.assert_array_equal(big, crop_faces(frames, boxes, size=192, pads=pads))
        samples += 1
    assert samples == sum(r["n_clips"] for r in rows.values()) >= len(expected)


def test_voxceleb2_folder_and_filelist_layouts_with_two_crop_sizes(synth_corpus, ray_local, tmp_path):
    (spk_a, clip_a), (spk_b, clip_b) = two_speakers(synth_corpus)
    common = ["--codec", "png", "--crop-size", "96", "192", "--num-cpus", "2", "--no-progress"]

    # VoxCeleb2: speaker = idNNNNN; test/ is the official test split, dev/ speakers go to train/val.
    vox = tmp_path / "vox"
    for part, speaker, src in (("dev", "id00017", clip_a), ("test", "id00042", clip_b)):
        dst = vox / part / "mp4" / speaker / "vidA" / "00001.mp4"
        dst.parent.mkdir(parents=True)
        shutil.copy(src, dst)
    assert preprocess_cli("--input", str(vox), "--layout", "voxceleb2", "--output", str(tmp_path / "vox_out"),
                          *common) == 0
    rows = {r["input_id"]: r for r in read_manifest(tmp_path / "vox_out" / "manifest.parquet")}
    dev_split = rows["dev/mp4/id00017/vidA/00001"]["split"]
    assert dev_split in ("train", "val")
    check_output(tmp_path / "vox_out", {"dev/mp4/id00017/vidA/00001": ("id00017", dev_split),
                                        "test/mp4/id00042/vidA/00001": ("id00042", "test")})

    # Folder: flat <speaker>_<clip>.mp4, speaker from --speaker-regex.
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(clip_a, flat / "alice_00001.mp4")
    shutil.copy(clip_b, flat / "bob_00001.mp4")
    assert preprocess_cli("--input", str(flat), "--layout", "folder", "--speaker-regex", "^([^_/]+)_",
                          "--output", str(tmp_path / "flat_out"), *common) == 0
    rows = {r["input_id"]: r for r in read_manifest(tmp_path / "flat_out" / "manifest.parquet")}
    check_output(tmp_path / "flat_out", {"alice_00001": ("alice", rows["alice_00001"]["split"]),
                                         "bob_00001": ("bob", rows["bob_00001"]["split"])})

    # Filelist: paths relative to the list, then speaker and split columns (which win).
    listed = tmp_path / "listed"
    (listed / "videos").mkdir(parents=True)
    shutil.copy(clip_a, listed / "videos" / "a.mp4")
    shutil.copy(clip_b, listed / "videos" / "b.mp4")
    (listed / "list.txt").write_text(f"videos/a.mp4\t{spk_a}\tval\nvideos/b.mp4\t{spk_b}\ttest\n")
    assert preprocess_cli("--input", str(listed / "list.txt"), "--layout", "filelist",
                          "--output", str(tmp_path / "list_out"), *common) == 0
    check_output(tmp_path / "list_out", {f"{listed.as_posix().lstrip('/')}/videos/a": (spk_a, "val"),
                                         f"{listed.as_posix().lstrip('/')}/videos/b": (spk_b, "test")})

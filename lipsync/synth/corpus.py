"""A small synthetic talking-face corpus: real mp4 files, real speech, audio-driven mouths.

`make_corpus` draws speakers (a voice, a face look, a lip colour) and clips (sentences
spoken by espeak-ng with pauses between them), renders every frame with the mouth
opened by the audio under that frame, and writes H.264 + AAC mp4 files in one of three
layouts:

- ``lrs2``: ``main/<speaker>/<clip>.mp4`` plus ``train.txt``, ``val.txt``, ``test.txt``
  (one ``<speaker>/<clip>`` per line, speakers disjoint across lists);
- ``voxceleb2``: ``dev/mp4/idNNNNN/<video>/<clip>.mp4`` (a few clips per video);
- ``folder``: flat ``<speaker>_<clip>.mp4`` files.

A ``synth.json`` next to them records every clip's speaker, split, sentence(s), voice and
frame count. Everything derives from ``seed`` through per-speaker and per-clip seed
sequences, so the output does not depend on worker count or scheduling: the same seed
gives byte-identical audio and identical frames.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lipsync.errors import ConfigError
from lipsync.synth.clip import ClipInfo, ClipJob, write_clip
from lipsync.synth.speakers import Speaker, make_speakers
from lipsync.synth.speech import SAMPLE_RATE

LAYOUTS = ("lrs2", "voxceleb2", "folder")
SPLITS = ("train", "val", "test")


@dataclass
class CorpusInfo:
    """What `make_corpus` wrote (the same facts are in ``<root>/synth.json``)."""

    root: Path
    layout: str
    files: list[Path]                         # absolute mp4 paths, in clip order
    speakers: list[str]
    splits: dict[str, list[str]]              # split -> filelist entries "<speaker>/<clip>"
    speaker_splits: dict[str, str]            # speaker -> split
    clips: list[ClipInfo] = field(default_factory=list)
    fps: float = 25.0
    size: tuple[int, int] = (160, 160)
    seed: int = 0


def _video_id(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), 11))


def _clip_paths(layout: str, speaker: Speaker, clips: int, seed: int) -> list[tuple[str, str]]:
    """(clip id, relative path) per clip of one speaker."""
    if layout == "lrs2":
        return [(f"{c + 1:05d}", f"main/{speaker.id}/{c + 1:05d}.mp4") for c in range(clips)]
    if layout == "voxceleb2":
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x71D, speaker.index]))
        out, video = [], _video_id(rng)
        for c in range(clips):
            if c and c % 3 == 0:  # a few clips per source video, as in VoxCeleb2
                video = _video_id(rng)
            clip = f"{video}/{c % 3 + 1:05d}"
            out.append((clip, f"dev/mp4/{speaker.id}/{clip}.mp4"))
        return out
    return [(f"{c + 1:05d}", f"{speaker.id}_{c + 1:05d}.mp4") for c in range(clips)]


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected WxH, e.g. 160x160") from None
    if w < 64 or h < 64 or w > 4096 or h > 4096:
        raise ConfigError(f"--size {text!r}: width and height must be between 64 and 4096")
    return w, h


def parse_seconds(text: str) -> tuple[float, float]:
    try:
        parts = [float(v) for v in text.split("-")]
    except ValueError:
        raise ConfigError(f"--seconds {text!r}: expected A-B, e.g. 2-4") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 0.5 <= parts[0] <= parts[1] <= 600:
        raise ConfigError(f"--seconds {text!r}: expected A-B with 0.5 <= A <= B <= 600")
    return parts[0], parts[1]


def make_corpus(
    out_dir: str | os.PathLike,
    speakers: int = 4,
    clips_per_speaker: int = 6,
    seed: int = 0,
    layout: str = "lrs2",
    size: tuple[int, int] = (160, 160),
    seconds: tuple[float, float] = (2.0, 4.0),
    fps: float = 25.0,
    workers: int | None = None,
    progress: bool = True,
) -> CorpusInfo:
    """Write a synthetic corpus under `out_dir` and describe it.

    `size` is (width, height); each clip lasts a uniform draw from `seconds`.
    `workers`: processes to render with (None: 2 for 64+ clips on 2+ CPUs, else 1). Starting a
    worker costs seconds of imports and x264 already encodes on several threads, so on a
    busy 2-core machine 24 and 96 clips were both faster in-process (benchmarks/synth.py).
    `out_dir` may be absent, empty, or hold a corpus written before (its files, listed in its
    synth.json, are replaced); a folder with other content is refused.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if speakers < 1 or clips_per_speaker < 1:
        raise ConfigError("--speakers and --clips-per-speaker must be at least 1")
    if fps <= 0:
        raise ConfigError(f"--fps {fps}: must be positive")
    size = (int(size[0]), int(size[1]))
    seconds = (float(seconds[0]), float(seconds[1]))
    root = Path(out_dir).resolve()
    _prepare_root(root)

    speaker_list, photos = make_speakers(speakers, seed, size, layout)
    jobs = []
    for spk in speaker_list:
        for c, (clip, rel) in enumerate(_clip_paths(layout, spk, clips_per_speaker, seed)):
            jobs.append(ClipJob(speaker=spk, photo=photos[spk.look.photo], clip=clip, rel_path=rel,
                                 seed_key=(seed, 0xC11F, spk.index, c), seconds=seconds, fps=float(fps), size=size))

    if workers is None:
        workers = 2 if len(jobs) >= 64 and (os.cpu_count() or 1) >= 2 else 1
    bar = tqdm(total=len(jobs), desc="synth clips", unit="clip", disable=not progress)
    clips: list[ClipInfo] = []
    if workers <= 1:
        for job in jobs:
            clips.append(write_clip(str(root), job))
            bar.update()
    else:
        # spawn: safe even when the caller has threads (torch, Ray) running.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker) as pool:
            futures = [pool.submit(write_clip, str(root), job) for job in jobs]
            for future in futures:
                clips.append(future.result())
                bar.update()
    bar.close()

    split_entries = {s: [c.entry for c in clips if c.split == s] for s in SPLITS}
    if layout == "lrs2":
        for split in SPLITS:
            lines = "".join(f"{entry}\n" for entry in split_entries[split])
            (root / f"{split}.txt").write_text(lines)
    info = CorpusInfo(
        root=root, layout=layout, files=[root / c.path for c in clips], speakers=[s.id for s in speaker_list],
        splits=split_entries, speaker_splits={s.id: s.split for s in speaker_list}, clips=clips,
        fps=float(fps), size=size, seed=seed,
    )
    _write_description(info, speaker_list)
    return info


def _init_worker() -> None:
    # One OpenCV thread per worker: the pool already uses the cores.
    import cv2

    cv2.setNumThreads(1)


def _prepare_root(root: Path) -> None:
    """Create `root`, or clear the corpus written there before. Never mix a new corpus
    into other files: stale clips would end up in no filelist, or in the wrong one."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        description = root / "synth.json"
        if not description.is_file():
            raise ConfigError(f"--out {root}: folder is not empty and holds no synth.json (no corpus "
                              "lipsync synth wrote); choose an empty or new folder")
        try:
            previous = json.loads(description.read_text())
            old = [(root / c["path"]).resolve() for c in previous["clips"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{description}: unreadable ({exc}); remove the folder by hand") from exc
        outside = [p for p in old if not p.is_relative_to(root)]
        if outside:
            raise ConfigError(f"{description}: lists {outside[0]} outside {root}; remove the folder by hand")
        for path in old + [root / f"{s}.txt" for s in SPLITS] + [description]:
            if path.is_file():
                path.unlink()
        for folder in sorted({p.parent for p in old}, key=lambda p: len(p.parts), reverse=True):
            while folder != root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
    root.mkdir(parents=True, exist_ok=True)


def _write_description(info: CorpusInfo, speakers: list[Speaker]) -> None:
    description = {
        "generator": "lipsync synth",
        "seed": info.seed,
        "layout": info.layout,
        "fps": info.fps,
        "size": list(info.size),
        "sample_rate": SAMPLE_RATE,
        "speakers": [{"id": s.id, "split": s.split, "voice": asdict(s.voice), "photo": s.look.photo,
                      "mirror": s.look.mirror} for s in speakers],
        "clips": [asdict(c) for c in info.clips],
    }
    (info.root / "synth.json").write_text(json.dumps(description, indent=1))

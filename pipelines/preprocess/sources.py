"""Input discovery: which video files a preprocessing job reads, with speaker and official split.

Layouts (``--layout``):

- ``lrs2``: ``<root>/main/<spk>/<clip>.mp4`` (also accepts ``<root>/<spk>/<clip>.mp4`` when there
  is no ``main/``). Official filelists ``train.txt``, ``val.txt``, ``test.txt`` are looked up in
  ``<root>``, ``<root>/filelists`` or ``filelists_dir``; each line is ``<spk>/<clip>`` and any text
  after a space is dropped (LRS2's test.txt carries NF/MV tags). When lists exist they decide
  the split; a clip in none of them is kept in the manifest as rejected ``not_in_filelists``.
- ``voxceleb2``: ``<root>/{dev,test}/mp4/idNNNNN/<video>/<clip>.mp4`` (also ``<root>/mp4/...``).
  Speaker = ``idNNNNN``; files under ``test/`` get the official ``test`` split, ``dev/`` files are
  split speaker-disjointly into train/val.
- ``folder``: every media file below ``<root>``; speaker = name of the parent directory, or the
  first group of ``speaker_regex`` matched against the path relative to ``<root>``.
- ``filelist``: ``<root>`` is a text file, one video per line, paths relative to the list's
  directory (or absolute); optional tab-separated columns: speaker, split.

Media are video files and audio files (an audio-only input is kept and rejected as
``no_video_stream`` in the manifest); other files where inputs are looked for are counted by
:func:`count_skipped` for the summary. Every input gets a stable ``input_id`` (its path
relative to the root, without extension; with it where two files differ only by extension,
``a.mp4`` and ``a.mov``), the unit the manifest accounts for.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from lipsync.errors import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".ts")
# Audio files are inputs too: in the manifest they are rejected as no_video_stream rather than
# silently left out (an .m4a can be a phone's recording of the very video the user meant).
AUDIO_EXTENSIONS = (".m4a", ".mp3", ".wav", ".aac", ".flac", ".ogg", ".opus", ".wma")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
LAYOUTS = ("lrs2", "voxceleb2", "folder", "filelist")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class InputItem:
    input_id: str            # stable id: path relative to the root, no extension, '/'-separated
    path: str                # absolute path of the video file
    corpus: str              # layout name
    speaker: str
    clip_id: str
    official_split: Optional[str] = None   # from official lists / layout; None = assign by speaker
    reject_reason: Optional[str] = None    # decided at discovery (e.g. not_in_filelists)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_media(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in MEDIA_EXTENSIONS


def _is_skipped(path: Path) -> bool:
    """A visible file that is not media (notes, photos, subtitles): counted, not an input."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() not in MEDIA_EXTENSIONS


def read_filelist(path: Path) -> list[str]:
    """Entries of an LRS2-style list: first whitespace-separated token of each non-empty line."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            entries.append(line.split()[0])
    return entries


def _find_official_lists(root: Path, filelists_dir: Optional[Path]) -> dict[str, str]:
    """Map '<spk>/<clip>' -> split from train/val/test.txt, if such lists exist."""
    candidates = [filelists_dir] if filelists_dir else [root, root / "filelists", root.parent / "filelists"]
    for directory in candidates:
        if directory is None or not directory.is_dir():
            continue
        found = {split: directory / f"{split}.txt" for split in SPLITS if (directory / f"{split}.txt").is_file()}
        if found:
            mapping: dict[str, str] = {}
            for split, path in found.items():
                for entry in read_filelist(path):
                    mapping.setdefault(entry.removesuffix(".mp4"), split)
            return mapping
    if filelists_dir:
        raise ConfigError(f"--filelists {filelists_dir}: no train.txt/val.txt/test.txt there")
    return {}


def discover_lrs2(root: Path, filelists_dir: Optional[Path] = None) -> list[InputItem]:
    main = root / "main" if (root / "main").is_dir() else root
    official = _find_official_lists(root, filelists_dir)
    items = []
    for path in sorted(main.glob("*/*")):
        if not _is_media(path):
            continue
        entry = f"{path.parent.name}/{path.stem}"
        split = official.get(entry)
        reason = "not_in_filelists" if official and split is None else None
        items.append(InputItem(input_id=entry, path=str(path.resolve()), corpus="lrs2",
                               speaker=path.parent.name, clip_id=path.stem,
                               official_split=split, reject_reason=reason))
    return items


def discover_voxceleb2(root: Path) -> list[InputItem]:
    items = []
    bases = [(root / part / "mp4", part) for part in ("dev", "test") if (root / part / "mp4").is_dir()]
    if not bases and (root / "mp4").is_dir():
        bases = [(root / "mp4", None)]
    for base, part in bases:
        for path in sorted(base.glob("*/*/*")):
            if not _is_media(path):
                continue
            speaker, video = path.parent.parent.name, path.parent.name
            rel = path.relative_to(root).with_suffix("").as_posix()
            items.append(InputItem(input_id=rel, path=str(path.resolve()), corpus="voxceleb2",
                                   speaker=speaker, clip_id=f"{video}/{path.stem}",
                                   official_split="test" if part == "test" else None))
    return items


def speaker_pattern(speaker_regex: str) -> re.Pattern:
    """``--speaker-regex`` compiled, or a one-line error naming the flag and what is wrong."""
    try:
        return re.compile(speaker_regex)
    except re.error as e:
        raise ConfigError(f"--speaker-regex {speaker_regex!r}: not a regular expression ({e})") from None


def discover_folder(root: Path, speaker_regex: Optional[str] = None) -> list[InputItem]:
    pattern = speaker_pattern(speaker_regex) if speaker_regex else None
    items = []
    for path in sorted(p for p in root.rglob("*") if _is_media(p)):
        rel = path.relative_to(root)
        speaker = path.parent.name if path.parent != root else root.name
        if pattern:
            m = pattern.search(rel.as_posix())
            if not m:
                raise ConfigError(f"--speaker-regex {speaker_regex!r} does not match {rel.as_posix()}")
            speaker = m.group(1) if m.groups() else m.group(0)
        items.append(InputItem(input_id=rel.with_suffix("").as_posix(), path=str(path.resolve()),
                               corpus="folder", speaker=speaker, clip_id=path.stem))
    return items


def discover_filelist(listfile: Path) -> list[InputItem]:
    items, seen = [], set()
    for n, line in enumerate(listfile.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = [c.strip() for c in line.split("\t")]
        path = Path(cols[0])
        if not path.is_absolute():
            path = listfile.parent / path
        speaker = cols[1] if len(cols) > 1 and cols[1] else path.parent.name
        split = cols[2] if len(cols) > 2 and cols[2] else None
        if split is not None and split not in SPLITS:
            raise ConfigError(f"{listfile}:{n}: split {split!r} is not one of {SPLITS}")
        input_id = path.with_suffix("").as_posix().lstrip("/")
        if path.resolve() in seen:
            raise ConfigError(f"{listfile}:{n}: {path} is listed twice")
        seen.add(path.resolve())
        # A missing file is still an input: it is reported as an error in the manifest.
        items.append(InputItem(input_id=input_id, path=str(path.resolve()), corpus="filelist",
                               speaker=speaker, clip_id=path.stem, official_split=split))
    return items


def _candidate_files(root: Path, layout: str) -> list[Path]:
    """Every file where ``layout`` looks for inputs (media or not)."""
    if layout == "lrs2":
        return sorted((root / "main" if (root / "main").is_dir() else root).glob("*/*"))
    if layout == "voxceleb2":
        bases = [root / part / "mp4" for part in ("dev", "test") if (root / part / "mp4").is_dir()]
        return sorted(p for base in (bases or [root / "mp4"]) for p in base.glob("*/*/*"))
    if layout == "folder":
        return sorted(root.rglob("*"))
    return []  # filelist: the list names its inputs


def count_skipped(root: str | Path, layout: str) -> int:
    """Files that are not media where ``layout`` looks for inputs (the summary's ``skipped_files``)."""
    root = Path(root)
    return sum(1 for path in _candidate_files(root, layout)
               if _is_skipped(path) and not any(part.startswith(".") for part in path.relative_to(root).parts))


def distinct_ids(items: list[InputItem]) -> list[InputItem]:
    """Files that share an id (``a.mp4`` and ``a.mov``) keep their extension in it: two inputs,
    two ids, each accounted for once (the others' ids do not change)."""
    counts: dict[str, int] = {}
    for it in items:
        counts[it.input_id] = counts.get(it.input_id, 0) + 1
    return [replace(it, input_id=it.input_id + Path(it.path).suffix) if counts[it.input_id] > 1 else it
            for it in items]


def discover_inputs(root: str | Path, layout: str, *, speaker_regex: Optional[str] = None,
                    filelists_dir: Optional[str | Path] = None) -> list[InputItem]:
    """All inputs of a corpus, sorted by input_id (the processing order, hence shard order)."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if layout == "filelist":
        if not root.is_file():
            raise ConfigError(f"--input {root}: layout 'filelist' needs a text file")
        items = discover_filelist(root)
    else:
        if not root.is_dir():
            raise ConfigError(f"--input {root}: not a directory")
        if layout == "lrs2":
            items = discover_lrs2(root, Path(filelists_dir) if filelists_dir else None)
        elif layout == "voxceleb2":
            items = discover_voxceleb2(root)
        else:
            items = discover_folder(root, speaker_regex)
    items = distinct_ids(items)
    if not items:
        skipped = count_skipped(root, layout)
        raise ConfigError(f"--input {root}: no video files found for layout {layout!r}"
                          + (f" ({skipped} other files skipped)" if skipped else ""))
    return sorted(items, key=lambda it: it.input_id)

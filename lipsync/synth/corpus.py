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

import cv2
import numpy as np
from tqdm import tqdm

from lipsync.errors import ConfigError
from lipsync.synth.faces import PHOTO_NAMES, FacePhoto, HeadRenderer, Look, dlib_detector, load_face_photo
from lipsync.synth.mouth import MouthStyle, draw_mouth, mouth_track
from lipsync.synth.speech import SAMPLE_RATE, Voice, random_sentence, synthesize

LAYOUTS = ("lrs2", "voxceleb2", "folder")
SPLITS = ("train", "val", "test")
NOISE_FLOOR = 3e-4        # ~ -70 dBFS of background hiss, so silence is not digital zero
_DETECTION_MARGIN = 0.45  # dlib SVM score a speaker's face must reach in every checked pose


@dataclass(frozen=True)
class Speaker:
    id: str
    index: int
    voice: Voice
    look: Look
    mouth: MouthStyle
    split: str


@dataclass
class ClipInfo:
    speaker: str
    clip: str                 # clip id inside the speaker ("00001"), or "<video>/<clip>" for voxceleb2
    path: str                 # relative to the corpus root
    split: str
    fps: float
    n_frames: int
    n_samples: int
    duration: float
    text: list[str]
    voice: str

    @property
    def entry(self) -> str:
        """LRS2 filelist entry: ``<speaker>/<clip>``."""
        return f"{self.speaker}/{self.clip}"


@dataclass
class CorpusInfo:
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


@dataclass(frozen=True)
class _ClipJob:
    speaker: Speaker
    photo: FacePhoto
    clip: str
    rel_path: str
    seed_key: tuple[int, ...]
    seconds: tuple[float, float]
    fps: float
    size: tuple[int, int]


# ---------------------------------------------------------------- audio


def compose_speech(rng: np.random.Generator, voice: Voice, n_samples: int, speech_seed: int
                   ) -> tuple[np.ndarray, list[str]]:
    """Fill `n_samples` of 16 kHz audio with whole sentences and pauses between them."""
    audio = np.zeros(n_samples, np.float32)
    cursor = int(rng.uniform(0.08, 0.35) * SAMPLE_RATE)
    tail = int(0.12 * SAMPLE_RATE)
    texts: list[str] = []
    attempts = 0
    while cursor < n_samples - tail and attempts < 12:
        attempts += 1
        room = n_samples - tail - cursor
        n_words = int(rng.integers(3, 9))
        # Shorten the sentence until it fits; a clip never ends mid-word. One-word
        # "sentences" only where nothing longer fits into an otherwise silent clip.
        min_words = 2 if texts else 1
        while n_words >= min_words:
            text = random_sentence(rng, n_words)
            utterance = synthesize(text, voice, seed=speech_seed + attempts)
            if len(utterance.audio) <= room:
                break
            n_words = min(n_words - 1, int(n_words * room / len(utterance.audio)))
        if n_words < min_words:
            break
        audio[cursor:cursor + len(utterance.audio)] = utterance.audio
        texts.append(text)
        cursor += len(utterance.audio) + int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
    peak = float(np.abs(audio).max())
    if peak > 0:
        audio *= rng.uniform(0.5, 0.9) / peak
    audio += rng.normal(0.0, NOISE_FLOOR, n_samples).astype(np.float32)
    return audio.astype(np.float32), texts


# ---------------------------------------------------------------- video


def render_frames(renderer: HeadRenderer, style: MouthStyle, audio: np.ndarray, n_frames: int, fps: float):
    """Yield BGR frames whose mouths follow `audio` (16 kHz) frame by frame."""
    track = mouth_track(audio, n_frames, fps, SAMPLE_RATE)
    for k in range(n_frames):
        head = renderer.render(k / fps)
        frame = head.image
        draw_mouth(frame, head.mouth, head.mouth_width, head.angle_deg, float(track.opening[k]),
                   float(track.width[k]), style)
        yield frame


def synthesize_clip(job: _ClipJob) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Audio (float32, 16 kHz), frames (N, H, W, 3) BGR and sentences of one clip."""
    rng = np.random.default_rng(np.random.SeedSequence(job.seed_key))
    duration = rng.uniform(*job.seconds)
    n_frames = max(1, int(round(duration * job.fps)))
    n_samples = int(round(n_frames * SAMPLE_RATE / job.fps))
    speech_seed = int(rng.integers(0, 2**31 - 1))
    audio, texts = compose_speech(rng, job.speaker.voice, n_samples, speech_seed)
    renderer = HeadRenderer(job.speaker.look, job.size, job.photo)
    frames = np.stack(list(render_frames(renderer, job.speaker.mouth, audio, n_frames, job.fps)))
    return audio, frames, texts


def _write_clip(root: str, job: _ClipJob) -> ClipInfo:
    from lipsync.video import VideoWriter

    cv2.setNumThreads(1)
    audio, frames, texts = synthesize_clip(job)
    path = os.path.join(root, job.rel_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    width, height = job.size
    with VideoWriter(path, job.fps, width, height, audio_sample_rate=SAMPLE_RATE) as writer:
        _repeatable_x264(writer)
        writer.write_audio(audio)
        for frame in frames:
            writer.write(frame)
    return ClipInfo(speaker=job.speaker.id, clip=job.clip, path=job.rel_path, split=job.speaker.split,
                    fps=job.fps, n_frames=len(frames), n_samples=len(audio), duration=len(frames) / job.fps,
                    text=texts, voice=job.speaker.voice.name)


def _repeatable_x264(writer) -> None:
    """Make libx264 give the same bytes for the same frames.

    x264's macroblock-tree rate control reads uninitialised padding when the frame width
    is not a multiple of 64 (160 is not), so identical frames encoded twice can differ
    (measured: 1 in 5 encodes of a 160x160 clip). With mbtree off, encodes repeat exactly.
    The option must be set before the first frame opens the encoder.
    TODO(foundation-av): an encoder-options argument on VideoWriter would replace this.
    """
    stream = getattr(writer, "_video", None)
    if stream is not None and stream.codec_context.name == "libx264" and writer.frames_written == 0:
        stream.options = {**dict(stream.options or {}), "x264-params": "mbtree=0"}


# ---------------------------------------------------------------- speakers


def _detectable(look: Look, photo: FacePhoto, size: tuple[int, int], detector) -> bool:
    """True when dlib's HOG finds the face, with a margin, at every extreme of the head motion,
    with the mouth closed and wide open (so compression and in-between poses stay found)."""
    renderer = HeadRenderer(look, size, photo)
    style = MouthStyle()
    for pose in [(0.0, 0.0, 0.0)] + renderer.extreme_poses():
        for opening, width in ((0.0, 1.0), (1.0, 1.15)):
            head = renderer.render_pose(*pose)
            frame = head.image
            draw_mouth(frame, head.mouth, head.mouth_width, head.angle_deg, opening, width, style)
            _, scores, _ = detector.run(np.ascontiguousarray(frame[:, :, ::-1]), 0, 0.0)
            if not scores or max(scores) < _DETECTION_MARGIN:
                return False
    return True


def _speaker_ids(layout: str, rng: np.random.Generator, n: int) -> list[str]:
    if layout == "voxceleb2":
        numbers = rng.choice(np.arange(10, 9999), size=n, replace=False)
        return [f"id{int(v):05d}" for v in sorted(numbers)]
    if layout == "lrs2":  # LRS2 speaker folders are long numbers
        return sorted({str(int(v)) for v in rng.integers(10**18, 9 * 10**18, size=n)})
    return [f"spk{i:03d}" for i in range(n)]


def _assign_splits(rng: np.random.Generator, speakers: list[str]) -> dict[str, str]:
    n = len(speakers)
    n_test = max(1, round(0.15 * n)) if n >= 3 else 0
    n_val = max(1, round(0.15 * n)) if n >= 2 else 0
    order = [speakers[i] for i in rng.permutation(n)]
    splits = {}
    for i, spk in enumerate(order):
        splits[spk] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return splits


def make_speakers(n: int, seed: int, size: tuple[int, int], layout: str = "lrs2") -> tuple[list[Speaker], dict]:
    """Draw `n` speakers whose faces the offline detector finds; returns them and their photos."""
    detector = dlib_detector()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFACE]))
    ids = _speaker_ids(layout, rng, n)
    split_of = _assign_splits(rng, ids)
    photo_order = [PHOTO_NAMES[i] for i in rng.permutation(len(PHOTO_NAMES))]
    speakers, photos = [], {}
    for index, spk in enumerate(ids):
        srng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED, index]))
        voice = Voice.random(srng)
        mouth = MouthStyle.random(srng)
        look = None
        for attempt in range(40):
            name = photo_order[(index + attempt * n + attempt) % len(photo_order)]
            photo = load_face_photo(name)
            if photo is None:
                continue
            candidate = Look.random(srng, name, photo.grayscale)
            if _detectable(candidate, photo, size, detector):
                look = candidate
                photos[name] = photo
                break
        if look is None:
            raise ConfigError(f"--size {size[0]}x{size[1]}: cannot draw a face the offline detector finds; "
                              "use a frame size of at least 128x128")
        speakers.append(Speaker(id=spk, index=index, voice=voice, look=look, mouth=mouth, split=split_of[spk]))
    return speakers, photos


# ---------------------------------------------------------------- corpus


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
    `workers`: processes to render with (None: 2 when there are 16+ clips and 2+ CPUs, else 1;
    starting a worker costs ~2 s of imports, so small corpora are faster in-process).
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
            jobs.append(_ClipJob(speaker=spk, photo=photos[spk.look.photo], clip=clip, rel_path=rel,
                                 seed_key=(seed, 0xC11F, spk.index, c), seconds=seconds, fps=float(fps), size=size))

    if workers is None:
        workers = 2 if len(jobs) >= 16 and (os.cpu_count() or 1) >= 2 else 1
    bar = tqdm(total=len(jobs), desc="synth clips", unit="clip", disable=not progress)
    clips: list[ClipInfo] = []
    if workers <= 1:
        for job in jobs:
            clips.append(_write_clip(str(root), job))
            bar.update()
    else:
        # spawn: safe even when the caller has threads (torch, Ray) running.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_write_clip, str(root), job) for job in jobs]
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

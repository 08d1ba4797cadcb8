"""One clip of the synthetic corpus: its speech, its frames, its mp4 file.

The clip's random stream comes from its own seed sequence (corpus seed, speaker, clip), so
a clip is the same whichever process makes it and in whatever order. Audio: sentences
spoken by the speaker's voice with pauses between them and before/after, never cut
mid-word, over a faint noise floor. Frames: the speaker's head at time t with a mouth
drawn from the audio under that frame (mouth.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from lipsync.synth.faces import FacePhoto, HeadRenderer
from lipsync.synth.mouth import MouthStyle, draw_mouth, mouth_track
from lipsync.synth.speakers import Speaker
from lipsync.synth.speech import SAMPLE_RATE, Voice, random_sentence, synthesize

NOISE_FLOOR = 3e-4        # ~ -70 dBFS of background hiss, so silence is not digital zero


@dataclass
class ClipInfo:
    """What was written for one clip (also stored in the corpus's synth.json)."""

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


@dataclass(frozen=True)
class ClipJob:
    """Everything needed to make one clip (picklable, sent to worker processes)."""

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
                   ) -> tuple[np.ndarray, list[str], list[tuple[float, float, str]]]:
    """Fill `n_samples` of 16 kHz audio with whole sentences and pauses between them.

    Returns the audio, the sentences, and espeak's phonemes as (start s, end s, mnemonic)
    in clip time.
    """
    audio = np.zeros(n_samples, np.float32)
    cursor = int(rng.uniform(0.08, 0.35) * SAMPLE_RATE)
    tail = int(0.12 * SAMPLE_RATE)
    texts: list[str] = []
    phonemes: list[tuple[float, float, str]] = []
    attempts = 0
    max_attempts = 12 + n_samples // SAMPLE_RATE  # long clips get more sentences
    while cursor < n_samples - tail and attempts < max_attempts:
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
        offset = cursor / SAMPLE_RATE
        starts = [t for t, _ in utterance.phonemes] + [utterance.duration]
        phonemes += [(offset + starts[i], offset + starts[i + 1], name)
                     for i, (_, name) in enumerate(utterance.phonemes)]
        cursor += len(utterance.audio) + int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
    peak = float(np.abs(audio).max())
    if peak > 0:
        audio *= rng.uniform(0.5, 0.9) / peak
    audio += rng.normal(0.0, NOISE_FLOOR, n_samples).astype(np.float32)
    return audio.astype(np.float32), texts, phonemes


# ---------------------------------------------------------------- video


def render_frames(renderer: HeadRenderer, style: MouthStyle, audio: np.ndarray, n_frames: int, fps: float,
                  phonemes=None):
    """Yield BGR frames whose mouths follow `audio` (16 kHz) frame by frame."""
    track = mouth_track(audio, n_frames, fps, SAMPLE_RATE, phonemes)
    for k in range(n_frames):
        head = renderer.render(k / fps)
        frame = head.image
        draw_mouth(frame, head.mouth, head.mouth_width, head.angle_deg, float(track.opening[k]),
                   float(track.width[k]), style)
        yield frame


@dataclass
class ClipAudio:
    """A clip's soundtrack and what was said, decided before any frame is drawn."""

    audio: np.ndarray                          # float32 mono, 16 kHz, exactly n_frames long
    n_frames: int
    texts: list[str]
    phonemes: list[tuple[float, float, str]]   # (start s, end s, espeak mnemonic)


def clip_audio(job: ClipJob) -> ClipAudio:
    """The clip's duration (a draw from job.seconds, whole frames) and its speech."""
    rng = np.random.default_rng(np.random.SeedSequence(job.seed_key))
    duration = rng.uniform(*job.seconds)
    n_frames = max(1, int(round(duration * job.fps)))
    n_samples = int(round(n_frames * SAMPLE_RATE / job.fps))
    speech_seed = int(rng.integers(0, 2**31 - 1))
    audio, texts, phonemes = compose_speech(rng, job.speaker.voice, n_samples, speech_seed)
    return ClipAudio(audio=audio, n_frames=n_frames, texts=texts, phonemes=phonemes)


def clip_frames(job: ClipJob, sound: ClipAudio):
    """Yield the clip's BGR frames one by one (long clips never sit in memory whole)."""
    renderer = HeadRenderer(job.speaker.look, job.size, job.photo)
    yield from render_frames(renderer, job.speaker.mouth, sound.audio, sound.n_frames, job.fps, sound.phonemes)


def synthesize_clip(job: ClipJob) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Audio (float32, 16 kHz), frames (N, H, W, 3) BGR and sentences of one clip, in memory."""
    sound = clip_audio(job)
    return sound.audio, np.stack(list(clip_frames(job, sound))), sound.texts


def write_clip(root: str, job: ClipJob) -> ClipInfo:
    """Make the clip and write it as H.264 + AAC mp4 under `root`, streaming the frames."""
    from lipsync.video import VideoWriter

    sound = clip_audio(job)
    path = os.path.join(root, job.rel_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    width, height = job.size
    with VideoWriter(path, job.fps, width, height, audio_sample_rate=SAMPLE_RATE) as writer:
        writer.write_audio(sound.audio)
        for frame in clip_frames(job, sound):
            writer.write(frame)
    return ClipInfo(speaker=job.speaker.id, clip=job.clip, path=job.rel_path, split=job.speaker.split,
                    fps=job.fps, n_frames=sound.n_frames, n_samples=len(sound.audio),
                    duration=sound.n_frames / job.fps, text=sound.texts, voice=job.speaker.voice.name)


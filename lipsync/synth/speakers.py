"""Speakers of the synthetic corpus: who they are, how they sound and look, which split.

Each speaker gets a voice (espeak-ng voice + prosody), a look (a face photo with its own
colouring, framing, background and head motion), a lip colour, an id in the layout's
style, and a split (speakers are disjoint across train/val/test). A look is only kept if
the offline face detector (dlib HOG) finds the face with a margin at every extreme of
the head motion, mouth closed and wide open; otherwise the next photo is tried. That
keeps detection at >= 99% of frames downstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipsync.errors import ConfigError
from lipsync.synth.faces import PHOTO_NAMES, FacePhoto, HeadRenderer, Look, dlib_detector, load_face_photo
from lipsync.synth.mouth import MouthStyle, draw_mouth
from lipsync.synth.speech import Voice

_DETECTION_MARGIN = 0.45  # dlib SVM score a speaker's face must reach in every checked pose


@dataclass(frozen=True)
class Speaker:
    """One synthetic person."""

    id: str
    index: int
    voice: Voice
    look: Look
    mouth: MouthStyle
    split: str


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


def speaker_ids(layout: str, rng: np.random.Generator, n: int) -> list[str]:
    """Speaker ids in the style of the layout's real corpus."""
    if layout == "voxceleb2":
        numbers = rng.choice(np.arange(10, 9999), size=n, replace=False)
        return [f"id{int(v):05d}" for v in sorted(numbers)]
    if layout == "lrs2":  # LRS2 speaker folders are long numbers
        return sorted({str(int(v)) for v in rng.integers(10**18, 9 * 10**18, size=n)})
    return [f"spk{i:03d}" for i in range(n)]


def assign_splits(rng: np.random.Generator, speakers: list[str]) -> dict[str, str]:
    """speaker -> train/val/test; ~15% each to val and test, at least one each from 3 speakers."""
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
    ids = speaker_ids(layout, rng, n)
    split_of = assign_splits(rng, ids)
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

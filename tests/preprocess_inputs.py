"""Deliberately awkward inputs for the preprocessing tests, written as real media files.

``add_broken_inputs(root, good_clip, speaker_dir)`` writes next to a synthetic LRS2 corpus:

    name               what it is                                  expected (status, reason)
    empty              zero-byte .mp4                              error, empty_file
    truncated          first 40% of a good mp4                     error, unreadable
    text               a text file renamed .mp4                    error, unreadable
    audio_only         AAC-only .mp4                               rejected, no_video_stream
    video_only         H.264-only .mp4                             rejected, no_audio_stream
    noface             noise frames + the good clip's audio        rejected, no_face
    fps30              the good clip re-timed to 30 fps            ok (resampled to 25 fps)
    rotated            portrait clip stored sideways + rotation    ok (turned upright)
    unlisted           a good clip in no filelist                  rejected, not_in_filelists
    twoshots           two shots (good clip, then another speaker  ok, 2 clips (scene cut)
                       darkened), audio of both

and appends the entries (all but ``unlisted``) to the corpus' train.txt.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from lipsync import video as lsv

EXPECTED = {
    "empty": ("error", "empty_file"),
    "truncated": ("error", "unreadable"),
    "text": ("error", "unreadable"),
    "audio_only": ("rejected", "no_video_stream"),
    "video_only": ("rejected", "no_audio_stream"),
    "noface": ("rejected", "no_face"),
    "fps30": ("ok", ""),
    "rotated": ("ok", ""),
    "unlisted": ("rejected", "not_in_filelists"),
    "twoshots": ("ok", ""),
}


def mux(path: Path, frames=None, fps: float = 25.0, audio=None, rotation: int | None = None,
        options: dict | None = None) -> Path:
    """Write an mp4 with PyAV: optional H.264 video (with a display rotation and extra libx264
    ``options``), optional AAC audio."""
    with av.open(str(path), "w", format="mp4") as container:
        vstream = astream = None
        if frames is not None:
            vstream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            vstream.height, vstream.width = frames.shape[1:3]
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"crf": "18", **(options or {})}
            if rotation:
                vstream.set_display_rotation(rotation)
        if audio is not None:
            astream = container.add_stream("aac", rate=16000)
            astream.layout = "mono"
        if vstream is not None:
            tb = Fraction(1) / Fraction(fps).limit_denominator(1000)
            for i, frame in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
                vf.pts, vf.time_base = i, tb
                container.mux(vstream.encode(vf))
            container.mux(vstream.encode(None))
        if astream is not None:
            af = av.AudioFrame.from_ndarray(np.clip(audio, -1, 1).astype(np.float32).reshape(1, -1),
                                            format="flt", layout="mono")
            af.sample_rate, af.pts, af.time_base = 16000, 0, Fraction(1, 16000)
            container.mux(astream.encode(af))
            container.mux(astream.encode(None))
    return path


def add_broken_inputs(root: Path, good_clip: Path, other_clip: Path, speaker: str) -> dict[str, Path]:
    """Write the inputs listed in the module docstring under root/main/<speaker>/.

    ``other_clip``: a clip of another speaker, the second shot of ``twoshots``."""
    folder = root / "main" / speaker
    folder.mkdir(parents=True, exist_ok=True)
    good = lsv.read_video(good_clip, fps=25)
    paths = {name: folder / f"{name}.mp4" for name in EXPECTED}
    paths["empty"].write_bytes(b"")
    data = good_clip.read_bytes()
    paths["truncated"].write_bytes(data[: int(len(data) * 0.4)])
    paths["text"].write_text("this is not a video\n" * 20)
    mux(paths["audio_only"], audio=good.audio)
    mux(paths["video_only"], frames=good.frames)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=good.frames.shape, dtype=np.uint8)
    mux(paths["noface"], frames=noise, audio=good.audio)
    n30 = int(len(good.frames) * 30 / 25)
    mux(paths["fps30"], frames=good.frames[(np.arange(n30) * 25) // 30], fps=30, audio=good.audio)
    # Portrait 160x224 shown upright, stored turned 90 degrees clockwise with a display
    # rotation of 90 (counter-clockwise) - what phones do.
    h, w = good.frames.shape[1:3]
    portrait = np.stack([cv2.copyMakeBorder(f, 32, 32, 0, 0, cv2.BORDER_REPLICATE) for f in good.frames])
    stored = np.stack([cv2.rotate(f, cv2.ROTATE_90_CLOCKWISE) for f in portrait])
    mux(paths["rotated"], frames=stored, audio=good.audio, rotation=90)
    paths["unlisted"].write_bytes(data)
    other = lsv.read_video(other_clip, fps=25)
    n1, n2 = min(len(good.frames), len(good.audio) // 640), min(len(other.frames), len(other.audio) // 640)
    shots = np.concatenate([good.frames[:n1], (other.frames[:n2] * 0.6).astype(np.uint8)])
    mux(paths["twoshots"], frames=shots, audio=np.concatenate([good.audio[:n1 * 640], other.audio[:n2 * 640]]))
    with open(root / "train.txt", "a", encoding="utf-8") as f:
        for name in EXPECTED:
            if name != "unlisted":
                f.write(f"{speaker}/{name} NF\n")  # trailing tag, as in LRS2's test.txt
    return paths


def add_long_input(root: Path, good_clip: Path, n_frames: int = 150) -> Path:
    """A long input for piece planning: the good clip played forwards, backwards, forwards...
    (no jump, so no scene cut) for exactly ``n_frames`` frames at 25 fps with its audio, as
    ``main/<its speaker>/long.mp4``, listed in its speaker's split list."""
    good = lsv.read_video(good_clip, fps=25)
    n = min(len(good.frames), len(good.audio) // 640)
    order = np.concatenate([np.arange(n) if k % 2 == 0 else np.arange(n)[::-1]
                            for k in range(-(-n_frames // n))])[:n_frames]
    audio = np.concatenate([good.audio[i * 640:(i + 1) * 640] for i in order])
    path = mux(good_clip.parent / "long.mp4", frames=good.frames[order], audio=audio)
    speaker = good_clip.parent.name
    listed = next(p for p in sorted(root.glob("*.txt"))       # the split list that has the speaker
                  if any(line.startswith(f"{speaker}/") for line in p.read_text().splitlines()))
    with open(listed, "a", encoding="utf-8") as f:
        f.write(f"{speaker}/long\n")
    return path

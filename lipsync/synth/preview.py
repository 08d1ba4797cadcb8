"""A picture of one clip: a strip of frames above the audio waveform under them.

Frames are taken at equal steps; the waveform panel spans exactly the time the strip
covers, so each frame sits above the stretch of audio it was drawn from (open mouths
over loud syllables, closed mouths over pauses).
"""

from __future__ import annotations

import os

import numpy as np

from lipsync.errors import ConfigError, MediaError


def save_preview(clip: str | os.PathLike, out_png: str | os.PathLike, n_frames: int = 10, step: int = 3,
                 start: float | None = None, dpi: int = 100) -> str:
    """Write a PNG with `n_frames` frames (every `step`-th, from `start` s) over the waveform."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lipsync.video import read_video

    if n_frames < 1 or step < 1:
        raise ConfigError("--frames and --step must be at least 1")
    video = read_video(clip)
    if video.audio is None:
        raise MediaError(f"{clip}: has no audio track to draw")
    total = len(video.frames)
    span = n_frames * step
    if start is None:
        # Start where the speech starts, so the strip is not all silence.
        from lipsync.synth.mouth import frame_loudness_db

        db = frame_loudness_db(video.audio, total, video.fps, video.sample_rate)
        loud = np.flatnonzero(db > db.max() - 25)
        first = max(0, int(loud[0]) - step) if loud.size else 0
    else:
        first = int(round(start * video.fps))
    first = max(0, min(first, total - span)) if total >= span else 0
    indices = [i for i in range(first, first + span, step) if i < total]

    frames = [video.frames[i][:, :, ::-1] for i in indices]  # BGR -> RGB for matplotlib
    strip = np.concatenate(frames, axis=1)
    t0 = indices[0] / video.fps
    t1 = (indices[-1] + step) / video.fps
    sr = video.sample_rate
    seg = video.audio[int(t0 * sr):int(t1 * sr)]
    times = t0 + np.arange(len(seg)) / sr

    h, w = strip.shape[:2]
    fig_w = max(8.0, w / dpi)
    img_h = fig_w * h / w
    fig, (ax_img, ax_wav) = plt.subplots(2, 1, figsize=(fig_w, img_h + 2.0), sharex=True,
                                         gridspec_kw={"height_ratios": [img_h, 1.6]})
    # The strip is placed in time coordinates: frame i fills the column [t_i, t_i + step/fps).
    ax_img.imshow(strip, extent=(t0, t1, 0, 1), aspect="auto", interpolation="nearest")
    ax_img.set_yticks([])
    ax_img.tick_params(axis="x", bottom=False)
    ax_img.set_title(f"{os.path.basename(os.fspath(clip))}: frames {indices[0]}..{indices[-1]} "
                     f"(every {step}) at {video.fps:g} fps; shaded: audio under each shown frame", fontsize=9)
    ax_wav.plot(times, seg, lw=0.5, color="tab:blue")
    for i in indices:
        ax_wav.axvspan(i / video.fps, (i + 1) / video.fps, color="tab:orange", alpha=0.25, lw=0)
    ax_wav.set_xlim(t0, t1)
    ax_wav.set_xlabel("time (s)")
    ax_wav.set_yticks([])
    fig.tight_layout(pad=0.3)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return os.fspath(out_png)

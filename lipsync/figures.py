"""Frames laid over the audio they were drawn with: the one figure preview and comparison share.

A strip of frames (one or more rows) sits above the waveform, placed in time coordinates, so
each frame stands above the stretch of audio under it and the shaded spans mark exactly the
audio of the frames shown.
"""

from __future__ import annotations

import os

import numpy as np


def frames_over_waveform(strip_rgb: np.ndarray, row_labels: list[str], audio: np.ndarray, sample_rate: int,
                         fps: float, indices: list[int], step: int, title: str,
                         out_png: str | os.PathLike, dpi: int = 100, audio_start: int = 0) -> str:
    """Save the figure: ``strip_rgb`` (rows of frames ``indices``, every ``step``-th) over
    ``audio``; ``row_labels`` name the rows from the top (empty: no labels). ``audio`` may be
    just the stretch under the frames, its first sample being sample ``audio_start``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0, t1 = indices[0] / fps, (indices[-1] + step) / fps
    seg = audio[max(0, int(t0 * sample_rate) - audio_start):int(t1 * sample_rate) - audio_start]
    rows = max(1, len(row_labels))
    h, w = strip_rgb.shape[:2]
    fig_w = max(8.0, w / dpi)
    img_h = fig_w * h / w
    fig, (ax_img, ax_wav) = plt.subplots(2, 1, figsize=(fig_w, img_h + 2.0), sharex=True,
                                         gridspec_kw={"height_ratios": [img_h, 1.6]})
    # Frame i fills the column [t_i, t_i + step/fps).
    ax_img.imshow(strip_rgb, extent=(t0, t1, 0, rows), aspect="auto", interpolation="nearest")
    if row_labels:
        ax_img.set_yticks([rows - 0.5 - i for i in range(rows)], row_labels)
    else:
        ax_img.set_yticks([])
    ax_img.tick_params(axis="x", bottom=False)
    ax_img.set_title(title, fontsize=9)
    ax_wav.plot(t0 + np.arange(len(seg)) / sample_rate, seg, lw=0.5, color="tab:blue")
    for i in indices:
        ax_wav.axvspan(i / fps, (i + 1) / fps, color="tab:orange", alpha=0.25, lw=0)
    ax_wav.set_xlim(t0, t1)
    ax_wav.set_xlabel("time (s)")
    ax_wav.set_yticks([])
    fig.tight_layout(pad=0.3)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return os.fspath(out_png)


def speech_start(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int, span: int, lead: int = 0) -> int:
    """First frame of a ``span``-frame stretch that starts ``lead`` frames before the speech
    starts (so a strip is not all silence), kept inside the clip."""
    from lipsync.synth.mouth import frame_loudness_db

    return speech_start_in(frame_loudness_db(audio, n_frames, fps, sample_rate), n_frames, span, lead)


def speech_start_in(db: np.ndarray, n_frames: int, span: int, lead: int = 0) -> int:
    """``speech_start`` from the frames' loudness (``lipsync.synth.mouth.frame_loudness_db``)."""
    loud = np.flatnonzero(db > db.max() - 25)
    first = max(0, int(loud[0]) - lead) if loud.size else 0
    return max(0, min(first, n_frames - span)) if n_frames >= span else 0

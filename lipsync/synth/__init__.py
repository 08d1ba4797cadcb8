"""Synthetic talking-face corpus: espeak-ng speech, faces from real photos, mouths driven by the audio.

    from lipsync.synth import make_corpus
    info = make_corpus("data/synth", speakers=4, clips_per_speaker=6, seed=0)   # LRS2 layout

See corpus.py for the layouts and what `CorpusInfo` describes.
"""

from lipsync.synth.corpus import LAYOUTS, ClipInfo, CorpusInfo, make_corpus

__all__ = ["LAYOUTS", "ClipInfo", "CorpusInfo", "make_corpus"]

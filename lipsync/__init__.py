"""lipsync: audio-driven lip-sync (the Wav2Lip method) as a library.

The library never imports Ray or MLflow, so inference runs with only this package.
"""

__version__ = "0.1.0"

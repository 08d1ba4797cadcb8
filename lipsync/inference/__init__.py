"""Inference: `LipSyncer` (streaming face video/image + audio -> lip-synced mp4) and its options.

`lipsync infer` (lipsync/inference/cli.py) is a thin layer over this API:

    from lipsync.inference import LipSyncer, InferenceOptions
    LipSyncer("wav2lip_gan.pth", InferenceOptions(compositing="blend")).sync("face.mp4", "speech.wav", "out.mp4")
"""

from lipsync.inference.options import InferenceOptions
from lipsync.inference.pipeline import InferenceResult, LipSyncer

__all__ = ["InferenceOptions", "InferenceResult", "LipSyncer"]

"""Evaluation metrics (library side: no Ray, no MLflow).

- ``image``: SSIM / PSNR of generated vs ground-truth faces, whole face and mouth region.
- ``fid`` + ``inception``: the Fréchet distance, and the FID Inception-v3 loaded from
  pytorch-fid's weight file.
- ``syncnet_v2``: the public evaluation SyncNet and its MFCC front-end.
- ``sync``: LSE-D / LSE-C / AV offset (reference protocol) with either judge.
- ``sync_score``: whole videos → scores (`lipsync sync-score`), with face cropping.
"""

from lipsync.metrics.fid import feature_statistics, frechet_distance, frechet_distance_of_features
from lipsync.metrics.image import face_quality, mouth_region, psnr, ssim
from lipsync.metrics.sync import ExpertJudge, SyncJudge, SyncNetV2Judge, SyncScore, score_embeddings

__all__ = [
    "ExpertJudge", "SyncJudge", "SyncNetV2Judge", "SyncScore", "face_quality", "feature_statistics",
    "frechet_distance", "frechet_distance_of_features", "mouth_region", "psnr", "score_embeddings", "ssim",
]

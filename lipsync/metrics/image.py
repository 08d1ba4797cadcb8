"""Image quality of generated vs ground-truth faces: SSIM and PSNR, whole face and mouth region.

Both take uint8 (or float in [0, data_range]) images of the same shape, (H, W) or (H, W, C),
or stacks (N, H, W[, C]) scored frame by frame and averaged.

* PSNR: 10·log10(data_range² / MSE) over all pixels and channels; identical images give inf.
* SSIM: Wang et al. 2004 as used for face-generation papers — an 11×11 Gaussian window
  (σ = 1.5), K1 = 0.01, K2 = 0.03, population (not sample) covariances, computed per
  channel and averaged, over the positions where the whole window fits (no padding) — the
  same numbers as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255, channel_axis=-1)``.
* Mouth region: the lower half of a face crop (the half Wav2Lip generates; the upper half
  is copied from the input), ``mouth_region``.
"""

from __future__ import annotations

import cv2
import numpy as np

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03


def mouth_region(faces: np.ndarray) -> np.ndarray:
    """Lower half of face crops: (…, H, W, C) → (…, H - H//2, W, C) (rows H//2 .. H-1)."""
    faces = np.asarray(faces)
    h_axis = -3 if faces.ndim >= 3 and faces.shape[-1] in (1, 3) else -2
    h = faces.shape[h_axis]
    return np.take(faces, np.arange(h // 2, h), axis=h_axis)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a, b


def psnr(generated, reference, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; a 4-d stack (N, H, W, C) gives the mean over its frames."""
    a, b = _pair(generated, reference)
    if a.ndim == 4:
        return float(np.mean([psnr(x, y, data_range) for x, y in zip(a, b)]))
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def _gaussian_filter_valid(x: np.ndarray) -> np.ndarray:
    """Gaussian-weighted local means over every full 11×11 window (valid positions only)."""
    g = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA, cv2.CV_64F)
    full = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
    r = SSIM_WINDOW // 2
    return full[r:-r, r:-r]


def _ssim_channel(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _gaussian_filter_valid(a), _gaussian_filter_valid(b)
    var_a = _gaussian_filter_valid(a * a) - mu_a**2
    var_b = _gaussian_filter_valid(b * b) - mu_b**2
    cov = _gaussian_filter_valid(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def ssim(generated, reference, data_range: float = 255.0) -> float:
    """Structural similarity (see module doc); per channel then averaged; stacks averaged per frame."""
    a, b = _pair(generated, reference)
    if a.ndim == 4:
        return float(np.mean([ssim(x, y, data_range) for x, y in zip(a, b)]))
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape[:2]}")
    return float(np.mean([_ssim_channel(a[..., c], b[..., c], data_range) for c in range(a.shape[2])]))


def face_quality(generated: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """SSIM and PSNR of generated vs ground-truth face crops (N, S, S, 3), whole face and mouth."""
    return {
        "ssim": ssim(generated, reference),
        "psnr": psnr(generated, reference),
        "ssim_mouth": ssim(mouth_region(generated), mouth_region(reference)),
        "psnr_mouth": psnr(mouth_region(generated), mouth_region(reference)),
    }

"""PSNR on the luma (Y) channel, the usual super-resolution protocol.

Y follows ITU-R BT.601 as computed by MATLAB's ``rgb2ycbcr`` for RGB in ``[0, 1]``:
``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (so ``Y`` is in ``[16, 235]``), and
PSNR uses a peak of 255. Y is *not* rounded to integers (some SR code rounds it to
uint8 first; the difference is a few hundredths of a dB).

Paper Section IV-C: PSNR is computed per test image after its 64x64 parts are
stitched back together (``PartSet.images_from_parts``) and averaged over images.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["Y_WEIGHTS", "Y_OFFSET", "rgb_to_y", "psnr_y", "mean_psnr_y"]

Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
Y_OFFSET = 16.0
PEAK = 255.0


def rgb_to_y(images: np.ndarray) -> np.ndarray:
    """BT.601 luma of RGB in ``[0, 1]``.

    Args:
      images: ``[..., 3]`` RGB in ``[0, 1]`` (not clipped here).

    Returns:
      float64 ``[...]``, ``16 + 65.481 R + 128.553 G + 24.966 B`` (``[16, 235]``).
    """
    images = np.asarray(images, dtype=np.float64)
    if images.shape[-1:] != (3,):
        raise ValueError(f"rgb_to_y expects [..., 3], got shape {images.shape}")
    return images @ Y_WEIGHTS + Y_OFFSET


def psnr_y(prediction: np.ndarray, target: np.ndarray, *, border: int = 0) -> float:
    """PSNR (dB) on the Y channel of one image, peak 255.

    Args:
      prediction: ``[H, W, 3]`` RGB, nominally in ``[0, 1]``; clipped to ``[0, 1]``.
      target: ``[H, W, 3]`` RGB, same shape; clipped to ``[0, 1]``.
      border: pixels removed from each side before comparing (SR papers often
        crop the upscaling factor); 0 keeps everything.

    Returns:
      ``10 log10(255^2 / mean((Y_pred - Y_target)^2))``; ``float('inf')`` when
      the two Y channels are identical (MSE exactly 0).
    """
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    if prediction.shape != target.shape or prediction.ndim != 3:
        raise ValueError(f"psnr_y expects two [H, W, 3] images of the same shape, got "
                         f"{prediction.shape} and {target.shape}")
    if border < 0 or 2 * border >= min(target.shape[:2]):
        raise ValueError(f"border {border} leaves nothing of a {target.shape[:2]} image")
    y_pred = rgb_to_y(np.clip(prediction, 0.0, 1.0))
    y_true = rgb_to_y(np.clip(target, 0.0, 1.0))
    if border:
        y_pred = y_pred[border:-border, border:-border]
        y_true = y_true[border:-border, border:-border]
    mse = float(np.mean((y_pred - y_true) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(PEAK ** 2 / mse))


def mean_psnr_y(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray], *,
                border: int = 0) -> float:
    """Mean over images of ``psnr_y`` (per-image PSNR, then the average; not pooled MSE).

    Args:
      predictions: ``[H_i, W_i, 3]`` per image (sizes may differ between images).
      targets: the matching targets, same length and shapes.
      border: as in ``psnr_y``.

    Returns:
      the average PSNR in dB; ``inf`` if any image is reproduced exactly.
    """
    predictions, targets = list(predictions), list(targets)
    if len(predictions) != len(targets) or not targets:
        raise ValueError(f"mean_psnr_y needs the same non-zero number of predictions and "
                         f"targets, got {len(predictions)} and {len(targets)}")
    return float(np.mean([psnr_y(p, t, border=border) for p, t in zip(predictions, targets)]))

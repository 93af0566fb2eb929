"""Evaluating expert assignments on SR parts: per-image Y-PSNR after stitching.

Shapes: ``P`` parts of ``64x64x3``, ``N`` experts; ``outputs[P, N, 64, 64, 3]`` is
the ``"outputs"`` expert cache of a split.
"""
import numpy as np

from experiments.super_resolution.metrics import mean_psnr_y, rgb_to_y

__all__ = ["assignment_psnr", "part_scores", "chosen_outputs"]


def chosen_outputs(outputs, assignment):
    """``[P, 64, 64, 3]``: each part's output from its assigned expert."""
    return outputs[np.arange(len(assignment)), np.asarray(assignment)]


def assignment_psnr(part_set, outputs, assignment):
    """Mean over images of the Y-PSNR of the stitched, routed reconstruction."""
    recon = part_set.images_from_parts(chosen_outputs(outputs, assignment))
    truth = part_set.images_from_parts(part_set.parts)
    return float(mean_psnr_y(recon, truth))


def part_scores(part_set, outputs):
    """Per-part scores ``[P, N]``: (negative Y squared error, Y-PSNR).

    The negative squared error sums over an image to its negative SSE, so the
    oracle that maximises it is the best assignment for the stitched images' MSE.
    """
    y_true = rgb_to_y(np.clip(part_set.parts, 0, 1))[:, None]
    y_pred = rgb_to_y(np.clip(outputs, 0, 1))
    mse = np.mean((y_pred - y_true) ** 2, axis=(2, 3))
    psnr = 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))
    return -mse * y_true[0].size, psnr

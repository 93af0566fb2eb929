"""Evaluating expert assignments on SR parts: per-image Y-PSNR after stitching.

Shapes: ``P`` parts of ``64x64x3``, ``N`` experts; ``outputs[P, N, 64, 64, 3]`` is
the ``"outputs"`` expert cache of a split.
"""
import numpy as np

from bmoe_tf import evaluation
from bmoe_tf.routing import route_in_batches
from experiments.sr.metrics import mean_psnr_y, rgb_to_y

__all__ = ["assignment_psnr", "part_scores", "gate_assignment", "evaluate_bias_point",
           "EVAL_BATCH_SEED"]

#: Test-time batches for "batch" routing are a seeded permutation of the parts
#: (a shuffled loader), so each batch mixes parts of several images (WORKSPACE.md).
EVAL_BATCH_SEED = 1234


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


def gate_assignment(logits, bias, batch_size, *, seed=EVAL_BATCH_SEED):
    """Batch routing of precomputed gate logits over shuffled test batches."""
    order = np.random.default_rng(seed).permutation(len(logits))
    picks = np.empty(len(logits), np.int64)
    picks[order] = route_in_batches(logits[order], bias, batch_size)
    return picks


def evaluate_bias_point(part_set, outputs, data_costs, bias, *, batch_size,
                        random_seeds=(0, 1, 2), scores=None):
    """Mean data cost and PSNR for one b of random selection and the oracle.

    Returns ``{"random": (cost, psnr), "oracle": (cost, psnr)}``; random is averaged
    over ``random_seeds`` (exact capacities per batch of ``batch_size``).
    """
    costs = np.asarray(data_costs, np.float64)
    m = len(part_set.parts)
    rand = [evaluation.random_selection(m, bias, seed=s, batch_size=batch_size)
            for s in random_seeds]
    result = {"random": (float(np.mean([costs[a].mean() for a in rand])),
                         float(np.mean([assignment_psnr(part_set, outputs, a) for a in rand])))}
    if scores is None:
        scores = part_scores(part_set, outputs)[0]
    oracle = evaluation.oracle_assignment(scores, bias)
    result["oracle"] = (float(costs[oracle].mean()), assignment_psnr(part_set, outputs, oracle))
    return result

"""The detection task's COCO mAP of a routing: :mod:`bmoe_tf.coco_map` (it moved to the
library, where the int8 export evaluates a routing's mAP from the workdir's files
without importing the experiments); these names are that module's."""
from bmoe_tf.coco_map import (CONFIDENT_SCORE, SCORE_KINDS, RoutingEvaluator,  # noqa: F401
                              coco_map, per_image_scores)

__all__ = ["RoutingEvaluator", "coco_map", "per_image_scores", "SCORE_KINDS", "CONFIDENT_SCORE"]

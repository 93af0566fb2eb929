"""Object detection task: SSD experts at 100/150/300 px on generated or real (COCO/VOC) images."""

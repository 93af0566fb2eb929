"""``python -m experiments.super_resolution``: the task's CLI (:func:`experiments.super_resolution.task.run`)."""
from experiments.super_resolution.task import run

if __name__ == "__main__":
    run()

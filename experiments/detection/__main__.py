"""``python -m experiments.detection``: the task's CLI (:func:`experiments.detection.task.run`)."""
from experiments.detection.task import run

if __name__ == "__main__":
    run()

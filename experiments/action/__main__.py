"""``python -m experiments.action``: the task's CLI (:func:`experiments.action.task.run`)."""
from experiments.action.task import run

if __name__ == "__main__":
    run()

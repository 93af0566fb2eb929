"""The task CLIs: ``python -m experiments.<task>`` (absl flags -> config -> pipeline).

Every error a user can fix is one ``error:`` line on stderr and exit status 2.
"""
import sys

from experiments import config as config_lib
from experiments import multi_worker, pipeline
from experiments.stages import ArtefactError, StageMismatch, WorkdirBusy

__all__ = ["main", "cli"]


def main(task, argv):
    """The body of a task CLI's absl ``main``: flags -> config -> :func:`run`.

    Every error a user can fix (a bad flag, a refused workdir, a corrupt artefact or
    input) is one `error:` line on stderr and exit status 2.
    """
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    logging.set_verbosity(logging.WARNING)
    try:
        cfg = config_lib.from_flags(task)
    except config_lib.ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    from bmoe_tf.backend import tf

    tf.get_logger().setLevel("ERROR")
    from experiments.distribute import ClusterError

    try:
        run = multi_worker.run if cfg.strategy == "multi_worker" else pipeline.run
        return run(task, cfg, FLAGS.workdir)
    except (WorkdirBusy, StageMismatch, ArtefactError, ValueError, ClusterError,
            config_lib.ConfigError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except tf.errors.UnavailableError as err:  # multi_worker: a worker stopped mid-step
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: another worker stopped ({first}); its output says why. Start every "
              f"worker again with the same command: finished stages and gates are skipped, "
              f"and a gate stopped in training resumes from its last finished epoch",
              file=sys.stderr, flush=True)
        sys.exit(2)


def cli(task_factory):
    """``run()`` of a task's console script: defines the flags and runs :func:`main`."""
    from absl import app, flags

    task = task_factory()
    config_lib.define_task_flags(task)
    for name in config_lib.SHARED_FLAGS:  # --help lists the shared flags beside the task's
        flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS[name])
    flags.mark_flag_as_required("workdir")
    app.run(lambda argv: main(task, argv) and None)

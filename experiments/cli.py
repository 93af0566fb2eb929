"""The task CLIs: ``python -m experiments.<task>`` (absl flags -> config -> pipeline).

Exit status: 0 done (``--help`` too); 2 an error a user can fix (a bad or unknown flag,
a refused workdir, a corrupt artefact or input): one ``error: ...`` line on stderr;
130 interrupted (Ctrl-C, SIGTERM): one ``interrupted: ...`` line, finished stages kept.
"""
import os
import shlex
import sys

from experiments import config as config_lib
from experiments import multi_worker, pipeline
from experiments.distribute import ClusterError
from experiments.exits import EXIT_INTERRUPTED, EXIT_USAGE, INTERRUPTED_MESSAGE
from experiments.stages import ArtefactError, StageMismatch, WorkdirBusy

__all__ = ["main", "cli", "USER_ERRORS", "parse_flags", "check_workdir", "supports_eval_data", "command_line",
           "EXIT_USAGE", "EXIT_INTERRUPTED", "INTERRUPTED_MESSAGE"]

#: What a run raises for an error its user can fix: one ``error:`` line and exit 2.
USER_ERRORS = (WorkdirBusy, StageMismatch, ArtefactError, ValueError, ClusterError,
               config_lib.ConfigError)

_HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "--helpxml", "-?")


def _fail(message, code=EXIT_USAGE):
    """One ``error:`` line on stderr (newlines folded), then exit ``code``."""
    text = " ".join(str(message).split())
    print(f"error: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


def parse_flags(argv, flag_values=None):
    """absl's flag parsing for a task CLI: a bad, unknown or missing flag is one ``error:``
    line and exit 2 (absl's own: ``FATAL Flags parsing error`` and exit 1); ``--help``
    prints the usage and exits 0. Returns the remaining arguments."""
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    try:
        rest = fv(argv)
    except flags.Error as err:
        _fail(f"{err} (--help lists the flags)")
    except SystemExit as stop:  # absl's --help/--helpfull print the usage and exit 1
        if any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:]) and stop.code == 1:
            sys.exit(0)
        raise
    if len(rest) > 1:
        _fail(f"unexpected arguments {rest[1:]} (flags are --name=value)")
    if not fv["workdir"].value:
        _fail("--workdir is required (--workdir=DIR: every artefact of the run goes there)")
    return rest


def check_workdir(path):
    """Refuses a ``--workdir`` that cannot hold the run, in one line.

    Raises:
      config.ConfigError: ``path`` is a file, or a directory (or the nearest existing
        parent of one to create) that this process cannot write.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise config_lib.ConfigError(f"--workdir={path} is a file, not a directory")
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise config_lib.ConfigError(f"--workdir={path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == path else f"would be created in {existing}, which is"
        raise config_lib.ConfigError(f"--workdir={path} {what} not writable")


def command_line(task_name, argv=None):
    """The command recorded in ``commands.json``: shell-quoted, so that it runs again when
    pasted (a path with spaces stays one argument)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", f"experiments.{task_name}"] + argv)


def supports_eval_data(task):
    """True when ``task`` evaluates ``--eval_data`` (it declares an ``eval_data`` part)."""
    return getattr(task, "eval_data", None) is not None


def _error_text(err):
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


def main(task, argv):
    """The body of a task CLI's absl ``main``: flags -> config -> the pipeline's ``run``.

    Every error a user can fix (a bad flag, a refused workdir, a corrupt artefact or
    input) is one `error:` line on stderr and exit status 2; an interrupt is one line
    and exit status 130.
    """
    from absl import flags, logging

    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    FLAGS = flags.FLAGS
    if not FLAGS.workdir:
        _fail("--workdir is required (--workdir=DIR: every artefact of the run goes there)")
    logging.set_verbosity(logging.WARNING)
    try:
        check_workdir(FLAGS.workdir)
        cfg = config_lib.from_flags(task)
    except config_lib.ConfigError as err:
        _fail(err)
    from bmoe_tf.backend import tf

    tf.get_logger().setLevel("ERROR")
    from experiments import distribute

    if cfg.strategy == "multi_worker" and distribute.STARTED_FD_ENV not in os.environ:
        # this process supervises the worker: cluster start-up timeout, signals
        try:
            distribute.cluster_timeout()
        except ValueError as err:
            _fail(err)
        sys.exit(distribute.supervise([sys.executable, "-m", f"experiments.{task.name}"]
                                      + sys.argv[1:]))

    try:
        run = multi_worker.run if cfg.strategy == "multi_worker" else pipeline.run
        return run(task, cfg, FLAGS.workdir, command=command_line(task.name))
    except KeyboardInterrupt:
        print(INTERRUPTED_MESSAGE, file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except USER_ERRORS as err:
        _fail(err)
    except (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError) as err:
        _fail(_error_text(err))  # the workdir changed under the run (or a file in it)
    except tf.errors.UnavailableError as err:  # multi_worker: a worker stopped mid-step
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _fail(f"another worker stopped ({first}); its output says why. Start every "
              f"worker again with the same command: finished stages and gates are skipped, "
              f"and a gate stopped in training resumes from its last finished epoch")


def cli(task_factory):
    """``run()`` of a task's console script: defines the flags and runs :func:`main`.

    ``--help`` lists the shared flags beside the task's own, less ``--eval_data`` for a
    task that does not evaluate one (:func:`supports_eval_data`)."""
    import signal

    from absl import app, flags

    task = task_factory()
    before = set(flags.FLAGS)
    config_lib.define_task_flags(task)
    listed = [n for n in config_lib.SHARED_FLAGS
              if n != "eval_data" or supports_eval_data(task)]
    listed += sorted(set(flags.FLAGS) - before - set(config_lib.SHARED_FLAGS))  # the task's own
    for name in listed:  # --help lists the shared flags beside the task's
        flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS[name])

    def interrupted(signum, frame):  # SIGTERM stops a run as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        app.run(lambda argv: main(task, argv) and None, flags_parser=parse_flags)
    except KeyboardInterrupt:  # before main (imports, flag parsing)
        print(INTERRUPTED_MESSAGE, file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)

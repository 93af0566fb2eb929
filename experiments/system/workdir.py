"""A finished experiment workdir as the system sees it: its task and config (from the
command the workdir recorded), its data and experts loaded (never trained here), and
the checks that it can be served (an encoded run, a task with a :class:`Serving` part).

Used by the system CLI (to make the sensors' feed) and by every expert replica of the
server (to load its expert), so both see the same experts.
"""
from __future__ import annotations

import json
import os
import shlex

__all__ = ["SystemRunError", "recorded_command", "load_run", "check_servable"]


class SystemRunError(ValueError):
    """A workdir or flag the system cannot run with (the message names it)."""


def recorded_command(workdir):
    """``(task name, argv)`` of the last pipeline command ``workdir/commands.json`` records
    (``python -m experiments.<task> ...``), without ``--workdir``."""
    from experiments.layout import Layout
    from experiments.tasks import TASKS

    path = Layout.reading(workdir).commands()
    try:
        with open(path) as f:
            commands = json.load(f)
        argv = shlex.split(commands[-1])
    except (OSError, ValueError, IndexError, TypeError) as err:
        raise SystemRunError(f"--workdir={workdir}: {path} does not record the command that made "
                           f"the workdir ({type(err).__name__}: {err}); run the task's CLI "
                           "there first") from None
    task = None
    for i, word in enumerate(argv[:-1]):
        if word == "-m" and argv[i + 1].startswith("experiments."):
            task = argv[i + 1].split(".")[1]
            argv = argv[i + 2:]
            break
    if task not in TASKS:
        raise SystemRunError(f"--workdir={workdir}: the command {commands[-1]!r} in {path} is not "
                           f"a task's (python -m experiments.<{'|'.join(sorted(TASKS))}>)")
    return task, [a for a in argv if not a.startswith("--workdir")]


def check_servable(workdir):
    """Refuses a workdir the system cannot serve (one ``SystemRunError`` naming what is
    missing) before anything is loaded; returns ``(task name, argv)``."""
    from experiments.layout import Layout

    wd = Layout.reading(workdir)
    if not os.path.isdir(wd.root):
        raise SystemRunError(f"--workdir={workdir} is not a directory")
    for path, what in ((wd.report_json(), "report.json (a finished run)"),
                       (wd.config(), "config.json")):
        if not os.path.exists(path):
            raise SystemRunError(f"--workdir={workdir} has no {what}: run the task's CLI there "
                               "to the end first")
    with open(wd.config()) as f:
        cfg = json.load(f)
    if cfg.get("gate") == "cascade":
        raise SystemRunError(f"--workdir={workdir} was run with --gate=cascade, whose gate reads "
                             "the cheapest expert's detections, not the sensor's pixels: the "
                             "sensors run int8 image gates; run the task with --gate=compact")
    if not os.path.exists(wd.export_data()):
        raise SystemRunError(f"--workdir={workdir} has no export_data.npz (the export data): "
                             "run the task's CLI there to the end first")
    if cfg.get("data_cost") != "encoded":
        raise SystemRunError(f"--workdir={workdir} was run with --data_cost={cfg.get('data_cost')}"
                           ": the system sends encoded payloads; run the task with "
                           "--data_cost=encoded (the experts' outputs and the bytes it "
                           "compares with come from that run)")
    task, argv = recorded_command(workdir)
    from experiments.tasks import get_task

    if get_task(task).serving is None:
        raise SystemRunError(f"--workdir={workdir}: the {task} task has no serving part "
                           "(experiments.task.Serving): it cannot run as a system")
    return task, argv


def load_run(workdir, *, experts=True):
    """The :class:`experiments.pipeline.Run` of a finished workdir with its data (and
    experts) loaded; nothing is written or trained."""
    from experiments import config, pipeline
    from experiments.layout import Layout
    from experiments.tasks import get_task

    name, argv = recorded_command(workdir)
    task = get_task(name)
    cfg = config.from_argv(task, [f"--workdir={workdir}", *argv, "--verbose=0"])
    run = pipeline.Run(task, cfg, Layout.reading(workdir))
    pipeline.load_data(run, announce=False)
    if experts:
        pipeline.build_experts(run)
    return run

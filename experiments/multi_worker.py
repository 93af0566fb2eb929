"""The pipeline on a cluster: every worker of ``TF_CONFIG`` runs the same command with a
shared ``--workdir`` (``--strategy=multi_worker``).

The chief (worker 0) holds the workdir lock and runs the data, experts, bias, evaluation,
scene-shift and report stages; every worker runs the experts on its shard of every
cache (:func:`experiments.pipeline.build_cache_shards`; the chief merges the shards into
the files one process writes) and takes part in training every gate; the other workers
return None after the gates. Workers wait for each other at ``tf.distribute`` collective
barriers (:class:`experiments.distribute.Team`), which also carry failure flags: a failed
stage on one worker stops every worker with one line. The stages are those of
:mod:`experiments.pipeline`; only their order and the barriers are this module's.
"""
from __future__ import annotations

import contextlib

from experiments import config as config_lib
from experiments import distribute
from experiments import pipeline
from experiments.layout import Layout
from experiments.stages import WorkdirLock

__all__ = ["run"]


def _same_as_chief(team, keys, names):
    """A worker other than the chief: the chief claimed these stages with the same settings
    (a worker started with other flags would train other gates, or hang)."""
    for name in names:
        if not keys[name].is_current():
            changed = "; ".join(f"{k}: chief {a!r}, this worker {b!r}"
                                for k, a, b in keys[name].changes()) or "no key from the chief"
            raise config_lib.ConfigError(
                f"worker {team.index} was started with other settings than worker 0 for the "
                f"{name} stage ({changed}); start every worker with the same flags")


def run(task, cfg, workdir, *, command=None):
    """:func:`experiments.pipeline.run` on every worker of a cluster (see the module
    docstring); returns the report dict on the chief, None on the other workers.

    Raises: as :func:`experiments.pipeline.run`, and ``distribute.ClusterError`` when
    another worker failed.
    """
    strategy = pipeline._prepare(task, cfg)
    team = distribute.Team(strategy)
    command = command or pipeline.default_command(task)
    with contextlib.ExitStack() as stack:
        with team.section("workdir lock"):  # a busy workdir stops every worker
            if team.chief:
                stack.enter_context(WorkdirLock(workdir))
        wd = Layout(workdir)
        r = pipeline.Run(task, cfg, wd)
        keys = pipeline.stage_keys(task, cfg, wd)
        with team.section("data"):
            if team.chief:
                workers = f" workers={team.count}" if team.count > 1 else ""
                pipeline.stage_data(r, keys, banner=workers)
            else:
                print(f"bmoe-tf {task.name}: worker {team.index} of {team.count}, "
                      f"workdir={wd.root}; worker 0 writes the artefacts", flush=True)
        with team.section("experts"):
            pipeline.load_data(r, announce=team.chief)
            if team.chief:
                keys["experts"].claim()
                pipeline.build_experts(r, keys)
                keys["cache"].claim()  # before any shard file is written
        with team.section("cache shards"):
            if not team.chief:
                _same_as_chief(team, keys, ("data", "experts", "cache"))
                pipeline.build_experts(r)  # done by the chief: loaded
            if team.count > 1:
                pipeline.build_cache_shards(r, team.count, team.index)
        with team.section("bias"):
            if team.chief:  # merges the shards, then the table and b
                pipeline.build_caches(r)
                table = pipeline.expert_table(r)
                keys["bias"].claim()
                points = pipeline.stage_bias(r, table)
                keys["gates"].claim()
        with team.section("caches loaded"):
            if not team.chief:
                _same_as_chief(team, keys, ("bias", "gates"))
                pipeline.build_caches(r)  # built by the chief: nothing runs
                points = pipeline.read_bias(wd)
        # every worker trains every gate (collective: a worker that dies here stops the
        # others through the strategy's health checks); the others stop after it
        gates = pipeline.stage_gates(r, points, strategy=team.strategy, chief=team.chief)
        if not team.chief:
            print(f"worker {team.index}: gates trained; worker 0 writes the evaluation and "
                  f"the report", flush=True)
            return None
        results = pipeline.stage_evaluation(r, keys, table, points, gates)
        return pipeline.stage_report(r, keys, table, points, gates, results, command)

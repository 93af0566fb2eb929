"""``python -m experiments.system``: a finished encoded workdir as a running system.

    python -m experiments.system --workdir=workdir/sr_encoded --sensors=4 --fps=4

Starts the experts on Ray Serve (embedded Ray on loopback, or ``--address`` of a running
cluster), runs ``--sensors`` sensor processes at once over links capped at
``--link_kbps``, checks the run against the offline pipeline and writes
``<workdir>/system/system_report.json`` and ``.md``; stops everything it started.
Exit status: 0 done; 2 a bad flag or workdir (one ``error:`` line); 130 interrupted.
"""
import sys

from absl import flags

__all__ = ["main", "run"]

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A finished task workdir run with --data_cost=encoded.")
flags.DEFINE_integer("sensors", 1, "Sensor processes streaming at once (1-64).")
flags.DEFINE_float("fps", 4.0, "Frames per second each sensor captures (SR: a frame is a photo).")
flags.DEFINE_integer("frames", 0, "Frames per sensor (0: the whole test split, --passes times).")
flags.DEFINE_integer("passes", 1, "Each sensor plays the test split this many times in a row.")
flags.DEFINE_float("link_kbps", None, "Each sensor's uplink in kbit/s (default: 1.5 x the "
                   "budget's rate at the frame rate).")
flags.DEFINE_float("budget_bytes", None, "Bytes on the wire per input (default: the export's "
                   "payload target plus the mean framing per input).")
flags.DEFINE_enum("mode", "hard", ["hard", "soft"], "hard: a bucket bounds the bytes of every "
                  "window; soft: the long-run mean only.")
flags.DEFINE_float("bucket_bytes", None, "Hard mode's bucket B (default: 64 inputs' budget, at "
                   "least twice the largest frame).")
flags.DEFINE_string("gate", None, "Gate directory (default: <workdir>/gates/enforce/shared).")
flags.DEFINE_integer("replicas", 1, "Ray Serve replicas per expert.")
flags.DEFINE_string("address", None, "A running Ray cluster's address (default: an embedded "
                    "Ray on this machine).")
flags.DEFINE_float("timeout_s", 600.0, "Longest a sensor streams and retries.")
flags.DEFINE_list("link_down", [], "Link outages START:END in seconds after the first frame.")


def _outages(values):
    out = []
    for v in values:
        try:
            start, end = (float(x) for x in v.split(":"))
        except ValueError:
            raise ValueError(f"--link_down={v}: expected START:END in seconds") from None
        out.append((start, end))
    return out


_OWN = ("workdir", "sensors", "fps", "frames", "passes", "link_kbps", "budget_bytes", "mode",
        "bucket_bytes", "gate", "replicas", "address", "timeout_s", "link_down")


def main(argv):
    """The run (flags parsed by :func:`run`); returns the exit status."""
    from experiments.exits import EXIT_INTERRUPTED, EXIT_USAGE

    try:
        from experiments.system.runner import run_system

        run_system(FLAGS.workdir, sensors=FLAGS.sensors, fps=FLAGS.fps, frames=FLAGS.frames, passes=FLAGS.passes,
                   link_kbps=FLAGS.link_kbps, budget_bytes=FLAGS.budget_bytes,
                   bucket_bytes=FLAGS.bucket_bytes, mode=FLAGS.mode, gate=FLAGS.gate,
                   address=FLAGS.address, replicas=FLAGS.replicas, timeout_s=FLAGS.timeout_s,
                   outages=_outages(FLAGS.link_down))
    except KeyboardInterrupt:
        print("interrupted: everything the run started was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, ConnectionError) as err:  # a bad flag or workdir; an unreachable --address
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return EXIT_USAGE
    return 0


def run():
    """``python -m experiments.system``: absl's flag parsing (``--help`` lists the flags and
    exits 0; a bad flag is one ``error:`` line, exit 2), SIGTERM stops the run as Ctrl-C."""
    import signal

    from absl import app

    from experiments.cli import parse_flags

    for name in _OWN:
        FLAGS.register_flag_by_module(sys.argv[0], FLAGS[name])

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)

"""The exit statuses every task CLI uses (and the multi-worker supervisor passes on)."""

__all__ = ["EXIT_USAGE", "EXIT_INTERRUPTED", "INTERRUPTED_MESSAGE"]

#: A bad or unknown flag, a refused workdir, a corrupt artefact or input (one ``error:`` line).
EXIT_USAGE = 2
#: Ctrl-C or SIGTERM (one ``interrupted:`` line; finished stages are kept).
EXIT_INTERRUPTED = 130
INTERRUPTED_MESSAGE = ("interrupted: stopped before the end; finished stages are kept; run the "
                       "same command to resume")

"""SIGTERM stops a long command the way Ctrl-C does, rather than killing it where it stands.

``kill PID``, a job scheduler's stop and a machine's shutdown send SIGTERM, whose default action ends the
process at once: no ``finally`` block runs, so ``sweep --archive`` would not export the runs finished since
its last export. Under :func:`unwinds_on_sigterm` the signal raises :class:`Terminated` in the main
thread instead. It is a ``KeyboardInterrupt``, so it unwinds as Ctrl-C does: a run in training keeps its
last epoch's checkpoint and stays ``running`` in the store (the same command resumes it), the claims on
its training are released, the archive is brought up to date; the command then exits with status 143
(128 + 15, the status a shell reports for a process ended by SIGTERM).
"""
from __future__ import annotations

import functools
import signal
import threading

EXIT_STATUS = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM was received (:func:`unwinds_on_sigterm`)."""


def unwinds_on_sigterm(fn):
    """Decorator for CLI commands: while ``fn`` runs, SIGTERM raises :class:`Terminated`; when the
    interrupt reaches the command, a line on stderr and exit status :data:`EXIT_STATUS`. The handler also
    notes that the signal came, since code that waits in C can let the interrupt surface as a plain
    ``KeyboardInterrupt`` (Ray's blocking calls do). Outside the main thread (where Python cannot set a
    signal handler) ``fn`` runs as it is."""
    import click

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        received = []

        def on_sigterm(signum, frame):
            received.append(signum)
            raise Terminated()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if not received:
                raise
            click.echo("terminated (SIGTERM): finished runs are stored, a run in training keeps its "
                       "checkpoint; the same command resumes", err=True)
            raise SystemExit(EXIT_STATUS) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper

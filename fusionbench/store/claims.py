"""Claims: which process is training what, among the processes that share a store's folder.

Two ``fusionbench sweep`` processes over one store (two cores, one sweep file) must not train the same
configuration twice. Before a cell trains, its process claims the cell's training hash
(``runner.training_config``: the clean run and its test-only stress cells share one): an exclusive
``flock`` on ``claims/<training hash>.lock`` beside the store, taken without waiting. A process that finds
the claim held leaves that cell to its holder and goes on with the next.

The operating system drops a ``flock`` when its process ends, however it ends (finished, interrupted,
killed), so a claim never outlives its process and nothing needs cleaning up: the lock files stay, empty of
meaning once unlocked. The file holds the holder's host and pid, for messages only. Advisory locks serve
processes on one machine, or on a file system that carries ``flock`` between machines; they are not a
cluster's scheduler (``fusionbench sweep --engine ray`` is).
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Optional

CLAIMS = "claims"
"""Folder beside the store holding one lock file per claimed training hash."""


class Claim:
    """A held claim on ``key`` (an open, ``flock``-ed lock file); :meth:`release` or the process's end
    gives it up. Use :meth:`take`."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def take(cls, folder: Path, key: str) -> Optional["Claim"]:
        """Claim ``key`` among the processes sharing ``folder`` (the store's folder): a :class:`Claim`, or
        ``None`` when another holder has it (:func:`holder` says who)."""
        path = Path(folder) / CLAIMS / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Give the claim up (closing the file drops the lock); a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(folder: Path, key: str) -> str:
    """Who holds the claim on ``key``: ``"pid N on HOST"`` as its holder wrote it (``"another process"``
    while it has not yet)."""
    try:
        host, pid = (Path(folder) / CLAIMS / f"{key}.lock").read_text().split()
    except (OSError, ValueError):
        return "another process"
    return f"pid {pid} on {host}"

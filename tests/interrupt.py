"""Interrupting a ``fusionbench`` command in a child process at a chosen moment (the SIGTERM and Ctrl-C
tests of sweep and tune)."""
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def interrupt_when(args: list[str], ready: Callable[[], bool], signum: int, wait_s: float = 300,
                   end_s: float = 180) -> tuple[int, str, str]:
    """Run ``python -m fusionbench.cli ARGS`` (this checkout, one torch thread), poll ``ready()`` every
    0.2 s until it holds (at most ``wait_s``; the command must still be running), send ``signum`` and wait
    for the command to end (at most ``end_s``); returns (exit status, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "fusionbench.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        waited_until = time.monotonic() + wait_s
        while not ready():
            assert child.poll() is None and time.monotonic() < waited_until, "the command ended or never got there"
            time.sleep(0.2)
        child.send_signal(signum)
        out, err = child.communicate(timeout=end_s)
    finally:
        child.kill()
    return child.returncode, out, err

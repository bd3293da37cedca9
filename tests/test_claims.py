"""Claims (`fusionbench.store.claims`): one process trains a configuration while others share its store.
The lock itself (exclusive, released by `release` or by its process's end, even a kill), the local engine
leaving a claimed cell to its holder, and two `fusionbench sweep` processes over one store training every
cell once between them."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from fusionbench.plan import identify, run_local
from fusionbench.store import ResultStore
from fusionbench.store.claims import Claim, holder
from fusionbench.sweep import read_sweep
from test_deadline import cells_of

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(tmp_path, body):
    _, path = cells_of(tmp_path, body)    # the tiny synthetic sweep of test_deadline (one epoch per cell)
    return path


def test_a_claim_is_exclusive_until_released(tmp_path):
    first = Claim.take(tmp_path, "abc")
    assert first is not None
    assert Claim.take(tmp_path, "abc") is None                       # held, even by another handle of this process
    assert Claim.take(tmp_path, "other") is not None                 # keys are independent
    assert holder(tmp_path, "abc") == f"pid {os.getpid()} on {os.uname().nodename}"
    first.release()
    first.release()                                                   # a second release does nothing
    with Claim.take(tmp_path, "abc") as again:
        assert again is not None and Claim.take(tmp_path, "abc") is None
    assert Claim.take(tmp_path, "abc") is not None                    # the with block released it


def test_a_claim_ends_with_its_process_even_when_killed(tmp_path):
    code = ("import sys, time; from fusionbench.store.claims import Claim; "
            f"c = Claim.take({str(tmp_path)!r}, 'abc'); print('held' if c else 'busy', flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().strip() == "held"
        assert Claim.take(tmp_path, "abc") is None
        assert holder(tmp_path, "abc") == f"pid {child.pid} on {os.uname().nodename}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert Claim.take(tmp_path, "abc") is not None


def test_the_local_engine_leaves_a_claimed_training_to_its_holder(tmp_path):
    cells = read_sweep(sweep_file(tmp_path, """
        [[run]]
        strategy = "sasrec"
        seeds = [0, 1]

        [[run]]
        strategy = "sasrec"
        seeds = [0]
        perturbation = { name = "disorder", severity = 1.0 }
    """))
    (_, d0, t0), (_, d1, t1), (_, d_stress, t_stress) = identify(cells)
    assert t_stress == t0 and d_stress != d0                          # the test-only cell evaluates seed 0's training
    store = ResultStore(tmp_path / "runs.db")
    other = Claim.take(tmp_path, t0)                                   # "another process" trains seed 0
    run_local(cells, store, progress=False)
    expected = f"its training is running in pid {os.getpid()} on {os.uname().nodename}"
    assert [c.deferred for c in cells] == [expected, None, expected]
    assert store.status(d0) is None and store.status(d1) == "done" and store.status(d_stress) is None
    assert Claim.take(tmp_path, t1) is not None                       # released after its cell
    other.release()
    cells = read_sweep(tmp_path / "sweep.toml")
    run_local(cells, store, progress=False)
    assert [c.deferred for c in cells] == [None, None, None]
    assert [c.outcome.skipped for c in cells] == [False, True, False]
    assert store.status(d0) == store.status(d_stress) == "done"


def test_two_sweep_processes_over_one_store_train_each_cell_once(tmp_path):
    path = sweep_file(tmp_path, """
        [[run]]
        strategy = ["sasrec", "gru4rec"]
        seeds = [0, 1, 2]
    """)
    store_path = tmp_path / "runs.db"
    ResultStore(store_path).close()                                    # created once, before both open it
    command = [sys.executable, "-m", "fusionbench.cli", "sweep", str(path), "--store", str(store_path), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    ran = 0
    for output in outputs:
        total, skipped = map(int, re.search(r"(\d+) cells, (\d+) already in the store", output).groups())
        deferred = re.search(r"(\d+) of \d+ cells not started here", output)
        ran += total - skipped - (int(deferred.group(1)) if deferred else 0)
    assert total == 6 and ran == 6, outputs                            # no cell trained twice, none left out
    store = ResultStore(store_path)
    assert all(store.status(digest) == "done" for _, digest, _ in identify(read_sweep(path)))
    assert all(Claim.take(tmp_path, t) is not None for _, _, t in identify(read_sweep(path)))  # all let go

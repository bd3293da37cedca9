"""reports/cf_test_graph_probe.py: graph-CF test rankings on the test-time graph and on the training graph."""
import importlib.util
from pathlib import Path

import pytest

from fusionbench.runner import RunRequest, run_experiment
from fusionbench.store import ResultStore
from test_stress import TINY_DATA, request

PROBE = Path(__file__).resolve().parents[1] / "reports" / "cf_test_graph_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("cf_test_graph_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_probe_ranks_each_graph_cf_run_four_ways_the_test_graph_as_the_run_did(probe, tmp_path):
    store = ResultStore(tmp_path / "r.db")
    cf = run_experiment(RunRequest(strategy="lightgcn", dataset="synthetic", dataset_options=dict(TINY_DATA),
                                   strategy_options={"dim": 16}, train_options={"epochs": 3, "lr": 0.01}),
                        store, progress=False)
    run_experiment(request("sasrec"), store, progress=False)          # not graph-CF: left out
    rows = list(probe.rankings(tmp_path / "r.db"))
    assert [(config["strategy"], way) for config, way, _ in rows] == [("lightgcn", way) for way, *_ in probe.WAYS]
    found = {way: metrics for _, way, metrics in rows}
    stored = store.metrics(store.run_id(cf.config_hash))
    assert all(found["test graph"][m] == pytest.approx(stored[m], abs=1e-12) for m in probe.METRICS)
    # under loo the test-time graph holds every user's validation item, the training graph does not
    assert any(found["train graph"][m] != found["test graph"][m] for m in probe.METRICS), found
    assert any(found["train graph, excl."][m] != found["train graph"][m] for m in probe.METRICS), found

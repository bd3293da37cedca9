"""Opt-in end-to-end runs on the real Beauty data (``pytest -m slow`` or ``tox -e slow``)."""
import pytest
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.store import ResultStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]   # full Beauty epochs: minutes each on 2 cores


@pytest.mark.parametrize("strategy", ["sasrec", "mmsr"])
def test_a_few_epochs_on_beauty_beat_chance_by_far(strategy, tmp_path):
    store = tmp_path / "r.db"
    out = CliRunner().invoke(main, ["run", "--strategy", strategy, "--dataset", "beauty", "--epochs", "2",
                                    "--store", str(store), "--quiet"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    runs = ResultStore(store).runs()
    assert len(runs) == 1 and runs.loc[0, "status"] == "done"
    metrics = ResultStore(store).metrics(int(runs.loc[0, "id"]))
    # chance is 20 / 12,101 = 0.17 % for HR@20; two epochs give several times that (SASRec: 1.8 % after one)
    assert metrics["HR@20"] > 0.01

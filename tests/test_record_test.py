"""`train.record_test`: one trajectory, two selections. The test split is ranked after every epoch and kept
apart in the history; selection, early stopping and the trajectory itself must not depend on it."""
import json

import pytest
import torch

import fusionbench.train as T
from fusionbench.context import StrategyContext
from fusionbench.data.splits import make_split
from fusionbench.errors import UserInputError
from fusionbench.perturb.plan import PerturbationRequest
from fusionbench.registry import STRATEGIES
from fusionbench.runner import resolve, run_experiment, training_config
from fusionbench.store import ResultStore, config_hash
from fusionbench.store.upgrade import upgrade_store
from fusionbench.train import SELECTABLE, TrainOptions, train
from test_stopping import STALLED_NDCG
from test_stress import request
from test_train_store import cyclic_data


def fit(data, protocol, record_test, epochs=4, strategy="sasrec", **train_opts):
    model = STRATEGIES.create(strategy, StrategyContext(data.n_items, 10), dim=16, heads=1, dropout=0.3)
    opts = TrainOptions.build({"epochs": epochs, "batch_size": 32, "lr": 0.01, "record_test": record_test,
                               **train_opts})
    return train(model, data, make_split(data, protocol), opts, 0, 10, progress=False)


def without_test(history):
    timing = ("test", "test_seconds", "seconds", "wait_seconds")
    return [{k: v for k, v in entry.items() if k not in timing} for entry in history]


@pytest.mark.parametrize("protocol", ["ratio", "loo"])
def test_recording_test_leaves_the_trajectory_unchanged(protocol):
    data = cyclic_data()
    plain, recorded = fit(data, protocol, False), fit(data, protocol, True)
    assert without_test(recorded.history) == without_test(plain.history)     # losses and validation, bit for bit
    assert recorded.best_epoch == plain.best_epoch and recorded.test == plain.test
    assert torch.equal(recorded.test_ranks, plain.test_ranks)
    assert all("test" not in entry for entry in plain.history)
    assert all(set(entry["test"]) == set(SELECTABLE) for entry in recorded.history)
    # the epoch selected on validation recorded the test metrics the final ranking reports
    assert recorded.history[recorded.best_epoch - 1]["test"] == recorded.test
    assert len({json.dumps(entry["test"]) for entry in recorded.history}) > 1   # it is measured every epoch


def test_ranking_test_inside_training_cannot_move_the_random_streams(monkeypatch):
    """A test ranking that draws random numbers (as a rebuilt test model would) still leaves training as it is:
    the draws happen inside rng_preserved."""
    data = cyclic_data()
    plain = fit(data, "ratio", False)
    real = T.rank_test

    def drawing(*args, **kwargs):
        torch.rand(1000)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "rank_test", drawing)
    recorded = fit(data, "ratio", True)
    assert without_test(recorded.history) == without_test(plain.history)
    with T.rng_preserved(torch.device("cpu")):                # and without it the draw would have moved them
        torch.manual_seed(0)
        before = torch.rand(3)
    torch.manual_seed(0)
    torch.rand(1000)
    assert not torch.equal(torch.rand(3), before)


@pytest.mark.parametrize("protocol", ["ratio", "loo"])
def test_selection_and_stopping_never_read_the_recorded_test_metrics(monkeypatch, protocol):
    """Validation is best at epoch 1 and then stalls (stop after 3 epochs at patience 2); the planted test
    metrics improve at every epoch. Reading them would keep the run going and restore a later epoch."""
    validation = list(STALLED_NDCG)
    monkeypatch.setattr(T, "summarize",
                        lambda ranks: validation.pop(0) if validation else dict.fromkeys(SELECTABLE, 0.0))
    planted = [dict.fromkeys(SELECTABLE, 0.1 * e) for e in range(1, 21)]
    calls = iter(planted)
    monkeypatch.setattr(T, "epoch_test_metrics", lambda *args, **kwargs: next(calls))
    res = fit(cyclic_data(n_users=60), protocol, True, epochs=20, patience=2)
    assert len(res.history) == 3 and res.best_epoch == 1
    assert [entry["test"] for entry in res.history] == planted[:3]


def test_record_test_enters_the_config_only_when_true():
    plain = resolve(request(protocol="ratio"))
    assert "record_test" not in plain["train"]                 # so every earlier run keeps its hash
    assert "record_test" not in resolve(request(protocol="ratio", train_options={"record_test": "false"}))["train"]
    recorded = resolve(request(protocol="ratio", train_options={"epochs": 2, "lr": 0.01, "record_test": "true"}))
    assert recorded["train"]["record_test"] is True
    assert config_hash(recorded) != config_hash(plain)
    assert training_config(recorded)["train"]["record_test"] is True   # kept weights carry their test history
    with pytest.raises(UserInputError, match="train.record_test applies to protocols loo and ratio"):
        resolve(request(protocol="ratio-paper", train_options={"record_test": True}))
    with pytest.raises(UserInputError, match="train.record_test applies to clean runs"):
        resolve(request(protocol="ratio", perturbation=PerturbationRequest("missing", 0.5, "test"),
                        train_options={"record_test": True}))
    with pytest.raises(UserInputError, match="record_test"):
        resolve(request(train_options={"record_test": "maybe"}))


def test_a_recorded_run_stores_its_test_history_and_every_run_stays_findable(tmp_path):
    path = tmp_path / "r.db"
    options = {"epochs": 2, "lr": 0.01}
    plain = run_experiment(request(protocol="ratio", train_options=options), ResultStore(path), progress=False)
    recorded = run_experiment(request(protocol="ratio", train_options={**options, "record_test": True}),
                              ResultStore(path), progress=False)
    assert recorded.config_hash != plain.config_hash and recorded.result is not None   # trained, not reused
    store = ResultStore(path)
    history = store.history(recorded.run_id)
    assert [sorted(entry["test"]) for entry in history] == [sorted(SELECTABLE)] * 2
    assert all("test" not in entry for entry in store.history(plain.run_id))
    assert store.metrics(recorded.run_id, "test") == pytest.approx(history[recorded.result.best_epoch - 1]["test"])
    # both keep their identity through an upgrade (the option adds no key to runs without it)
    assert {u.status for u in upgrade_store(store)} == {"current"}
    for options_now in (options, {**options, "record_test": True}):
        assert run_experiment(request(protocol="ratio", train_options=options_now), ResultStore(path),
                              progress=False).skipped


def test_an_inflation_that_rounds_to_zero_reads_plus_zero():
    from fusionbench.report.trajectory import _signed, _text

    assert [_signed(v, 2) for v in (-1e-9, -0.004, -0.006, 0.0, 0.012)] == ["+0.00", "+0.00", "-0.01", "+0.00", "+0.01"]
    assert _signed(-0.04, 1) == "+0.0" and _text(-1e-9, 0.5, sign=True) == "+0.00 ± 0.50"

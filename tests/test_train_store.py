"""Trainer (determinism, selection on validation only, resume, NaN, the Adam it builds) and the SQLite
results store. Early stopping rules: test_stopping.py."""
import multiprocessing

import numpy as np
import pandas as pd
import pytest
import torch

from fusionbench.context import StrategyContext
from fusionbench.cpu_share import queue_wait
from fusionbench.data.core import from_sequences
from fusionbench.data.splits import make_split
from fusionbench.errors import TrainingError
from fusionbench.registry import STRATEGIES
from fusionbench.store import ResultStore, RunSummary, config_hash
from fusionbench.train import TrainOptions, epoch_batches, fused_adam_supported, make_adam, train


def cyclic_data(n_users=120, n_items=40, seed=0):
    """Each user walks item i -> i + 1 (mod n) from a random start: an easy, learnable pattern."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n_items, (n_users,), generator=g)
    lengths = torch.randint(5, 12, (n_users,), generator=g)
    seqs = [[(int(s) + j) % n_items + 1 for j in range(int(n))] for s, n in zip(starts, lengths)]
    return from_sequences("cyclic", seqs, n_items)


def fit(data, epochs=3, seed=0, checkpoint=None, **train_opts):
    model = STRATEGIES.create("sasrec", StrategyContext(data.n_items, 10), dim=16, heads=1, dropout=0.1)
    opts = TrainOptions.build({"epochs": epochs, "batch_size": 32, "lr": 0.01, **train_opts})
    return train(model, data, make_split(data, "loo"), opts, seed, 10, checkpoint=checkpoint, progress=False)


def test_training_learns_and_is_deterministic():
    data = cyclic_data()
    a, b = fit(data, epochs=8), fit(data, epochs=8)
    assert a.test == b.test and torch.equal(a.test_ranks, b.test_ranks)
    assert a.test["HR@5"] > 0.5  # the cycle is learnable; chance is 5/40
    assert fit(data, epochs=8, seed=1).test != a.test


def test_selection_uses_validation_only():
    res = fit(cyclic_data(), epochs=6, patience=2)
    valid = [h["valid"]["NDCG@20"] for h in res.history]
    assert res.best_epoch == int(np.argmax(valid)) + 1  # first maximum of the validation metric
    timing = {"wait_seconds"} if queue_wait() is not None else set()
    assert set(res.history[0]) == {"epoch", "loss", "seconds", "valid", *timing}  # no test numbers per epoch
    assert all(0 <= h.get("wait_seconds", 0) <= h["seconds"] for h in res.history)


def test_an_epochs_wait_for_a_core_is_its_trainings_not_its_validations(monkeypatch):
    """``wait_seconds`` is the queue wait of the span ``seconds`` times (training): a thread that waits
    100 s during each validation and never while it trains records no wait."""
    import fusionbench.train as trainer
    waited = [0.0]
    validate = trainer.rank_samples

    def crowded_validation(*args, **kwargs):
        waited[0] += 100.0
        return validate(*args, **kwargs)

    monkeypatch.setattr(trainer, "queue_wait", lambda: waited[0])
    monkeypatch.setattr(trainer, "rank_samples", crowded_validation)
    res = fit(cyclic_data(), epochs=2)
    assert waited[0] >= 200.0 and [h["wait_seconds"] for h in res.history] == [0.0, 0.0]


def test_early_stopping_respects_patience():
    res = fit(cyclic_data(), epochs=50, patience=1, lr=1e-6)  # too small an lr: no improvement
    assert len(res.history) < 50
    assert len(res.history) - res.best_epoch <= 1


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    data = cyclic_data()
    full = fit(data, epochs=4)
    ckpt = tmp_path / "run.pt"
    fit(data, epochs=2, checkpoint=ckpt)  # "interrupted" after two epochs
    resumed = fit(data, epochs=4, checkpoint=ckpt)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.test == full.test
    assert torch.equal(resumed.test_ranks, full.test_ranks)


def test_a_resumed_run_counts_the_wall_time_of_the_epochs_it_restored(tmp_path):
    data = cyclic_data()
    ckpt = tmp_path / "run.pt"
    first = fit(data, epochs=2, checkpoint=ckpt)
    assert first.earlier_seconds == 0.0
    elapsed = torch.load(ckpt, weights_only=False)["elapsed"]
    assert elapsed >= sum(h["seconds"] for h in first.history)  # training and validation of both epochs
    assert fit(data, epochs=3, checkpoint=ckpt).earlier_seconds == elapsed
    # a checkpoint from before "elapsed" was kept: its epochs' training time, a lower bound
    state = torch.load(ckpt, weights_only=False)
    restored = state.pop("history")
    del state["elapsed"]
    torch.save({**state, "history": restored[:2]}, ckpt)
    assert fit(data, epochs=3, checkpoint=ckpt).earlier_seconds == sum(h["seconds"] for h in restored[:2])


def test_bf16_training_learns_deterministically_and_differs_from_fp32():
    data = cyclic_data()
    a, b = fit(data, epochs=8, precision="bf16"), fit(data, epochs=8, precision="bf16")
    assert a.test == b.test and torch.equal(a.test_ranks, b.test_ranks)
    assert a.test["HR@5"] > 0.5  # learns the cycle like fp32 does
    assert a.history[0]["loss"] != fit(data, epochs=1).history[0]["loss"]  # the forward really ran in bf16


def test_causal_rows_are_batched_at_random_or_by_length_and_each_row_once():
    """``uniform`` batches are random draws of rows (widths as varied as the data), ``length`` batches group
    rows of similar length; either way an epoch holds every row exactly once."""
    data = cyclic_data(n_users=400)
    split = make_split(data, "loo")
    model = STRATEGIES.create("sasrec", StrategyContext(data.n_items, 10), dim=16, heads=1)

    def epoch(batching):
        batches = list(epoch_batches(model, data, split, 10, 20, torch.Generator().manual_seed(0), batching=batching))
        lengths = [(b.targets > 0).sum(1).float() for b in batches]       # targets per row = its length - 3
        return batches, lengths

    spread = {}
    for batching in ("uniform", "length"):
        batches, lengths = epoch(batching)
        assert sum(b.size for b in batches) == data.n_users                 # one causal row per user
        assert int(sum(t.sum() for t in lengths)) == len(split.train)       # every training target once
        spread[batching] = float(torch.stack([t.std() for t in lengths]).mean())
    assert spread["length"] < 0.5 * spread["uniform"]
    first, _ = epoch("uniform")
    again, _ = epoch("uniform")
    assert all(torch.equal(a.items, b.items) for a, b in zip(first, again))  # seeded


def test_unknown_batching_is_a_clear_error():
    with pytest.raises(Exception, match="option 'batching' must be one of uniform, length"):
        TrainOptions.build({"batching": "sorted"})


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match=r"option 'precision' must be one of fp32, bf16, got 'fp16'"):
        TrainOptions.build({"precision": "fp16"})


def test_nan_loss_is_a_clear_error():
    with pytest.raises(TrainingError, match=r"non-finite loss .* at epoch 1, batch \d+"):
        fit(cyclic_data(), epochs=2, lr=1e30)


@pytest.fixture
def fresh_probe():
    """``fused_adam_supported`` asked afresh (its per-device cache cleared before and after)."""
    fused_adam_supported.cache_clear()
    yield
    fused_adam_supported.cache_clear()


def adam_steps(optimizer, model) -> bool:
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 3, generator=torch.Generator().manual_seed(0))).square().sum().backward()
    optimizer.step()
    return all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_make_adam_builds_a_cpu_optimizer_that_steps(fresh_probe):
    model = torch.nn.Linear(3, 2)
    optimizer = make_adam(model.parameters(), lr=0.1, weight_decay=0.01)
    assert optimizer.param_groups[0]["fused"] == (True if fused_adam_supported(torch.device("cpu")) else None)
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]) == (0.1, 0.01)
    assert adam_steps(optimizer, model)


class Torch22Adam(torch.optim.Adam):
    """torch 2.2's Adam on the CPU: ``fused=True`` is refused at construction."""

    def __init__(self, params, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported "
                               "devices: ['cuda', 'xpu', 'privateuseone'].")
        super().__init__(params, *args, fused=fused, **kwargs)


def test_make_adam_falls_back_to_the_default_adam_where_fused_is_refused(monkeypatch, fresh_probe):
    loss = fit(cyclic_data(), epochs=1).history[0]["loss"]         # with this torch's choice
    monkeypatch.setattr(torch.optim, "Adam", Torch22Adam)
    fused_adam_supported.cache_clear()                            # probe again, now against "torch 2.2"
    assert not fused_adam_supported(torch.device("cpu"))
    model = torch.nn.Linear(3, 2)
    optimizer = make_adam(model.parameters(), lr=0.1)
    assert optimizer.param_groups[0]["fused"] is None and adam_steps(optimizer, model)
    assert fit(cyclic_data(), epochs=1).history[0]["loss"] == pytest.approx(loss, rel=1e-4)  # train: same helper


CONFIG = {"dataset": "d", "protocol": "loo", "strategy": "s", "aggregator": None, "seed": 0, "x": 1}


def test_store_round_trip_and_done_skip(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    digest = config_hash(CONFIG)
    assert config_hash(dict(reversed(list(CONFIG.items())))) == digest  # key order never matters
    run = store.start(CONFIG, "abc", {"torch": "x"}, "rev")
    assert store.status(digest) == "running"
    ranks = np.array([0, 3, 25])
    store.finish(run, {"test": {"HR@5": 0.5, "NDCG@20": 0.25}}, {"test": ranks}, RunSummary(best_epoch=2))
    assert store.status(digest) == "done"
    assert store.metrics(run) == {"HR@5": 0.5, "NDCG@20": 0.25}
    np.testing.assert_array_equal(store.ranks(run), ranks)
    assert len(store.runs()) == 1
    with pytest.raises(ValueError, match="already done"):
        store.start(CONFIG, "abc", {}, "rev")


def test_store_failed_finish_leaves_nothing_half_written(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    run = store.start(CONFIG, "abc", {}, "rev")
    with pytest.raises(TypeError):  # metrics are written, then the ranks fail: the whole write rolls back
        store.finish(run, {"test": {"HR@5": 0.5}}, {"test": object()})
    assert store.status(config_hash(CONFIG)) == "running"
    assert store.metrics(run) == {}
    with pytest.raises(KeyError):
        store.ranks(run)
    # a rerun replaces the unfinished attempt, under its id (after another run has started)
    other = store.start({**CONFIG, "seed": 99}, "abc", {}, "rev")
    run2 = store.start(CONFIG, "abc", {}, "rev")
    assert run2 == run and other > run
    store.finish(run2, {"test": {"HR@5": 0.5}}, {"test": np.array([1])})
    assert len(store.runs(status=None)) == 2 and store.metrics(run) == {"HR@5": 0.5}


def test_finish_takes_a_typed_run_summary(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    run = store.start({"strategy": "sasrec", "dataset": "d", "protocol": "loo", "seed": 0}, "c", {}, "rev")
    with pytest.raises(TypeError, match="RunSummary"):
        store.finish(run, {"test": {"HR@5": 0.5}}, {"test": np.array([1])}, {"best_epoch": 1})
    assert store.status(config_hash({"strategy": "sasrec", "dataset": "d", "protocol": "loo", "seed": 0})) == "running"
    store.finish(run, {"test": {"HR@5": 0.5}}, {"test": np.array([1])}, RunSummary(best_epoch=3, wall_seconds=2.0))
    row = store.runs(status="done").iloc[0]
    assert row.best_epoch == 3 and row.wall_seconds == 2.0 and pd.isna(row.asha_stopped)   # not a tune's trial


def _open_store_at_once(path: str, barrier, errors) -> None:
    barrier.wait()
    try:
        ResultStore(path).close()
    except Exception as err:  # noqa: BLE001  (reported to the test)
        errors.put(repr(err))


def test_processes_opening_one_fresh_store_together_all_get_it(tmp_path):
    """Sweep tasks on one node open one fresh scratch store at the same moment; SQLite refuses the switch to
    write-ahead logging at once (no busy wait) while another process creates the file, so each open retries
    it. Several processes released together onto a fresh file, many times: every open succeeds."""
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for trial in range(30):
        barrier = context.Barrier(6)
        workers = [context.Process(target=_open_store_at_once, args=(str(tmp_path / f"{trial}.db"), barrier, errors))
                   for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert [worker.exitcode for worker in workers] == [0] * 6
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []

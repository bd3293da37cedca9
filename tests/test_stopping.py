"""Early stopping: the default rule (``select`` only), the MMSR reference's rule under ``ratio-paper``
(any HR/MRR/NDCG @5/@20 improving, one-epoch lag) and the stop of a run whose loss diverged, on
hand-written histories and through ``train``."""
import random

import pytest
import torch

import fusionbench.train as T
from fusionbench.context import StrategyContext
from fusionbench.data.splits import make_split
from fusionbench.registry import STRATEGIES
from fusionbench.train import (
    REFERENCE_WATCHED,
    SELECTABLE,
    TrainOptions,
    diverged,
    improvements,
    stale_epochs,
    train,
)
from test_train_store import cyclic_data


def row(**values) -> dict[str, float]:
    """One epoch's metrics: every selectable metric at 0.1 unless given (``MRR_5=0.3`` -> ``MRR@5``)."""
    out = dict.fromkeys(SELECTABLE, 0.1)
    out.update({name.replace("_", "@"): value for name, value in values.items()})
    return out


def history_of(rows: list[dict]) -> list[dict]:
    return [{"epoch": i + 1, "loss": 1.0, "seconds": 0.0, "valid": valid} for i, valid in enumerate(rows)]


# NDCG@20 is best at epoch 1 and never beaten; MRR@5 keeps improving up to epoch 6, then nothing improves.
STALLED_NDCG = [row(NDCG_20=0.5, MRR_5=0.1 + 0.01 * min(e, 6)) for e in range(1, 11)]


def reference_counts(history: list[dict]) -> list[int]:
    """The MMSR reference's ``main.py`` loop, transcribed: ``bad_counter`` after every epoch."""
    best = dict.fromkeys(REFERENCE_WATCHED, 0)
    bad_counter, last_flag, counts = 0, 0, []
    for entry in history:
        current_flag = 0
        for name in REFERENCE_WATCHED:
            if entry["valid"][name] > best[name]:
                best[name], current_flag = entry["valid"][name], 1
        bad_counter = bad_counter + 1 if (last_flag == 0 and current_flag == 0) else 0
        last_flag = current_flag
        counts.append(bad_counter)
    return counts


def previous_counts(history: list[dict], select: str) -> list[int]:
    """``train``'s counter before the reference rule was added (``bad_epochs``), after every epoch."""
    best_value, bad_epochs, counts = -1.0, 0, []
    for entry in history:
        if entry["valid"][select] > best_value:
            best_value, bad_epochs = entry["valid"][select], 0
        else:
            bad_epochs += 1
        counts.append(bad_epochs)
    return counts


def random_history(rng: random.Random, epochs: int) -> list[dict]:
    """Coarse values (many ties) so that improving and stalled stretches both occur."""
    return history_of([{name: rng.choice([0.0, 0.1, 0.2, 0.3]) * rng.random() ** 3 for name in SELECTABLE}
                       for _ in range(epochs)])


def test_stalled_select_stops_the_default_run_but_not_the_leaky_one():
    history = history_of(STALLED_NDCG)
    assert improvements(history, "NDCG@20", leaky=False) == [True] + [False] * 9
    assert improvements(history, "NDCG@20", leaky=True) == [True] * 6 + [False] * 4
    counts = {leaky: [stale_epochs(history[:n], "NDCG@20", leaky) for n in range(1, 11)] for leaky in (False, True)}
    assert counts[False] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]       # patience 2: stops after epoch 3
    assert counts[True] == [0, 0, 0, 0, 0, 0, 0, 1, 2, 3]        # the lag: epoch 7 still counts 0


def test_leaky_rule_is_the_reference_loop_and_the_default_rule_is_unchanged():
    rng = random.Random(0)
    for _ in range(200):
        history = random_history(rng, rng.randint(1, 25))
        leaky = [stale_epochs(history[:n], "NDCG@20", leaky=True) for n in range(1, len(history) + 1)]
        assert leaky == reference_counts(history)
        for select in ("NDCG@20", "HR@10", "MRR@5"):
            default = [stale_epochs(history[:n], select, leaky=False) for n in range(1, len(history) + 1)]
            assert default == previous_counts(history, select)


def test_leaky_rule_watches_only_the_reference_metrics_and_starts_from_zero():
    assert set(REFERENCE_WATCHED) == {f"{m}@{k}" for m in ("HR", "MRR", "NDCG") for k in (5, 20)}
    zeros = dict.fromkeys(SELECTABLE, 0.0)
    at_10 = [zeros, {**zeros, "HR@10": 0.5}]                  # @10 is not in the reference's topk [5, 20]
    assert improvements(history_of(at_10), "HR@10", leaky=True) == [False, False]
    assert improvements(history_of(at_10), "HR@10", leaky=False) == [True, True]
    assert stale_epochs(history_of([zeros]), "NDCG@20", leaky=True) == 1  # no earlier improvement to lag behind
    assert stale_epochs([], "NDCG@20", leaky=True) == stale_epochs([], "NDCG@20", leaky=False) == 0


@pytest.fixture
def scripted(monkeypatch):
    """Make ``train``'s per-epoch validation metrics the given rows, from row ``start`` on (the ranking
    itself still runs); calls after the last row (the final test summary) get all zeros."""
    def install(rows: list[dict], start: int = 0):
        queue = list(rows[start:])
        monkeypatch.setattr(T, "summarize", lambda ranks: queue.pop(0) if queue else dict.fromkeys(SELECTABLE, 0.0))
    return install


def fit(protocol: str, epochs: int, checkpoint=None):
    data = cyclic_data(n_users=60)
    model = STRATEGIES.create("sasrec", StrategyContext(data.n_items, 10), dim=8, heads=1, dropout=0.1)
    opts = TrainOptions.build({"epochs": epochs, "patience": 2, "batch_size": 64})
    return train(model, data, make_split(data, protocol), opts, 0, 10, checkpoint=checkpoint, progress=False)


@pytest.mark.parametrize("protocol, epochs_run", [("loo", 3), ("ratio", 3), ("ratio-paper", 9)])
def test_train_stops_by_the_protocols_rule(scripted, protocol, epochs_run):
    scripted(STALLED_NDCG)
    res = fit(protocol, epochs=20)
    assert len(res.history) == epochs_run
    assert res.best_epoch == 1                                   # the restored state is still best NDCG@20
    if protocol == "ratio-paper":                                # each metric's maximum over the epochs run
        assert res.test == {name: max(r[name] for r in STALLED_NDCG[:epochs_run]) for name in SELECTABLE}
        assert res.test["MRR@5"] == pytest.approx(0.16)          # epoch 6's, which the NDCG@20 rule never runs


@pytest.mark.parametrize("stop_at", [3, 6, 7])                   # 7: the lag epoch right after the last improvement
def test_an_interrupted_leaky_run_resumes_to_the_same_stop(scripted, tmp_path, stop_at):
    scripted(STALLED_NDCG)
    full = fit("ratio-paper", epochs=20)
    ckpt = tmp_path / "run.pt"
    scripted(STALLED_NDCG)
    fit("ratio-paper", epochs=stop_at, checkpoint=ckpt)          # "interrupted" after stop_at epochs
    assert torch.load(ckpt, weights_only=False)["bad_epochs"] == reference_counts(history_of(STALLED_NDCG))[stop_at - 1]
    scripted(STALLED_NDCG, start=stop_at)
    resumed = fit("ratio-paper", epochs=20, checkpoint=ckpt)
    assert [h["epoch"] for h in resumed.history] == list(range(1, 10))
    assert (resumed.best_epoch, resumed.test) == (full.best_epoch, full.test)
    assert torch.equal(resumed.test_ranks, full.test_ranks)


def losses(*means: float) -> list[dict]:
    return [{"epoch": i + 1, "loss": mean} for i, mean in enumerate(means)]


def test_divergence_compares_the_last_epoch_mean_with_the_lowest_earlier_one():
    assert diverged(losses(9.0, 8.0, 80.5), 10) and not diverged(losses(9.0, 8.0, 80.0), 10)
    assert diverged(losses(658.6, 11024.7), 10)          # the paper sweep's NI(hohe) run, at its epoch 2
    assert not diverged(losses(9.0, 8.0, 1e6), 0)         # 0: never
    assert not diverged(losses(1e6), 10)                  # nothing earlier to compare with
    assert not diverged(losses(0.0, 5.0), 10) and not diverged(losses(-1.0, 5.0), 10)  # a floor <= 0 is not judged


@pytest.mark.parametrize("train_options, epochs_run",
                         [({}, 3), ({"diverge_factor": 100}, 6), ({"diverge_factor": 0}, 6)])
def test_a_run_whose_loss_runs_away_stops_and_keeps_its_best_validation_epoch(monkeypatch, train_options, epochs_run):
    """Every batch of epoch e reports the loss ``epoch_loss[e]``, 20 times epoch 2's from epoch 3 on; validation
    is best at epoch 2, and patience 5 alone would not stop the run within its 6 epochs. The default factor
    (10) stops it after epoch 3, 100 or 0 (never) let it run."""
    epoch_loss, valid = [2.0, 1.5, 30.0, 40.0, 50.0, 60.0], [0.2, 0.3, 0.01, 0.02, 0.03, 0.04]
    epoch = iter(range(len(valid) + 1))
    now = {"epoch": next(epoch)}

    def step(model, optimizer, batch, bf16, grad_clip=0.0):
        return epoch_loss[now["epoch"]]

    def summarize(ranks):                                    # called once per epoch (validation), then on test
        done = now["epoch"]
        now["epoch"] = next(epoch, done)
        return row(NDCG_20=valid[done] if done < len(valid) else 0.0)

    monkeypatch.setattr(T, "train_step", step)
    monkeypatch.setattr(T, "summarize", summarize)
    data = cyclic_data(n_users=60)
    model = STRATEGIES.create("sasrec", StrategyContext(data.n_items, 10), dim=8, heads=1, dropout=0.1)
    opts = TrainOptions.build({"epochs": 6, "patience": 5, "batch_size": 64, **train_options})
    res = train(model, data, make_split(data, "loo"), opts, 0, 10, progress=False)
    assert [h["loss"] for h in res.history] == epoch_loss[:epochs_run]
    assert res.best_epoch == 2

"""Shared fixtures of the benchmark suite: real Beauty data, default-configured models, typical batches.

Opt-in (``tox -e bench``, ``pytest tests/benchmarks -m benchmark --benchmark-only``); ``fusionbench bench
check`` runs the same cases with fewer rounds (:data:`fusionbench.devtools.bench.QUICK_ENV`). Everything a case
needs is built once per session and outside the timed region. See docs/performance.md.
"""
import os
import time
from dataclasses import dataclass

import pytest
import torch

from aggregators.base import FIRST_MODALITY_NODE_TYPE, n_relations_for
from fusionbench.context import AggregatorContext, SeqBatch
from fusionbench.data.datasets import load_dataset
from fusionbench.data.splits import make_split
from fusionbench.devtools.bench import QUICK_ENV, REFERENCE_MARK, quick_rounds
from fusionbench.registry import STRATEGIES
from fusionbench.runner import RunRequest, build_context, resolve
from fusionbench.train import first_epoch_batches
from strategies.msgraph import MSGraph, build_msgraph

QUICK = os.environ.get(QUICK_ENV) == "1"
SEED = 0


def pytest_configure(config):
    config.addinivalue_line("markers", f"{REFERENCE_MARK}: times reference code (a bare torch op, a test helper) "
                            "for comparison within one run; `fusionbench bench check` does not guard it")


CALIBRATION_AT = {"test_calibration[first]": 0, "test_calibration[last]": 2}


def pytest_collection_modifyitems(items):
    """Run the calibration case first and last (a stable sort keeps every other case's order)."""
    items.sort(key=lambda item: CALIBRATION_AT.get(item.name, 1))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record torch's version and intra-op threads, and the quick mode, with every JSON report."""
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["quick"] = QUICK


@pytest.fixture(autouse=True)
def _isolated_cache():
    """Overrides the unit tests' per-session feature cache: benchmarks read (and on the first run fill)
    the user's cache ($FUSIONBENCH_CACHE or ~/.cache/fusionbench), so Beauty's titles go through the
    text encoder once per machine (about 1.5 min on one core), not once per session."""


@pytest.fixture
def measure(benchmark):
    """``measure(fn, rounds=..., setup=None, args=())``: ``benchmark.pedantic`` after one warm-up round;
    under ``fusionbench bench`` the rounds are cut to :func:`fusionbench.devtools.bench.quick_rounds` of the
    warm-up's CPU time. ``setup`` runs untimed before every round."""

    def run(fn, *, rounds, setup=None, args=()):
        if setup is not None:
            setup()
        start = time.process_time()
        fn(*args)
        if QUICK:
            rounds = quick_rounds(rounds, time.process_time() - start)
        if setup is not None:
            return benchmark.pedantic(fn, setup=setup, rounds=rounds)
        return benchmark.pedantic(fn, args=args, rounds=rounds)

    return run


@pytest.fixture(scope="session")
def beauty():
    """Bundled Beauty (22,363 users, 12,101 items) and its ``loo`` split."""
    data = load_dataset("beauty")
    return data, make_split(data, "loo")


@pytest.fixture(scope="session")
def make_model(beauty):
    """``make_model(name)`` -> ``(model, config)``: the strategy exactly as ``fusionbench run --strategy
    NAME`` configures it on Beauty (default options and features, modality tables through the cache),
    initialised with seed 0."""
    data, split = beauty

    def make(name: str):
        config = resolve(RunRequest(strategy=name, seed=SEED))
        ctx = build_context(config, data, split)
        torch.manual_seed(SEED)
        return STRATEGIES.create(name, ctx, **config["strategy_options"]), config

    return make


@pytest.fixture(scope="session")
def typical_batch(beauty):
    """``typical_batch(model, config)``: the first-epoch training batch (seed 0, the trainer's own
    batching: causal rows, or prefix samples grouped by ``model.bucket_key``) whose width W is nearest
    the epoch's mean width, so its step costs about an average step. Chosen once per strategy."""
    data, split = beauty
    chosen = {}

    def pick(model, config) -> SeqBatch:
        name = config["strategy"]
        if name not in chosen:
            batches = first_epoch_batches(model, data, split, config)
            widths = torch.tensor([b.items.shape[1] for b in batches], dtype=torch.float)
            chosen[name] = batches[int((widths - widths.mean()).abs().argmin())]
        return chosen[name]

    return pick


@dataclass(frozen=True)
class GraphCase:
    """MSGraph inputs of one batch (``build_msgraph(items, codes, n_items, n_codes)``), the graph built
    from them, and the aggregator context MMSR uses for it."""

    items: torch.Tensor
    codes: dict
    n_items: int
    n_codes: dict
    graph: MSGraph
    agg_ctx: AggregatorContext


@pytest.fixture(scope="session")
def msgraph_case(make_model, typical_batch) -> GraphCase:
    """MMSR's typical Beauty training batch: real items, codes of the default ``attr`` + ``text`` tables."""
    model, config = make_model("mmsr")
    batch = typical_batch(model, config)
    tables = model.ctx.modalities
    codes, n_codes = {m: t.codes for m, t in tables.items()}, {m: t.n_codes for m, t in tables.items()}
    graph = build_msgraph(batch.items, codes, model.ctx.n_items, n_codes)
    agg_ctx = AggregatorContext(dim=config["strategy_options"]["dim"], n_relations=n_relations_for(len(codes)),
                                n_node_types=FIRST_MODALITY_NODE_TYPE + len(codes))
    return GraphCase(batch.items, codes, model.ctx.n_items, n_codes, graph, agg_ctx)

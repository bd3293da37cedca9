"""MMSR with ``backend=dgl`` equals the dense backend (eval mode), for every aggregator."""
import dataclasses

import pytest
import torch

pytest.importorskip("dgl", reason="DGL is not installed here; run the DGL tests with `tox -e dgl`")

from fusionbench.registry import AGGREGATORS, STRATEGIES  # noqa: E402
from strategy_fixtures import tiny_batch, tiny_context  # noqa: E402


@pytest.mark.parametrize("aggregator", AGGREGATORS.names())
def test_dgl_backend_matches_dense(aggregator):
    ctx = dataclasses.replace(tiny_context(), aggregator=aggregator)
    models = {}
    for backend in ("dense", "dgl"):
        torch.manual_seed(0)
        models[backend] = STRATEGIES.create("mmsr", ctx, dim=16, layers=2, backend=backend).eval()
    models["dgl"].load_state_dict(models["dense"].state_dict())
    batch = tiny_batch()
    torch.testing.assert_close(models["dgl"].score(batch), models["dense"].score(batch), rtol=1e-5, atol=1e-5)


def test_dgl_backend_trains():
    model = STRATEGIES.create("mmsr", tiny_context(), dim=16, backend="dgl")
    model.loss(tiny_batch()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

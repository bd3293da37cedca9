"""One optimiser step of each strategy on a typical Beauty training batch: ``fusionbench.train.train_step``
(loss, backward, Adam), the step ``fusionbench run`` takes.

Each model is configured as ``fusionbench run --strategy NAME`` would (default options, default
modality channels ``attr`` + ``text`` for the fusion strategies); the batch is the first-epoch batch of
mean width (``conftest.typical_batch``). MMSR's step includes building its MSGraphs; ``mmsr-bf16`` is
the same step as ``--set train.precision=bf16`` runs it (forward under bfloat16 autocast). The graph-CF
steps (``mgat``, ``mmgcn``) propagate the whole Beauty user–item graph; ``train_step_mgat_per_edge``
(reference) is MGAT's step with the former per-edge layer (``tests/mgat_reference.py``), to read the
ratio of the two within one run.
"""
import math

import pytest

from fusionbench.train import make_adam, train_step
from mgat_reference import gated_attention_per_edge
from strategies.mgat import GatedAttentionLayer

pytestmark = pytest.mark.benchmark

STRATEGIES = ["sasrec", "early", "late", "trans2d", "mmsr", "mgat", "mmgcn"]
CASES = [pytest.param(name, "fp32", id=name) for name in STRATEGIES] + [pytest.param("mmsr", "bf16", id="mmsr-bf16")]


@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize("name, precision", CASES)
def test_train_step(benchmark, measure, name, precision, make_model, typical_batch):
    model, config = make_model(name)
    batch = typical_batch(model, config)
    model.train()
    optimizer = make_adam(model.parameters(), config["train"]["lr"])  # as train() builds it
    loss = measure(train_step, args=(model, optimizer, batch, precision == "bf16"), rounds=10)
    assert math.isfinite(loss)
    benchmark.extra_info.update(
        rows=batch.size, width=batch.items.shape[1], causal=model.causal_training,
        parameters=sum(p.numel() for p in model.parameters()), dim=config["strategy_options"]["dim"],
        modalities=",".join(model.ctx.modalities), precision=precision,
    )


@pytest.mark.benchmark(group="train-step")
@pytest.mark.reference
def test_train_step_mgat_per_edge(benchmark, measure, make_model, typical_batch, monkeypatch):
    monkeypatch.setattr(GatedAttentionLayer, "forward", lambda self, x, dst, src, degree, e_id, pattern=None:
                        gated_attention_per_edge(self, x, dst, src, degree, e_id))
    model, config = make_model("mgat")
    batch = typical_batch(model, config)
    model.train()
    optimizer = make_adam(model.parameters(), config["train"]["lr"])
    loss = measure(train_step, args=(model, optimizer, batch, False), rounds=3)
    assert math.isfinite(loss)
    benchmark.extra_info.update(rows=batch.size, edges=int(model.dst.numel()), nodes=int(model.degree.numel()))

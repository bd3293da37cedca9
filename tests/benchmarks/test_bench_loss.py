"""The full-softmax training loss, forward and backward, for a Beauty SASRec batch of long sequences.

``full-softmax-loss`` compares ``fusionbench.full_softmax.cross_entropy`` (score blocks that stay in cache,
recomputed in the backward pass) with ``F.cross_entropy`` over the whole ``[S, n]`` product (reference)
where the blocked form applies: S target positions whose scores take twice ``WHOLE_BYTES`` (64 MiB; S =
1,386 against Beauty's 12,101 items, as in a batch of 128 sequences about 11 items long). Their ratio
within one run is the blocked form's gain (docs/performance.md).
"""
import pytest
import torch

from fusionbench.full_softmax import WHOLE_BYTES, cross_entropy
from fusionbench.full_softmax import whole_cross_entropy as whole

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def loss_inputs(make_model):
    """Random states ``[S, d]``, default SASRec's item table without the padding row ``[n, d]`` and random
    targets ``[S]`` (0..n-1), S = 2 ``WHOLE_BYTES`` of float32 scores over the n items."""
    model, config = make_model("sasrec")
    items = model.item_embeddings()[1:].detach().clone().requires_grad_()
    n_states = 2 * WHOLE_BYTES // (4 * len(items))
    g = torch.Generator().manual_seed(0)
    states = torch.randn(n_states, config["strategy_options"]["dim"], generator=g).requires_grad_()
    targets = torch.randint(0, len(items), (n_states,), generator=g)
    return states, items, targets


def step(loss_fn, states, items, targets):
    states.grad = items.grad = None
    loss = loss_fn(states, items, targets)
    loss.backward()
    return loss.detach()


@pytest.mark.benchmark(group="full-softmax-loss")
def test_full_softmax_loss_blocked(benchmark, measure, loss_inputs):
    loss = measure(step, args=(cross_entropy, *loss_inputs), rounds=10)
    torch.testing.assert_close(loss, step(whole, *loss_inputs))
    benchmark.extra_info.update(states=len(loss_inputs[0]), items=len(loss_inputs[1]))


@pytest.mark.reference
@pytest.mark.benchmark(group="full-softmax-loss")
def test_full_softmax_loss_whole(benchmark, measure, loss_inputs):
    loss = measure(step, args=(whole, *loss_inputs), rounds=10)
    assert torch.isfinite(loss)
    benchmark.extra_info.update(states=len(loss_inputs[0]), items=len(loss_inputs[1]))

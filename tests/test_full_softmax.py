"""The blocked full-softmax cross-entropy (fusionbench/full_softmax.py) against F.cross_entropy over the
whole product: value and gradients over block boundaries, float64 gradcheck, bf16 autocast, gradients
reaching the parameters behind the item table, and every strategy's loss unchanged by it; the channel form
(channel_cross_entropy) against its definition."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from fusionbench import bf16, full_softmax
from fusionbench.full_softmax import block_rows, cross_entropy, group_rows
from fusionbench.full_softmax import whole_cross_entropy as whole


def loss_and_grads(loss_fn, states, items, targets):
    states = states.detach().requires_grad_()
    items = items.detach().requires_grad_()
    loss = loss_fn(states, items, targets)
    loss.backward()
    return loss.detach(), states.grad, items.grad


@pytest.fixture
def three_rows_per_block(monkeypatch):
    """Blocks of 3 rows over 11 items, so a handful of states crosses several block boundaries."""
    monkeypatch.setattr(full_softmax, "WHOLE_BYTES", 0)
    monkeypatch.setattr(full_softmax, "BLOCK_BYTES", 3 * 4 * 11)
    assert block_rows(11) == 3


def test_scores_up_to_the_whole_bytes_go_through_the_whole_product(monkeypatch):
    states, items, targets = torch.randn(4, 3, requires_grad=True), torch.randn(11, 3), torch.tensor([0, 1, 2, 3])
    monkeypatch.setattr(full_softmax, "WHOLE_BYTES", 4 * 4 * 11)        # exactly these scores: whole
    assert "NllLoss" in cross_entropy(states, items, targets).grad_fn.name()
    monkeypatch.setattr(full_softmax, "WHOLE_BYTES", 4 * 4 * 11 - 1)    # one byte less: blocked
    assert "BlockedCrossEntropy" in cross_entropy(states, items, targets).grad_fn.name()


def test_block_rows_fit_the_byte_budget():
    assert block_rows(12101) == full_softmax.BLOCK_BYTES // (4 * 12101) == 64
    assert block_rows(10 ** 9) == 1
    assert group_rows(12101, torch.bfloat16) == full_softmax.GROUP_BYTES // (2 * 12101) == 693
    assert group_rows(10 ** 9, torch.bfloat16) == 1


@pytest.mark.parametrize("n_states", [1, 2, 3, 4, 7, 9])
def test_value_and_gradients_match_the_whole_product(three_rows_per_block, n_states):
    torch.manual_seed(n_states)
    states, items = torch.randn(n_states, 5) * 3, torch.randn(11, 5)
    targets = torch.randint(0, 11, (n_states,))
    got = loss_and_grads(cross_entropy, states, items, targets)
    want = loss_and_grads(whole, states, items, targets)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_gradcheck_in_float64(three_rows_per_block):
    torch.manual_seed(0)
    states = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    items = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 10, 3, 3, 7, 1, 0, 5])
    assert torch.autograd.gradcheck(lambda h, e: cross_entropy(h, e, targets), (states, items))


@pytest.mark.parametrize("products", ["native", "float32"])
@pytest.mark.parametrize("blocks_per_group", [1, 2, 5])
def test_under_bf16_autocast_as_the_whole_product_and_input_dtypes_kept(three_rows_per_block, monkeypatch,
                                                                        blocks_per_group, products):
    """bf16 products: the item gradient is summed in float32 over groups of blocks (10 states in blocks of 3:
    groups of 1, 2 or 5 blocks end inside the last group or with it); PyTorch's bf16 products, or formed in
    float32 with every operand widened once per block (fusionbench.bf16)."""
    if products == "float32":
        monkeypatch.setattr(bf16, "WIDEN_ONCE_FROM", 0)
        context = bf16.float32_products()
    else:
        context = contextlib.nullcontext()
    monkeypatch.setattr(full_softmax, "GROUP_BYTES", blocks_per_group * 3 * 2 * 11)
    assert full_softmax.group_rows(11, torch.bfloat16) == 3 * blocks_per_group
    torch.manual_seed(1)
    states = torch.randn(10, 6).to(torch.bfloat16)   # what a linear layer hands on under autocast
    items = torch.randn(11, 6)                        # a float32 table
    targets = torch.randint(0, 11, (10,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with context:
            got = loss_and_grads(cross_entropy, states, items, targets)
        want = loss_and_grads(whole, states, items, targets)
    assert got[0].dtype == want[0].dtype == torch.float32
    assert got[1].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=1e-3)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-3)


def test_gradients_reach_what_the_item_table_is_computed_from(three_rows_per_block):
    torch.manual_seed(2)
    table = torch.randn(12, 5, requires_grad=True)    # row 0 = padding, dropped by a slice as strategies do
    scale = torch.tensor(1.5, requires_grad=True)
    states, targets = torch.randn(7, 5), torch.randint(0, 11, (7,))
    grads = []
    for loss_fn in (cross_entropy, whole):
        table.grad = scale.grad = None
        loss_fn(states, (table * scale)[1:], targets).backward()
        grads.append((table.grad.clone(), scale.grad.clone()))
    (got_table, got_scale), (want_table, want_scale) = grads
    torch.testing.assert_close(got_table, want_table)
    torch.testing.assert_close(got_scale, want_scale)
    assert torch.all(got_table[0] == 0)


def test_only_the_gradients_asked_for(three_rows_per_block):
    states = torch.randn(4, 3, requires_grad=True)
    items = torch.randn(11, 3)                        # frozen: no gradient formed for it
    cross_entropy(states, items, torch.tensor([0, 1, 2, 10])).backward()
    assert states.grad is not None and items.grad is None


def test_an_out_of_range_target_is_an_error(three_rows_per_block):
    with pytest.raises(RuntimeError, match="out of bounds"):
        cross_entropy(torch.randn(2, 3), torch.randn(11, 3), torch.tensor([0, 11]))


# ---- channel_cross_entropy: C channels' products fused by per-row weights ------------------------------

def channel_definition(states, items, targets, weights, beta):
    """CE of the weighted channel scores summed, + beta x each channel's CE, over whole products."""
    scores = torch.einsum("scd,ncd->csn", states, items)                     # [C, S, n]
    fused = (weights.T[:, :, None] * scores).sum(0)
    return F.cross_entropy(fused, targets) + beta * sum(F.cross_entropy(z, targets) for z in scores)


def channel_loss_and_grads(loss_fn, states, items, targets, weights, beta):
    leaves = [x.detach().requires_grad_() for x in (states, items, weights)]
    loss = loss_fn(leaves[0], leaves[1], targets, leaves[2], beta)
    loss.backward()
    return [loss.detach(), *(x.grad for x in leaves)]


@pytest.mark.parametrize("n_channels", [1, 2, 3])
@pytest.mark.parametrize("n_states", [1, 4, 7])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_channel_loss_and_gradients_match_the_whole_products(three_rows_per_block, n_channels, n_states, beta):
    torch.manual_seed(10 * n_channels + n_states)
    states, items = torch.randn(n_states, n_channels, 5) * 2, torch.randn(11, n_channels, 5)
    weights = torch.rand(n_states, n_channels)
    targets = torch.randint(0, 11, (n_states,))
    got = channel_loss_and_grads(full_softmax.channel_cross_entropy, states, items, targets, weights, beta)
    want = channel_loss_and_grads(channel_definition, states, items, targets, weights, beta)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    by_products = channel_loss_and_grads(full_softmax.whole_channel_cross_entropy, states, items, targets, weights,
                                         beta)
    for g, w in zip(by_products, want):                # the form used on small scores: one product per loss
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_channel_gradcheck_in_float64(three_rows_per_block):
    torch.manual_seed(3)
    states = torch.randn(7, 2, 4, dtype=torch.float64, requires_grad=True)
    items = torch.randn(11, 2, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(7, 2, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 10, 3, 3, 7, 1, 0])
    assert torch.autograd.gradcheck(
        lambda h, e, w: full_softmax.channel_cross_entropy(h, e, targets, w, 0.25), (states, items, weights))


def test_the_channel_loss_is_blocked_only_on_large_cpu_scores_outside_autocast(monkeypatch):
    states, items, targets = torch.randn(4, 2, 3, requires_grad=True), torch.randn(11, 2, 3), torch.arange(4)
    weights = torch.ones(4, 2)
    # the node's class name: torch 2.2 refuses grad_fn.name() on a custom Function whose output is gone
    name = lambda: type(full_softmax.channel_cross_entropy(states, items, targets, weights, 0.1).grad_fn).__name__  # noqa: E731
    monkeypatch.setattr(full_softmax, "WHOLE_BYTES", 4 * 4 * 11)         # these scores fit: one product per loss
    assert "BlockedChannel" not in name()
    monkeypatch.setattr(full_softmax, "WHOLE_BYTES", 4 * 4 * 11 - 1)
    assert "BlockedChannel" in name()
    with torch.autocast("cpu", dtype=torch.bfloat16):                    # low-precision products: per loss
        assert "BlockedChannel" not in name()


def test_the_channel_loss_forms_only_the_gradients_asked_for(three_rows_per_block):
    states = torch.randn(5, 2, 3, requires_grad=True)
    items, weights = torch.randn(11, 2, 3), torch.ones(5, 2)              # frozen items, fixed weights
    full_softmax.channel_cross_entropy(states, items, torch.tensor([0, 1, 2, 10, 4]), weights, 0.1).backward()
    assert states.grad is not None and items.grad is None and weights.grad is None

"""The blocked full-softmax cross-entropy (fusionbench/full_softmax.py) against F.cross_entropy over the
whole product: value and gradients over block boundaries, float64 gradcheck, bf16 autocast, gradients
reaching the parameters behind the item table, and every strategy's loss unchanged by it."""
import contextlib

import pytest
import torch

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

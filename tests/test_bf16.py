"""bfloat16 products formed in float32 (`fusionbench.bf16`): the same definition as PyTorch's (bfloat16
operands, a float32 sum, a bfloat16 result) in values and gradients, other dtypes untouched, PyTorch's
kernels back after the block, the per-process choice, and a bf16 training step under each choice."""
import pytest
import torch
import torch.nn.functional as F

from fusionbench import bf16
from fusionbench.bf16 import bf16_products, float32_products, products
from fusionbench.errors import UserInputError

BF16 = torch.bfloat16


def operands(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(33, 70, generator=g), "b": torch.randn(70, 129, generator=g),
        "c": torch.randn(129, generator=g), "x": torch.randn(3, 17, 70, generator=g),
        "y": torch.randn(3, 70, 21, generator=g), "z": torch.randn(3, 17, 21, generator=g),
    }


def defined(name, t):
    """The definition, written out: bfloat16 operands widened to float32, one float32 product, rounded."""
    w = {k: v.to(BF16).float() for k, v in t.items()}
    out = {"mm": lambda: w["a"] @ w["b"], "bmm": lambda: torch.bmm(w["x"], w["y"]),
           "addmm": lambda: torch.addmm(w["c"], w["a"], w["b"], beta=0.5, alpha=2.0),
           "baddbmm": lambda: torch.baddbmm(w["z"], w["x"], w["y"], beta=0.5, alpha=2.0)}[name]()
    return out.to(BF16)


def called(name, t):
    v = {k: x.to(BF16) for k, x in t.items()}
    return {"mm": lambda: torch.mm(v["a"], v["b"]), "bmm": lambda: torch.bmm(v["x"], v["y"]),
            "addmm": lambda: torch.addmm(v["c"], v["a"], v["b"], beta=0.5, alpha=2.0),
            "baddbmm": lambda: torch.baddbmm(v["z"], v["x"], v["y"], beta=0.5, alpha=2.0)}[name]()


@pytest.mark.parametrize("name", sorted(bf16.KERNELS))
def test_a_bfloat16_product_is_the_float32_product_of_its_operands_rounded(name):
    t = operands()
    with float32_products():
        got = called(name, t)
    assert got.dtype == BF16 and torch.equal(got, defined(name, t))
    native = called(name, t)                                          # PyTorch's kernel: the same up to summation order
    assert native.dtype == BF16
    torch.testing.assert_close(got.float(), native.float(), rtol=2 ** -7, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_other_dtypes_go_to_pytorchs_kernels_unchanged(dtype):
    t = {k: v.to(dtype) for k, v in operands(1).items()}
    expected = [t["a"] @ t["b"], torch.bmm(t["x"], t["y"]), torch.addmm(t["c"], t["a"], t["b"], beta=0.5),
                torch.baddbmm(t["z"], t["x"], t["y"], alpha=2.0), F.linear(t["x"], t["b"].T, t["c"])]
    with float32_products():
        got = [t["a"] @ t["b"], torch.bmm(t["x"], t["y"]), torch.addmm(t["c"], t["a"], t["b"], beta=0.5),
               torch.baddbmm(t["z"], t["x"], t["y"], alpha=2.0), F.linear(t["x"], t["b"].T, t["c"])]
        with pytest.raises(RuntimeError):                              # mixed dtypes stay an error
            torch.mm(t["a"], t["b"].to(BF16))
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == dtype and torch.equal(g, e)


def test_autocast_gradients_are_those_of_the_definition(monkeypatch):
    """A bf16 autocast forward (linear, einsum, matmul) and its backward: the kernels form the backward's
    products too, and the loss and gradients are the native ones up to summation order."""
    t = operands(2)
    calls = []
    for name, kernel in list(bf16.KERNELS.items()):
        def recording(*args, _name=name, _kernel=kernel, **kwargs):
            calls.append(_name)
            return _kernel(*args, **kwargs)
        monkeypatch.setitem(bf16.KERNELS, name, recording)

    def step():
        leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
        with torch.autocast("cpu", dtype=BF16):
            h = torch.tanh(F.linear(leaves["a"], leaves["b"].T, leaves["c"]))     # [33, 129]
            s = torch.einsum("bij,bjk->bik", leaves["x"], leaves["y"]) @ leaves["b"][:21]   # [3, 17, 129]
        loss = h.float().pow(2).mean() + s.float().pow(2).mean()
        forward = len(calls)
        loss.backward()
        return loss.detach(), {k: v.grad for k, v in leaves.items() if v.grad is not None}, forward

    native_loss, native, _ = step()
    assert calls == []
    with float32_products():
        loss, grads, forward = step()
    assert forward >= 3 and len(calls) >= 2 * forward                  # the backward forms products too
    torch.testing.assert_close(loss, native_loss, rtol=1e-2, atol=0)
    assert native.keys() == grads.keys() == {"a", "b", "c", "x", "y"}
    for k in native:
        torch.testing.assert_close(grads[k], native[k], rtol=2e-2, atol=1e-3 * native[k].abs().max().item())


def test_pytorchs_kernels_are_back_after_the_block(monkeypatch):
    seen = []

    def counting(a, b):
        seen.append(1)
        return torch.ops.aten.mm.out(a, b, out=torch.empty(0))

    monkeypatch.setitem(bf16.KERNELS, "mm", counting)
    a, b = torch.randn(4, 5), torch.randn(5, 3)
    with float32_products():
        torch.mm(a, b)
    assert seen == [1]
    torch.mm(a, b)
    with pytest.raises(ZeroDivisionError):
        with float32_products():
            raise ZeroDivisionError                                    # an error inside still restores them
    torch.mm(a, b)
    assert seen == [1]


@pytest.mark.parametrize("value, expected", [("native", "native"), ("float32", "float32"), (" Float32 ", "float32")])
def test_the_environment_names_the_choice(monkeypatch, value, expected):
    monkeypatch.setenv("FUSIONBENCH_BF16_PRODUCTS", value)
    bf16_products.cache_clear()
    try:
        assert bf16_products() == expected
    finally:
        bf16_products.cache_clear()


def test_a_bad_choice_names_the_variable(monkeypatch):
    monkeypatch.setenv("FUSIONBENCH_BF16_PRODUCTS", "fp16")
    bf16_products.cache_clear()
    try:
        with pytest.raises(UserInputError, match="FUSIONBENCH_BF16_PRODUCTS must be native, float32 or auto"):
            bf16_products()
    finally:
        bf16_products.cache_clear()


def test_auto_takes_float32_only_where_it_is_clearly_faster(monkeypatch):
    """The choice is a ratio measured in one process: float32 when its time is under FLOAT32_IF_BELOW of
    the native kernel's, whichever way this machine goes."""
    monkeypatch.setenv("FUSIONBENCH_BF16_PRODUCTS", "auto")
    for native_s, float32_s, expected in ((1.0, 0.5, "float32"), (1.0, 0.9, "native"), (1.0, 1.5, "native")):
        clock = iter([0.0, native_s] * 5 + [0.0, float32_s] * 5)
        monkeypatch.setattr(bf16.time, "perf_counter", lambda: next(clock))
        bf16_products.cache_clear()
        try:
            assert bf16_products() == expected
        finally:
            bf16_products.cache_clear()


def test_products_applies_to_bf16_on_the_cpu_only(monkeypatch):
    monkeypatch.setenv("FUSIONBENCH_BF16_PRODUCTS", "float32")
    bf16_products.cache_clear()
    try:
        assert products(False, torch.device("cpu")).__class__.__name__ == "nullcontext"
        assert products(True, torch.device("meta")).__class__.__name__ == "nullcontext"
        assert products(True, torch.device("cpu")).__class__.__name__ != "nullcontext"
        monkeypatch.setenv("FUSIONBENCH_BF16_PRODUCTS", "native")
        bf16_products.cache_clear()
        assert products(True, torch.device("cpu")).__class__.__name__ == "nullcontext"
    finally:
        bf16_products.cache_clear()


def test_a_bf16_training_step_under_each_choice(monkeypatch):
    """The trainer's own step (train.train_step) under bf16 on a SASRec^F of the tiny context: under
    either way of forming the products a finite loss that goes down over five steps on one batch, and the
    two ways' losses agree to bfloat16 precision."""
    from fusionbench.registry import STRATEGIES
    from fusionbench.train import make_adam, train_step
    from strategy_fixtures import tiny_batch, tiny_context

    losses = {}
    for choice in ("native", "float32"):
        monkeypatch.setenv("FUSIONBENCH_BF16_PRODUCTS", choice)
        bf16_products.cache_clear()
        try:
            torch.manual_seed(0)
            model = STRATEGIES.create("sasrecf", tiny_context())
            optimizer = make_adam(model.parameters(), 1e-2, 0.0)
            losses[choice] = [train_step(model, optimizer, tiny_batch(), True) for _ in range(5)]
        finally:
            bf16_products.cache_clear()
    for run in losses.values():
        assert all(torch.isfinite(torch.tensor(run))) and run[-1] < run[0]
    torch.testing.assert_close(torch.tensor(losses["float32"]), torch.tensor(losses["native"]), rtol=2e-2, atol=0)


def test_a_large_operand_is_widened_once_per_block_while_unchanged(monkeypatch):
    monkeypatch.setattr(bf16, "WIDEN_ONCE_FROM", 100)
    large, small = torch.randn(20, 10).to(BF16), torch.randn(3, 3).to(BF16)
    assert bf16._wide(large) is not bf16._wide(large)                  # outside a block: nothing kept
    with float32_products():
        first = bf16._wide(large)
        assert bf16._wide(large) is first and torch.equal(first, large.float())
        assert bf16._wide(large.T) is bf16._wide(large.T) and torch.equal(bf16._wide(large.T), large.T.float())
        assert bf16._wide(small) is not bf16._wide(small)
        large.mul_(2)                                                     # changed in place: widened again
        again = bf16._wide(large)
        assert again is not first and torch.equal(again, large.float())
        b = torch.randn(10, 4).to(BF16)
        assert torch.equal(torch.mm(large, b), (large.float() @ b.float()).to(BF16))
    assert bf16._widened is None

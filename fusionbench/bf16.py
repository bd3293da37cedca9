r"""bfloat16 matrix products on CPUs without a bfloat16 product unit: the same numbers, from float32 products.

``train.precision=bf16`` trains under bfloat16 autocast: matrix products take bfloat16 operands and give
a bfloat16 result, accumulated in float32,

.. math:: C = \mathrm{bf16}\Big(\sum_k A_{ik} B_{kj}\Big),\qquad A, B \text{ bfloat16},\ \text{the sum in float32},

and likewise their gradients (the backward products of bfloat16 operands). A CPU with bfloat16
instructions (AVX512-BF16, AMX) forms them natively, at about half the time of a float32 product. Without
them PyTorch's bfloat16 product is an emulation several times *slower* than float32 (one thread, a
``[128, 128] x [128, 12102]`` product, the full-softmax scores of a Beauty step: 45 ms against 15 ms on an
Intel Xeon with AVX-512 but no BF16), and an MMSR or DIF-SR step under bf16 took 2.2x and 2.8x its float32
time there.

Every bfloat16 value is a float32 value, so the product above can be formed exactly as its definition
says: widen the operands to float32 (exact), multiply in float32, round the result to bfloat16. That is the
same arithmetic, in another order of summation (results differ from the native kernel's in the last bit
of a few entries, as two float32 products of different blocking do). Within :func:`float32_products`
(which :func:`products` enters around a bf16 training step where that is the faster way) the CPU
kernels of ``mm``, ``bmm``, ``addmm`` and ``baddbmm`` (those that ``matmul``, ``linear`` and ``einsum``
reach) are replaced for the block by ones that do so for bfloat16 operands and call PyTorch's own
``out=`` kernels otherwise. The replacement sits below autograd, so the backward products are formed the
same way. A large operand (:data:`WIDEN_ONCE_FROM`) is widened once per block while it is unchanged.

Which way this process goes is decided once (:func:`bf16_products`): ``FUSIONBENCH_BF16_PRODUCTS`` names
it (``native`` or ``float32``), or ``auto`` (the default) times both on one thread and takes float32 only
where it is clearly faster (under :data:`FLOAT32_IF_BELOW` of the native time). Every stored run records
the choice (``versions.bf16_products``).
"""
from __future__ import annotations

import contextlib
import functools
import time
import warnings
from typing import Callable, Iterator

import torch
from torch import Tensor

from fusionbench.options import environment_choice

BF16_PRODUCTS = ("native", "float32")
FLOAT32_IF_BELOW = 0.8
"""The float32 route replaces the native kernel only below this fraction of its time (a margin against noise)."""

BF16 = torch.bfloat16


def _bf16(*tensors: Tensor) -> bool:
    return all(t.dtype == BF16 for t in tensors)


WIDEN_ONCE_FROM = 1 << 20
"""Operands of at least this many elements are widened once per :func:`float32_products` block: an item
table met by every block of a blocked full-softmax loss (``fusionbench.full_softmax``) is widened once,
not once per 64 rows."""
_widened: dict | None = None
"""Within :func:`float32_products`: (storage address, offset, shape, strides) -> (storage, version, widened).
The entry holds the storage, so no other tensor can take its address while the block lasts."""


def _wide(t: Tensor) -> Tensor:
    """``t`` as float32 (exact for bfloat16); a large operand widened once per block while it is unchanged."""
    if _widened is None or t.numel() < WIDEN_ONCE_FROM:
        return t.float()
    storage = t.untyped_storage()
    key = (storage.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
    held = _widened.get(key)
    if held is not None and held[1] == t._version:
        return held[2]
    wide = t.float()
    _widened[key] = (storage, t._version, wide)
    return wide


def _empty(like: Tensor) -> Tensor:
    return torch.empty(0, dtype=like.dtype, device=like.device)


def float32_kernel(out_op) -> Callable[..., Tensor]:
    """The replacement kernel of one product, from its ``out=`` overload (``torch.ops.aten.mm.out``): with
    every tensor operand bfloat16, the operands widened (:func:`_wide`), the float32 product, the result
    rounded to bfloat16; otherwise PyTorch's own kernel, through that overload."""
    def kernel(*tensors: Tensor, **scalars) -> Tensor:
        if _bf16(*tensors):
            return out_op(*map(_wide, tensors), **scalars, out=torch.empty(0)).to(BF16)
        return out_op(*tensors, **scalars, out=_empty(tensors[0]))
    return kernel


KERNELS = {name: float32_kernel(getattr(torch.ops.aten, name).out) for name in ("mm", "bmm", "addmm", "baddbmm")}
"""The CPU kernels :func:`float32_products` puts in place (aten operator -> replacement)."""


@contextlib.contextmanager
def float32_products() -> Iterator[None]:
    """Within the block, CPU products of bfloat16 operands are formed in float32 and rounded (the module's
    docstring); other dtypes and devices are untouched. PyTorch's kernels are back when the block ends."""
    global _widened
    library = torch.library.Library("aten", "IMPL")
    outer, _widened = _widened, {}
    try:
        with warnings.catch_warnings():   # "overriding a previously registered kernel": that is the point
            warnings.simplefilter("ignore", UserWarning)
            for name, kernel in KERNELS.items():
                library.impl(name, kernel, "CPU")
        yield
    finally:
        library._destroy()
        _widened = outer


@functools.cache
def bf16_products() -> str:
    """How this process forms CPU products of bfloat16 operands: one of :data:`BF16_PRODUCTS`, decided once.

    ``FUSIONBENCH_BF16_PRODUCTS`` names it, or ``auto`` (the default) times a ``[128, 128] x [128, 4096]``
    bfloat16 product both ways on one thread (fastest of 5) and takes ``float32`` below
    :data:`FLOAT32_IF_BELOW` of the native time.
    """
    chosen = environment_choice("FUSIONBENCH_BF16_PRODUCTS", BF16_PRODUCTS)
    if chosen != "auto":
        return chosen
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(128, 128, generator=generator).to(BF16)
    b = torch.randn(128, 4096, generator=generator).to(BF16)

    def fastest() -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        return best

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        native = fastest()
        with float32_products():
            widened = fastest()
    finally:
        torch.set_num_threads(threads)
    return "float32" if widened < FLOAT32_IF_BELOW * native else "native"


def products(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a bf16 training step runs in: :func:`float32_products` where bf16 is ``enabled`` on the
    CPU and this process forms bfloat16 products in float32 (:func:`bf16_products`), else nothing."""
    if enabled and device.type == "cpu" and bf16_products() == "float32":
        return float32_products()
    return contextlib.nullcontext()

"""fusionbench.dropout: the distribution of PyTorch's inverted dropout, its gradient, determinism, attention
with dropout on its probabilities, under every mask draw; the words draw's bits; the measured choice of draw
(a ratio within one run), and the setting that overrides it."""
import math
import time

import pytest
import torch
import torch.nn.functional as F

from fusionbench.dropout import (
    MASK_DRAWS,
    WORD_LEVELS,
    Dropout,
    attend,
    attention,
    dropout,
    fixed_mask_draw,
    mask_draw,
    random_words,
    word_threshold,
    words_kept,
)
from fusionbench.errors import UserInputError


@pytest.fixture(autouse=True, params=MASK_DRAWS)
def draw(request, monkeypatch):
    """Every test under every mask draw (the choice is cached per process: cleared before and after)."""
    monkeypatch.setenv("FUSIONBENCH_DROPOUT_MASK", request.param)
    mask_draw.cache_clear()
    yield request.param
    mask_draw.cache_clear()


def test_identity_when_not_training_or_rate_zero():
    x = torch.randn(4, 5)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    module = Dropout(0.3).eval()
    assert module(x) is x
    assert "p=0.3" in repr(module)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_elements_are_scaled_and_the_keep_rate_is_binomial(p):
    torch.manual_seed(0)
    x = torch.rand(400_000) + 0.5                      # no zeros, so a zero output means dropped
    y = dropout(x, p)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    n = x.numel()
    sd = (n * p * (1 - p)) ** 0.5                      # binomial standard deviation of the kept count
    assert abs(kept.sum().item() - n * (1 - p)) < 5 * sd + n / WORD_LEVELS    # the words' grid: |bias| < 2^-16
    # the mean is preserved: E[Drop(x)] = x
    assert abs(y.mean().item() - x.mean().item()) < 6 * (x.pow(2).mean().item() * p / (1 - p) / n) ** 0.5


def test_gradient_is_the_scaled_mask():
    torch.manual_seed(1)
    x = torch.rand(64, 32, requires_grad=True)
    y = dropout(x, 0.25)
    y.sum().backward()
    expected = (y.detach() != 0).float() / 0.75
    torch.testing.assert_close(x.grad, expected)


def test_same_seed_same_mask_and_rate_one_drops_everything():
    x = torch.randn(8, 16)
    torch.manual_seed(3)
    a = dropout(x, 0.4)
    torch.manual_seed(3)
    b = dropout(x, 0.4)
    assert torch.equal(a, b)
    assert torch.count_nonzero(dropout(x, 1.0)) == 0
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)


def test_bf16_input_keeps_its_dtype():
    x = torch.randn(32, 8, dtype=torch.bfloat16)
    assert dropout(x, 0.5).dtype == torch.bfloat16


def _qkv_allowed(b=3, h=2, length=6, dh=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, length, dh, generator=g) for _ in range(3))
    lengths = torch.tensor([6, 3, 1])
    mask = torch.arange(length)[None, :] >= (length - lengths)[:, None]                  # left padding
    allowed = (torch.ones(length, length, dtype=torch.bool).tril() & mask[:, None, :]) | torch.eye(length,
                                                                                                  dtype=torch.bool)
    return q, k, v, allowed[:, None]


def test_attention_without_dropout_is_sdpa():
    q, k, v, allowed = _qkv_allowed()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(attention(q, k, v, allowed, 0.5, training=False), expected)
    torch.testing.assert_close(attention(q, k, v, allowed, 0.0, training=True), expected)


def test_attention_dropout_drops_probabilities_not_values():
    """With dropout, the output is (dropped, rescaled softmax) @ v with the mask drawn from the global
    generator: reproduce it by hand from the same seed, and check that it is unbiased over many draws."""
    q, k, v, allowed = _qkv_allowed()
    torch.manual_seed(7)
    out = attention(q, k, v, allowed, 0.3, training=True)
    probs = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~allowed, float("-inf")).softmax(-1)
    torch.manual_seed(7)
    torch.testing.assert_close(out, dropout(probs, 0.3) @ v)
    clean = attention(q, k, v, allowed)
    draws = torch.stack([attention(q, k, v, allowed, 0.3, training=True) for _ in range(2000)])
    standard_error = draws.std(0) / 2000 ** 0.5                  # of each element's mean over the draws
    assert ((draws.mean(0) - clean).abs() <= 5 * standard_error + 1e-6).all()


def test_attention_gradients_flow_to_q_k_v():
    q, k, v, allowed = (t.requires_grad_() if t.dtype.is_floating_point else t for t in _qkv_allowed())
    attention(q, k, v, allowed, 0.2, training=True).square().sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def _seconds(fn, x, rounds=15):
    """Fastest of ``rounds`` forward + backward passes of ``fn(x, 0.5)`` on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            fn(x, 0.5).sum().backward()
            best = min(best, time.perf_counter() - start)
        return best
    finally:
        torch.set_num_threads(threads)


def test_the_measured_choice_is_the_faster_draw_here(monkeypatch):
    """The reason for the module: on this machine the draw ``auto`` picks is not slower than the fastest
    (beyond a 25 % noise margin) on a SASRec activation, as a ratio of minima within one run. Where
    ``bernoulli_`` has PyTorch's MKL path the choice is PyTorch's dropout; where it is a scalar loop the
    uniform draw is about four times faster, and the words faster again."""
    x = torch.randn(128, 50, 64, requires_grad=True)
    monkeypatch.delenv("FUSIONBENCH_DROPOUT_MASK", raising=False)
    mask_draw.cache_clear()
    chosen = mask_draw()
    timed = {}
    for draw in MASK_DRAWS:
        monkeypatch.setenv("FUSIONBENCH_DROPOUT_MASK", draw)
        mask_draw.cache_clear()
        timed[draw] = _seconds(dropout, x)
    assert timed[chosen] < 1.25 * min(timed.values()), f"auto chose {chosen}: {timed}"


def test_the_bernoulli_draw_is_pytorchs_dropout(monkeypatch):
    monkeypatch.setenv("FUSIONBENCH_DROPOUT_MASK", "bernoulli")
    mask_draw.cache_clear()
    x = torch.randn(16, 32)
    torch.manual_seed(5)
    ours = dropout(x, 0.3)
    torch.manual_seed(5)
    assert torch.equal(ours, F.dropout(x, 0.3, True))


def test_a_bad_mask_draw_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("FUSIONBENCH_DROPOUT_MASK", "fast")
    mask_draw.cache_clear()
    with pytest.raises(UserInputError, match="FUSIONBENCH_DROPOUT_MASK must be uniform, words, bernoulli or auto"):
        dropout(torch.ones(3), 0.5)


def test_stored_runs_record_the_draw(monkeypatch):
    from fusionbench.runner import versions

    monkeypatch.setenv("FUSIONBENCH_DROPOUT_MASK", "uniform")
    mask_draw.cache_clear()
    assert versions()["dropout_mask"] == "uniform"


def test_a_fixed_draw_overrides_the_choice_within_its_block(monkeypatch):
    monkeypatch.setenv("FUSIONBENCH_DROPOUT_MASK", "bernoulli")
    mask_draw.cache_clear()
    x = torch.randn(16, 32)
    torch.manual_seed(5)
    with fixed_mask_draw("uniform"):
        inside = dropout(x, 0.3)
    torch.manual_seed(5)
    torch.testing.assert_close(inside, x * (torch.rand(x.shape) >= 0.3) / 0.7)
    torch.manual_seed(5)
    after = dropout(x, 0.3)                                               # the setting again after it
    torch.manual_seed(5)
    assert torch.equal(after, F.dropout(x, 0.3, True))
    with pytest.raises(ValueError, match="draw must be one of"):
        with fixed_mask_draw("mkl"):
            pass


def test_every_bit_of_the_words_is_a_fair_coin():
    """The words come from full-range 64-bit draws: ``random_()`` without a range leaves the top bit of every
    int64 at 0, which would keep too few elements in every fourth word. Each of the 16 bits of each of the four
    word lanes is set in half the words (within 6 standard deviations), and a seeded draw repeats."""
    torch.manual_seed(0)
    words = random_words((1 << 18, 4)).to(torch.int32) & 0xFFFF           # [n, lane]: one int64 per row
    bits = (words[..., None] >> torch.arange(16)) & 1                      # [n, lane, bit]
    n = words.shape[0]
    assert ((bits.float().mean(0) - 0.5).abs() < 6 * 0.5 / n ** 0.5).all()
    torch.manual_seed(0)
    assert torch.equal(random_words((1 << 18, 4)).to(torch.int32) & 0xFFFF, words)
    assert random_words((3, 5)).shape == (3, 5)                             # a size that is not a multiple of 4


@pytest.mark.parametrize("p", [0.0, 2 ** -17, 0.3, 0.5, 1 - 2 ** -16])
def test_the_word_threshold_is_u_at_least_p_on_the_16_bit_grid(p):
    """Over all 2^16 signed words, [w >= t] is [(w + 2^15) / 2^16 >= p]: ceil(p 2^16) of them dropped."""
    every_word = torch.arange(-(WORD_LEVELS // 2), WORD_LEVELS // 2, dtype=torch.int16)
    kept = every_word >= word_threshold(p)
    u = (every_word.to(torch.int64) + WORD_LEVELS // 2).double() / WORD_LEVELS
    assert torch.equal(kept, u >= p)
    assert kept.sum().item() == WORD_LEVELS - math.ceil(p * WORD_LEVELS)
    assert words_kept((1000,), p).shape == (1000,)


def test_attend_is_attention_on_given_scores():
    """``attend(q k^T / sqrt(d_h), v, ...)`` is the attention of q, k, v (without dropout: exactly PyTorch's),
    and with dropout the same mask gives the same output from the same seed."""
    q, k, v, allowed = _qkv_allowed()
    scores = q @ k.transpose(-2, -1) / 2.0
    torch.testing.assert_close(attend(scores, v, allowed), F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    torch.manual_seed(4)
    ours = attend(scores, v, allowed, 0.3, training=True)
    torch.manual_seed(4)
    torch.testing.assert_close(ours, attention(q, k, v, allowed, 0.3, training=True))

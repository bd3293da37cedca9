"""The strategy contract (specs/architecture.md), run on every registered strategy."""
import copy

import pytest
import torch

import fusionbench.strategy
from fusionbench import full_softmax
from fusionbench.data.core import from_sequences
from fusionbench.data.splits import causal_batch, causal_rows, make_split, sample_batch
from fusionbench.registry import STRATEGIES
from strategies.cf_graph import GraphCFStrategy
from strategy_fixtures import N_ITEMS, tiny_batch, tiny_context, with_left_padding

NAMES = STRATEGIES.names()
FULL_SOFTMAX = [n for n in NAMES if not issubclass(STRATEGIES.get(n), GraphCFStrategy)]


def build(name, ctx=None, seed=0):
    torch.manual_seed(seed)
    return STRATEGIES.create(name, ctx or tiny_context())


def maybe_skip(model, check):
    if check in model.contract_skips:
        pytest.skip(f"{type(model).__name__}: {model.contract_skips[check]}")


@pytest.mark.parametrize("name", NAMES)
def test_shapes(name):
    model = build(name)
    model.eval()
    batch = tiny_batch()
    assert model.encode(batch).shape[0] == batch.size
    assert model.item_embeddings().shape[0] == N_ITEMS + 1
    scores = model.score(batch)
    assert scores.shape == (batch.size, N_ITEMS + 1)
    assert torch.isfinite(scores[:, 1:]).all()
    assert model.loss(batch).ndim == 0


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter(name):
    model = build(name)
    model.train()
    model.loss(tiny_batch()).backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_a_bf16_training_step_updates_every_parameter_in_float32(name):
    """``train.precision=bf16`` is an option of every strategy: the trainer's own step under bfloat16
    autocast gives a finite loss, a gradient for every parameter and an update that leaves the parameters
    float32."""
    from fusionbench.train import make_adam, train_step

    model = build(name)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = train_step(model, make_adam(model.parameters(), 1e-2, 0.0), tiny_batch(), True)
    assert torch.isfinite(torch.tensor(loss))
    params = dict(model.named_parameters())
    assert all(params[n].dtype == torch.float32 for n in before)
    unchanged = [n for n, p in before.items() if torch.equal(p, params[n])]
    assert not unchanged, f"not updated under bf16: {unchanged}"


@pytest.mark.parametrize("name", FULL_SOFTMAX)
def test_full_softmax_loss_and_gradients_as_over_the_whole_score_product(name, monkeypatch):
    """Every strategy but the graph-CF ones (BPR-style losses) trains on a full-softmax CE: it gets the same
    value and parameter gradients from the blocked forms (blocks of 2 rows here; the channel form for
    fused channel scores) as from F.cross_entropy over the whole ``[S, n]`` products."""
    monkeypatch.setattr(full_softmax, "WHOLE_BYTES", 0)
    monkeypatch.setattr(full_softmax, "BLOCK_BYTES", 2 * 4 * N_ITEMS)
    blocked, blocked_channels, calls = full_softmax.cross_entropy, full_softmax.channel_cross_entropy, []

    def counted(states, items, targets):
        calls.append(len(states))
        return blocked(states, items, targets)

    def counted_channels(states, items, targets, weights, beta):
        calls.append(len(states))
        return blocked_channels(states, items, targets, weights, beta)

    results = []
    for loss_fn, channels_fn in ((counted, counted_channels),
                                 (full_softmax.whole_cross_entropy, full_softmax.whole_channel_cross_entropy)):
        monkeypatch.setattr(full_softmax, "cross_entropy", loss_fn)
        monkeypatch.setattr(full_softmax, "channel_cross_entropy", channels_fn)
        model = build(name)
        model.eval()                                   # no dropout: the two passes see the same network
        loss = model.loss(tiny_batch())
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    assert calls and max(calls) > 2                    # the blocked form ran, over several blocks
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", NAMES)
def test_left_padding_invariance(name):
    model = build(name)
    maybe_skip(model, "left_padding")
    model.eval()
    batch = tiny_batch()
    with torch.no_grad():
        a = model.score(batch)
        b = model.score(with_left_padding(batch, 3))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output_and_reset_restores_init(name):
    m1 = build(name, seed=3)
    m2 = build(name, seed=3)
    m1.eval(), m2.eval()
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(m1.score(batch), m2.score(batch), rtol=0, atol=0)
    # reset_parameters under the same seed restores the initial state after training steps
    torch.manual_seed(7)
    m1.reset_parameters()
    initial = copy.deepcopy(m1.state_dict())
    opt = torch.optim.Adam(m1.parameters(), lr=0.1)
    m1.train()
    for _ in range(2):
        opt.zero_grad()
        m1.loss(batch).backward()
        opt.step()
    torch.manual_seed(7)
    m1.reset_parameters()
    for key, value in m1.state_dict().items():
        torch.testing.assert_close(value, initial[key], rtol=0, atol=0, msg=f"{name}: {key} not restored")


@pytest.mark.parametrize("name", NAMES)
def test_missing_modalities_give_finite_scores(name):
    ctx = tiny_context().with_all_modalities_missing()
    model = build(name, ctx)
    model.eval()
    scores = model.score(tiny_batch())
    assert torch.isfinite(scores[:, 1:]).all()
    model.train()
    assert torch.isfinite(model.loss(tiny_batch()))


@pytest.mark.parametrize("name", NAMES)
def test_id_only_context_works(name):
    model = build(name, tiny_context().with_modalities({}))
    model.eval()
    assert torch.isfinite(model.score(tiny_batch())[:, 1:]).all()


@pytest.mark.parametrize("name", [n for n in NAMES if STRATEGIES.get(n).causal_training])
def test_causal_loss_equals_mean_prefix_loss(name):
    """One causal pass scores the same (prefix, target) pairs as the all-prefixes samples."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 14, (12,), generator=g)
    seqs = [torch.randint(1, N_ITEMS + 1, (int(n),), generator=g).tolist() for n in lengths]
    data = from_sequences("t", seqs, N_ITEMS)
    split = make_split(data, "loo")
    model = build(name)
    model.eval()
    max_len = 6
    with torch.no_grad():
        causal = model.loss(causal_batch(data, causal_rows(split.train, max_len), max_len))
        prefix = model.loss(sample_batch(data, split.train, max_len))
    torch.testing.assert_close(causal, prefix, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if STRATEGIES.get(n).causal_training])
def test_a_causal_batch_in_length_groups_gives_the_loss_and_gradients_of_one_pass(name, monkeypatch):
    """Encoding a causal training batch in groups of similar length (fusionbench/length_groups.py) changes
    no state at a real position: the loss and every parameter gradient equal the one-pass ones (no
    dropout), and the groups were cut to different widths."""
    g = torch.Generator().manual_seed(3)
    lengths = [1, 2, 2, 3, 5, 8, 9, 13, 1, 4, 6, 11]
    data = from_sequences("t", [torch.randint(1, N_ITEMS + 1, (n + 2,), generator=g).tolist() for n in lengths],
                          N_ITEMS)
    max_len = 10
    batch = causal_batch(data, causal_rows(make_split(data, "loo").train, max_len), max_len)
    cut, widths = fusionbench.strategy.length_groups, []

    def recorded(whole):
        groups = cut(whole)
        widths.extend(group.items.shape[1] for group in groups)
        return groups

    monkeypatch.setattr(fusionbench.strategy, "length_groups", recorded)
    results = []
    for passes in ("grouped", "whole"):
        monkeypatch.setattr(fusionbench.strategy, "causal_pass", lambda passes=passes: passes)
        model = build(name)
        model.eval()
        loss = model.loss(batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    assert len(set(widths)) >= 3 and max(widths) == batch.items.shape[1]       # groups of different widths
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("init", ["scaled", "normal"])
def test_sasrec_item_bias_adds_beta_to_every_score_and_learns(init):
    """``item_bias``: the scores are the bias-free model's plus beta_v (same weights otherwise), the bias
    starts at zero and gets a gradient; left padding still changes nothing."""
    ctx = tiny_context()
    torch.manual_seed(0)
    plain = STRATEGIES.create("sasrec", ctx, init=init)
    torch.manual_seed(0)
    biased = STRATEGIES.create("sasrec", ctx, init=init, item_bias=True)
    assert torch.count_nonzero(biased.bias) == 0 and plain.bias is None
    biased.load_state_dict({**plain.state_dict(), "bias": torch.arange(ctx.n_items + 1, dtype=torch.float32)})
    plain.eval(), biased.eval()
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(biased.score(batch), plain.score(batch) + torch.arange(ctx.n_items + 1.0))
        torch.testing.assert_close(biased.score(batch), biased.score(with_left_padding(batch, 3)), rtol=1e-4,
                                   atol=1e-4)
    biased.train()
    biased.loss(batch).backward()
    assert biased.bias.grad is not None and biased.bias.grad[1:].abs().sum() > 0


@pytest.mark.parametrize("name, options", [("sasrec", dict(ffn_mult=4, dim=64)),
                                           ("difsr", dict(dim=64, heads=2, layers=2, attribute_dim=16))])
def test_post_norm_and_normal_init_keep_the_contract(name, options):
    """The RecBole layout of SASRec and DIF-SR's reference (``norm=post``, ``init=normal``): left padding
    changes nothing, a prefix inside a causal row is the prefix alone, every parameter learns, and the init
    is N(0, 0.02) without √d."""
    ctx = tiny_context()
    torch.manual_seed(0)
    model = STRATEGIES.create(name, ctx, norm="post", init="normal", **options)
    model.eval()
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.score(batch), model.score(with_left_padding(batch, 3)), rtol=1e-4, atol=1e-5)
        hidden = model.hidden(batch)
        prefix = copy.copy(batch)
        prefix.items = torch.cat([torch.zeros_like(batch.items[:, :1]), batch.items[:, :-1]], 1)
        torch.testing.assert_close(model.hidden(prefix)[:, -1], hidden[:, -2], rtol=1e-4, atol=1e-5)
    assert model.scale == 1.0 and model.encoder.post_norm
    table = model.item.weight[1:].detach()
    assert abs(float(table.std()) - 0.02) < 0.002 and float(model.item.weight[0].detach().abs().sum()) == 0.0
    model.train()
    model.loss(batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

"""Graph-CF baselines (specs/cf-baselines.md): the user id in batches, the user–item graph of a split
(no validation or test edge in the validation run's graph), negatives, layers against per-node loops on
a hand graph, and learning the synthetic testbed's collaborative signal better than popularity."""
import math

import pytest
import torch

from fusionbench.context import ModalityTable
from fusionbench.data.core import from_sequences
from fusionbench.data.splits import Samples, make_split, sample_batch
from fusionbench.data.synthetic import SyntheticOptions, generate
from fusionbench.registry import STRATEGIES
from fusionbench.runner import build_context
from fusionbench.train import TrainOptions, train
from strategies.cf_graph import InteractionGraph, sample_negatives

CF = ["pop", "lightgcn", "mmgcn", "mgat", "bm3"]
BARE = {"features": {}, "max_len": 8, "aggregator": None, "aggregator_options": {}}


def distinct_data(n_users=9, n_items=60, seed=0):
    """Sequences without repeated items, so any validation or test pair found in a graph is a leak."""
    g = torch.Generator().manual_seed(seed)
    seqs = [(torch.randperm(n_items, generator=g)[: int(n)] + 1).tolist()
            for n in torch.randint(3, 12, (n_users,), generator=g)]
    return from_sequences("distinct", seqs, n_items)


def pairs(graph: InteractionGraph) -> set[tuple[int, int]]:
    return set(zip(graph.user.tolist(), graph.item.tolist()))


def held_out(data, samples: Samples) -> set[tuple[int, int]]:
    items = data.flat[data.offsets[:-1][samples.user] + samples.pos]
    return set(zip(samples.user.tolist(), items.tolist()))


# ---- the batch carries the user ---------------------------------------------------------------------

def test_batches_from_samples_carry_the_user():
    data = distinct_data()
    split = make_split(data, "loo")
    batch = sample_batch(data, split.valid, 8)
    assert torch.equal(batch.user, split.valid.user)
    assert torch.equal(batch.to("cpu").user, batch.user)


# ---- the graph: training interactions only ----------------------------------------------------------

@pytest.mark.parametrize("protocol", ["loo", "ratio", "ratio-paper"])
@pytest.mark.parametrize("name", CF)
def test_the_validation_run_graph_has_no_validation_or_test_edge(name, protocol):
    """Built as a run builds it (runner.build_context -> strategy): every graph pair is an interaction
    before the user's first validation (or, under ratio-paper, test) target, and all of those are in it."""
    data = distinct_data()
    split = make_split(data, protocol)
    model = STRATEGIES.create(name, build_context(BARE, data, split))
    got = pairs(model.graph)
    leaked = got & (held_out(data, split.valid) | held_out(data, split.test))
    assert not leaked, f"{name}/{protocol}: validation/test pairs in the training graph: {sorted(leaked)}"
    user = torch.repeat_interleave(torch.arange(data.n_users), data.lengths)
    pos = torch.arange(data.n_interactions) - data.offsets[:-1][user]
    held_user = torch.cat([split.valid.user, split.test.user])
    held_pos = torch.cat([split.valid.pos, split.test.pos])
    first = torch.full((data.n_users,), 10**9).scatter_reduce(0, held_user, held_pos, reduce="amin")
    keep = pos < first[user]
    assert got == set(zip(user[keep].tolist(), data.flat[keep].tolist()))


@pytest.mark.parametrize("name", CF)
def test_the_test_ranking_graph_adds_the_validation_item_under_loo_only(name):
    data = distinct_data()
    for protocol in ("loo", "ratio"):
        split = make_split(data, protocol)
        model = STRATEGIES.create(name, build_context(BARE, data, split))
        test_view = model.for_test()
        added = pairs(test_view.graph) - pairs(model.graph)
        assert not pairs(test_view.graph) & held_out(data, split.test)
        assert added == (held_out(data, split.valid) if protocol == "loo" else set())
        assert pairs(model.graph) == pairs(InteractionGraph.from_history(build_context(BARE, data, split).history))
        # the view shares the weights, the original keeps its graph
        assert all(a is b for a, b in zip(model.parameters(), test_view.parameters()))


def test_adjacency_is_sparse_and_normalised_as_stated():
    data = from_sequences("hand", [[1, 2, 2], [2, 3]], 4)
    graph = InteractionGraph.from_history(data)
    assert pairs(graph) == {(0, 1), (0, 2), (1, 2), (1, 3)} and graph.item_count.tolist() == [0, 1, 3, 1, 0]
    n = graph.n_nodes  # 2 users + 5 item slots (padding item 0 and item 4 isolated)
    a = torch.zeros(n, n)
    for u, i in pairs(graph):
        a[u, 2 + i] = a[2 + i, u] = 1.0
    deg = a.sum(1).clamp(min=1)
    sym, mean = graph.adjacency("sym"), graph.adjacency("mean")
    assert sym.layout == torch.sparse_csr and mean.layout == torch.sparse_csr
    torch.testing.assert_close(sym.to_dense(), a / deg.sqrt()[:, None] / deg.sqrt()[None, :])
    torch.testing.assert_close(mean.to_dense(), a / deg[:, None])
    with pytest.raises(ValueError, match="unknown norm"):
        graph.adjacency("max")


def test_negatives_are_uniform_outside_the_users_items():
    data = from_sequences("hand", [[1, 2, 3, 4], [5]], 6)
    graph = InteractionGraph.from_history(data)
    torch.manual_seed(0)
    user = torch.tensor([0] * 3000 + [1] * 3000)
    neg = sample_negatives(graph.keys, user, 6)
    assert set(neg[:3000].tolist()) == {5, 6} and set(neg[3000:].tolist()) == {1, 2, 3, 4, 6}
    counts = torch.bincount(neg[3000:], minlength=7)[[1, 2, 3, 4, 6]].float()
    assert (counts / 3000 - 0.2).abs().max() < 0.03


def test_a_batch_without_users_is_a_clear_error():
    data = distinct_data()
    split = make_split(data, "loo")
    model = STRATEGIES.create("lightgcn", build_context(BARE, data, split))
    batch = sample_batch(data, split.valid, 8)
    batch.user = None
    with pytest.raises(ValueError, match="identifies users by SeqBatch.user"):
        model.encode(batch)


def test_cf_models_need_a_split():
    from fusionbench.context import StrategyContext
    from fusionbench.errors import UserInputError
    with pytest.raises(UserInputError, match="build the context with a split"):
        STRATEGIES.create("lightgcn", StrategyContext(10, 5))


# ---- layers against per-node loops on a hand graph --------------------------------------------------

def hand_graph():
    """3 users, 4 items: u0-{1,2}, u1-{2,3,4}, u2-{4}."""
    data = from_sequences("hand", [[1, 2], [2, 3, 4], [4]], 4)
    return InteractionGraph.from_history(data)


def neighbours(graph):
    nb = {v: [] for v in range(graph.n_nodes)}
    for u, i in pairs(graph):
        nb[u].append(graph.n_users + i)
        nb[graph.n_users + i].append(u)
    return nb


def test_lightgcn_propagation_equals_a_per_node_loop():
    from strategies.lightgcn import light_propagate
    graph = hand_graph()
    nb = neighbours(graph)
    torch.manual_seed(0)
    ego = torch.randn(graph.n_nodes, 5)
    x = [ego]
    for _ in range(2):
        prev = x[-1]
        x.append(torch.stack([sum((prev[w] / math.sqrt(len(nb[v]) * len(nb[w])) for w in nb[v]),
                                  torch.zeros(5)) for v in range(graph.n_nodes)]))
    expected = torch.stack(x).mean(0)
    torch.testing.assert_close(light_propagate(graph.adjacency("sym"), ego, 2), expected)


# ---- learning the synthetic testbed's collaborative signal -----------------------------------------

def synthetic_run(name, **options):
    """``modal`` preset: a user's items stay on one orbit of cells, so users who share items share
    the rest of them (collaborative signal; popularity is about uniform)."""
    data = generate(SyntheticOptions(n_users=600, n_codes=4, per_cell=4, preset="modal")).data
    split = make_split(data, "loo")
    ctx = build_context(dict(BARE, max_len=20), data, split)
    if STRATEGIES.get(name).uses_modalities:  # the testbed's dense channels as they are (no codes needed)
        ctx = ctx.with_modalities({m: ModalityTable(torch.from_numpy(ch.features), torch.from_numpy(ch.present),
                                                    torch.zeros(data.n_items + 1, 0, dtype=torch.long), 0)
                                   for m, ch in data.side.dense.items()})
    torch.manual_seed(0)
    model = STRATEGIES.create(name, ctx, **options)
    opts = TrainOptions.build({**STRATEGIES.get(name).train_defaults, "epochs": 6, "batch_size": 256,
                               "lr": 0.01, "patience": 3})
    return train(model, data, split, opts, 0, 20, progress=False)


@pytest.fixture(scope="module")
def pop_result():
    return synthetic_run("pop")


@pytest.mark.timeout(1200)       # seconds each here, minutes on torch 2.2's CPU kernels (tox -e dgl)
@pytest.mark.parametrize("name, options", [("lightgcn", {}), ("mmgcn", {}), ("mgat", {}), ("bm3", {}),
                                           ("mgat", {"layout": "reference", "layers": 1})],
                         ids=["lightgcn", "mmgcn", "mgat", "bm3", "mgat-reference"])
def test_each_cf_model_learns_the_collaborative_signal_better_than_popularity(name, options, pop_result):
    result = synthetic_run(name, **options)
    assert result.test["NDCG@20"] > 2 * pop_result.test["NDCG@20"], (result.test, pop_result.test)
    assert result.test["NDCG@20"] > 0.25


@pytest.mark.parametrize("in_dim", [5, 7])     # 7: the first layer of layout "reference"
def test_mmgcn_layer_equals_a_per_node_loop(in_dim):
    from strategies.mmgcn import MMGCNLayer
    graph = hand_graph()
    nb = neighbours(graph)
    torch.manual_seed(0)
    layer = MMGCNLayer(5, in_dim=in_dim)
    x, e_id = torch.randn(graph.n_nodes, in_dim), torch.randn(graph.n_nodes, 5)
    lrelu = torch.nn.functional.leaky_relu
    rows = []
    for v in range(graph.n_nodes):
        mean = sum((layer.w1(x[w]) for w in nb[v]), torch.zeros(in_dim)) / max(len(nb[v]), 1)
        h = lrelu(mean)
        own = lrelu(layer.w2(x[v])) + e_id[v]
        rows.append(lrelu(layer.w3(torch.cat([h, own]))))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, graph.adjacency("mean"), e_id), torch.stack(rows))


@pytest.mark.parametrize("in_dim, reference", [(5, False), (7, True)])  # (7, True): layout "reference"
def test_mgat_layer_equals_a_per_node_loop(in_dim, reference):
    from strategies.mgat import GatedAttentionLayer
    graph = hand_graph()
    nb = neighbours(graph)
    torch.manual_seed(0)
    layer = GatedAttentionLayer(5, in_dim=in_dim, reference=reference)
    if reference:                                # biases away from their zero start, so they are compared
        torch.nn.init.normal_(layer.w_g.bias)
        torch.nn.init.normal_(layer.w_l.bias)
    x, e_id = torch.randn(graph.n_nodes, in_dim), torch.randn(graph.n_nodes, 5)
    lrelu = torch.nn.functional.leaky_relu
    rows = []
    for v in range(graph.n_nodes):
        wv = layer.w(x[v])
        agg = torch.zeros(in_dim)
        if nb[v]:
            s = torch.stack([wv @ lrelu(layer.w(x[w])) for w in nb[v]])
            alpha = torch.softmax(s * torch.sigmoid(s / math.sqrt(len(nb[v]))), 0)
            agg = sum(a * layer.w(x[w]) for a, w in zip(alpha, nb[v]))
        h = (agg + layer.bias) / (agg + layer.bias).norm()
        message = layer.w_g.weight @ (lrelu(h) if reference else h)
        own = layer.w_l.weight @ x[v]
        if reference:
            message, own = message + layer.w_g.bias, own + layer.w_l.bias
        rows.append(lrelu(message + lrelu(own) + e_id[v]))
    dst, src = graph.edges()
    with torch.no_grad():
        torch.testing.assert_close(layer(x, dst, src, graph.degree(), e_id), torch.stack(rows))


def test_bm3_loss_equals_a_per_pair_loop_without_dropout():
    """With dropout 0, L = L_rec + c (L_align + L_mask) + λ reg, written out pair by pair."""
    data = from_sequences("hand", [[1, 2, 3, 4, 2, 1], [2, 3, 4, 1, 3], [4, 1, 3, 2, 4, 3]], 4)
    split = make_split(data, "loo")
    ctx = tiny_feature_context(build_context(BARE, data, split), 4)
    torch.manual_seed(0)
    model = STRATEGIES.create("bm3", ctx, dropout=0.0, layers=2)
    batch = sample_batch(data, split.train, 8)
    assert batch.size == 8
    h_u, h_i = model.graph_embeddings()
    p, cos = model.predictor, torch.nn.functional.cosine_similarity
    total = 0.0
    for u, i in zip(batch.user.tolist(), batch.target.tolist()):
        term = (1 - cos(p(h_u[u]), h_i[i], dim=0)) + (1 - cos(p(h_i[i]), h_u[u], dim=0))
        for ch in model.channels:
            t = ch.lookup(torch.tensor(i))
            term = term + 2.0 * ((1 - cos(p(t), h_i[i], dim=0)) + (1 - cos(p(t), t, dim=0)))
        total = total + term / batch.size
    expected = total + 0.1 * (h_u.norm() + h_i.norm()) / h_i.shape[0]
    torch.testing.assert_close(model.loss(batch), expected)


def tiny_feature_context(ctx, n_items):
    g = torch.Generator().manual_seed(0)
    present = torch.tensor([False] + [True] * (n_items - 1) + [False])
    table = ModalityTable(torch.randn(n_items + 1, 3, generator=g) * present[:, None], present,
                          torch.zeros(n_items + 1, 0, dtype=torch.long), 0)
    return ctx.with_modalities({"image": table, "text": table})


def test_evaluation_never_reads_a_stale_propagation():
    """The propagation cached for one evaluation is dropped by the next train()/eval(), so validation
    after an optimizer step (torch's foreach Adam bumps no version counter) sees the new weights."""
    from fusionbench.evaluate import rank_samples
    from fusionbench.train import make_adam, train_step
    data = distinct_data(n_users=20)
    split = make_split(data, "loo")
    torch.manual_seed(0)
    model = STRATEGIES.create("lightgcn", build_context(BARE, data, split))
    optimizer = make_adam(model.parameters(), 0.5)
    before = rank_samples(model, data, split.valid, 8)
    model.train()
    for _ in range(3):
        train_step(model, optimizer, sample_batch(data, split.train, 8), False)
    after = rank_samples(model, data, split.valid, 8)
    model.eval()
    with torch.no_grad():
        users, items = model.propagate()
        fresh = (users[split.valid.user] @ items[1:].T)
    target = data.flat[data.offsets[:-1][split.valid.user] + split.valid.pos] - 1
    t = fresh.gather(1, target[:, None])
    assert torch.equal(after, (fresh >= t).sum(1) - 1) and not torch.equal(before, after)


# ---- the sparse-kernel MGAT layer against its per-edge form (issue 24, speed) -------------------------

def random_bipartite_graph(n_users=40, n_items=30, n_pairs=150, seed=0) -> InteractionGraph:
    """A random user–item graph with isolated users and items (no pair reaches the last 5 of either)."""
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, n_users - 5, (n_pairs,), generator=g)
    item = torch.randint(1, n_items - 5, (n_pairs,), generator=g)
    keys = torch.unique(user * (n_items + 1) + item)
    return InteractionGraph(n_users, n_items, keys // (n_items + 1), keys % (n_items + 1),
                            torch.zeros(n_items + 1, dtype=torch.long))


def random_bipartite(**kwargs):
    """:func:`random_bipartite_graph` as ``InteractionGraph.edges`` gives it: ``dst, src`` (both directions),
    ``degree`` and the node count."""
    graph = random_bipartite_graph(**kwargs)
    dst, src = graph.edges()
    degree = graph.degree()
    assert (degree == 0).sum() >= 10   # isolated nodes (and the padding item) included
    return dst, src, degree, graph.n_nodes


def test_sampled_dot_and_edge_weighted_sum_equal_their_gathered_forms_with_gradients():
    from strategies.cf_graph import EdgePattern, edge_weighted_sum, sampled_dot
    dst, src, _, n = random_bipartite()
    perm = torch.randperm(dst.numel(), generator=torch.Generator().manual_seed(1))   # any edge order
    pattern = EdgePattern.from_edges(dst[perm], src[perm], n)
    assert torch.equal(pattern.row, pattern.row.sort().values)
    assert set(zip(pattern.row.tolist(), pattern.col.tolist())) == set(zip(dst.tolist(), src.tolist()))
    torch.manual_seed(0)
    a, b = torch.randn(n, 6, dtype=torch.double), torch.randn(n, 6, dtype=torch.double)
    w = torch.randn(dst.numel(), dtype=torch.double)
    row, col = pattern.row, pattern.col

    def both(fast, slow, *inputs):
        fast_in = [t.clone().requires_grad_() for t in inputs]
        slow_in = [t.clone().requires_grad_() for t in inputs]
        out_fast, out_slow = fast(*fast_in), slow(*slow_in)
        torch.testing.assert_close(out_fast, out_slow)
        weight = torch.randn_like(out_slow)
        (out_fast * weight).sum().backward()
        (out_slow * weight).sum().backward()
        for f, s in zip(fast_in, slow_in):
            torch.testing.assert_close(f.grad, s.grad)

    both(lambda a_, b_: sampled_dot(a_, b_, pattern), lambda a_, b_: (a_[row] * b_[col]).sum(-1), a, b)
    both(lambda w_, b_: edge_weighted_sum(w_, b_, pattern),
         lambda w_, b_: torch.zeros_like(b_).index_add(0, row, w_[:, None] * b_[col]), w, b)
    assert torch.autograd.gradcheck(lambda a_, b_: sampled_dot(a_, b_, pattern),
                                    (a[:, :2].clone().requires_grad_(), b[:, :2].clone().requires_grad_()))
    assert torch.autograd.gradcheck(lambda w_, b_: edge_weighted_sum(w_, b_, pattern),
                                    (w.clone().requires_grad_(), b[:, :2].clone().requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mgat_layer_equals_its_per_edge_form_with_gradients(dtype):
    """Outputs and the gradients of every parameter and input against ``tests/mgat_reference.py`` (the
    gathered ``[2E, d]`` products and ``index_add`` the layer used to compute), on a random graph with
    isolated nodes, the edges in a shuffled order, a pattern built by the layer and one given to it."""
    from mgat_reference import gated_attention_per_edge
    from strategies.cf_graph import EdgePattern
    from strategies.mgat import GatedAttentionLayer
    dst, src, degree, n = random_bipartite()
    perm = torch.randperm(dst.numel(), generator=torch.Generator().manual_seed(2))
    dst, src = dst[perm], src[perm]
    torch.manual_seed(0)
    layer = GatedAttentionLayer(8).to(dtype)
    x0, e0 = torch.randn(n, 8, dtype=dtype), torch.randn(n, 8, dtype=dtype)
    results = []
    for run in ("sparse", "sparse, given pattern", "per-edge"):
        layer.zero_grad(set_to_none=True)
        x, e_id = x0.clone().requires_grad_(), e0.clone().requires_grad_()
        if run == "per-edge":
            out = gated_attention_per_edge(layer, x, dst, src, degree, e_id)
        else:
            pattern = EdgePattern.from_edges(dst, src, n) if "given" in run else None
            out = layer(x, dst, src, degree, e_id, pattern)
        out.pow(3).sum().backward()
        results.append([out.detach(), x.grad, e_id.grad] + [p.grad for p in layer.parameters()])
    tol = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for fast in results[:2]:
        for got, want in zip(fast, results[2]):
            torch.testing.assert_close(got, want, **tol)
    isolated = degree == 0
    torch.testing.assert_close(results[0][0][isolated], results[2][0][isolated])


def full_propagation_loss(model, batch):
    """``MultiBranchCF.loss`` as the models computed it before (issue 24, speed): BPR and reg read from a
    full propagation."""
    from strategies.cf_graph import bpr_loss
    users, items = model.propagate()
    u, pos, neg = model.users_of(batch), batch.target, model.negatives(batch)
    e = model.id_emb
    reg = (e[u].pow(2).sum(-1) + e[model.n_users + pos].pow(2).sum(-1) + e[model.n_users + neg].pow(2).sum(-1)
           + model.preference[:, u].pow(2).sum((0, 2))).mean()
    return bpr_loss(users[u], items[pos], items[neg]) + model.opts.reg * reg


@pytest.mark.parametrize("layout", ["compact", "reference"])
@pytest.mark.parametrize("name", ["mgat", "mmgcn"])
def test_cf_model_loss_and_gradients_equal_the_former_computation(name, layout, monkeypatch):
    """The whole model (a code channel and two dense ones, every layer, the graph buffers the model
    registers) on a small split with unseen items: the loss, read at the batch's nodes only, and every
    parameter's gradient equal those of the former computation: a full propagation through the per-edge
    MGAT layer (``tests/mgat_reference.py``) or torch's own sparse backward (MMGCN), the code channel by
    ``ModalityChannel.table``."""
    import strategies.mmgcn as mmgcn
    from fusionbench.context import CODE_SENTINEL
    from mgat_reference import gated_attention_per_edge
    from strategies.mgat import GatedAttentionLayer
    data = from_sequences("hand", [[1, 2, 3, 4, 2], [2, 3, 5, 6], [4, 1, 3], [7, 8, 1, 2], [3, 5, 7]], 10)
    split = make_split(data, "loo")                      # items 9, 10: never in the graph
    ctx = tiny_feature_context(build_context(BARE, data, split), 10)
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 5, (11, 3), generator=g)
    codes[torch.rand(11, 3, generator=g) < 0.3] = CODE_SENTINEL
    codes[0] = CODE_SENTINEL
    present = (codes >= 0).any(1)
    ctx = ctx.with_modalities({**ctx.modalities, "attr": ModalityTable(torch.zeros(11, 0), present, codes, 5)})
    torch.manual_seed(0)
    model = STRATEGIES.create(name, ctx, layers=3, layout=layout).double()
    batch = sample_batch(data, split.train, 12)
    results = []
    for former in (False, True):
        if former:
            monkeypatch.setattr(mmgcn, "channel_table", lambda channel: channel.table())
            monkeypatch.setattr(GatedAttentionLayer, "forward",
                                lambda self, x, dst, src, degree, e_id, pattern=None:
                                gated_attention_per_edge(self, x, dst, src, degree, e_id))
            monkeypatch.setattr(mmgcn.MMGCN, "layer", lambda self, layer, x, e_id, rows=None:
                                layer(x, self.adj, e_id))
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)                     # the same negatives
        loss = full_propagation_loss(model, batch) if former else model.loss(batch)
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in model.parameters()])
    assert all(grad is not None for grad in results[0][1:])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["mgat", "mmgcn"])
def test_the_reference_layout_runs_the_first_layer_at_the_hidden_width(name):
    """layout "reference" (the authors' code): each channel's features go through one linear map to ``hidden``,
    user preferences have that width, the first layer reads it and maps to d, the later layers work at d;
    "compact" (the default) works at d throughout and stays out of the resolved options (stored runs keep
    their identities)."""
    data = from_sequences("hand", [[1, 2, 3, 4, 2], [2, 3, 5, 6], [4, 1, 3]], 6)
    split = make_split(data, "loo")
    ctx = tiny_feature_context(build_context(BARE, data, split), 6)
    compact = STRATEGIES.create(name, ctx, dim=8, hidden=12, layers=2)
    reference = STRATEGIES.create(name, ctx, dim=8, hidden=12, layers=2, layout="reference")
    assert "layout" not in compact.opts.as_dict() and reference.opts.as_dict()["layout"] == "reference"
    assert compact.preference.shape[-1] == 8 and reference.preference.shape[-1] == 12
    for model, first in ((compact, 8), (reference, 12)):
        assert [[layer.in_dim for layer in branch] for branch in model.branches] == [[first, 8]] * 2
        assert all(inputs().shape == (7, first) for inputs in model.item_inputs)
        users, items = model.propagate()
        assert users.shape == (3, 8) and items.shape == (7, 8)
    channel = reference.item_inputs[0].channel                  # one linear map, no MLP
    assert reference.item_inputs[0].out is None
    torch.testing.assert_close(reference.item_inputs[0](), channel.table())


def test_csr_rows_takes_rows_of_a_sparse_matrix():
    from strategies.cf_graph import csr_rows
    graph = random_bipartite_graph()
    adj = graph.adjacency("mean")
    rows = torch.tensor([5, 0, 70, 5, 38, 40])          # any order, a repeat, isolated nodes (38, 40, 70)
    assert graph.degree()[[38, 40, 70]].eq(0).all() and graph.degree()[5] > 0
    sub = csr_rows(adj, rows)
    assert sub.layout == torch.sparse_csr and sub.shape == (6, adj.shape[1])
    torch.testing.assert_close(sub.to_dense(), adj.to_dense()[rows], rtol=0, atol=0)
    assert csr_rows(adj, rows[:0]).shape == (0, adj.shape[1])


def test_mmgcn_layer_at_some_rows_equals_those_rows_of_its_full_output():
    from strategies.mmgcn import MMGCNLayer
    graph = random_bipartite_graph()
    torch.manual_seed(0)
    layer = MMGCNLayer(5).double()
    x0, e0 = torch.randn(graph.n_nodes, 5, dtype=torch.double), torch.randn(graph.n_nodes, 5, dtype=torch.double)
    adj = graph.adjacency("mean").double()
    rows = torch.tensor([3, 40, 0, 63, 41, 3])
    results = []
    for at_rows in (True, False):
        layer.zero_grad(set_to_none=True)
        x, e_id = x0.clone().requires_grad_(), e0.clone().requires_grad_()
        out = layer(x, adj, e_id, rows=rows) if at_rows else layer(x, adj, e_id)[rows]
        out.pow(3).sum().backward()
        results.append([out.detach(), x.grad, e_id.grad] + [p.grad for p in layer.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


def test_the_cf_item_input_reads_a_code_channel_as_modality_channel_table_does():
    """``strategies.mmgcn.channel_table`` (one embedding_bag) against ``ModalityChannel.table`` (gathered code
    vectors, summed): values and gradients, with items lacking some, all or every code and absent items."""
    from fusionbench.context import CODE_SENTINEL
    from strategies.fusion import ModalityChannel
    from strategies.mmgcn import channel_table
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 7, (12, 4), generator=g)
    codes[torch.rand(12, 4, generator=g) < 0.4] = CODE_SENTINEL
    codes[3] = CODE_SENTINEL                                   # no code at all
    present = torch.ones(12, dtype=torch.bool)
    present[[0, 5]] = False                                    # padding row and an absent item
    torch.manual_seed(0)
    channel = ModalityChannel(ModalityTable(torch.zeros(12, 0), present, codes, 7), 6, 0.0)
    assert channel.uses_codes
    outs = []
    for fn in (channel_table, lambda ch: ch.table()):
        channel.zero_grad(set_to_none=True)
        out = fn(channel)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()).sum().backward()
        outs.append([out.detach()] + [p.grad for p in channel.parameters()])
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want)


def test_mmgcn_layer_with_the_pretransposed_adjacency_equals_torchs_backward():
    """The backward through ``adj_t`` (``cf_graph.sparse_dense``) against torch's own, on a random graph with
    isolated nodes: outputs and every gradient."""
    from strategies.mmgcn import MMGCNLayer
    graph = random_bipartite_graph()
    torch.manual_seed(0)
    layer = MMGCNLayer(5).double()
    x0, e0 = torch.randn(graph.n_nodes, 5, dtype=torch.double), torch.randn(graph.n_nodes, 5, dtype=torch.double)
    adj, adj_t = graph.adjacency("mean").double(), graph.adjacency_t("mean").double()
    torch.testing.assert_close(adj_t.to_dense(), adj.to_dense().T)
    results = []
    for transposed in (adj_t, None):
        layer.zero_grad(set_to_none=True)
        x, e_id = x0.clone().requires_grad_(), e0.clone().requires_grad_()
        out = layer(x, adj, e_id, transposed)
        out.pow(3).sum().backward()
        results.append([out.detach(), x.grad, e_id.grad] + [p.grad for p in layer.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["mgat", "mmgcn", "lightgcn", "bm3"])
def test_graph_cf_models_train_under_bf16_autocast(name):
    """``train.precision=bf16``: the sparse kernels run in float32 inside the autocast region (CPU
    ``sampled_addmm`` and CSR products have no bfloat16 kernel); the loss stays near the float32 one."""
    from fusionbench.train import make_adam, train_step
    data = from_sequences("hand", [[1, 2, 3, 4, 2], [2, 3, 5, 6], [4, 1, 3], [7, 8, 1, 2]], 10)
    split = make_split(data, "loo")
    ctx = tiny_feature_context(build_context(BARE, data, split), 10)
    batch = sample_batch(data, split.train, 8)
    losses = []
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = STRATEGIES.create(name, ctx)
        model.train()
        losses.append(train_step(model, make_adam(model.parameters(), 1e-3), batch, bf16))
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(losses[1]) and abs(losses[1] - losses[0]) < 0.05, losses


def test_light_propagation_and_its_gradient_match_torch_sparse_products():
    """``light_propagate`` reuses the symmetric adjacency as its own transpose in the backward; values and
    gradients equal plain ``adj @ x`` products with torch's own sparse backward."""
    from strategies.lightgcn import light_propagate
    adj = random_bipartite_graph().adjacency("sym")
    torch.manual_seed(0)
    ego = torch.randn(adj.shape[0], 5)
    results = []
    for propagate in (lambda x: light_propagate(adj, x, 3),
                      lambda x: (x + adj @ x + adj @ (adj @ x) + adj @ (adj @ (adj @ x))) / 4):
        x = ego.clone().requires_grad_(True)
        out = propagate(x)
        out.pow(2).mul(torch.arange(out.shape[1]) + 1.0).sum().backward()
        results.append((out.detach(), x.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)

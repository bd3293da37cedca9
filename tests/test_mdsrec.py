"""MDSRec: graph construction by hand, no leakage from held-out interactions, missing modalities,
independent channel encoders, occurrence masks, fusion options, causal training."""
import math

import pytest
import torch
import torch.nn.functional as F

from fusionbench import full_softmax
from fusionbench.context import CODE_SENTINEL, ModalityTable, SeqBatch
from fusionbench.data.core import from_sequences
from fusionbench.data.splits import causal_batch, causal_rows, make_split, sample_batch
from fusionbench.errors import UserInputError
from fusionbench.options import OptionError
from fusionbench.registry import STRATEGIES
from fusionbench.runner import build_context
from strategies.item_graphs import (
    GraphPropagation,
    behaviour_counts,
    channel_edges,
    cosine_topk,
    normalised_adjacency,
    similarity_features,
)
from strategy_fixtures import N_ITEMS, tiny_batch, tiny_context

SEQUENCES = [[1, 2, 3], [2, 3], [2, 3, 1], [1, 2], [2, 3, 2, 3]]


def mdsrec(ctx=None, seed=0, **options):
    torch.manual_seed(seed)
    return STRATEGIES.create("mdsrec", ctx or tiny_context(), dim=16, **options)


def as_dict(row, col, value):
    return {(int(r), int(c)): float(v) for r, c, v in zip(row, col, value)}


def dense(adjacency):
    return adjacency.to_dense()


# ----------------------------------------------------------------------------- graph construction


def test_behaviour_counts_by_hand():
    history = from_sequences("h", SEQUENCES, 5)
    # window 1: (1,2) in sequences 0, 3; (2,3) in 0, 1, 2, 4 (once in [2,3,2,3]); (3,1) in 2
    assert as_dict(*behaviour_counts(history, 1)) == {(1, 2): 2, (2, 1): 2, (1, 3): 1, (3, 1): 1, (2, 3): 4, (3, 2): 4}
    # window 2 adds (1,3) in [1,2,3] and (2,1) in [2,3,1]; the repeat 2 _ 2 is no pair
    assert as_dict(*behaviour_counts(history, 2)) == {(1, 2): 3, (2, 1): 3, (1, 3): 2, (3, 1): 2, (2, 3): 4, (3, 2): 4}


def test_id_graph_topk_and_normalisation_by_hand():
    behaviour = behaviour_counts(from_sequences("h", SEQUENCES, 5), 1)
    # row-normalised counts: row 1 {2: 1, 3: .5}; row 2 {1: .5, 3: 1}; row 3 {2: 1, 1: .25}
    row, col, w = channel_edges(behaviour, 6, k_graph=1)
    assert as_dict(row, col, w) == {(1, 2): 1.0, (2, 3): 1.0, (3, 2): 1.0}
    # symmetrised + self loops: degrees 1, 2, 3, 2, 1, 1
    a = dense(normalised_adjacency(row, col, w, 6))
    expected = torch.diag(torch.tensor([1, 1 / 2, 1 / 3, 1 / 2, 1, 1]))
    expected[1, 2] = expected[2, 1] = expected[2, 3] = expected[3, 2] = 1 / math.sqrt(6)
    torch.testing.assert_close(a, expected)

    # k_graph = 2 keeps every edge; symmetrisation keeps the larger direction: (1,3) = max(.5, .25)
    row, col, w = channel_edges(behaviour, 6, k_graph=2)
    a = dense(normalised_adjacency(row, col, w, 6))
    degree = torch.tensor([1, 2.5, 3, 2.5, 1, 1])
    assert a[1, 3] == pytest.approx(0.5 / 2.5) and a[3, 1] == pytest.approx(0.5 / 2.5)
    assert a[1, 2] == pytest.approx(1 / math.sqrt(2.5 * 3))
    torch.testing.assert_close(a.diagonal(), 1 / degree)
    torch.testing.assert_close(a, a.T)


def test_window_widens_the_behaviour_graph():
    history = from_sequences("h", [[1, 2, 3, 4]], 4)
    assert set(as_dict(*behaviour_counts(history, 1))) == {(1, 2), (2, 1), (2, 3), (3, 2), (3, 4), (4, 3)}
    assert (1, 4) not in as_dict(*behaviour_counts(history, 2))
    assert as_dict(*behaviour_counts(history, 3))[(1, 4)] == 1


def test_cosine_topk_by_hand():
    features = torch.tensor([[0.0, 0], [1, 0], [2, 1], [0, 1], [0, 0]])
    present = torch.tensor([False, True, True, True, False])
    c = 1 / math.sqrt(5)
    assert as_dict(*cosine_topk(features, present, 1)) == pytest.approx({(1, 2): 2 * c, (2, 1): 2 * c, (3, 2): c})
    # k is capped at the number of other present items; absent items and padding are never neighbours
    assert as_dict(*cosine_topk(features, present, 10)) == pytest.approx(
        {(1, 2): 2 * c, (1, 3): 0.0, (2, 1): 2 * c, (2, 3): c, (3, 2): c, (3, 1): 0.0})


@pytest.mark.parametrize("block", [1, 7, 1024])
def test_blockwise_topk_equals_dense_reference(block):
    g = torch.Generator().manual_seed(3)
    features = torch.randn(41, 6, generator=g)
    present = torch.rand(41, generator=g) > 0.25
    present[0] = False
    row, col, sim = cosine_topk(features, present, 4, block=block)

    unit = F.normalize(features, dim=1)
    full = unit @ unit.T
    full[:, ~present] = float("-inf")
    full.fill_diagonal_(float("-inf"))
    value, index = full[present].topk(4, dim=1)
    assert row.tolist() == torch.nonzero(present).squeeze(1).repeat_interleave(4).tolist()
    assert col.tolist() == index.flatten().tolist()
    torch.testing.assert_close(sim, value.flatten())


def test_mix_graph_weights_by_hand():
    # S: cos(1,2) = .894, cos(2,3) = .447, cos(3,4) = .707, cos(1,4) = -.707, cos(1,3) = 0
    features = torch.tensor([[0.0, 0], [1, 0], [1, 0.5], [0, 1], [-1, 1]])
    present = torch.tensor([False, True, True, True, True])
    behaviour = behaviour_counts(from_sequences("h", [[1, 3], [1, 3], [1, 4]], 4), 1)
    s12, s14, s34 = 1 / math.sqrt(1.25), -1 / math.sqrt(2), 1 / math.sqrt(2)
    edges = as_dict(*channel_edges(behaviour, 5, 10, (features, present), k_sim=1, mode="mix", lambda_b=0.5))
    # similarity top-1 (weight .5 S): 1->2, 2->1, 3->4, 4->3; behaviour (weight .5 B/max B + .5 S):
    # (1,3) = .5, (3,1) = .5, (4,1) = .5 + .5 s14 > 0; (1,4) = .25 + .5 s14 < 0 is dropped
    assert edges == pytest.approx({(1, 2): 0.5 * s12, (2, 1): 0.5 * s12, (3, 4): 0.5 * s34, (4, 3): 0.5 * s34,
                                   (1, 3): 0.5, (3, 1): 0.5, (4, 1): 0.5 + 0.5 * s14})
    top1 = as_dict(*channel_edges(behaviour, 5, 1, (features, present), k_sim=1, mode="mix", lambda_b=0.5))
    assert top1 == pytest.approx({(1, 3): 0.5, (2, 1): 0.5 * s12, (3, 1): 0.5, (4, 3): 0.5 * s34})


def test_intersect_graph_keeps_behaviour_pairs_weighted_by_similarity():
    features = torch.tensor([[0.0, 0], [1, 0], [1, 0.5], [1, 1], [-1, 1]])
    present = torch.tensor([False, True, True, True, True])
    behaviour = behaviour_counts(from_sequences("h", [[1, 3], [1, 3], [1, 4]], 4), 1)
    edges = as_dict(*channel_edges(behaviour, 5, 10, (features, present), mode="intersect"))
    # (1,2) is the most similar pair but never co-occurs; (1,4) co-occurs with negative similarity
    assert edges == pytest.approx({(1, 3): 1 / math.sqrt(2), (3, 1): 1 / math.sqrt(2)})


def test_code_only_channel_uses_multi_hot_codes():
    codes = torch.tensor([[CODE_SENTINEL, CODE_SENTINEL], [0, 1], [1, CODE_SENTINEL], [CODE_SENTINEL, CODE_SENTINEL]])
    table = ModalityTable(torch.zeros(4, 0), torch.tensor([False, True, True, True]), codes, 3)
    features, present = similarity_features(table)
    assert features.tolist() == [[0, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert present.tolist() == [False, True, True, False]  # item 3 has no code: absent
    assert as_dict(*cosine_topk(features, present, 5)) == pytest.approx({(1, 2): 2 ** -0.5, (2, 1): 2 ** -0.5})


def test_graph_building_is_deterministic_and_ignores_the_torch_seed():
    a, b = mdsrec(seed=0), mdsrec(seed=5)
    for name in a.names:
        assert torch.equal(a.graphs[name].adjacency.indices(), b.graphs[name].adjacency.indices())
        assert torch.equal(a.graphs[name].adjacency.values(), b.graphs[name].adjacency.values())


# ----------------------------------------------------------------------------- spec §5


def test_held_out_interactions_support_no_edge():
    """User 0's validation (4) and test (5) items: the pairs (3,4) and (4,5) occur nowhere else."""
    data = from_sequences("d", [[1, 2, 3, 4, 5], [2, 3, 6, 1, 2], [6, 2, 3, 1]], 6)
    split = make_split(data, "loo")
    config = {"features": {}, "max_len": 8, "aggregator": None, "aggregator_options": {}}
    ctx = build_context(config, data, split)
    counts = as_dict(*behaviour_counts(ctx.history, 1))
    assert counts.get((3, 4), 0) == 0 and counts.get((4, 5), 0) == 0
    assert counts[(2, 3)] == 2 and counts[(1, 2)] == 1  # training-visible pairs do count
    adjacency = dense(mdsrec(ctx, window=3).graphs["id"].adjacency)
    assert adjacency[4, 5] == 0 and adjacency[3, 4] == 0 and adjacency[3, 5] == 0
    assert adjacency[4].count_nonzero() == 1 == adjacency[5].count_nonzero()  # self loops only
    assert adjacency[2, 3] > 0


def test_missing_history_is_a_clear_error():
    ctx = tiny_context()
    with pytest.raises(UserInputError, match=r"mdsrec needs the split's history .* but it is None"):
        mdsrec(type(ctx)(ctx.n_items, ctx.max_len, ctx.modalities))
    other = from_sequences("h", [[1, 2]], N_ITEMS + 3)
    with pytest.raises(UserInputError, match="ctx.history has 33 items, the context 30"):
        mdsrec(type(ctx)(ctx.n_items, ctx.max_len, ctx.modalities, history=other))


def test_all_modalities_missing_stays_finite_and_fills_in_from_neighbours():
    model = mdsrec(tiny_context().with_all_modalities_missing())
    model.train()
    loss = model.loss(tiny_batch())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    raw, enhanced = model.item_tables()
    for c, name in enumerate(model.names[1:], start=1):
        assert torch.equal(raw[1:, c], model.modal[name].missing.expand(N_ITEMS, -1))  # every item: missing vector
        assert torch.isfinite(enhanced[:, c]).all()
    model.eval()
    assert torch.isfinite(model.score(tiny_batch())[:, 1:]).all()


def test_all_modalities_missing_intersect_ranks_like_the_id_channel():
    """Without features no similarity edge exists, every modality item vector is the missing vector, so
    the modality channels add the same score to every item: the ranking is the ID channel's."""
    model = mdsrec(tiny_context().with_all_modalities_missing(), graph="intersect")
    model.eval()
    batch = tiny_batch()
    with torch.no_grad():
        for name in model.names[1:]:
            assert model.graphs[name].adjacency._nnz() == N_ITEMS + 1  # self loops only
        raw, enhanced = model.item_tables()
        users = model.channel_users(batch, raw, enhanced)[:, -1]
        id_scores = users[:, 0] @ enhanced[:, 0].T
        rest = model.score(batch)[:, 1:] - id_scores[:, 1:]
    torch.testing.assert_close(rest, rest[:, :1].expand_as(rest), rtol=0, atol=1e-4)


def test_channel_encoders_share_no_parameters():
    model = mdsrec()
    assert model.names == ("id", "image", "text")
    owned = {name: {id(p) for p in model.encoders[name].parameters()} for name in model.names}
    storage = {name: {p.data_ptr() for p in model.encoders[name].parameters()} for name in model.names}
    for a in model.names:
        for b in model.names:
            if a < b:
                assert not owned[a] & owned[b], f"encoders {a} and {b} share a parameter"
                assert not storage[a] & storage[b], f"encoders {a} and {b} share storage"
    all_params = list(model.named_parameters(remove_duplicate=False))
    assert len(all_params) == len({id(p) for _, p in all_params})


# ----------------------------------------------------------------------------- options and inputs


def test_channels_option():
    ctx = tiny_context()
    assert mdsrec(ctx, channels=("text", "id")).names == ("id", "text")
    text_only = mdsrec(ctx, channels=("text",))
    assert text_only.names == ("text",) and text_only.item is None
    assert mdsrec(ctx.with_modalities({})).names == ("id",)
    with pytest.raises(UserInputError, match="option 'channels' names 'attr'.*available: id, image, text"):
        mdsrec(ctx, channels=("id", "attr"))
    with pytest.raises(OptionError, match="names a channel twice"):
        mdsrec(ctx, channels=("id", "id"))
    with pytest.raises(UserInputError, match="may not be named 'id'"):
        mdsrec(ctx.with_modalities({"id": ctx.modalities["text"]}))


@pytest.mark.parametrize("option, value, message", [
    ("graph_layers", 3, "'graph_layers' must be in \\[0, 2\\], got 3"),
    ("lambda_b", 1.5, "'lambda_b' must be in"),
    ("k_graph", 0, "'k_graph' must be >= 1"),
    ("beta", -0.1, "'beta' must be >= 0"),
])
def test_option_range_errors(option, value, message):
    with pytest.raises(OptionError, match=message):
        mdsrec(**{option: value})


def test_defaults_follow_the_spec():
    opts = STRATEGIES.options("mdsrec")
    graph = (opts.k_sim, opts.k_graph, opts.window, opts.lambda_b, opts.graph_layers)
    assert opts.dim == 64 and graph == (10, 10, 1, 0.5, 1)
    assert (opts.layers, opts.heads, opts.dropout, opts.beta) == (1, 2, 0.3, 0.1)
    assert (opts.graph, opts.center, opts.readout, opts.fusion) == ("mix", "mean", "center", "sum_scores")
    cls = STRATEGIES.get("mdsrec")
    assert cls.fusion_stage == "late" and cls.uses_modalities and cls.causal_training
    assert cls.train_defaults == {"lr": 1e-3, "batch_size": 256}


def test_graphs_off_uses_the_raw_item_inputs():
    """graph_layers=0 (the ablation): no edges are built and every enhanced table equals its input."""
    model = mdsrec(graph_layers=0)
    model.eval()
    assert all(g.adjacency._nnz() == 0 for g in model.graphs.values())
    with torch.no_grad():
        raw, enhanced = model.item_tables()
    assert torch.equal(raw, enhanced)
    assert torch.isfinite(model.score(tiny_batch())).all()


@pytest.mark.parametrize("graph_layers", [0, 1, 2])
@pytest.mark.parametrize("mode", ["present", "shown"])
def test_masked_occurrence_sees_the_item_with_the_shown_modality(graph_layers, mode):
    """Hiding (``present``) or swapping (``shown``) the text of the most recent position gives that
    position the item's enhanced vector rebuilt with its own text input replaced (missing vector when
    hidden, item 7's input when shown); every other position and channel is unchanged."""
    model = mdsrec(graph_layers=graph_layers)
    model.eval()
    batch = tiny_batch()
    last = torch.zeros_like(batch.items, dtype=torch.bool)
    last[:, -1] = True
    if mode == "present":
        masked = SeqBatch(batch.items, batch.target, present={"text": ~last})
        unchanged = SeqBatch(batch.items, present={"text": torch.ones_like(last)})
    else:
        masked = SeqBatch(batch.items, batch.target, shown={"text": torch.where(last, 7, batch.items)})
        unchanged = SeqBatch(batch.items, shown={"text": batch.items.clone()})
    with torch.no_grad():
        raw, enhanced = model.item_tables()
        plain = model.channel_inputs(batch, raw, enhanced)
        assert torch.equal(model.channel_inputs(unchanged, raw, enhanced), plain)
        got = model.channel_inputs(masked, raw, enhanced)
        c = model.names.index("text")
        assert torch.equal(got[:, :-1], plain[:, :-1]) and torch.equal(got[:, -1, :c], plain[:, -1, :c])
        replacement = model.modal["text"].missing if mode == "present" else raw[7, c]
        for b, v in enumerate(batch.items[:, -1].tolist()):
            x = raw[:, c].clone()
            x[v] = replacement
            torch.testing.assert_close(got[b, -1, c], model.graphs["text"](x)[v])


def test_self_weight_matches_powers_of_the_adjacency():
    g = torch.Generator().manual_seed(0)
    row, col = torch.randint(0, 7, (2, 12), generator=g)
    keep = row != col
    adjacency = normalised_adjacency(row[keep], col[keep], torch.rand(int(keep.sum()), generator=g), 7)
    a = dense(adjacency)
    for layers in (1, 2):
        expected = sum(torch.linalg.matrix_power(a, hops).diagonal() for hops in range(layers + 1)) / (layers + 1)
        torch.testing.assert_close(GraphPropagation(adjacency, layers).self_weight, expected)


@pytest.mark.parametrize("fusion", ["sum_scores", "gate_user", "concat"])
def test_fusion_shapes_and_loss_equals_scores(fusion):
    model = mdsrec(fusion=fusion, beta=0.3)
    model.eval()
    batch = tiny_batch()
    width = 16 if fusion == "concat" else 3 * 16
    assert model.encode(batch).shape == (batch.size, width)
    assert model.item_embeddings().shape == (N_ITEMS + 1, width)
    with torch.no_grad():
        raw, enhanced = model.item_tables()
        users = model.channel_users(batch, raw, enhanced)[:, -1]
        per_channel = torch.einsum("bcd,ncd->bcn", users, enhanced)[..., 1:]
        scores = model.score(batch)[:, 1:]
        expected = F.cross_entropy(scores, batch.target - 1) + 0.3 * sum(
            F.cross_entropy(per_channel[:, c], batch.target - 1) for c in range(3))
        torch.testing.assert_close(model.loss(batch), expected)
        if fusion == "sum_scores":
            torch.testing.assert_close(scores, per_channel.sum(1))
        if fusion == "gate_user":
            gate = model.channel_weights(users)
            torch.testing.assert_close(gate.sum(-1), torch.ones(batch.size))
            torch.testing.assert_close(scores, (gate[..., None] * per_channel).sum(1))


@pytest.mark.parametrize("fusion", ["sum_scores", "gate_user"])
def test_the_blocked_channel_loss_trains_as_the_whole_products(fusion, monkeypatch):
    """The fused losses from the channels' products formed once, in blocks of 2 rows: the same value and
    every parameter's gradient (the gate's too) as one product per loss."""
    monkeypatch.setattr(full_softmax, "WHOLE_BYTES", 0)
    monkeypatch.setattr(full_softmax, "BLOCK_BYTES", 2 * 4 * N_ITEMS)
    results = []
    for channels in (full_softmax.channel_cross_entropy, full_softmax.whole_channel_cross_entropy):
        monkeypatch.setattr(full_softmax, "channel_cross_entropy", channels)
        model = mdsrec(fusion=fusion, beta=0.3)
        model.eval()
        loss = model.loss(tiny_batch())
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys() and (fusion != "gate_user" or "gate.weight" in got_grads)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("options", [{"fusion": "gate_user"}, {"fusion": "concat"}, {"center": "learned"},
                                     {"center": "last", "readout": "last"}, {"graph_layers": 2, "layers": 2}])
def test_gradient_reaches_every_parameter_under_options(options):
    model = mdsrec(**options)
    model.train()
    model.loss(tiny_batch()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_code_only_channel_builds_and_trains():
    ctx = tiny_context()
    image = ctx.modalities["image"]
    model = mdsrec(ctx.with_modalities({"attr": image.replace(features=torch.zeros(N_ITEMS + 1, 0))}))
    assert model.graphs["attr"].adjacency._nnz() > N_ITEMS + 1
    model.loss(tiny_batch()).backward()
    assert model.modal["attr"].code_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("center", ["mean", "last", "learned"])
@pytest.mark.parametrize("readout", ["center", "last"])
def test_one_causal_pass_equals_the_prefix_samples(center, readout):
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(5, 14, (10,), generator=g)
    seqs = [torch.randint(1, N_ITEMS + 1, (int(n),), generator=g).tolist() for n in lengths]
    data = from_sequences("t", seqs, N_ITEMS)
    split = make_split(data, "loo")
    model = mdsrec(center=center, readout=readout)
    model.eval()
    with torch.no_grad():
        causal = model.loss(causal_batch(data, causal_rows(split.train, 6), 6))
        prefix = model.loss(sample_batch(data, split.train, 6))
    torch.testing.assert_close(causal, prefix, rtol=1e-4, atol=1e-5)


def test_interest_centre_is_the_prefix_mean_of_real_positions():
    model = mdsrec()
    x = torch.arange(8.0).view(1, 4, 2)
    mask = torch.tensor([[False, True, True, True]])
    centre = model.encoders["id"].interest_centre(x, mask)
    torch.testing.assert_close(centre[0, 1:], torch.tensor([[2.0, 3.0], [3.0, 4.0], [4.0, 5.0]]))

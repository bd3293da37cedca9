"""Hand-computed checks of the aggregators without a PyG twin: graphormer, hgat, han.

Small graphs (2-7 nodes) with fixed weights; expected outputs come from explicit formulas written
node by node in this file (numbers worked out with ``math.exp`` for the smallest cases).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from aggregators.graphormer import shortest_path_distances
from aggregators.han import UPDATES
from fusionbench.context import AggregatorContext
from fusionbench.options import OptionError
from fusionbench.registry import AGGREGATORS
from test_aggregators_contract import typed_graph

# relation channels for two modalities (R = 10): 0 self, 1 seq-out, 2 seq-in, 3 seq-both,
# 4 item<-image, 5 image<-item, 6 item<-text, 7 text<-item, 8 image<-text, 9 text<-image
ITEM, IMAGE, TEXT = 1, 2, 3
R, T = 10, 4


def softmax(values):
    top = max(values)
    e = [math.exp(v - top) for v in values]
    return [v / sum(e) for v in e]


def msgraph():
    """One MMSR-like graph (items 0, 1; image codes 2, 4; text code 3; isolated text code 5;
    padded node 6) in a batch of 1, with the adjacency, node types and mask."""
    n = 7
    node_type = torch.tensor([[ITEM, ITEM, IMAGE, TEXT, IMAGE, TEXT, 0]])
    node_mask = node_type > 0
    adj = torch.zeros(1, R, n, n, dtype=torch.bool)
    for i in range(5):
        adj[0, 0, i, i] = True                        # node 5 has no edge at all, not even a self loop
    edges = [(1, 0, 1), (2, 1, 0), (3, 2, 4), (3, 4, 2),             # (relation, receiver i, sender j)
             (4, 0, 2), (5, 2, 0), (6, 0, 3), (7, 3, 0), (8, 2, 3), (9, 3, 2), (4, 1, 4), (5, 4, 1)]
    for r, i, j in edges:
        adj[0, r, i, j] = True
    return adj, node_type, node_mask


# ---------------------------------------------------------------------------------------- graphormer
def test_shortest_path_distances_by_hand():
    # directed chain 0 -> 1 -> 2, node 3 isolated, node 4 padded; a[i, j]: j -> i
    a = torch.zeros(1, 5, 5, dtype=torch.bool)
    a[0, 1, 0] = a[0, 2, 1] = True
    mask = torch.tensor([[True, True, True, True, False]])
    u = 6                                                   # unreachable bucket = max_dist + 1
    expected = torch.tensor([[0, u, u, u, u],
                             [1, 0, u, u, u],
                             [2, 1, 0, u, u],
                             [u, u, u, 0, u],
                             [u, u, u, u, u]])
    assert torch.equal(shortest_path_distances(a, mask, max_dist=5)[0], expected)
    capped = shortest_path_distances(a, mask, max_dist=1)[0]  # distance 2 is capped to 1; unreachable is 2
    assert capped[2, 0] == 1 and capped[0, 2] == 2 and capped[3, 0] == 2 and capped[1, 1] == 0


def test_shortest_path_distances_long_chain_beyond_max_dist():
    n = 12
    a = torch.zeros(1, n, n, dtype=torch.bool)
    a[0, torch.arange(1, n), torch.arange(n - 1)] = True       # j -> j + 1
    dist = shortest_path_distances(a, torch.ones(1, n, dtype=torch.bool), max_dist=3)[0]
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    expected = torch.where(i >= j, (i - j).clamp(max=3), torch.full_like(i, 4))
    assert torch.equal(dist, expected)


def test_graphormer_three_nodes_by_hand():
    """Nodes 0 - 1 joined (relation seq-out one way, symmetrised), node 2 alone, node 3 padded; d = 2."""
    ctx = AggregatorContext(dim=2, n_relations=R, n_node_types=T)
    model = AGGREGATORS.create("graphormer", ctx, max_dist=2).eval()
    with torch.no_grad():
        for lin in (model.lin_q, model.lin_k, model.lin_v, model.lin_o):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
        model.lin_o.bias.copy_(torch.tensor([0.5, -0.5]))
        model.in_degree.weight.zero_()
        model.in_degree.weight[1] = torch.tensor([0.1, -0.2])     # degree 1
        model.spatial.weight.copy_(torch.tensor([[0.3], [0.2], [0.0], [-1.0]]))  # dist 0, 1, 2, unreachable
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0], [9.0, 9.0]]])
    adj = torch.zeros(1, R, 4, 4, dtype=torch.bool)
    adj[0, 1, 0, 1] = True
    node_mask = torch.tensor([[True, True, True, False]])
    out = model(x, adj, torch.tensor([[ITEM, ITEM, TEXT, 0]]), node_mask)

    h = [[1.1, -0.2], [0.1, 1.8], [-1.0, 1.0]]                  # x + z_deg (nodes 0, 1 have degree 1)
    bias = [[0.3, 0.2, -1.0], [0.2, 0.3, -1.0], [-1.0, -1.0, 0.3]]
    for i in range(3):
        scores = [(h[i][0] * h[j][0] + h[i][1] * h[j][1]) / math.sqrt(2) + bias[i][j] for j in range(3)]
        w = softmax(scores)
        expected = [sum(w[j] * h[j][c] for j in range(3)) + (0.5, -0.5)[c] for c in range(2)]
        torch.testing.assert_close(out[0, i], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert (out[0, 3] == 0).all()


# ---------------------------------------------------------------------------------------- hgat
def naive_hgat(m, x, adj, node_type, node_mask):
    """HGAT written node by node from its docstring (single graph)."""
    act = {"elu": F.elu, "relu": F.relu, "none": lambda t: t}[m.opts.activation]
    n, d = x.shape[1:]
    t, real = node_type[0].tolist(), node_mask[0].tolist()
    z = [x[0, i] @ m.proj[t[i]] for i in range(n)]
    h = torch.zeros(R, n, d)
    has = [[False] * n for _ in range(R)]
    for r in range(R):
        for i in range(n):
            js = [j for j in range(n) if real[i] and real[j] and adj[0, r, i, j]]
            if not js:
                continue
            has[r][i] = True
            e = [F.leaky_relu(m.att_dst[r] @ z[i] + m.att_src[r] @ z[j], m.opts.negative_slope).item() for j in js]
            w = softmax(e)
            h[r, i] = act(sum(w[k] * z[j] for k, j in enumerate(js)))
    score = [[(m.semantic_q @ torch.tanh(m.semantic.weight @ h[r, i] + m.semantic.bias)).item()
              for i in range(n)] for r in range(R)]
    if m.opts.semantic_scope == "graph":
        for r in range(R):
            nodes = [i for i in range(n) if has[r][i]]
            mean = sum(score[r][i] for i in nodes) / len(nodes) if nodes else 0.0
            score[r] = [mean] * n
    out = torch.zeros(n, d)
    for i in range(n):
        rs = [r for r in range(R) if has[r][i]]
        if rs:
            beta = softmax([score[r][i] for r in rs])
            out[i] = sum(b * h[r, i] for b, r in zip(beta, rs))
    return out


@pytest.mark.parametrize("scope", ["graph", "node"])
@pytest.mark.parametrize("activation", ["elu", "none"])
def test_hgat_matches_explicit_formulas(scope, activation):
    adj, node_type, node_mask = msgraph()
    ctx = AggregatorContext(dim=4, n_relations=R, n_node_types=T)
    torch.manual_seed(0)
    model = AGGREGATORS.create("hgat", ctx, semantic_dim=3, semantic_scope=scope, activation=activation).eval()
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(1))
    out = model(x, adj, node_type, node_mask)
    with torch.no_grad():
        torch.testing.assert_close(out[0], naive_hgat(model, x, adj, node_type, node_mask), rtol=1e-5, atol=1e-6)
    assert (out[0, 5:] == 0).all()                           # isolated node 5 and padded node 6


def test_hgat_projection_is_type_specific():
    adj, node_type, node_mask = msgraph()
    ctx = AggregatorContext(dim=4, n_relations=R, n_node_types=T)
    torch.manual_seed(0)
    model = AGGREGATORS.create("hgat", ctx, semantic_scope="node").eval()   # "graph" mixes all nodes' scores
    x = torch.randn(1, 7, 4)
    before = model(x, adj, node_type, node_mask)
    with torch.no_grad():
        model.proj[TEXT] *= 2                                  # only text nodes' projection changes
    after = model(x, adj, node_type, node_mask)
    assert not torch.allclose(before[0, 3], after[0, 3])       # text node 3
    torch.testing.assert_close(before[0, 4], after[0, 4])       # image node 4 never sees a text node


# ---------------------------------------------------------------------------------------- han
def han_model(update="gate", dim=4, seed=0, **opts):
    ctx = AggregatorContext(dim=dim, n_relations=R, n_node_types=T)
    torch.manual_seed(seed)
    return AGGREGATORS.create("han", ctx, update=update, **opts).double().eval()


def naive_han(m, x, adj, node_type, node_mask, update):
    """HAN-GNN written node by node from mmsr.md §5 (single graph, eval mode)."""
    n, d = x.shape[1:]
    t, real = node_type[0].tolist(), node_mask[0].tolist()
    slope = m.opts.negative_slope
    homo, hetero = m.homo, m.hetero

    def lrelu(v):
        return v if v > 0 else slope * v

    query_only = m.opts.projections == "query"             # the reference code's W_K = W_V = W_Q
    w_k, w_v = (m.w_q, m.w_q) if query_only else (m.w_k, m.w_v)

    def value(vectors):
        return [vectors[j] @ w_v[t[j]] for j in range(n)]

    def attend(logit, channels, values):
        res = torch.zeros(n, d, dtype=x.dtype)
        for i in range(n):
            js = [j for j in range(n) if real[i] and real[j] and any(adj[0, r, i, j] for r in channels)]
            if js:
                w = softmax([lrelu(logit(i, j)) for j in js])
                res[i] = sum(w[k] * values[j] for k, j in enumerate(js))
        return res

    def homo_agg(score_from, value_from):           # e_ij = a_r . (W_V s_i * W_V s_j)
        s = value(score_from)

        def logit(i, j):
            return sum(float(m.att_ho[k] @ (s[i] * s[j])) for k, r in enumerate(homo) if adj[0, r, i, j])
        return attend(logit, homo, value(value_from))

    def hetero_agg(score_from, value_from):         # e_ij = (W_Q,tj s_j) . (W_K,ti s_i) / sqrt(d)
        def logit(i, j):
            q = score_from[j] @ m.w_q[t[j]]
            k = score_from[i] @ w_k[t[i]]
            return float(q @ k) / (math.sqrt(d) if m.opts.scale else 1.0)
        return attend(logit, hetero, value(value_from))

    h = x[0]
    u_ho, u_he = homo_agg(h, h), hetero_agg(h, h)
    if update == "ho":
        out = u_ho
    elif update == "he":
        out = u_he
    elif update == "sync":
        out = torch.cat([u_ho, u_he], -1) @ m.sync.weight.T + m.sync.bias
    elif update == "ni_hohe":
        out = hetero_agg(u_ho, h)
    elif update == "ni_heho":
        out = homo_agg(u_he, h)
    elif update == "hohe":
        out = hetero_agg(u_ho, u_ho)
    elif update == "heho":
        out = homo_agg(u_he, u_he)
    else:
        hohe = u_he if m.opts.hohe_scores == "input" else hetero_agg(u_ho, h)   # input: the reference's hohe
        heho = homo_agg(u_he, h)
        w1, b1, w2, b2 = m.gate[0].weight, m.gate[0].bias, m.gate[2].weight, m.gate[2].bias
        out = torch.zeros(n, d, dtype=x.dtype)
        for i in range(n):
            if m.opts.gate == "concat":
                logits = torch.relu(torch.cat([hohe[i], heho[i]]) @ w1.T + b1) @ w2.T + b2
            else:
                logits = torch.cat([torch.relu(c @ w1.T + b1) @ w2.T + b2 for c in (hohe[i], heho[i])])
            beta = softmax(logits.tolist())
            out[i] = beta[0] * hohe[i] + beta[1] * heho[i]
    return out * node_mask[0, :, None]


HAN_FORMS = [{}, {"projections": "query"}]


@pytest.mark.parametrize("form", HAN_FORMS, ids=["paper", "query"])
@pytest.mark.parametrize("update", UPDATES)
def test_han_update_modes_match_explicit_formulas(update, form):
    adj, node_type, node_mask = msgraph()
    model = han_model(update, **form)
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = model(x, adj, node_type, node_mask)
    with torch.no_grad():
        torch.testing.assert_close(out[0], naive_han(model, x, adj, node_type, node_mask, update))
    assert torch.isfinite(out).all() and (out[0, 6] == 0).all()


def test_han_neighbourhoods_are_the_rows_with_their_in_neighbours():
    _, _, adj, _, node_mask = typed_graph(batch=4, nodes=9, seed=5, density=0.03)
    rows = torch.tensor([[8], [0], [3], [5]])
    rows = torch.where(node_mask[torch.arange(4), rows[:, 0]][:, None], rows, 0)
    members, real, row_slot = AGGREGATORS.get("han").neighbourhoods(adj, rows)
    for b in range(4):
        r = int(rows[b, 0])
        expected = sorted({r} | set(adj[b, :, r].any(0).nonzero()[:, 0].tolist()))
        assert members[b][real[b]].tolist() == expected
        assert (members[b][~real[b]] == r).all()            # pads repeat the row node
        assert int(members[b, row_slot[b, 0]]) == r
    assert (~real).any() and members.shape[1] < 9           # the case has unequal, partial neighbourhoods


@pytest.mark.parametrize("density", [0.4, 0.03])
@pytest.mark.parametrize("update", UPDATES)
def test_han_forward_rows_is_forward_at_those_rows_with_the_same_gradients(update, density):
    ctx, x, adj, node_type, node_mask = typed_graph(batch=4, nodes=9, dim=6, seed=5, density=density)
    model = AGGREGATORS.create("han", ctx, update=update).double().eval()
    x = x.double().requires_grad_()
    rows = torch.tensor([8, 0, 3, 5])
    rows = torch.where(node_mask[torch.arange(4), rows], rows, 0)          # real nodes only
    full = model(x, adj, node_type, node_mask)[torch.arange(4), rows]
    full_grads = torch.autograd.grad(full.sum(), [x, *model.parameters()], allow_unused=True, materialize_grads=True)
    picked = model.forward_rows(x, adj, node_type, node_mask, rows)
    row_grads = torch.autograd.grad(picked.sum(), [x, *model.parameters()], allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(picked, full)
    for a, b in zip(full_grads, row_grads):      # an unused parameter's gradient is zeros in both
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("gate", ["concat", "per_candidate"])
@pytest.mark.parametrize("scale", [True, False])
def test_han_gate_forms_match_explicit_formulas(gate, scale):
    adj, node_type, node_mask = msgraph()
    model = han_model("gate", gate=gate, scale=scale, seed=1)
    with torch.no_grad():                                    # non-zero gate biases
        model.gate[0].bias.normal_()
        model.gate[2].bias.normal_()
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = model(x, adj, node_type, node_mask)
    with torch.no_grad():
        torch.testing.assert_close(out[0], naive_han(model, x, adj, node_type, node_mask, "gate"))


def test_han_gate_mixes_the_two_non_invasive_orders():
    adj, node_type, node_mask = msgraph()
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gated = han_model("gate")
    orders = {}
    for update in ("ni_hohe", "ni_heho"):
        single = han_model(update)
        single.load_state_dict(gated.state_dict(), strict=False)   # same W_Q, W_K, W_V, a_r
        orders[update] = single(x, adj, node_type, node_mask)
    beta = gated.gate_weights(orders["ni_hohe"], orders["ni_heho"])
    torch.testing.assert_close(beta.sum(-1), torch.ones_like(beta[..., 0]))
    expected = beta[..., :1] * orders["ni_hohe"] + beta[..., 1:] * orders["ni_heho"]
    torch.testing.assert_close(gated(x, adj, node_type, node_mask), expected)


def test_han_heterogeneous_attention_two_nodes_by_hand():
    """he mode, identity maps, item 0 <-> image 1 plus self loops; d = 2, scaled scores."""
    model = han_model("he", dim=2)
    with torch.no_grad():
        for w in (model.w_q, model.w_k, model.w_v):
            w.copy_(torch.eye(2).expand(T, 2, 2))
    adj = torch.zeros(1, R, 2, 2, dtype=torch.bool)
    adj[0, 0, 0, 0] = adj[0, 0, 1, 1] = adj[0, 4, 0, 1] = adj[0, 5, 1, 0] = True
    x = torch.tensor([[[1.0, -1.0], [0.0, 2.0]]], dtype=torch.float64)
    out = model(x, adj, torch.tensor([[ITEM, IMAGE]]), torch.ones(1, 2, dtype=torch.bool))
    # node 0: e00 = 2/sqrt2, e01 = -2/sqrt2 -> LeakyReLU(0.1) -> -0.2/sqrt2;
    # node 1: e10 = -2/sqrt2 -> -0.2/sqrt2, e11 = 4/sqrt2
    w0 = softmax([2 / math.sqrt(2), -0.2 / math.sqrt(2)])
    w1 = softmax([-0.2 / math.sqrt(2), 4 / math.sqrt(2)])
    expected = torch.tensor([[w0[0] * 1 + w0[1] * 0, w0[0] * -1 + w0[1] * 2],
                             [w1[0] * 1 + w1[1] * 0, w1[0] * -1 + w1[1] * 2]], dtype=torch.float64)
    torch.testing.assert_close(out[0], expected)


def test_han_homogeneous_content_attention_two_nodes_by_hand():
    """ho mode, W_V = I, a_self = (1, 1), a_seq-out = (0.5, 0.5); item 0 receives from item 1."""
    model = han_model("ho", dim=2)
    with torch.no_grad():
        model.w_v.copy_(torch.eye(2).expand(T, 2, 2))
        model.att_ho.zero_()
        model.att_ho[0] = torch.tensor([1.0, 1.0])
        model.att_ho[1] = torch.tensor([0.5, 0.5])
    adj = torch.zeros(1, R, 2, 2, dtype=torch.bool)
    adj[0, 0, 0, 0] = adj[0, 0, 1, 1] = adj[0, 1, 0, 1] = True
    x = torch.tensor([[[1.0, -1.0], [-2.0, 1.0]]], dtype=torch.float64)
    out = model(x, adj, torch.tensor([[ITEM, ITEM]]), torch.ones(1, 2, dtype=torch.bool))
    # node 0: e00 = 1*1 + 1*1 = 2; e01 = 0.5*(1*-2) + 0.5*(-1*1) = -1.5 -> -0.15; node 1: only itself
    w = softmax([2.0, -0.15])
    expected = torch.tensor([[w[0] * 1 + w[1] * -2, w[0] * -1 + w[1] * 1], [-2.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(out[0], expected)


def _output_change(update, param, seed=0):
    adj, node_type, node_mask = msgraph()
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    model = han_model(update, seed=seed)
    before = model(x, adj, node_type, node_mask)
    with torch.no_grad():
        getattr(model, param).add_(0.5 * torch.randn_like(getattr(model, param)))
    return (model(x, adj, node_type, node_mask) - before).abs().max().item()


def test_han_phase_two_scores_depend_on_phase_one_in_both_orders():
    # ni_hohe: a_r is used only by phase 1 (homogeneous); values are W_V h, so any change of the output
    # comes from phase-2 (heterogeneous) scores computed on u^ho.
    assert _output_change("ni_hohe", "att_ho") > 1e-3
    # ni_heho: W_Q is used only by phase 1 (heterogeneous); phase-2 content scores are computed on u^he.
    assert _output_change("ni_heho", "w_q") > 1e-3
    # ... and the invasive orders too
    assert _output_change("hohe", "att_ho") > 1e-3
    assert _output_change("heho", "w_q") > 1e-3


def test_han_hohe_is_not_the_plain_heterogeneous_output():
    """The reference code's hohe collapsed to the phase-1 hetero output; ours must not."""
    adj, node_type, node_mask = msgraph()
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    he = han_model("he")(x, adj, node_type, node_mask)
    ni_hohe = han_model("ni_hohe")(x, adj, node_type, node_mask)
    assert (he - ni_hohe).abs().max() > 1e-3


@pytest.mark.parametrize("param", ["w_q", "w_k", "w_v"])
def test_han_query_key_value_are_distinct_maps(param):
    model = han_model("he")
    assert len({model.w_q.data_ptr(), model.w_k.data_ptr(), model.w_v.data_ptr()}) == 3
    assert not torch.equal(model.w_q, model.w_k) and not torch.equal(model.w_k, model.w_v)
    assert _output_change("he", param) > 1e-3


def test_han_key_map_is_not_the_query_map():
    """Tying W_K to W_Q (the reference code's bug) changes the output."""
    adj, node_type, node_mask = msgraph()
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    model = han_model("he")
    before = model(x, adj, node_type, node_mask)
    with torch.no_grad():
        model.w_k.copy_(model.w_q)
    assert (model(x, adj, node_type, node_mask) - before).abs().max() > 1e-3


@pytest.mark.parametrize("update", ["gate", "ni_hohe"])
def test_han_query_projections_are_separate_maps_tied_to_the_query(update):
    """``projections="query"`` holds W_Q alone and computes what separate maps with W_K = W_V = W_Q compute,
    for every node and for the readout rows."""
    adj, node_type, node_mask = msgraph()
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    tied, separate = han_model(update, projections="query"), han_model(update)
    assert tied.w_k is None and tied.w_v is None
    assert sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in tied.parameters()) \
        == 2 * separate.w_q.numel()
    separate.load_state_dict(tied.state_dict(), strict=False)
    with torch.no_grad():
        separate.w_k.copy_(tied.w_q), separate.w_v.copy_(tied.w_q)
    torch.testing.assert_close(tied(x, adj, node_type, node_mask), separate(x, adj, node_type, node_mask))
    rows = torch.tensor([5])
    torch.testing.assert_close(tied.forward_rows(x, adj, node_type, node_mask, rows),
                               separate.forward_rows(x, adj, node_type, node_mask, rows))
    with torch.no_grad():
        separate.w_v.mul_(2.0)
    assert (tied(x, adj, node_type, node_mask) - separate(x, adj, node_type, node_mask)).abs().max() > 1e-3


@pytest.mark.parametrize("gate", ["concat", "per_candidate"])
def test_han_reference_hohe_gate_matches_explicit_formula(gate):
    """``hohe_scores="input"``: the gate mixes the phase-1 heterogeneous output with the heho order."""
    adj, node_type, node_mask = msgraph()
    model = han_model("gate", hohe_scores="input", gate=gate, projections="query")
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        out = model(x, adj, node_type, node_mask)
        torch.testing.assert_close(out[0], naive_han(model, x, adj, node_type, node_mask, "gate"))
        paper_hohe = han_model("gate", gate=gate, projections="query")(x, adj, node_type, node_mask)
        assert (out - paper_hohe).abs().max() > 1e-3


def test_han_reference_hohe_needs_the_gate():
    with pytest.raises(OptionError, match="hohe_scores=input.*update 'gate' only"):
        AGGREGATORS.options("han", update="ni_hohe", hohe_scores="input")


def test_han_attention_dropout_only_in_training():
    adj, node_type, node_mask = msgraph()
    x = torch.randn(1, 7, 4, dtype=torch.float64)
    model = han_model("gate", attn_dropout=0.5)
    ref = model(x, adj, node_type, node_mask)
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(model(x, adj, node_type, node_mask), ref)
    quiet = han_model("gate", attn_dropout=0.0).train()
    torch.testing.assert_close(quiet(x, adj, node_type, node_mask),
                               han_model("gate", attn_dropout=0.0)(x, adj, node_type, node_mask))


def test_han_isolated_and_padded_nodes():
    adj, node_type, node_mask = msgraph()
    x = torch.randn(1, 7, 4, dtype=torch.float64)
    for update in UPDATES:
        out = han_model(update)(x, adj, node_type, node_mask)
        assert torch.isfinite(out).all()
        assert (out[0, 6] == 0).all()                          # padded
        if update != "sync":                                   # sync adds its Linear bias
            assert (out[0, 5] == 0).all()                      # isolated: no neighbour in either group


def test_typed_linear_maps_each_node_with_its_type_and_zeroes_padding():
    from aggregators.attention import typed_linear

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 4, generator=g)
    node_type = torch.tensor([[1, 2, 3, 0, 0], [3, 3, 1, 2, 0], [2, 1, 1, 1, 7]])  # 7 is clamped to 3
    weight = torch.randn(4, 4, 6, generator=g)
    out = typed_linear(x, node_type, weight)
    for b in range(3):
        for i in range(5):
            t = min(int(node_type[b, i]), 3)
            expected = torch.zeros(6) if t == 0 else x[b, i] @ weight[t]
            torch.testing.assert_close(out[b, i], expected)


def test_han_update_rule_is_dispatched_in_one_place(monkeypatch):
    """The dense forward and forward_rows compose their attentions through ``han.apply_update`` (the sparse
    path too: tests/with_dgl), so a rule changed there changes on every path."""
    import aggregators.han as han

    calls = []
    real = han.apply_update
    monkeypatch.setattr(han, "apply_update", lambda *args: calls.append(args[0].opts.update) or real(*args))
    adj, node_type, node_mask = msgraph()
    model = han_model("ni_heho")
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model(x, adj, node_type, node_mask)
    model.forward_rows(x, adj, node_type, node_mask, torch.tensor([0]))
    assert calls == ["ni_heho", "ni_heho"]


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_each_builtin_aggregator_holds_its_sparse_path(name):
    """One home per operator: a built-in aggregator defines its sparse (DGL) path ``forward_sparse`` itself,
    beside its dense ``forward`` (tests/with_dgl checks the two agree). Not a contract item: a plugin may
    ship the dense path only, and ``backend=dgl`` then refuses it by name (docs/plugins.md)."""
    cls = AGGREGATORS.get(name)
    assert "forward_sparse" in vars(cls) and "forward" in vars(cls)

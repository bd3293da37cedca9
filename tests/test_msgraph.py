"""MSGraph construction (specs/mmsr.md §3-§4): the batched builder against a slow per-sample reference
(``msgraph_reference.py``) on random batches, plus hand-made cases for each construction rule."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregators.base import SELF, SEQ_BOTH, SEQ_IN, SEQ_OUT, n_relations_for
from fusionbench.context import CODE_SENTINEL
from msgraph_reference import reference_msgraph
from strategies.msgraph import MSGraph, build_msgraph, count_nodes, msgraph_relations

FIELDS = ("node_ids", "node_type", "node_mask", "adj", "pos_mask", "last_node")
NAMES = ("attr", "image", "text")  # already in sorted order


def assert_same_graph(got: MSGraph, want: MSGraph) -> None:
    for f in FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        assert a.shape == b.shape and a.dtype == b.dtype, \
            f"{f}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
        assert torch.equal(a, b), f"{f} differs"


def assert_invariants(g: MSGraph, items: torch.Tensor) -> None:
    mask = g.node_mask
    pair = mask[:, None, :, None] & mask[:, None, None, :]
    assert not (g.adj & ~pair).any(), "edge on a padded node"
    assert not g.pos_mask[~mask].any() and g.pos_mask[mask].any(-1).all()
    seq = g.adj[:, [SEQ_OUT, SEQ_IN, SEQ_BOTH]].long().sum(1)
    assert seq.max() <= 1 if seq.numel() else True, "a pair in two sequential relations"
    assert not g.adj[:, 1:].diagonal(dim1=-2, dim2=-1).any(), "a self pair outside the self-loop channel"
    assert torch.equal(g.adj[:, SELF], torch.diag_embed(mask))
    real = items[:, -1] > 0
    rows = torch.arange(items.shape[0])
    assert torch.equal(g.node_ids[rows, g.last_node][real], items[real, -1])
    assert (g.last_node[~real] == 0).all()
    # real nodes first, ascending global id
    ids = torch.where(mask, g.node_ids, torch.iinfo(torch.long).max)
    assert (ids[:, 1:] > ids[:, :-1]).logical_or(~mask[:, 1:]).all()


def random_case(seed, batch, length, n_items, ks, n_codes, p_missing, p_hidden, forced):
    """Random left-padded histories (repeats, shared codes, missing modalities, per-position masks)."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, n_items + 1, (batch, length), generator=g)
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    if "single" in forced:
        lengths[0] = 1
    if "full" in forced:
        lengths[-1] = length
    items[torch.arange(length)[None, :] < (length - lengths)[:, None]] = 0
    if "repeat" in forced and length >= 2:
        items[:, -1] = torch.where(items[:, -2] > 0, items[:, -2], items[:, -1])
    codes, sizes = {}, {}
    for name, k, c in zip(NAMES, ks, n_codes):
        table = torch.randint(0, c, (n_items + 1, k), generator=g)          # duplicates within an item too
        table[torch.rand(n_items + 1, k, generator=g) < 0.15] = CODE_SENTINEL  # fewer than k codes
        table[torch.rand(n_items + 1, generator=g) < p_missing] = CODE_SENTINEL  # modality missing
        if "all-missing" in forced and name == NAMES[0]:
            table[:] = CODE_SENTINEL
        table[0] = CODE_SENTINEL
        codes[name], sizes[name] = table, c
    present = None
    if p_hidden > 0 and codes:
        present = {m: torch.rand(batch, length, generator=g) >= p_hidden for m in list(codes)[::2]}
    return items, codes, sizes, present


@st.composite
def cases(draw):
    n_mod = draw(st.integers(0, 3))
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        batch=draw(st.integers(1, 5)),
        length=draw(st.integers(1, 9)),
        n_items=draw(st.integers(1, 12)),
        ks=[draw(st.integers(1, 4)) for _ in range(n_mod)],
        n_codes=[draw(st.integers(1, 6)) for _ in range(n_mod)],
        p_missing=draw(st.sampled_from([0.0, 0.3, 1.0])),
        p_hidden=draw(st.sampled_from([0.0, 0.0, 0.4])),
        forced=draw(st.sets(st.sampled_from(["single", "full", "repeat", "all-missing"]))),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_batched_builder_equals_reference(case):
    items, codes, n_codes, present = random_case(**case)
    got = build_msgraph(items, codes, case["n_items"], n_codes, present=present)
    want = reference_msgraph(items, codes, case["n_items"], n_codes, present=present)
    assert_same_graph(got, want)
    assert_invariants(got, items)
    assert got.adj.shape[1] == n_relations_for(len(codes))
    assert torch.equal(count_nodes(items, codes, case["n_items"], n_codes, present=present), got.node_mask.sum(1))


def test_random_batch_of_realistic_size_equals_reference():
    items, codes, n_codes, present = random_case(7, 32, 20, 60, [3, 2, 4], [10, 7, 5], 0.2, 0.1,
                                                 {"single", "full", "repeat"})
    got = build_msgraph(items, codes, 60, n_codes, present=present)
    assert_same_graph(got, reference_msgraph(items, codes, 60, n_codes, present=present))
    assert_invariants(got, items)


# ----------------------------------------------------------------------------- hand-made cases
N = 9


def two_modalities():
    """image: 2 codes (C=4), text: 3 codes (C=5); item 3 lacks text, item 4 lacks both."""
    image = torch.full((N + 1, 2), CODE_SENTINEL)
    text = torch.full((N + 1, 3), CODE_SENTINEL)
    for v in range(1, N + 1):
        image[v] = torch.tensor([v % 4, (v + 1) % 4])
        text[v] = torch.tensor([v % 5, (v + 2) % 5, (v + 2) % 5])           # a repeated code
    text[3] = CODE_SENTINEL
    image[4] = CODE_SENTINEL
    text[4] = CODE_SENTINEL
    return {"image": image, "text": text}, {"image": 4, "text": 5}


def local(g: MSGraph, b: int, node_id: int) -> int:
    hit = ((g.node_ids[b] == node_id) & g.node_mask[b]).nonzero()
    assert hit.numel() == 1, f"node {node_id} not in row {b}"
    return int(hit)


def code_id(name: str, c: int) -> int:
    return N + 1 + (0 if name == "image" else 4) + c


def test_node_ids_types_and_order_by_hand():
    codes, n_codes = two_modalities()
    g = build_msgraph(torch.tensor([[0, 2, 4]]), codes, N, n_codes)
    # item 2: image {2, 3}, text {2, 4}; item 4: nothing
    assert g.node_ids.tolist() == [[2, 4, code_id("image", 2), code_id("image", 3),
                                    code_id("text", 2), code_id("text", 4)]]
    assert g.node_type.tolist() == [[1, 1, 2, 2, 3, 3]]
    assert g.last_node.tolist() == [1]
    assert g.adj.shape == (1, 10, 6, 6)


def test_removing_a_modality_removes_exactly_its_nodes_and_edges():
    codes, n_codes = two_modalities()
    items = torch.tensor([[0, 1, 2, 1, 5], [3, 3, 6, 7, 8], [0, 0, 0, 0, 9]])
    full = build_msgraph(items, codes, N, n_codes)
    only_image = build_msgraph(items, {"image": codes["image"]}, N, {"image": 4})
    text_type = 3
    keep = full.node_mask & (full.node_type != text_type)
    # channels of the reduced graph, by name, in the full graph
    full_ch = {name: i for i, name in enumerate(msgraph_relations(["image", "text"]))}
    chans = [full_ch[name] for name in msgraph_relations(["image"])]
    for b in range(items.shape[0]):
        idx = keep[b].nonzero().squeeze(1)
        n = idx.numel()
        assert torch.equal(full.node_ids[b, idx], only_image.node_ids[b, :n])  # image ids do not shift
        assert torch.equal(full.node_type[b, idx], only_image.node_type[b, :n])
        assert not only_image.node_mask[b, n:].any()
        assert torch.equal(full.pos_mask[b, idx], only_image.pos_mask[b, :n])
        sub = full.adj[b][:, idx][:, :, idx]
        assert torch.equal(sub[chans], only_image.adj[b, :, :n, :n])
        text_chans = [c for name, c in full_ch.items() if "text" in name]
        assert not sub[text_chans].any(), "a text relation between non-text nodes"
        last = int(full.node_ids[b, full.last_node[b]])
        assert last == int(only_image.node_ids[b, only_image.last_node[b]])

    # hiding text at every position (present) gives the same graph as dropping it, channels kept
    no_text = {"text": torch.zeros_like(items, dtype=torch.bool)}
    hidden = build_msgraph(items, codes, N, n_codes, present=no_text)
    assert torch.equal(hidden.node_ids, only_image.node_ids)
    assert torch.equal(hidden.adj[:, chans], only_image.adj)
    assert not hidden.adj[:, [c for name, c in full_ch.items() if "text" in name]].any()


def test_repeated_consecutive_item_has_no_self_pair():
    codes, n_codes = two_modalities()
    g = build_msgraph(torch.tensor([[0, 5, 5, 6]]), codes, N, n_codes)
    five, six = local(g, 0, 5), local(g, 0, 6)
    assert not g.adj[0, 1:4].diagonal(dim1=-2, dim2=-1).any()
    seq = g.adj[0, SEQ_OUT] | g.adj[0, SEQ_IN] | g.adj[0, SEQ_BOTH]
    assert seq[five].nonzero().squeeze(1).tolist() == [six]
    assert g.adj[0, SEQ_OUT, five, six] and g.adj[0, SEQ_IN, six, five]


def test_bidirectional_pairs_are_seq_both_only():
    codes, n_codes = two_modalities()
    g = build_msgraph(torch.tensor([[1, 2, 1, 6]]), codes, N, n_codes)
    one, two, six = local(g, 0, 1), local(g, 0, 2), local(g, 0, 6)
    for x, y in ((one, two), (two, one)):
        assert g.adj[0, SEQ_BOTH, x, y] and not g.adj[0, SEQ_OUT, x, y] and not g.adj[0, SEQ_IN, x, y]
    # 1 -> 6 only one way: out at [earlier, later], in at [later, earlier]
    assert g.adj[0, SEQ_OUT, one, six] and g.adj[0, SEQ_IN, six, one]
    assert not g.adj[0, SEQ_BOTH, one, six] and not g.adj[0, SEQ_OUT, six, one]
    # image codes: item 1 {1, 2}, item 2 {2, 3}; step 1->2 links (1, 3) and step 2->1 links (3, 1)
    c1, c3 = local(g, 0, code_id("image", 1)), local(g, 0, code_id("image", 3))
    assert g.adj[0, SEQ_BOTH, c1, c3] and g.adj[0, SEQ_BOTH, c3, c1]


def test_pos_mask_of_a_repeated_item_marks_every_position():
    codes, n_codes = two_modalities()
    g = build_msgraph(torch.tensor([[0, 4, 2, 4, 4]]), codes, N, n_codes)
    assert g.pos_mask[0, local(g, 0, 4)].nonzero().squeeze(1).tolist() == [1, 3, 4]
    assert g.pos_mask[0, local(g, 0, code_id("image", 2))].nonzero().squeeze(1).tolist() == [2]
    # present hides image at position 2: the code node still comes from no other position -> gone
    present = {"image": torch.tensor([[True, True, False, True, True]])}
    h = build_msgraph(torch.tensor([[0, 4, 2, 4, 4]]), codes, N, n_codes, present=present)
    assert code_id("image", 2) not in h.node_ids[0, h.node_mask[0]].tolist()
    assert code_id("text", 2) in h.node_ids[0, h.node_mask[0]].tolist()


def test_adj_never_touches_padded_nodes_and_last_node_points_at_the_last_item():
    codes, n_codes = two_modalities()
    items = torch.tensor([[0, 0, 0, 0, 7], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0], [0, 0, 9, 9, 4]])
    g = build_msgraph(items, codes, N, n_codes)
    assert_invariants(g, items)
    assert not g.node_mask[2].any() and int(g.last_node[2]) == 0
    for b in (0, 1, 3):
        assert int(g.node_ids[b, g.last_node[b]]) == int(items[b, -1])
        assert int(g.node_type[b, g.last_node[b]]) == 1


def test_cross_edges_stay_within_one_position():
    codes, n_codes = two_modalities()
    g = build_msgraph(torch.tensor([[1, 2]]), codes, N, n_codes)
    names = msgraph_relations(["image", "text"])
    one, two = local(g, 0, 1), local(g, 0, 2)
    image_of_two = local(g, 0, code_id("image", 3))  # item 2 has image {2, 3}; item 1 has {1, 2}
    text_of_one = local(g, 0, code_id("text", 1))    # item 1 has text {1, 3}; item 2 has {2, 4}
    assert g.adj[0, names.index("item<-image"), two, image_of_two]
    assert g.adj[0, names.index("image<-item"), image_of_two, two]
    assert not g.adj[0, names.index("item<-image"), one, image_of_two]
    assert not g.adj[0, names.index("text<-image"), text_of_one, image_of_two]
    assert g.adj[0, names.index("image<-text"), image_of_two, local(g, 0, code_id("text", 4))]


def test_left_padding_only_shifts_positions():
    codes, n_codes = two_modalities()
    short = torch.tensor([[0, 3, 1, 2], [5, 6, 5, 6]])
    longer = torch.cat([torch.zeros(2, 3, dtype=torch.long), short], 1)
    a, b = build_msgraph(short, codes, N, n_codes), build_msgraph(longer, codes, N, n_codes)
    for f in ("node_ids", "node_type", "node_mask", "adj", "last_node"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert torch.equal(a.pos_mask, b.pos_mask[..., 3:]) and not b.pos_mask[..., :3].any()


def test_no_modalities_gives_an_item_graph():
    g = build_msgraph(torch.tensor([[0, 1, 2, 1]]), {}, 3, {})
    assert g.adj.shape == (1, 4, 2, 2) and g.node_type.tolist() == [[1, 1]]
    assert g.adj[0, SEQ_BOTH].tolist() == [[False, True], [True, False]]


def test_relation_names():
    assert msgraph_relations(["text", "image"]) == [
        "self", "seq-out", "seq-in", "seq-both", "item<-image", "image<-item", "item<-text",
        "text<-item", "image<-text", "text<-image"]
    for m in range(4):
        assert len(msgraph_relations([f"m{i}" for i in range(m)])) == n_relations_for(m)


@pytest.mark.parametrize("bad, message", [
    (dict(n_codes={"image": 4}), "different modalities"),
    (dict(n_codes={"image": 3, "text": 5}), "must lie in 0..2"),
    (dict(items=torch.tensor([[0, 10]])), "item ids must lie in 0..9"),
    (dict(present={"audio": torch.ones(1, 2, dtype=torch.bool)}), "unknown modality 'audio'"),
    (dict(present={"text": torch.ones(1, 3, dtype=torch.bool)}), "present\\['text'\\] must be bool"),
])
def test_bad_inputs_are_rejected(bad, message):
    codes, n_codes = two_modalities()
    args = dict(items=torch.tensor([[1, 2]]), codes=codes, n_items=N, n_codes=n_codes, present=None)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        build_msgraph(**args)

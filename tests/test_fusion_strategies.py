"""Model-specific checks of the fusion strategies and ID baselines, beyond the contract suite."""
import pytest
import torch

from fusionbench.context import CODE_SENTINEL, ModalityTable, SeqBatch, StrategyContext
from fusionbench.options import OptionError
from fusionbench.registry import STRATEGIES
from strategies.backbones import CausalGRU, causal_allowed
from strategies.fusion import ChannelFusion, ModalityInputs
from strategies.srgnn import session_graph
from strategy_fixtures import N_ITEMS, tiny_batch, tiny_context, with_left_padding

FEATURE_AWARE = ["early", "late", "sasrecf", "gru4recf", "trans2d", "nova", "difsr"]
SMALL = {"difsr": dict(dim=16, heads=2, layers=1, attribute_dim=8)}


def build(name, ctx=None, seed=0, **options):
    torch.manual_seed(seed)
    model = STRATEGIES.create(name, ctx or tiny_context(), **{**SMALL.get(name, {}), **options})
    return model.eval()


def other_features(ctx: StrategyContext, seed: int = 5) -> StrategyContext:
    """Same items, presence and codes; different dense features."""
    g = torch.Generator().manual_seed(seed)
    return ctx.with_modalities({
        m: t.replace(features=torch.randn(t.features.shape, generator=g) * t.present[:, None])
        for m, t in ctx.modalities.items()
    })


def all_present(ctx: StrategyContext) -> StrategyContext:
    g = torch.Generator().manual_seed(9)
    tables = {}
    for m, t in ctx.modalities.items():
        present = torch.ones_like(t.present)
        present[0] = False
        tables[m] = t.replace(features=torch.randn(t.features.shape, generator=g) * present[:, None], present=present)
    return ctx.with_modalities(tables)


# ---- early vs late ----------------------------------------------------------------------------

def test_late_id_channel_ignores_features_until_the_final_fusion():
    ctx = all_present(tiny_context())
    a, b = build("late", ctx), build("late", other_features(ctx))
    batch = tiny_batch()
    with torch.no_grad():
        sa, sb = a.channel_states(batch), b.channel_states(batch)
        torch.testing.assert_close(sa[:, :, 0], sb[:, :, 0], rtol=0, atol=0)   # ID channel untouched
        assert not torch.allclose(sa[:, -1, 1:], sb[:, -1, 1:])                # modality channels move
        assert not torch.allclose(a.encode(batch), b.encode(batch))            # ... and so does P
    assert sa.shape[-2] == 1 + len(ctx.modalities)


def test_early_fuses_features_into_the_encoder_input():
    ctx = all_present(tiny_context())
    a, b = build("early", ctx), build("early", other_features(ctx))
    batch = tiny_batch()
    with torch.no_grad():
        real = batch.mask
        assert not torch.isclose(a.inputs(batch)[real], b.inputs(batch)[real]).all(-1).any()
        torch.testing.assert_close(a.channels(batch)[..., 0, :], b.channels(batch)[..., 0, :])


@pytest.mark.parametrize("name", ["early", "late"])
def test_without_ids_an_item_is_only_its_modalities(name):
    """``ids=False``: two items with the same features, presence and codes are the same item to the
    model, in the history and as candidates; with the ID channel (the default) they are not."""
    ctx = all_present(tiny_context())
    item4 = torch.tensor([4])
    twin = ctx.with_modalities({m: t.replace(features=t.features.clone().index_copy_(0, item4, t.features[[3]]),
                                             codes=t.codes.clone().index_copy_(0, item4, t.codes[[3]]))
                                for m, t in ctx.modalities.items()})
    batch = tiny_batch()
    swapped = SeqBatch(items=torch.where(batch.items == 3, 4, batch.items), target=batch.target)
    assert not torch.equal(swapped.items, batch.items)
    with torch.no_grad():
        blind = build(name, twin, ids=False)
        assert not [n for n, _ in blind.named_parameters() if n.startswith("item.")]
        emb = blind.item_embeddings()
        torch.testing.assert_close(emb[3], emb[4], rtol=0, atol=0)
        torch.testing.assert_close(blind.encode(swapped), blind.encode(batch), rtol=0, atol=0)
        seeing = build(name, twin)
        assert not torch.allclose(seeing.encode(swapped), seeing.encode(batch))
        assert not torch.allclose(seeing.item_embeddings()[3], seeing.item_embeddings()[4])


def test_presets_are_option_defaults_of_the_generic_strategies():
    early, late = STRATEGIES.get("early"), STRATEGIES.get("late")
    assert issubclass(STRATEGIES.get("sasrecf"), early) and issubclass(STRATEGIES.get("gru4recf"), late)
    sasrecf = build("sasrecf")
    assert sasrecf.opts.target == "id" and sasrecf.opts.fusion == "concat"
    assert sasrecf.backbone.kind == "sasrec" and sasrecf.item_embeddings() is sasrecf.item.weight
    gru4recf = build("gru4recf")
    assert (gru4recf.opts.backbone, gru4recf.opts.features, gru4recf.opts.layers) == ("gru4rec", "merged", 1)
    assert gru4recf.n_channels == 2 and len(gru4recf.backbones) == 2
    assert STRATEGIES.get("gru4recf").train_defaults["batch_size"] == 256
    assert build("late", shared=True).backbones.__len__() == 1


# ---- NOVA and DIF-SR: side information in the attention scores only ---------------------------

@pytest.mark.parametrize("name", ["nova", "difsr"])
def test_attention_level_fusion_keeps_values_in_item_space(name):
    """With one position the attention weight is 1 whatever the scores, so the output cannot depend
    on side features; with longer histories it does (through the attention weights)."""
    ctx = all_present(tiny_context())
    a, b = build(name, ctx), build(name, other_features(ctx))
    single = SeqBatch(items=torch.arange(1, 7)[:, None], target=torch.ones(6, dtype=torch.long))
    long = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(a.encode(single), b.encode(single), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(a.encode(long)[-1], b.encode(long)[-1])
    assert a.item_embeddings() is a.item.weight


def test_difsr_fuses_per_stream_scores_before_the_softmax():
    model = build("difsr", fusion="sum")
    batch = tiny_batch()
    block = model.encoder.blocks[0]
    x = block.norm1(model.item(batch.items) * model.scale)
    side = model.side_info(batch)
    allowed = causal_allowed(batch.mask)
    with torch.no_grad():
        _, streams = block.scorer.stream_scores(x, side)
        assert streams.shape[1] == 2 + len(model.side)            # id, position, each modality
        fused = block.scorer(x, side)
        torch.testing.assert_close(fused, streams.sum(1))
        # output = softmax(sum_s A_s + mask) V, not an average of per-stream softmaxes
        v = block.attn.value(x).view(*x.shape[:2], 2, -1).transpose(1, 2)
        probs = fused.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
        manual = block.attn.out((probs @ v).transpose(1, 2).reshape(x.shape))
        torch.testing.assert_close(block.attn(x, fused, allowed), manual)
        late_softmax = streams.masked_fill(~allowed[:, None, None], float("-inf")).softmax(-1).mean(1)
        assert not torch.allclose(probs, late_softmax)
    gated = build("difsr", fusion="gate")
    with torch.no_grad():
        logits, streams = gated.encoder.blocks[0].scorer.stream_scores(x, side)
        weights = logits.softmax(1)
        torch.testing.assert_close(weights.sum(1), torch.ones_like(weights[:, 0]))
        # the forward pass (one product over concatenated features) is the gate-weighted sum of the streams
        torch.testing.assert_close(gated.encoder.blocks[0].scorer(x, side), (weights[..., None] * streams).sum(1))
    mixed = build("difsr", fusion="concat")
    scorer = mixed.encoder.blocks[0].scorer
    with torch.no_grad():
        _, streams = scorer.stream_scores(x, side)
        expected = (streams * scorer.mix.weight.view(-1, 1, 1, 1)).sum(1) + scorer.mix.bias
        torch.testing.assert_close(scorer(x, side), expected)


def test_difsr_reference_layout_normalises_the_raw_item_input_and_after_each_residual_sum():
    """``norm=post, init=normal``: hidden = the post-norm blocks over LN(E_v) (no √d, no final LayerNorm),
    each block LN(h + Attn(h, scorer(h))) then LN(h + FFN(h)), the scorer reading h itself."""
    model = build("difsr", norm="post", init="normal", layers=2)
    batch = tiny_batch()
    allowed = causal_allowed(batch.mask)
    side = model.side_info(batch)
    with torch.no_grad():
        h = model.encoder.norm(model.item(batch.items))
        for block in model.encoder.blocks:
            h = block.norm1(h + block.attn(h, block.scorer(h, side), allowed))
            h = block.norm2(h + block.ffn(h))
        expected = h * batch.mask[..., None]
        torch.testing.assert_close(model.hidden(batch), expected)
        pre = build("difsr", layers=2)
        pre.load_state_dict(model.state_dict())
        assert not torch.allclose(pre.hidden(batch), expected, atol=1e-3)   # the pre-norm wiring differs
    assert model.scale == 1.0 and build("difsr").scale == 4.0               # √16 under the default init


def test_difsr_attribute_predictor_adds_a_finite_loss():
    batch = tiny_batch()
    torch.manual_seed(0)
    with_aap = build("difsr", aap_weight=10.0).loss(batch)
    without = build("difsr", aap_weight=0.0)
    assert not without.aap_names and torch.isfinite(with_aap)
    assert with_aap > without.loss(batch)
    missing = build("difsr", tiny_context().with_all_modalities_missing())
    assert missing.aap_loss(missing.encode(batch), batch.target) == 0


def test_nova_integrated_representation_mixes_item_and_side():
    model = build("nova", fusion="concat")
    scorer = model.encoder.blocks[0].scorer
    assert scorer.fuse.n_channels == 2 + len(model.side)          # item, position, each modality


# ---- Trans2D: attention over positions x channels ----------------------------------------------

def test_trans2d_cells_attend_across_channels_and_earlier_positions_only():
    ctx = all_present(tiny_context())
    a, b = build("trans2d", ctx), build("trans2d", other_features(ctx))
    single = SeqBatch(items=torch.arange(1, 7)[:, None])
    batch = tiny_batch()
    with torch.no_grad():
        # the ID cell of a one-item history sees that item's modality cells
        assert not torch.allclose(a.grid(single)[:, 0, 0], b.grid(single)[:, 0, 0])
        # causal on positions: changing the last item leaves every earlier cell unchanged
        changed = batch.items.clone()
        changed[:, -1] = changed[:, -1] % N_ITEMS + 1
        ga, gc = a.grid(batch), a.grid(SeqBatch(items=changed))
        torch.testing.assert_close(ga[:, :-1], gc[:, :-1])
        assert not torch.allclose(ga[:, -1], gc[:, -1])
    allowed = causal_allowed(batch.mask)
    c = a.n_channels
    cells = a.blocks[0].attn.cell_allowed(allowed, c)
    assert cells.shape == (batch.size, batch.items.shape[1] * c, batch.items.shape[1] * c)
    torch.testing.assert_close(cells, torch.kron(allowed.int(), torch.ones(c, c, dtype=torch.int)).bool())


# ---- GRU backbones ------------------------------------------------------------------------------

def test_causal_gru_never_reads_padding_and_matches_prefix_runs():
    torch.manual_seed(0)
    gru = CausalGRU(8).eval()
    lengths = torch.tensor([1, 3, 5])
    width = 5
    mask = torch.arange(width)[None, :] >= (width - lengths)[:, None]
    x = torch.randn(3, width, 8)
    garbage = torch.where(mask[..., None], x, torch.randn(3, width, 8) * 100)   # padding content is junk
    padded = torch.cat([torch.randn(3, 4, 8), garbage], 1)                      # plus extra left padding
    pmask = torch.cat([torch.zeros(3, 4, dtype=torch.bool), mask], 1)
    with torch.no_grad():
        out, out2 = gru(x * mask[..., None], mask), gru(padded, pmask)
        torch.testing.assert_close(out, out2[:, 4:], rtol=1e-5, atol=1e-6)
        assert (out[~mask] == 0).all()
        for row, n in enumerate(lengths.tolist()):                              # test-only loop
            ref, _ = gru.gru(x[row:row + 1, width - n:])
            torch.testing.assert_close(out[row, width - n:], ref[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,options", [("gru4rec", {}), ("early", {"backbone": "gru4rec"}),
                                          ("late", {"backbone": "gru4rec"})])
def test_gru_strategies_are_invariant_to_left_padding(name, options):
    model = build(name, **options)
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.score(batch), model.score(with_left_padding(batch, 5)), rtol=1e-5, atol=1e-6)


# ---- SR-GNN session graph -----------------------------------------------------------------------

def test_srgnn_session_graph_on_a_hand_example():
    # history 5 -> 3 -> 5 -> 7 (left-padded) and 2 -> 2
    g = session_graph(torch.tensor([[0, 0, 5, 3, 5, 7], [0, 0, 0, 0, 2, 2]]))
    assert g.node_items.tolist() == [[3, 5, 7], [2, 0, 0]]
    assert g.node_mask.tolist() == [[True, True, True], [True, False, False]]
    assert g.alias.tolist() == [[0, 0, 1, 0, 1, 2], [0, 0, 0, 0, 0, 0]]
    # edges 5->3, 3->5, 5->7: out-degree(5) = 2; each in-degree 1
    expected_out = torch.tensor([[0, 1, 0], [0.5, 0, 0.5], [0, 0, 0]])
    expected_in = torch.tensor([[0, 1.0, 0], [1, 0, 0], [0, 1, 0]])
    torch.testing.assert_close(g.a_out[0], expected_out)
    torch.testing.assert_close(g.a_in[0], expected_in)
    # self-loop 2 -> 2
    torch.testing.assert_close(g.a_out[1], torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    torch.testing.assert_close(g.a_in[1], g.a_out[1])


def test_srgnn_edge_weights_are_occurrence_counts():
    g = session_graph(torch.tensor([[1, 2, 1, 2, 1, 3]]))    # 1->2 twice, 2->1 twice, 1->3 once
    torch.testing.assert_close(g.a_out[0], torch.tensor([[0, 2 / 3, 1 / 3], [1.0, 0, 0], [0, 0, 0]]))
    torch.testing.assert_close(g.a_in[0], torch.tensor([[0, 1.0, 0], [1.0, 0, 0], [1.0, 0, 0]]))


# ---- modality channels ----------------------------------------------------------------------------

def test_missing_modality_uses_the_learned_vector_not_zeros():
    ctx = tiny_context()
    torch.manual_seed(0)
    inputs = ModalityInputs(ctx, 8).eval()
    text = ctx.modalities["text"]
    absent = int(torch.nonzero(~text.present[1:])[0]) + 1
    present = int(torch.nonzero(text.present[1:])[0]) + 1
    k = inputs.names.index("text")
    channel = inputs.channels[k]
    with torch.no_grad():
        channel.missing.fill_(0.25)
        out = inputs.lookup(torch.tensor([[absent, present]]))
    torch.testing.assert_close(out[0, 0, k], torch.full((8,), 0.25))
    torch.testing.assert_close(out[0, 1, k], channel.proj(text.features[present]))
    assert channel.proj(text.features[absent]).abs().sum() > 0      # a zero feature through the bias is not it
    # an occurrence mask hides a present item at one position only
    with torch.no_grad():
        hidden = inputs.lookup(torch.tensor([[present, present]]), {"text": torch.tensor([[False, True]])})
    torch.testing.assert_close(hidden[0, 0, k], channel.missing)
    torch.testing.assert_close(hidden[0, 1, k], out[0, 1, k])


def test_a_feature_table_is_projected_once_per_distinct_item_with_the_same_values_and_gradients():
    ctx = tiny_context()
    torch.manual_seed(0)
    inputs = ModalityInputs(ctx, 8).eval()
    k = inputs.names.index("text")
    channel, features = inputs.channels[k], ctx.modalities["text"].features.float()
    items = torch.tensor([[0, 0, 3, 5, 3], [0, 7, 7, 7, 3]])           # padding and repeats, as in a batch
    projected = channel.raw(items)
    direct = channel.proj(features[items])
    torch.testing.assert_close(projected, direct)
    torch.testing.assert_close(channel.raw(), channel.proj(features))   # the whole table, in id order
    torch.testing.assert_close(inputs.table(), inputs.lookup(torch.arange(N_ITEMS + 1)[None])[0])
    weights = torch.randn(direct.shape)
    grads = [torch.autograd.grad((out * weights).sum(), channel.proj.weight)[0]
             for out in (channel.raw(items), channel.proj(features[items]))]
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("n_modalities", [0, 2])
def test_the_channel_table_lives_on_the_module_device(n_modalities):
    ctx = tiny_context()
    ctx = ctx.with_modalities(dict(list(ctx.modalities.items())[:n_modalities]))
    inputs = ModalityInputs(ctx, 4).to("meta")     # any device but the CPU; without channels too
    table = inputs.table()
    assert table.device.type == "meta" and table.shape == (N_ITEMS + 1, n_modalities, 4)


@pytest.mark.parametrize("name", FEATURE_AWARE)
def test_occurrence_masks_change_the_output(name):
    model = build(name)
    batch = tiny_batch()
    hide = {m: torch.zeros_like(batch.mask) for m in model.ctx.modalities}
    with torch.no_grad():
        plain = model.score(batch)
        masked = model.score(SeqBatch(batch.items, batch.target, present=hide))
    assert torch.isfinite(masked[:, 1:]).all() and not torch.allclose(plain, masked)


def code_only_context(n_items: int = N_ITEMS) -> StrategyContext:
    """``attr``: no dense features, up to 3 attribute codes per item; ``image``: dense."""
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 7, (n_items + 1, 3), generator=g)
    codes[torch.rand(n_items + 1, 3, generator=g) < 0.3] = CODE_SENTINEL
    codes[0] = CODE_SENTINEL
    codes[1] = CODE_SENTINEL                                         # item 1 has no attribute at all
    present = torch.ones(n_items + 1, dtype=torch.bool)
    present[0] = False
    attr = ModalityTable(torch.zeros(n_items + 1, 0), present, codes, 7)
    image = tiny_context().modalities["image"]
    return StrategyContext(n_items=n_items, max_len=8).with_modalities({"attr": attr, "image": image})


def test_code_only_channel_is_the_mean_of_its_code_embeddings():
    ctx = code_only_context()
    torch.manual_seed(0)
    inputs = ModalityInputs(ctx, 4).eval()
    channel = inputs.channels[inputs.names.index("attr")]
    assert channel.uses_codes and channel.proj is None
    table = inputs.table()[:, inputs.names.index("attr")]
    codes = ctx.modalities["attr"].codes
    item = int(torch.nonzero((codes[2:] >= 0).sum(1) >= 2)[0]) + 2
    valid = codes[item][codes[item] >= 0]
    torch.testing.assert_close(table[item], channel.code_weight[valid].mean(0))
    torch.testing.assert_close(table[1], channel.missing)           # no valid code -> missing vector


@pytest.mark.parametrize("name", FEATURE_AWARE)
def test_strategies_take_any_named_channels_including_code_only_ones(name):
    ctx = code_only_context()
    model = build(name, ctx)
    assert model.side.names == ("attr", "image")
    assert torch.isfinite(model.score(tiny_batch())[:, 1:]).all()
    model.train()
    model.loss(tiny_batch()).backward()
    assert model.side.channels[0].code_weight.grad.abs().sum() > 0
    one = build(name, ctx.with_modalities({"photo": ctx.modalities["image"]}))
    assert one.side.names == ("photo",) and torch.isfinite(one.score(tiny_batch())[:, 1:]).all()


# ---- fusion operators and options -------------------------------------------------------------

def test_channel_fusion_operators():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(ChannelFusion(3, 4, "sum")(x), x.sum(-2))
    gate = ChannelFusion(3, 4, "gate")
    weights = gate.gate(x)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(gate(x), (weights[..., None] * x).sum(-2))
    concat = ChannelFusion(3, 4, "concat", "gelu")
    assert concat.linear.in_features == 12 and concat(x).shape == (2, 5, 4)
    assert not list(ChannelFusion(1, 4, "gate").parameters())
    with pytest.raises(ValueError, match="built for 3 channels"):
        gate(x[..., :2, :])


@pytest.mark.parametrize("name,options,message", [
    ("early", {"dim": 10, "heads": 3}, "'dim' \\(10\\) must be divisible by 'heads' \\(3\\)"),
    ("early", {"ids": "false", "target": "id"}, "'ids=false' needs target='fused'"),
    ("late", {"ids": "false", "target": "id"}, "'ids=false' needs target='fused'"),
    ("late", {"feature_dropout": 1.0}, "'feature_dropout' must be in"),
    ("difsr", {"attribute_dim": 10, "heads": 4, "dim": 16}, "'attribute_dim' \\(10\\)"),
    ("nova", {"fusion": "mean"}, "'fusion' must be one of"),
    ("srgnn", {"steps": 0}, "'steps' must be >= 1"),
    ("gru4rec", {"dropout": -0.1}, "'dropout' must be in"),
])
def test_options_explain_their_errors(name, options, message):
    with pytest.raises(OptionError, match=message):
        STRATEGIES.options(name, **options)


@pytest.mark.parametrize("name", ["early", "late"])
def test_without_ids_a_context_without_modalities_is_refused(name):
    with pytest.raises(OptionError, match="'ids=false' leaves no channel"):
        STRATEGIES.create(name, tiny_context().with_modalities({}), ids=False)


def test_fusion_stage_labels():
    stages = {n: STRATEGIES.get(n).fusion_stage for n in FEATURE_AWARE + ["gru4rec", "srgnn"]}
    assert stages == {"early": "early", "sasrecf": "early", "late": "late", "gru4recf": "late",
                      "trans2d": "holistic", "nova": "attention", "difsr": "attention",
                      "gru4rec": "none", "srgnn": "none"}
    assert not STRATEGIES.get("gru4rec").uses_modalities and not STRATEGIES.get("srgnn").uses_modalities

"""MMSR strategy: ablation options, aggregator wiring, code-embedding init, modality handling."""
import pytest
import torch

from aggregators.han import UPDATES
from fusionbench.context import CODE_SENTINEL, ModalityTable
from fusionbench.options import OptionError
from fusionbench.registry import AGGREGATORS, STRATEGIES
from strategies.mmsr import code_centroids
from strategy_fixtures import N_ITEMS, tiny_batch, tiny_context, with_left_padding


def mmsr(ctx=None, aggregator=None, agg_options=None, **options):
    """An MMSR model whose context carries every aggregator option at its default, as a resolved run
    config does (``fusionbench.runner.build_context``), with ``agg_options`` on top."""
    ctx = ctx or tiny_context()
    name = aggregator or "han"
    resolved = AGGREGATORS.options(name, **(agg_options or {})).as_dict()
    ctx = type(ctx)(ctx.n_items, ctx.max_len, ctx.modalities, name, resolved)
    torch.manual_seed(0)
    return STRATEGIES.create("mmsr", ctx, dim=16, **options)


@pytest.mark.parametrize("update", UPDATES)
def test_every_table4_update_row_runs(update):
    model = mmsr(agg_options={"update": update})
    assert model.layers[0].opts.update == update
    model.eval()
    assert torch.isfinite(model.score(tiny_batch())[:, 1:]).all()


@pytest.mark.parametrize("aggregator", AGGREGATORS.names())
def test_every_table3_aggregator_runs_on_the_msgraph(aggregator):
    model = mmsr(aggregator=aggregator)
    model.eval()
    assert model.score(tiny_batch()).shape == (6, N_ITEMS + 1)


@pytest.mark.parametrize("aggregator", ["han", "gat"])
def test_readout_of_the_last_node_equals_the_full_last_layer(aggregator):
    """MMSR computes its last layer for the last item's node only when the aggregator can
    (``forward_rows``); the encoding must equal the full layer read at that node."""
    model = mmsr(aggregator=aggregator, layers=2).eval()
    batch = tiny_batch()
    g = model.graph(batch)
    h = model.node_inputs(g)
    for layer in model.layers:
        h = layer(h, g.adj, g.node_type, g.node_mask) * g.node_mask[..., None]
    torch.testing.assert_close(model.encode(batch), h[torch.arange(h.shape[0]), g.last_node])


def test_update_reaches_han_through_a_resolved_run_config():
    """`fusionbench run --strategy mmsr --set agg.update=sync`: the one update option is the aggregator's."""
    from fusionbench.data.splits import make_split
    from fusionbench.runner import RunRequest, build_context, load_data, resolve

    config = resolve(RunRequest(strategy="mmsr", dataset="synthetic", strategy_options={"dim": "16"},
                                aggregator_options={"update": "sync"},
                                dataset_options={"n_users": "80", "n_codes": "3", "per_cell": "2", "max_len": "10"},
                                feature_options={"reduce": "pca", "n_clusters": 4, "k": 2}))
    assert config["aggregator_options"]["update"] == "sync" and "update" not in config["strategy_options"]
    data = load_data(config, None)
    ctx = build_context(config, data, make_split(data, "loo"))
    model = STRATEGIES.create("mmsr", ctx, **config["strategy_options"])
    assert model.layers[0].opts.update == "sync" and model.layers[0].sync is not None


def test_the_removed_update_option_names_the_one_to_use():
    """MMSR's own ``update`` duplicated han's ``agg.update`` and is gone: giving it (flag, sweep file or Python)
    is an error that names ``agg.update``, not a plain unknown option."""
    from fusionbench.errors import UserInputError
    from fusionbench.runner import RunRequest, resolve

    with pytest.raises(OptionError, match=r"strategy 'mmsr': option 'update' was removed: .*--set agg.update="):
        resolve(RunRequest(strategy="mmsr", dataset="synthetic", strategy_options={"update": "sync"}))
    with pytest.raises(OptionError, match="option 'update' was removed"):
        mmsr(update="sync")
    with pytest.raises((OptionError, UserInputError), match="unknown option 'updat'"):
        resolve(RunRequest(strategy="mmsr", dataset="synthetic", strategy_options={"updat": "sync"}))


def test_training_defaults_follow_the_reference_configuration():
    """specs/mmsr.md §7: lr 2e-3, ≤ 100 epochs, patience 8, StepLR every 40 epochs (γ 0.1, not the reference's
    1e-4); a --set train.* still overrides them."""
    from fusionbench.runner import RunRequest, resolve

    train = resolve(RunRequest(strategy="mmsr", dataset="synthetic"))["train"]
    schedule = (train["lr"], train["epochs"], train["patience"], train["lr_step"], train["lr_gamma"])
    assert schedule == (0.002, 100, 8, 40, 0.1)
    constant = resolve(RunRequest(strategy="mmsr", dataset="synthetic", train_options={"lr_step": "0"}))
    assert constant["train"]["lr_step"] == 0


def test_pos_and_type_ablations_drop_their_part():
    full, no_pos, no_type = mmsr(), mmsr(use_pos=False), mmsr(use_type=False)
    assert full.project.in_features == 48 and no_pos.project.in_features == 32 == no_type.project.in_features
    assert no_pos.position is None and no_type.node_type is None


@pytest.mark.parametrize("options", [{}, {"position": "oldest"}, {"use_pos": False}, {"use_type": False}])
def test_node_inputs_are_the_projected_concatenation(options):
    """h^0 = [e_x ; e^ty ; e^po] W_pt (mmsr.md §4), written out here with the concatenation."""
    model = mmsr(**options)
    batch = with_left_padding(tiny_batch(), 3)
    g = model.graph(batch)
    parts = [model.node(g.node_ids)]
    if model.node_type is not None:
        parts.append(model.node_type(g.node_type))
    if model.position is not None:
        width = batch.items.shape[1]
        n_real = (batch.items > 0).sum(1, keepdim=True)
        from_recent = torch.arange(width - 1, -1, -1).expand(len(batch.items), width)
        index = from_recent if model.opts.position == "recent" else torch.arange(width) - (width - n_real)
        table = model.position(index.clamp(0, model.ctx.max_len - 1))                 # [B, W, d]
        occurs = g.pos_mask.float()
        parts.append(occurs @ table / occurs.sum(-1, keepdim=True).clamp(min=1))
    expected = model.project(torch.cat(parts, -1)) * g.node_mask[..., None]
    torch.testing.assert_close(model.node_inputs(g), expected, rtol=1e-5, atol=1e-6)


def test_code_centroids_by_hand():
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    present = torch.tensor([False, True, True, True])
    codes = torch.tensor([[CODE_SENTINEL], [0], [1], [0]])
    ctx = tiny_context().with_modalities({"m": ModalityTable(feats, present, codes, 3)})
    init = code_centroids(ctx, dim=2)
    # code 0 = mean of items 1, 3 = (1, 0); code 1 = item 2 = (0, 1); code 2 unused = (0, 0);
    # then all values rescaled from [0, 1] into [-1/sqrt(2), 1/sqrt(2)]
    b = 2 ** -0.5
    torch.testing.assert_close(init, torch.tensor([[b, -b], [-b, b], [-b, -b]]))
    model = mmsr(ctx)
    assert model.node.weight.shape[0] == N_ITEMS + 1 + 3
    torch.testing.assert_close(model.node.weight[N_ITEMS + 1:], code_centroids(ctx, dim=16))


def test_modalities_enter_the_scores():
    """Changing one modality's codes changes MMSR's output; an ID-only context still works."""
    ctx = tiny_context()
    model = mmsr(ctx)
    model.eval()
    batch = tiny_batch()
    base = model.score(batch)
    text = ctx.modalities["text"]
    shuffled = text.replace(codes=text.codes.roll(1, dims=0))
    other = mmsr(ctx.with_modalities({**ctx.modalities, "text": shuffled}))
    other.load_state_dict(model.state_dict())
    other.eval()
    assert not torch.allclose(base, other.score(batch))


@pytest.mark.parametrize("position", ["recent", "oldest"])
def test_both_position_conventions_ignore_left_padding(position):
    model = mmsr(position=position)
    model.eval()
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.score(batch), model.score(with_left_padding(batch, 4)), rtol=1e-4, atol=1e-5)


def test_position_conventions_differ():
    recent, oldest = mmsr(position="recent"), mmsr(position="oldest")
    oldest.load_state_dict(recent.state_dict())
    recent.eval(), oldest.eval()
    batch = tiny_batch()
    assert not torch.allclose(recent.encode(batch), oldest.encode(batch))


def test_dgl_backend_without_dgl_names_the_environment():
    import importlib.util

    if importlib.util.find_spec("dgl") is not None:
        pytest.skip("dgl is installed here; tests/with_dgl covers backend=dgl")
    with pytest.raises(OptionError, match="tox -e dgl"):
        STRATEGIES.options("mmsr", backend="dgl")


def test_uniform_init_draws_every_parameter_from_the_reference_range_but_the_codes():
    """``init=uniform``: every parameter (biases too) within ±1/√d and spread over it,
    the code rows still the centroids; the default keeps the modules' own initialisations."""
    ctx = tiny_context()
    model = mmsr(ctx, init="uniform")
    bound = 16 ** -0.5
    first_code = N_ITEMS + 1
    for name, p in model.named_parameters():
        values = p[:first_code] if name == "node.weight" else p
        assert values.abs().max() <= bound, name
        if values.numel() >= 64:   # spread over the range, not left at zero or one
            assert values.abs().max() > 0.8 * bound and values.std() > 0.4 * bound, name
    torch.testing.assert_close(model.node.weight[first_code:], code_centroids(ctx, dim=16))
    own = mmsr(ctx)
    assert own.node.weight[:first_code].abs().max() > bound        # own init: items N(0, 1/d), unbounded
    assert STRATEGIES.options("mmsr").as_dict() == STRATEGIES.options("mmsr", init="own").as_dict()
    assert STRATEGIES.options("mmsr", init="uniform").as_dict()["init"] == "uniform"

"""The synthetic dataset: determinism, shapes, each mechanism's rule, feature clusters, missingness, options."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fusionbench.data.synthetic import (
    MECHANISMS,
    PRESETS,
    SyntheticOptions,
    cross_table,
    generate,
    ground_truth,
)
from fusionbench.options import OptionError
from fusionbench.registry import DATASETS


def transitions(data):
    """(prev, next) item ids of every within-user step."""
    flat = data.flat.numpy()
    first = np.zeros(flat.size, dtype=bool)
    first[data.offsets[:-1].numpy()] = True
    nxt = np.flatnonzero(~first)
    return flat[nxt - 1], flat[nxt]


def cramers_v(x, y, C, C_x=None):
    """Cramér's V of codes x in 0..C_x-1 (default C) and y in 0..C-1: 0 = independent, 1 = y is a
    function of x. Used instead of a chi-square p-value because steps of one user are dependent (pure
    presets are deterministic chains of cells), which inflates the chi-square statistic but hardly moves V."""
    table = np.zeros((C_x or C, C))
    np.add.at(table, (x, y), 1)
    table = table[table.sum(1) > 0]
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))


@pytest.fixture(scope="module")
def default():
    return generate(SyntheticOptions())


def test_same_options_give_bit_identical_data(default):
    again = generate(SyntheticOptions())
    assert again.data.checksum() == default.data.checksum()
    assert torch.equal(again.data.flat, default.data.flat)
    assert np.array_equal(again.data.side.dense["image"].features, default.data.side.dense["image"].features)


def test_different_seeds_differ(default):
    other = generate(SyntheticOptions(seed=1)).data
    assert other.checksum() != default.data.checksum()
    assert not np.array_equal(other.side.dense["text"].features, default.data.side.dense["text"].features)


def test_items_and_features_do_not_depend_on_users(default):
    fewer = generate(SyntheticOptions(n_users=50)).data
    assert np.array_equal(fewer.side.dense["image"].features, default.data.side.dense["image"].features)


def test_shapes_ranges_offsets(default):
    d, o = default.data, SyntheticOptions()
    assert d.name == "synthetic" and d.source == "synthetic(seed=0, preset=custom)"
    assert d.n_items == o.n_codes**2 * o.per_cell == 256
    assert d.n_users == o.n_users
    assert d.flat.dtype == torch.long and d.offsets.dtype == torch.long
    assert int(d.flat.min()) >= 1 and int(d.flat.max()) <= d.n_items
    assert d.offsets[0] == 0 and d.offsets[-1] == d.n_interactions
    assert int(d.lengths.min()) >= o.min_len and int(d.lengths.max()) <= o.max_len
    assert 7 < d.lengths.float().mean() < 12  # Amazon 5-core-like: mean about 9
    assert d.side.modality_names() == ["image", "text"]
    for name, dim in (("image", o.image_dim), ("text", o.text_dim)):
        ch = d.side.dense[name]
        assert ch.features.shape == (d.n_items + 1, dim) and ch.features.dtype == np.float32
        assert ch.present.dtype == bool and not ch.present[0] and ch.present[1:].all()
        assert not ch.features[0].any()
    assert default.mechanism.shape == (d.n_interactions,)
    assert (default.mechanism[d.offsets[:-1].numpy()] == -1).all()


def test_ground_truth_layout_is_a_grid(default):
    gt = default.truth
    C, P = 8, 4
    assert sorted(gt.cell_items.ravel().tolist()) == list(range(1, C * C * P + 1))
    a, b = np.meshgrid(np.arange(C), np.arange(C), indexing="ij")
    assert (gt.image_code[gt.cell_items] == a[..., None]).all()
    assert (gt.text_code[gt.cell_items] == b[..., None]).all()
    for perm in (gt.perm_image, gt.perm_text):  # one C-cycle: no fixed point, visits every code
        seen, c = set(), 0
        for _ in range(C):
            seen.add(c)
            c = perm[c]
        assert c == 0 and len(seen) == C
    succ = gt.successors[1:]
    assert (succ != np.arange(1, C * C * P + 1)[:, None]).all()
    assert all(len(set(row)) == succ.shape[1] for row in succ.tolist())
    assert ground_truth(SyntheticOptions()).successors.tobytes() == gt.successors.tobytes()


def test_mixture_weights_are_respected(default):
    counts = np.bincount(default.mechanism[default.mechanism >= 0], minlength=4)
    freq = counts / counts.sum()
    assert np.abs(freq - np.array(SyntheticOptions().mixture())).max() < 0.02
    prev, nxt = transitions(default.data)
    ok = default.truth.consistent(prev, nxt)
    for k, name in enumerate(MECHANISMS[:3]):
        assert ok[name][default.mechanism[default.mechanism >= 0] == k].all()


@pytest.mark.parametrize("preset", ["ids", "modal", "cross"])
def test_pure_presets_follow_their_rule(preset):
    g = generate(SyntheticOptions(preset=preset, n_users=500))
    assert g.data.source == f"synthetic(seed=0, preset={preset})"
    assert (g.mechanism[g.mechanism >= 0] == MECHANISMS.index({"ids": "id"}.get(preset, preset))).all()
    prev, nxt = transitions(g.data)
    gt = g.truth
    a, b, a2, b2 = gt.image_code[prev], gt.text_code[prev], gt.image_code[nxt], gt.text_code[nxt]
    if preset == "ids":
        assert (gt.successors[prev] == nxt[:, None]).any(1).all()
    elif preset == "modal":
        assert (a2 == gt.perm_image[a]).all() and (b2 == gt.perm_text[b]).all()
    else:
        assert (a2 == gt.cross_image[a, b]).all()


def test_cross_codes_are_unpredictable_from_one_channel_alone():
    C = 8
    g = generate(SyntheticOptions(preset="cross"))
    prev, nxt = transitions(g.data)
    gt = g.truth
    a, b, a2, b2 = gt.image_code[prev], gt.text_code[prev], gt.image_code[nxt], gt.text_code[nxt]
    for x, y in ((a, a2), (b, a2), (a, b2), (b, b2)):
        assert cramers_v(x, y, C) < 0.1  # seed 0 gives about 0.03
    # the pair does determine the next image code, and one channel's own chain (modal preset) is far from uniform
    assert (a2 == gt.cross_image[a, b]).all()
    m = generate(SyntheticOptions(preset="modal"))
    mp, mn = transitions(m.data)
    assert cramers_v(m.truth.image_code[mp], m.truth.image_code[mn], C) > 0.99
    assert cramers_v(m.truth.text_code[mp], m.truth.text_code[mn], C) > 0.99


def test_cross_codes_are_unpredictable_from_one_channels_whole_history():
    """Two consecutive codes of one channel (C^2 values) say nothing about the next image code; with a
    rule fixing both next codes by the pair they would determine it (V = 1), an earlier version's leak."""
    C = 8
    g = generate(SyntheticOptions(preset="cross", n_users=4000))
    seq = g.data.flat.numpy()
    same_user = np.ones(len(seq), dtype=bool)
    same_user[g.data.offsets.numpy()[:-1]] = False          # position j has a predecessor in its sequence
    j = np.flatnonzero(same_user[1:-1] & same_user[2:]) + 2  # j - 2, j - 1, j in one sequence
    gt = g.truth
    for code in (gt.image_code, gt.text_code):
        history = code[seq[j - 2]] * C + code[seq[j - 1]]
        assert cramers_v(history, gt.image_code[seq[j]], C, C * C) < 0.1
    pair = gt.image_code[seq[j - 1]] * C + gt.text_code[seq[j - 1]]
    assert cramers_v(pair, gt.image_code[seq[j]], C, C * C) > 0.99


@pytest.mark.parametrize("C", [2, 3, 4, 6, 8])
def test_cross_table_is_a_latin_square(C):
    f = cross_table(C)
    assert (np.sort(f, 0) == np.arange(C)[:, None]).all()  # each column a permutation
    assert (np.sort(f, 1) == np.arange(C)[None, :]).all()  # each row a permutation


def test_features_cluster_by_code():
    g = generate(SyntheticOptions(noise=0.2, n_users=10))
    gt = g.truth
    for name, centroids, codes in (("image", gt.image_centroids, gt.image_code),
                                   ("text", gt.text_centroids, gt.text_code)):
        x = g.data.side.dense[name].features[1:]
        dist = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
        assert (dist.argmin(1) == codes[1:]).all()


def test_missing_rate_marks_exact_fraction_absent():
    g = generate(SyntheticOptions(missing_rate=0.25, n_users=10))
    n = g.data.n_items
    absent = {}
    for name in ("image", "text"):
        ch = g.data.side.dense[name]
        assert (~ch.present[1:]).sum() == round(0.25 * n)
        assert not ch.features[~ch.present].any()
        assert (np.abs(ch.features[ch.present]).sum(1) > 0).all()
        absent[name] = set(np.flatnonzero(~ch.present[1:]).tolist())
    assert absent["image"] != absent["text"]  # drawn independently per channel


def test_registry_builds_from_cli_strings():
    plugin = DATASETS.create("synthetic", SimpleNamespace(root=None), n_users="30", preset="modal", seed="3")
    d = plugin.load()
    assert d.n_users == 30 and d.source == "synthetic(seed=3, preset=modal)"
    assert plugin.ground_truth().weights == (0.0, 1.0, 0.0, 0.0)
    assert set(PRESETS) | {"custom"} == set(SyntheticOptions.fields()[-1][1].__args__)


@pytest.mark.parametrize("given, option", [
    ({"w_modal": 1.5}, "w_modal"),
    ({"w_id": -0.1}, "w_id"),
    ({"w_id": 0.5, "w_modal": 0.4, "w_cross": 0.3}, "w_cross"),
    ({"min_len": 1}, "min_len"),
    ({"min_len": 8, "max_len": 6}, "max_len"),
    ({"length_decay": 0.0}, "length_decay"),
    ({"n_codes": 1}, "n_codes"),
    ({"per_cell": 0}, "per_cell"),
    ({"noise": -1.0}, "noise"),
    ({"noise": float("nan")}, "noise"),
    ({"missing_rate": 1.5}, "missing_rate"),
    ({"n_successors": 256}, "n_successors"),
    ({"seed": -1}, "seed"),
    ({"preset": "modal", "w_id": 0.5}, "preset"),
    ({"preset": "other"}, "preset"),
    ({"n_users": "many"}, "n_users"),
])
def test_bad_options_raise_naming_the_option(given, option):
    with pytest.raises(OptionError, match=f"'{option}'"):
        SyntheticOptions.build(given)


def test_any_code_count_allows_every_mechanism():
    g = generate(SyntheticOptions.build({"n_codes": 6, "n_users": 50}))
    assert g.data.n_items == 6 * 6 * 4
    assert set(np.unique(g.mechanism[g.mechanism >= 0])) == {0, 1, 2, 3}

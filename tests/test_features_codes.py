"""Modality codes, attribute codes/features and the cached modality tables."""
import numpy as np
import pytest
import torch

from fusionbench.context import CODE_SENTINEL, ModalityTable
from fusionbench.data.core import DenseChannel, ItemSide
from fusionbench.features import codes as C
from fusionbench.features.tables import modality_tables


def blobs(n=240, d=12, centres=6, seed=0, absent=0.2):
    """[n + 1, d] clustered features, ~``absent`` of the items missing (zero rows), row 0 absent."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 3, size=(centres, d))
    x = np.zeros((n + 1, d), dtype=np.float32)
    x[1:] = mu[rng.integers(0, centres, n)] + rng.normal(0, 0.5, size=(n, d))
    present = rng.random(n + 1) >= absent
    present[0] = False
    x[~present] = 0.0
    return x, present


def brute_force(z, centres, k):
    dist = np.linalg.norm(z[:, None, :] - centres[None, :, :], axis=2)
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("reduce, dim", [("pca", 5), ("none", 128)])
def test_codes_are_the_k_nearest_centres(reduce, dim):
    x, present = blobs()
    book = C.fit_codebook(x, present, n_clusters=8, k=3, reduce=reduce, reduce_dim=dim)
    r = min(dim, x.shape[1])
    assert book.codes.shape == (241, 3) and book.codes.dtype == np.int64
    assert book.centres.shape == (8, r) and book.reduced.shape == (241, r)
    assert (book.codes[~present] == CODE_SENTINEL).all()
    real = book.codes[present]
    assert ((real >= 0) & (real < 8)).all()
    assert all(len(set(row)) == 3 for row in real.tolist())
    np.testing.assert_array_equal(real, brute_force(book.reduced[present], book.centres, 3))
    np.testing.assert_array_equal(C.compute_codes(x, present, 8, 3, reduce, dim), book.codes)


def test_deterministic_and_row_zero_is_sentinel_even_if_marked_present():
    x, present = blobs(seed=1)
    marked = present.copy()
    marked[0] = True
    a = C.compute_codes(x, marked, n_clusters=5, k=2, reduce="pca", reduce_dim=4)
    b = C.compute_codes(x, present, n_clusters=5, k=2, reduce="pca", reduce_dim=4)
    np.testing.assert_array_equal(a, b)
    assert (a[0] == CODE_SENTINEL).all()


def test_autoencoder_path_is_bit_identical_and_in_unit_interval():
    x, present = blobs(n=120, d=10, seed=2)
    a = C.fit_codebook(x, present, n_clusters=4, k=2, reduce="ae", reduce_dim=6)
    b = C.fit_codebook(x, present, n_clusters=4, k=2, reduce="ae", reduce_dim=6)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.reduced, b.reduced)
    z = a.reduced[present]
    assert z.shape[1] == 6 and ((z > 0) & (z < 1)).all()
    np.testing.assert_array_equal(a.codes[present], brute_force(z, a.centres, 2))


def test_autoencoder_restores_a_copy_of_the_best_state():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 8))
    opts = C.AutoencoderOptions(lr=1.0, max_epochs=20, check_every=1, patience=20)  # lr high: loss jumps
    model, losses = C.train_autoencoder(x, 4, seed=0, opts=opts)
    assert len(losses) == 21 and losses[-1] > min(losses)  # the last state is not the best one
    with torch.no_grad():
        t = torch.as_tensor(x, dtype=torch.float32)
        assert float(torch.nn.functional.mse_loss(model(t), t)) == min(losses)
    z = C.autoencoder_reduce(x, 4, seed=0, opts=opts)
    np.testing.assert_array_equal(z, C.autoencoder_reduce(x, 4, seed=0, opts=opts))
    assert not np.array_equal(z, C.autoencoder_reduce(x, 4, seed=1, opts=opts))


def test_autoencoder_stops_after_patience_checks():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 5))
    opts = C.AutoencoderOptions(lr=1.0, max_epochs=500, check_every=2, patience=2)
    _, losses = C.train_autoencoder(x, 3, seed=0, opts=opts)
    assert len(losses) < 251
    best = int(np.argmin(losses))
    assert len(losses) - 1 - best == 2  # exactly `patience` non-improving checks after the best


def test_reduce_dim_is_capped_at_feature_size():
    x, present = blobs(d=6)
    book = C.fit_codebook(x, present, n_clusters=4, k=1, reduce="pca", reduce_dim=128)
    assert book.reduced.shape[1] == 6


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_clusters=3, k=4), "option 'k'"),
    (dict(n_clusters=500, k=3), "option 'n_clusters'"),
    (dict(n_clusters=0, k=1), "option 'n_clusters'"),
    (dict(n_clusters=4, k=2, reduce="tsne"), "option 'reduce'"),
])
def test_clear_errors(kwargs, match):
    x, present = blobs(n=100)
    with pytest.raises(ValueError, match=match):
        C.compute_codes(x, present, **kwargs)


def test_attribute_codes():
    attrs = [(9,), (3, 1, 2, 5), (), (2,), (4, 4)]
    out = C.attribute_codes(attrs, max_codes=2)
    assert out.dtype == np.int64
    assert out.tolist() == [[-1, -1], [2, 0], [-1, -1], [1, -1], [3, 3]]
    assert C.attribute_codes([()], 3).tolist() == [[-1, -1, -1]]


def test_attribute_features_multi_hot_and_svd():
    attrs = [(), (3, 1, 2, 5), (), (2, 2)]
    hot = C.attribute_features(attrs, n_attributes=5, dim=8)
    expected = np.zeros((4, 5), dtype=np.float32)
    expected[1, [0, 1, 2, 4]] = 0.5
    expected[3, 1] = 1.0
    np.testing.assert_allclose(hot, expected)
    rng = np.random.default_rng(0)
    many = [()] + [tuple(rng.choice(40, size=rng.integers(0, 5), replace=False) + 1) for _ in range(80)]
    svd = C.attribute_features(many, n_attributes=40, dim=6)
    assert svd.shape == (81, 6) and svd.dtype == np.float32
    np.testing.assert_array_equal(svd, C.attribute_features(many, n_attributes=40, dim=6))
    empty = np.array([len(a) == 0 for a in many])
    assert not svd[empty].any() and (np.abs(svd[~empty]).sum(1) > 0).all()
    with pytest.raises(ValueError, match="attribute id 7"):
        C.attribute_features([(), (7,)], n_attributes=5)


# ---- modality tables -------------------------------------------------------------------------------

N = 30


def fake_encode(texts, batch_size=256):
    """Stand-in for MiniLM: a deterministic vector per distinct text (no model load in these tests)."""
    fake_encode.calls += 1
    rows = [np.random.default_rng(sum(map(ord, t))).normal(size=384) for t in texts]
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), 384)


@pytest.fixture
def side(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSIONBENCH_CACHE", str(tmp_path / "cache"))
    fake_encode.calls = 0
    monkeypatch.setattr("fusionbench.features.text.encode_texts", fake_encode)
    titles = [""] + [f"title {i % 7}" if i % 5 else "" for i in range(1, N + 1)]
    attributes = [()] + [tuple(sorted({1 + i % 4, 1 + (i * 3) % 6})) if i % 6 else () for i in range(1, N + 1)]
    x, present = blobs(n=N, d=9, seed=4, absent=0.1)
    return ItemSide(titles=titles, attributes=attributes, n_attributes=6,
                    dense={"image": DenseChannel(features=x, present=present)})


def test_modality_tables(side):
    tables = modality_tables(side, N, "sum0", n_clusters=4, k=2, reduce="pca", attr_max_codes=3)
    assert list(tables) == ["attr", "image", "text"]
    for name, table in tables.items():
        assert isinstance(table, ModalityTable)
        assert table.features.dtype == torch.float32 and table.codes.dtype == torch.long
        assert table.features.shape[0] == N + 1 and not table.present[0]
        assert not table.features[~table.present].any()
        assert (table.codes[~table.present] == CODE_SENTINEL).all()
        assert (table.codes[table.present] < table.n_codes).all()
    text = tables["text"]
    assert text.dim == 384 and text.n_codes == 4 and text.codes.shape == (N + 1, 2)
    assert text.present.tolist() == [bool(t) for t in side.titles]
    assert (text.codes[text.present] >= 0).all()
    attr = tables["attr"]
    assert attr.dim == 0 and attr.n_codes == 6 and attr.codes.shape == (N + 1, 3)   # attr="ids" (test_attr_encoding)
    assert attr.present.tolist() == [len(a) > 0 for a in side.attributes]
    np.testing.assert_array_equal(attr.codes.numpy(), C.attribute_codes(side.attributes, 3))
    image = tables["image"]
    np.testing.assert_array_equal(image.present.numpy(), side.dense["image"].present)
    np.testing.assert_array_equal(image.features.numpy(), side.dense["image"].features)
    np.testing.assert_array_equal(
        image.codes.numpy(), C.compute_codes(side.dense["image"].features, side.dense["image"].present, 4, 2, "pca"))


def test_tables_are_cached_per_parameter(side):
    first = modality_tables(side, N, "sum1", n_clusters=4, k=2, reduce="pca", modalities=["text"])
    assert fake_encode.calls == 1
    again = modality_tables(side, N, "sum1", n_clusters=4, k=2, reduce="pca", modalities=["text"])
    assert fake_encode.calls == 1
    torch.testing.assert_close(again["text"].codes, first["text"].codes)
    other = modality_tables(side, N, "sum1", n_clusters=5, k=1, reduce="pca", modalities=["text"])
    assert fake_encode.calls == 1  # features reused, only codes recomputed
    assert other["text"].codes.shape == (N + 1, 1) and other["text"].n_codes == 5
    modality_tables(side, N, "sum2", n_clusters=4, k=2, reduce="pca", modalities=["text"])
    assert fake_encode.calls == 2  # new dataset checksum


def test_modalities_restrict_and_unknown_names_fail(side):
    assert list(modality_tables(side, N, "s", n_clusters=3, k=1, reduce="none", modalities=["attr"])) == ["attr"]
    with pytest.raises(ValueError, match=r"unknown modality 'audio'.*available: attr, image, text"):
        modality_tables(side, N, "s", modalities=["audio"])
    with pytest.raises(ValueError, match=r"modality 'image'.*option 'n_clusters'"):
        modality_tables(side, N, "s", n_clusters=N, k=1, reduce="none", modalities=["image"])

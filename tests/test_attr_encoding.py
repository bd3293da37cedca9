"""``features.attr``: one encoding of the attribute channel (``ids`` or ``svd``) that every strategy honours,
and the upgrade step that records what runs made before the option read (docs/features.md)."""
import copy
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import fusionbench.store.upgrade as upgrade
from fusionbench.cli import main
from fusionbench.context import CODE_SENTINEL, ModalityTable, StrategyContext
from fusionbench.data.core import ItemSide
from fusionbench.features import codes as C
from fusionbench.features.tables import modality_tables
from fusionbench.registry import STRATEGIES
from fusionbench.runner import RunRequest, load_data, resolve, run_experiment
from fusionbench.store import ResultStore, RunSummary, config_hash
from strategies.mmsr import code_centroids
from strategy_fixtures import N_ITEMS, tiny_batch, tiny_context

ENCODINGS = ("ids", "svd")
N_ATTRIBUTES = 9


def tiny_attributes(seed: int = 0, n_items: int = N_ITEMS) -> list[tuple[int, ...]]:
    """0..4 attribute ids in 1..N_ATTRIBUTES per item (a sixth of the items have none); index 0 unused."""
    rng = np.random.default_rng(seed)
    sets = [tuple(int(a) for a in rng.choice(N_ATTRIBUTES, size=rng.integers(1, 5), replace=False) + 1)
            if rng.random() > 1 / 6 else () for _ in range(n_items)]
    return [(), *sets]


def attr_table(encoding: str, seed: int = 0, max_codes: int = 3) -> ModalityTable:
    side = ItemSide(attributes=tiny_attributes(seed), n_attributes=N_ATTRIBUTES)
    return modality_tables(side, N_ITEMS, f"tiny-attr-{seed}", n_clusters=4, k=2, reduce="pca",
                           attr_max_codes=max_codes, attr=encoding)["attr"]


# ---- the tables builder -----------------------------------------------------------------------------


def test_ids_gives_a_width_0_table_whose_codes_are_the_attribute_ids():
    attributes = tiny_attributes()
    table = attr_table("ids")
    assert table.dim == 0 and table.features.shape == (N_ITEMS + 1, 0)
    assert table.n_codes == N_ATTRIBUTES
    np.testing.assert_array_equal(table.codes.numpy(), C.attribute_codes(attributes, 3))
    assert table.present.tolist() == [False] + [len(a) > 0 for a in attributes[1:]]


def test_svd_gives_the_svd_features_and_cluster_codes_from_them():
    attributes = tiny_attributes()
    table = attr_table("svd")
    features = C.attribute_features(attributes, N_ATTRIBUTES)          # <= 128 attributes: the multi-hot
    np.testing.assert_array_equal(table.features.numpy(), features)
    present = table.present.numpy()
    assert table.n_codes == 4 and table.codes.shape == (N_ITEMS + 1, 2)
    np.testing.assert_array_equal(table.codes.numpy(), C.compute_codes(features, present, 4, 2, "pca"))
    assert (table.codes[~table.present] == CODE_SENTINEL).all() and (table.codes[table.present] >= 0).all()


def test_unknown_encoding_is_an_error_naming_the_option():
    side = ItemSide(attributes=tiny_attributes(), n_attributes=N_ATTRIBUTES)
    with pytest.raises(ValueError, match="option 'attr' must be one of ids, svd"):
        modality_tables(side, N_ITEMS, "x", attr="onehot")
    request = RunRequest(strategy="early", dataset="synthetic", feature_options={"attr": "onehot"})
    with pytest.raises(ValueError, match="features: option 'attr' must be one of 'ids', 'svd'"):
        resolve(request)


def test_the_run_config_records_the_encoding_and_it_changes_the_hash():
    ids = resolve(RunRequest(strategy="early", dataset="synthetic"))
    svd = resolve(RunRequest(strategy="early", dataset="synthetic", feature_options={"attr": "svd"}))
    assert ids["features"]["attr"] == "ids" and svd["features"]["attr"] == "svd"
    assert config_hash(ids) != config_hash(svd)
    assert resolve(RunRequest(strategy="sasrec", dataset="synthetic"))["features"] == {}   # ID-only: no tables


def test_code_set_features_equal_attribute_features_of_the_same_sets():
    """MMSR's centroid init under ids rests on this: the SVD of the code multi-hot is the svd encoding's
    feature whenever the codes kept every attribute (here through the SVD branch: 9 attributes > dim 4)."""
    attributes = tiny_attributes(seed=3)
    attributes[5] = (2, 7, 2)                                            # a repeated id counts once
    codes = C.attribute_codes(attributes, 4)
    np.testing.assert_array_equal(C.code_set_features(codes, N_ATTRIBUTES, dim=4, seed=5),
                                  C.attribute_features(attributes, N_ATTRIBUTES, dim=4, seed=5))


def test_mmsr_under_ids_starts_from_the_centroids_it_had_before_the_option():
    """Before ``features.attr`` the attr table held the SVD features and the attribute ids as codes, and
    MMSR initialised the id nodes at the items' mean SVD feature; the ids table (no features) gives the
    same initial embeddings."""
    attributes = tiny_attributes(seed=1)
    present = torch.tensor([len(a) > 0 for a in attributes])
    old = ModalityTable(torch.from_numpy(C.attribute_features(attributes, N_ATTRIBUTES)), present,
                        torch.from_numpy(C.attribute_codes(attributes, 8)), N_ATTRIBUTES)
    new = attr_table("ids", seed=1, max_codes=8)
    assert torch.equal(new.codes, old.codes) and new.dim == 0
    before = code_centroids(StrategyContext(N_ITEMS, 8, {"attr": old}), 16)
    after = code_centroids(StrategyContext(N_ITEMS, 8, {"attr": new}), 16)
    assert torch.equal(before, after)
    assert before.std(0).gt(0).any()                                     # not a constant vector


# ---- every strategy under both encodings ------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_trains_on_either_encoding(name, encoding):
    """The tiny context's image and text tables plus the attr table the tables builder makes."""
    ctx = tiny_context()
    ctx = ctx.with_modalities({**ctx.modalities, "attr": attr_table(encoding)})
    torch.manual_seed(0)
    model = STRATEGIES.create(name, ctx)
    model.train()
    batch = tiny_batch()
    loss = model.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    declared = model.contract_skips.get("absent_vector_every_batch")  # e.g. bm3: only absent targets teach it
    if declared:
        missing = [n for n in missing if not n.endswith(".missing")]
    assert not missing, f"no gradient for {missing}"
    model.eval()
    with torch.no_grad():
        scores = model.score(batch)
    assert scores.shape == (batch.size, N_ITEMS + 1) and torch.isfinite(scores[:, 1:]).all()


# ---- fusionbench list ---------------------------------------------------------------------------------


def test_list_shows_the_feature_options():
    out = CliRunner().invoke(main, ["list", "features"])
    assert out.exit_code == 0, out.output
    assert "attr ('ids' | 'svd') = 'ids'" in out.output and "n_clusters (int, >= 1) = 30" in out.output
    assert "strategies:" not in out.output
    assert "attr ('ids' | 'svd') = 'ids'" in CliRunner().invoke(main, ["list"]).output


# ---- the upgrade step -----------------------------------------------------------------------------------

TINY_SYNTHETIC = {"n_users": "80", "n_codes": "3", "per_cell": "2", "max_len": "10"}


def attribute_folder(path):
    """A folder dataset with titles and attributes (channels attr and text)."""
    path.mkdir()
    (path / "sequences.txt").write_text("u1 1 2 3 4 5\nu2 2 3 4 5 6\nu3 6 5 4 3 2 1\nu4 1 3 5 2 4 6\n")
    (path / "items.tsv").write_text("item_id\ttitle\tattributes\n1\tred lipstick\tA|B\n2\tblue tent\tB\n"
                                    "3\t\t\n4\tlamp\tC\n5\tx\tA\n6\ty\tC\n")
    return path


def folder_request(folder, strategy, strategy_options=None, **features):
    return RunRequest(strategy=strategy, dataset="folder", dataset_options={"path": str(folder), "min_count": 1},
                      strategy_options=strategy_options or {}, feature_options=features)


def store_as_before_the_option(store, request):
    """A hand-made finished run whose config is the request's as stored before ``features.attr`` existed
    (the key absent). Returns (run id, old config hash)."""
    config = resolve(request)
    config["dataset_checksum"] = load_data(config, None).checksum()
    old = copy.deepcopy(config)
    old["features"].pop("attr", None)
    run_id = store.start(old, old["dataset_checksum"], {"fusionbench": "0.1.0"}, "old")
    store.finish(run_id, {"test": {"HR@5": 0.5}}, {"test": np.array([3, 0, 7])}, RunSummary(best_epoch=1))
    return run_id, config_hash(old)


def identity(request) -> str:
    config = resolve(request)
    config["dataset_checksum"] = load_data(config, None).checksum()
    return config_hash(config)


def test_upgrade_records_the_encoding_each_old_run_read(tmp_path):
    folder = attribute_folder(tmp_path / "shop")
    path = tmp_path / "r.db"
    store = ResultStore(path)
    synthetic = RunRequest(strategy="early", dataset="synthetic", dataset_options=dict(TINY_SYNTHETIC))
    runs = {
        "mmsr": (store_as_before_the_option(store, folder_request(folder, "mmsr")), "ids"),
        "early": (store_as_before_the_option(store, folder_request(folder, "early")), "svd"),
        "difsr, no AAP": (store_as_before_the_option(store, folder_request(folder, "difsr", {"aap_weight": 0.0})),
                          "svd"),
        # no attr channel in the model: the same under either value -> the default
        "early, text only": (store_as_before_the_option(store, folder_request(folder, "early", modalities="text")),
                             "ids"),
        "early, synthetic": (store_as_before_the_option(store, synthetic), "ids"),
    }
    sasrec, _ = store_as_before_the_option(store, folder_request(folder, "sasrec"))
    difsr, difsr_hash = store_as_before_the_option(store, folder_request(folder, "difsr"))   # aap_weight 10

    results = {u.run_id: u for u in upgrade.upgrade_store(ResultStore(path))}
    stored = ResultStore(path).runs().set_index("id")
    for label, ((run_id, old_hash), encoding) in runs.items():
        result = results[run_id]
        assert result.status == "upgraded" and result.old_hash == old_hash, (label, result)
        assert "features.attr" in result.added, label
        assert json.loads(stored.config[run_id])["features"]["attr"] == encoding, label
    assert results[sasrec].status == "current"                      # ID-only: no features block to fill
    # difsr's old first-code CE predictor exists no more: its runs stay as they were, never found again
    assert results[difsr].status == "kept" and "first-code CE" in results[difsr].reason
    assert stored.config_hash[difsr] == difsr_hash

    # each old run is now found under its own encoding: the same command with that value skips it
    early_svd = folder_request(folder, "early", attr="svd")
    assert stored.config_hash[runs["early"][0][0]] == identity(early_svd)
    assert stored.config_hash[runs["mmsr"][0][0]] == identity(folder_request(folder, "mmsr"))
    assert stored.config_hash[runs["early, synthetic"][0][0]] == identity(synthetic)
    again = run_experiment(early_svd, ResultStore(path), progress=False)
    assert again.skipped and again.run_id == runs["early"][0][0]
    assert {u.status for u in upgrade.upgrade_store(ResultStore(path)) if u.run_id != difsr} == {"current"}


def test_upgrade_keeps_runs_it_cannot_tell_and_says_why(tmp_path, monkeypatch):
    folder = attribute_folder(tmp_path / "shop")
    path = tmp_path / "r.db"
    store = ResultStore(path)
    nova, nova_hash = store_as_before_the_option(store, folder_request(folder, "nova"))
    monkeypatch.setitem(upgrade.ATTR_ENCODING_BEFORE, "nova", None)     # as for a plugin not in the table
    out = CliRunner().invoke(main, ["store", "upgrade", "--store", str(path), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "0 would be upgraded, 0 already current, 1 kept" in out.output
    assert "cannot tell" in out.output and "'nova'" in out.output
    monkeypatch.undo()

    (folder / "sequences.txt").write_text("u1 1 2 3 4 5 6\nu2 2 3 4 5 6\nu3 6 5 4 3 2 1\nu4 1 3 5 2 4 6\n")
    result, = upgrade.upgrade_store(ResultStore(path))               # the data changed since the run
    assert result.status == "kept" and "is not the run's" in result.reason
    (folder / "sequences.txt").unlink()
    result, = upgrade.upgrade_store(ResultStore(path))               # the data is gone
    assert result.status == "kept" and "could not be loaded" in result.reason
    assert ResultStore(path).runs().config_hash.tolist() == [nova_hash]

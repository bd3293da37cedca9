"""Perturbed runs (config entry, apply_to phases) and the resumable `fusionbench stress` sweep."""
import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import fusionbench.runner
import fusionbench.train
from fusionbench.cli import main
from fusionbench.data.splits import make_split
from fusionbench.errors import UserInputError
from fusionbench.evaluate import rank_samples
from fusionbench.metrics import summarize
from fusionbench.perturb.plan import PerturbationRequest
from fusionbench.registry import STRATEGIES
from fusionbench.runner import RunRequest, load_kept, resolve, run_experiment, training_config
from fusionbench.store import ResultStore, config_hash
from fusionbench.train import DataViews, TrainOptions, train
from strategy_fixtures import tiny_context
from test_train_store import cyclic_data

TINY_DATA = {"n_users": "80", "n_codes": "3", "per_cell": "2", "max_len": "10"}
TINY_MODEL = {"dim": "16", "heads": "1"}
SWEEP = ("stress", "--strategy", "sasrec", "--perturbation", "disorder", "--dataset", "synthetic",
         *(a for k, v in TINY_DATA.items() for a in ("--set", f"data.{k}={v}")),
         *(a for k, v in TINY_MODEL.items() for a in ("--set", f"{k}={v}")),
         "--set", "train.lr=0.01", "--epochs", "2", "--quiet")


def request(strategy="sasrec", perturbation=None, **overrides):
    options = dict(strategy_options=dict(TINY_MODEL), dataset_options=dict(TINY_DATA),
                   train_options={"epochs": 2, "lr": 0.01})
    if STRATEGIES.get(strategy).uses_modalities:
        options["feature_options"] = {"reduce": "pca", "n_clusters": 4, "k": 2}
    return RunRequest(strategy=strategy, dataset="synthetic", perturbation=perturbation, **{**options, **overrides})


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def stored(path):
    runs = ResultStore(path).runs(status=None)
    return runs.assign(perturbation=[json.loads(c)["perturbation"] for c in runs.config])


def test_clean_configs_have_no_perturbation_key_and_perturbed_ones_the_documented_entry():
    assert "perturbation" not in resolve(request())   # so clean runs keep their stored hashes
    config = resolve(request(perturbation=PerturbationRequest("mismatch", 1, "both", {"mode": "shift"})))
    assert config["perturbation"] == {"name": "mismatch", "severity": 1.0, "apply_to": "both",
                                      "options": {"modalities": [], "mode": "shift"}}
    assert isinstance(config["perturbation"]["severity"], float)
    with pytest.raises(UserInputError, match="ratio-paper.* use apply_to=both"):
        resolve(request(perturbation=PerturbationRequest("disorder", 0.5, "test"), protocol="ratio-paper"))
    with pytest.raises(UserInputError, match="apply_to must be one of train, test, both"):
        resolve(request(perturbation=PerturbationRequest("disorder", 0.5, "valid")))


@pytest.mark.parametrize("name, options", [("missing", {}), ("disorder", {})])
def test_apply_to_test_trains_exactly_as_the_clean_run(name, options):
    """Catalog level (the test model is rebuilt on perturbed tables) and sequence level (test batches
    mapped): training and validation are bit for bit the clean run's, the test ranks are not."""
    clean = run_experiment(request("early"), progress=False)
    stressed = run_experiment(request("early", PerturbationRequest(name, 1.0, "test", options)), progress=False)
    for epoch, other in zip(stressed.result.history, clean.result.history, strict=True):
        assert (epoch["loss"], epoch["valid"]) == (other["loss"], other["valid"])
    assert torch.equal(stressed.result.valid_ranks, clean.result.valid_ranks)
    assert not torch.equal(stressed.result.test_ranks, clean.result.test_ranks)


def test_a_training_view_gives_causal_strategies_prefix_samples():
    data = cyclic_data(n_users=30)
    seen = []

    def view(batch, samples):
        seen.append((batch.target is not None and batch.targets is None, len(samples) == batch.size))
        return batch

    model = STRATEGIES.create("sasrec", tiny_context(n_items=data.n_items).with_modalities({}), dim=8, heads=1)
    split = make_split(data, "loo")
    train(model, data, split, TrainOptions.build({"epochs": 1}), 0, 8, progress=False, views=DataViews(train=view))
    n_batches = -(-len(split.train) // 128)
    assert len(seen) == n_batches + 2          # training batches, validation in the epoch and at the end
    assert all(one_target and keyed for one_target, keyed in seen)


def test_sweep_stores_one_done_run_per_cell(tmp_path):
    out = invoke(*SWEEP, "--severity", "0,1", "--seeds", "0,1", "--store", str(tmp_path / "r.db"))
    assert out.exit_code == 0, out.output
    runs = stored(tmp_path / "r.db")
    assert len(runs) == 4 and set(runs.status) == {"done"}
    cells = sorted((p["severity"], seed) for p, seed in zip(runs.perturbation, runs.seed))
    assert cells == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    assert all(p["name"] == "disorder" and p["apply_to"] == "test" and p["options"] == {} for p in runs.perturbation)
    assert "4 cells, 0 already in the store" in out.output
    table = out.output.splitlines()[-2:]           # one summary row per severity: mean ± sd over 2 seeds
    assert [row.split("|")[1].strip() for row in table] == ["0", "1"] and all("±" in row for row in table)


def test_an_interrupted_sweep_resumes_without_duplicates_or_losses(tmp_path, monkeypatch):
    # apply_to=both: every cell trains (a test-only sweep trains once per seed, see the next test)
    args = (*SWEEP, "--apply-to", "both", "--severity", "0,1", "--seeds", "0", "--store", str(tmp_path / "r.db"))
    save = fusionbench.train.save_atomically
    calls = []

    def killed_after_third_checkpoint(obj, path):  # cell 1 saves epochs 1-2, cell 2 dies after epoch 1
        save(obj, path)
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(fusionbench.train, "save_atomically", killed_after_third_checkpoint)
    assert invoke(*args).exit_code == 1                        # click: "Aborted!"
    first = stored(tmp_path / "r.db")
    assert sorted(first.status) == ["done", "running"]
    saved = []
    monkeypatch.setattr(fusionbench.train, "save_atomically", lambda obj, path: (save(obj, path), saved.append(obj)))

    out = invoke(*args)
    assert out.exit_code == 0, out.output
    assert [len(obj["history"]) for obj in saved] == [2]       # cell 1 skipped, cell 2 resumed at epoch 2
    assert "2 cells, 1 already in the store" in out.output
    runs = stored(tmp_path / "r.db")
    assert len(runs) == 2 and set(runs.status) == {"done"}
    done_before = first[first.status == "done"]
    assert runs[runs.config_hash == done_before.config_hash.iloc[0]].id.iloc[0] == done_before.id.iloc[0]
    assert [[h["epoch"] for h in json.loads(h)] for h in runs.history] == [[1, 2], [1, 2]]
    assert not list((tmp_path / "checkpoints").iterdir())     # the resumed cell finished and cleaned up

    assert invoke(*args[:-1], str(tmp_path / "fresh.db")).exit_code == 0
    resumed, fresh = ResultStore(tmp_path / "r.db"), ResultStore(tmp_path / "fresh.db")
    for digest in runs.config_hash:                            # resuming changed no number
        assert resumed.metrics(resumed.run_id(digest)) == fresh.metrics(fresh.run_id(digest))


@pytest.fixture
def trained(monkeypatch):
    """A list that grows by one each time ``run_experiment`` trains a model (rather than evaluating kept
    weights)."""
    calls = []
    real_train = fusionbench.runner.train
    monkeypatch.setattr(fusionbench.runner, "train", lambda *a, **k: (calls.append(1), real_train(*a, **k))[1])
    return calls


def test_a_test_only_sweep_trains_once_per_seed_and_matches_training_every_cell(tmp_path, trained):
    """The clean run's weights are kept beside the store; every test-only cell of the same seed evaluates
    them (``trained_from``) and gives exactly what training that cell from scratch gives."""
    clean = run_experiment(request("early"), ResultStore(tmp_path / "r.db"), progress=False)
    cells = [request("early", PerturbationRequest(name, p, "test", {"mode": mode}))
             for name, mode in (("missing", "item"), ("mismatch", "shift")) for p in (0.0, 1.0)]
    reused = [run_experiment(cell, ResultStore(tmp_path / "r.db"), progress=False) for cell in cells]
    assert len(trained) == 1
    runs = ResultStore(tmp_path / "r.db").runs().set_index("config_hash")
    assert pd.isna(runs.trained_from[clean.config_hash])
    assert all(runs.trained_from[cell.config_hash] == clean.config_hash for cell in reused)
    assert (tmp_path / "models" / f"{clean.config_hash}.pt").exists()
    assert reused[0].test == clean.test                          # p = 0 is the clean run
    for number, (cell, outcome) in enumerate(zip(cells, reused)):  # each the same as trained on its own
        alone = run_experiment(cell, ResultStore(tmp_path / f"alone{number}" / "r.db"), progress=False)
        assert (alone.test, alone.valid) == (outcome.test, outcome.valid)
    assert len(trained) == 1 + len(cells)
    trained_too = run_experiment(request("early", PerturbationRequest("disorder", 1.0, "both")),
                                 ResultStore(tmp_path / "r.db"), progress=False)
    assert runs.shape[0] == 5 and len(trained) == 2 + len(cells)  # apply_to=both trains its own weights
    assert pd.isna(ResultStore(tmp_path / "r.db").runs().set_index("config_hash").trained_from[trained_too.config_hash])


def test_load_kept_rebuilds_a_stored_run_with_its_selected_weights(tmp_path):
    """``load_kept`` rebuilds a finished run's model from the weights kept beside the store (a test-only
    cell from its clean run's): it ranks the test samples to the stored metrics; without kept weights: None."""
    store = ResultStore(tmp_path / "r.db")
    clean = run_experiment(request("early"), store, progress=False)
    shifted = run_experiment(request("early", PerturbationRequest("mismatch", 0.0, "test", {"mode": "shift"})),
                             store, progress=False)
    for outcome in (clean, shifted):
        kept = load_kept(store, outcome.config)
        assert kept is not None
        config = outcome.config
        ranked = summarize(rank_samples(kept.model.for_test(), kept.data, kept.split.test, config["max_len"], 1024))
        assert ranked == pytest.approx(outcome.test, abs=1e-12)
    store.weights_path(clean.config_hash).unlink()
    assert load_kept(store, clean.config) is None and load_kept(store, shifted.config) is None


def test_p0_cells_on_the_training_phase_share_one_training_per_seed(tmp_path, trained):
    """At p = 0 training sees the clean data. Catalog-level cells (the same tables) evaluate the clean
    run's weights; sequence-level cells of every perturbation share one training on prefix samples (the
    clean run trains causally, so not its weights). Each gives exactly what training it alone gives."""
    store = tmp_path / "r.db"
    clean = run_experiment(request("early"), ResultStore(store), progress=False)
    catalog = [request("early", PerturbationRequest(name, 0.0, apply_to, {"mode": mode}))
               for name, mode, apply_to in (("mismatch", "swap", "train"), ("missing", "item", "both"))]
    sequence = [request("early", PerturbationRequest(name, 0.0, apply_to, options))
                for name, options, apply_to in (("disorder", {}, "both"), ("mismatch", {"mode": "shift"}, "train"),
                                                ("missing", {"mode": "occurrence", "modalities": "text"}, "both"))]
    outcomes = [run_experiment(cell, ResultStore(store), progress=False) for cell in catalog + sequence]
    assert len(trained) == 2                        # the clean run, one prefix-sample run
    runs = ResultStore(store).runs().set_index("config_hash")
    on_catalog, on_sequence = outcomes[:len(catalog)], outcomes[len(catalog):]
    assert all(runs.trained_from[o.config_hash] == clean.config_hash and o.test == clean.test for o in on_catalog)
    assert pd.isna(runs.trained_from[on_sequence[0].config_hash]) and on_sequence[0].valid != clean.valid
    prefix_training = config_hash(training_config(on_sequence[0].config))
    assert all(runs.trained_from[o.config_hash] == prefix_training for o in on_sequence[1:])
    assert (tmp_path / "models" / f"{prefix_training}.pt").exists()
    for number, index in enumerate((0, 3, 4)):      # each the same as trained on its own
        alone = run_experiment((catalog + sequence)[index], ResultStore(tmp_path / f"alone{number}" / "r.db"),
                               progress=False)
        assert (alone.test, alone.valid) == (outcomes[index].test, outcomes[index].valid)
    assert len(trained) == 5


def test_p0_sequence_cells_of_a_prefix_sample_strategy_evaluate_its_clean_run(tmp_path, trained):
    """SR-GNN trains on prefix samples anyway, so an identity training view changes nothing: its p = 0
    sequence-level cell evaluates the clean run's weights and equals that cell trained alone."""
    tiny = {"strategy_options": {"dim": "16"}}
    clean = run_experiment(request("srgnn", **tiny), ResultStore(tmp_path / "r.db"), progress=False)
    cell = request("srgnn", PerturbationRequest("disorder", 0.0, "both"), **tiny)
    shared = run_experiment(cell, ResultStore(tmp_path / "r.db"), progress=False)
    assert len(trained) == 1 and shared.test == clean.test
    assert ResultStore(tmp_path / "r.db").runs().set_index("config_hash").trained_from[shared.config_hash] == \
        clean.config_hash
    alone = run_experiment(cell, ResultStore(tmp_path / "alone" / "r.db"), progress=False)
    assert (alone.test, alone.valid) == (shared.test, shared.valid)


@pytest.mark.parametrize("args, message", [
    (("--perturbation", "shuffle"),
     "error: --perturbation: unknown perturbation 'shuffle'; known: disorder, mismatch, missing"),
    (("--severity", "0,1.5"), "error: --severity: every severity must be a number in [0, 1], got 1.5"),
    (("--severity", "0,low"), "error: --severity expects comma-separated numbers in [0, 1], got '0,low'"),
    (("--seeds", "0,x"), "error: --seeds expects comma-separated integers"),
    (("--perturbation", "mismatch", "--set-p", "mode=rotate"),
     "error: --set-p: perturbation 'mismatch': option 'mode'"),
    (("--set-p", "mode"), "error: --set-p expects key=value, got 'mode'"),
    (("--apply-to", "valid"), "Invalid value for '--apply-to'"),
])
def test_bad_sweep_options_exit_2_naming_the_option(tmp_path, args, message):
    out = invoke(*SWEEP, "--store", str(tmp_path / "r.db"), *args)
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert not (tmp_path / "r.db").exists() or stored(tmp_path / "r.db").empty

"""`data.users=N`: a seeded subset of an Amazon dataset's users (items and side data unchanged, feature tables
shared with the full data), the options that enter a config only when set (`PluginOptions.ONLY_WHEN_SET`), and
the README's main job, which uses both."""
import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.data.core import from_sequences
from fusionbench.data.datasets import load_dataset
from fusionbench.features.cache import cache_dir
from fusionbench.options import OptionError, PluginOptions
from fusionbench.registry import AGGREGATORS, DATASETS, PERTURBATIONS, STRATEGIES
from fusionbench.runner import FeatureOptions, RunRequest, build_context, load_data, resolve
from fusionbench.store import config_hash
from fusionbench.train import TrainOptions

README = Path(__file__).resolve().parents[1] / "README.md"


def sequences(data):
    return [data.sequence(u).tolist() for u in range(data.n_users)]


def test_a_subset_is_seeded_sized_and_keeps_whole_sequences_in_order():
    data = from_sequences("toy", [[1, 2, 3], [2, 3], [4, 5, 6, 7], [1], [3, 4], [5, 6, 7, 1, 2]], n_items=7)
    sub = data.user_subset(4, seed=0)
    assert sub.n_users == 4 and sub.n_items == 7 and sub.side is data.side
    assert sequences(sub) == sequences(data.user_subset(4, seed=0))               # same seed, same users
    full = sequences(data)
    positions = [full.index(seq) for seq in sequences(sub)]
    assert positions == sorted(positions)                                         # original order, whole sequences
    assert any(sequences(data.user_subset(4, seed=s)) != sequences(sub) for s in range(1, 8))
    assert sub.checksum() != data.checksum() and sub.features_checksum() == data.checksum()
    assert sequences(data.user_subset(6, seed=3)) == full
    for n in (0, 7):
        with pytest.raises(ValueError, match=r"n must be in \[1, 6\]"):
            data.user_subset(n, seed=0)


def test_beauty_users_draws_that_many_users_with_every_item_and_the_same_side_data():
    full = load_dataset("beauty")
    sub = load_dataset("beauty", users=500)
    assert (sub.n_users, sub.n_items) == (500, full.n_items)
    assert sub.side.titles == full.side.titles and sub.side.attributes == full.side.attributes
    originals = {tuple(s) for s in sequences(full)}
    assert all(tuple(s) in originals for s in sequences(sub))
    assert torch.equal(sub.flat, load_dataset("beauty", users=500).flat)
    assert sub.features_checksum() == full.checksum()
    assert sequences(load_dataset("beauty", users=full.n_users)) == sequences(full)


@pytest.mark.parametrize("value, message", [("-1", r"option 'users' must be in \[0, 22363\], got -1"),
                                            ("22364", r"option 'users' must be in \[0, 22363\], got 22364"),
                                            ("many", r"option 'users' must be an integer, got 'many'")])
def test_a_bad_users_value_is_an_error_naming_the_option_before_anything_runs(value, message):
    with pytest.raises(OptionError, match=message):
        resolve(RunRequest(strategy="sasrec", dataset_options={"users": value}))
    out = CliRunner().invoke(main, ["run", "--strategy", "sasrec", "--set", f"data.users={value}", "--quiet"])
    assert out.exit_code == 2 and re.search(message, out.output)


def test_users_enters_the_config_and_its_hash_only_when_set():
    plain = resolve(RunRequest(strategy="sasrec"))
    assert "users" not in plain["dataset_options"]
    assert resolve(RunRequest(strategy="sasrec", dataset_options={"users": "0"})) == plain
    subset = resolve(RunRequest(strategy="sasrec", dataset_options={"users": "500"}))
    assert subset["dataset_options"]["users"] == 500 and config_hash(subset) != config_hash(plain)
    toys = resolve(RunRequest(strategy="sasrec", dataset="toys", dataset_options={"users": 100}))
    assert toys["dataset_options"] == {"root": "", "users": 100}


def test_a_subset_reads_the_full_datas_cached_feature_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONBENCH_CACHE", str(tmp_path / "cache"))
    features = {"modalities": "attr", "attr": "svd", "reduce": "pca"}   # cached features and codes, no text encoder
    full_config = resolve(RunRequest(strategy="late", feature_options=features))
    sub_config = resolve(RunRequest(strategy="late", feature_options=features, dataset_options={"users": 300}))
    full = build_context(full_config, load_data(full_config, None)).modalities["attr"]
    entries = sorted(cache_dir().rglob("*.npz"))
    assert len(entries) == 2                                                      # SVD features and their codes
    sub = build_context(sub_config, load_data(sub_config, None)).modalities["attr"]
    assert sorted(cache_dir().rglob("*.npz")) == entries                          # nothing computed again
    assert torch.equal(sub.features, full.features) and torch.equal(sub.codes, full.codes)


@dataclasses.dataclass(frozen=True)
class Grown(PluginOptions):
    ONLY_WHEN_SET = frozenset({"added", "listed"})

    size: int = 4
    added: bool = False
    listed: tuple[str, ...] = ()


def test_only_when_set_options_leave_as_dict_at_their_defaults_and_build_fills_them_in():
    assert Grown.build({}).as_dict() == {"size": 4}
    assert Grown.build({"size": "4", "added": "false", "listed": ""}).as_dict() == {"size": 4}
    assert Grown.build({"added": "true", "listed": "a,b"}).as_dict() == {"size": 4, "added": True, "listed": ["a", "b"]}
    assert Grown.build(Grown.build({"listed": "a"}).as_dict()) == Grown(listed=("a",))
    assert [name for name, _, _ in Grown.fields()] == ["size", "added", "listed"]   # still listed and described


def test_every_only_when_set_option_is_a_field_of_its_class():
    classes = [TrainOptions, FeatureOptions]
    for registry in (STRATEGIES, AGGREGATORS, DATASETS, PERTURBATIONS):
        classes += [registry.get(name).Options for name in registry.names()
                    if isinstance(getattr(registry.get(name), "Options", None), type)]
    for cls in classes:
        assert cls.ONLY_WHEN_SET <= {name for name, _, _ in cls.fields()}, cls.__name__
    assert TrainOptions.ONLY_WHEN_SET == {"exclude_history", "record_test", "diverge_factor"}
    plain = resolve(RunRequest(strategy="sasrec"))["train"]
    assert TrainOptions.ONLY_WHEN_SET.isdisjoint(plain)
    given = {"exclude_history": "true", "record_test": "true", "diverge_factor": "0"}
    every = resolve(RunRequest(strategy="sasrec", train_options=given))["train"]
    assert (every["exclude_history"], every["record_test"], every["diverge_factor"]) == (True, True, 0.0)


def main_job() -> list[str]:
    """The README's first command (`pip install -e . && fusionbench compare ...`) from `compare` on."""
    block = README.read_text().split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    first = next(line for line in block.splitlines() if line.strip() and not line.startswith("#"))
    install, _, command = first.partition(" && ")
    assert install == "pip install -e ."
    args = shlex.split(command)
    assert args[:2] == ["fusionbench", "compare"]
    return args[1:]


def test_the_readmes_main_job_is_a_comparison_on_a_beauty_subset_that_resolves(tmp_path):
    args = main_job()
    out = CliRunner().invoke(main, [*args, "--store", str(tmp_path / "c.db"), "--dry-run"])
    assert out.exit_code == 0, out.output
    rows = [line.split("|")[1:3] for line in out.output.splitlines()
            if line.startswith("| ") and "strategy" not in line]
    assert {name.strip() for name, _ in rows} >= {"mmsr", "sasrec", "late"}
    assert ["han"] == [agg.strip() for name, agg in rows if name.strip() == "mmsr"]
    assert re.search(r"\n(\d+) runs, 0 done\n", out.output) and not (tmp_path / "c.db").exists()
    assert any(a.startswith("data.users=") for a in args)                        # a quick look, not all of beauty

"""Text sources of the ``text`` channel (``features.text``): beauty's full titles next to its title prefixes,
the choice through the run config, the text feature cache key, and what must not move: the data checksum,
the identity of runs that read no text, and old runs (upgraded to the prefix they read)."""
import dataclasses
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.data.core import ItemSide
from fusionbench.data.datasets import declared_text_sources, load_dataset
from fusionbench.errors import DataError, UserInputError
from fusionbench.features.tables import modality_tables
from fusionbench.runner import RunRequest, build_context, resolve
from fusionbench.store import ResultStore, RunSummary, config_hash
from fusionbench.store.upgrade import RunData, request_of, text_source_step, upgrade_store

BEAUTY_CHECKSUM = "ed26fb14fb1638a1b10bbe9189fea3f257b5dc97ba6f2166937220a2bb6c8eb0"
"""``SequenceData.checksum()`` of bundled beauty since the first archived run: it keys every stored run."""
ARCHIVE = Path(__file__).resolve().parents[1] / "reports" / "runs" / "beauty.jsonl.gz"


@pytest.fixture(scope="module")
def beauty():
    return load_dataset("beauty")


def non_empty(texts):
    return sum(1 for t in texts[1:] if t.strip())


def test_bundled_beauty_has_full_titles_and_the_prefixes(beauty):
    sources = beauty.side.text_sources()
    assert list(sources) == ["prefix", "title"] and beauty.side.title_source == "prefix"
    assert {name: non_empty(texts) for name, texts in sources.items()} == {"title": 12086, "prefix": 12100}
    assert all(len(texts) == beauty.n_items + 1 for texts in sources.values())
    assert sources["title"][1] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    assert sources["prefix"][1] == "nail lacquer simmer and shimmer"
    assert beauty.side.titles is sources["prefix"]          # the original text, the one the checksum covers


def test_full_titles_leave_the_beauty_checksum_as_it_was(beauty):
    assert beauty.checksum() == BEAUTY_CHECKSUM
    without = dataclasses.replace(beauty, side=dataclasses.replace(beauty.side, extra_texts={}))
    assert without.checksum() == BEAUTY_CHECKSUM


def test_the_shared_beauty_folder_gives_the_same_data(shared_data, beauty):
    d = load_dataset("beauty", shared_data, source="root")
    assert d.checksum() == BEAUTY_CHECKSUM and d.side.text_sources() == beauty.side.text_sources()


def test_the_text_source_is_no_part_of_an_id_only_run(beauty):
    """An ID-only run archived before text sources existed resolves now to a config without features,
    whatever ``features.text`` says, with one hash for every source (and the archived data checksum)."""
    with gzip.open(ARCHIVE, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f.read().splitlines()[1:]]
    record = next(r for r in records if r["strategy"] == "sasrec" and "perturbation" not in json.loads(r["config"]))
    stored = json.loads(record["config"])
    assert stored["dataset_checksum"] == beauty.checksum()
    hashes = set()
    for text in (None, "prefix", "title"):
        request = request_of(stored)
        request.feature_options = {} if text is None else {"text": text}
        config = {**resolve(request), "dataset_checksum": beauty.checksum()}
        assert config["features"] == {}
        hashes.add(config_hash(config))
    assert len(hashes) == 1


def test_the_text_source_enters_only_the_features_block():
    title = resolve(RunRequest("early"))
    prefix = resolve(RunRequest("early", feature_options={"text": "prefix"}))
    assert title["features"]["text"] == "title" and prefix["features"]["text"] == "prefix"
    assert {**title, "features": None} == {**prefix, "features": None}
    assert {**title["features"], "text": "prefix"} == prefix["features"]
    assert config_hash(title) != config_hash(prefix)


@pytest.mark.parametrize("dataset, options, sources, default", [
    ("beauty", {}, ("prefix", "title"), "title"),
    ("beauty", {"source": "root"}, ("prefix", "title"), "title"),
    ("sports", {}, ("prefix",), "prefix"),
    ("toys", {}, ("prefix", "title", "title_description"), "title"),
    ("clothing", {}, (), "title"),
    ("kitchen", {}, (), "title"),
    ("phone", {}, (), "title"),
    ("synthetic", {}, (), "title"),             # its text channel is given as features
    ("folder", {"path": "anywhere"}, ("title",), "title"),
])
def test_each_dataset_declares_its_sources_and_the_default_reads_one(dataset, options, sources, default):
    assert declared_text_sources(dataset, options) == sources
    request = lambda **features: RunRequest("early", dataset=dataset, dataset_options=options,  # noqa: E731
                                            feature_options=features)
    assert resolve(request())["features"]["text"] == default
    for source in sources:                      # every declared name works, the default's too
        assert resolve(request(text=source))["features"]["text"] == source
    with pytest.raises(UserInputError, match=re.escape(
            f"features: option 'text' = 'summary': dataset {dataset!r} has no text source "
            f"'summary'; its text sources: {', '.join(sources) or 'none'}")):
        resolve(request(text="summary"))


@pytest.mark.parametrize("name", ["sports", "toys"])
def test_loaded_sources_are_the_declared_ones(shared_data, name):
    """The original source (the one the data checksum covers) stays the prefix."""
    d = load_dataset(name, shared_data)
    assert tuple(d.side.text_sources()) == declared_text_sources(name, {}) and d.side.title_source == "prefix"
    assert non_empty(d.side.titles) == d.n_items


def test_an_unknown_text_source_is_a_clear_error():
    out = CliRunner().invoke(main, ["run", "--strategy", "early", "--set", "features.text=description"])
    assert out.exit_code == 2
    assert ("error: features: option 'text' = 'description': dataset 'beauty' has no text source 'description'; "
            "its text sources: prefix, title") in out.output
    out = CliRunner().invoke(main, ["run", "--strategy", "early", "--set", "features.text=full title"])
    assert out.exit_code == 2 and "option 'text' must be a text source name" in out.output


def test_data_info_reports_the_coverage_of_each_text_source():
    out = CliRunner().invoke(main, ["data", "info", "beauty"])
    assert out.exit_code == 0, out.output
    title = r"modality text \(title\)\s+12086 / 12101 items \(99\.88%\) \(features\.text=title, the default\)"
    prefix = r"modality text \(prefix\)\s+12100 / 12101 items \(99\.99%\) \(features\.text=prefix\)"
    assert re.search(title, out.output) and re.search(prefix, out.output)


def test_item_tables_must_agree_on_asins(tmp_path, shared_data):
    folder = tmp_path / "amazon_beauty"
    folder.mkdir()
    for name in ("Beauty.txt", "Beauty_item2attributes.json", "items.tsv"):
        (folder / name).symlink_to(shared_data / "amazon_beauty" / name)
    lines = (shared_data / "amazon_beauty" / "item_text.tsv").read_text(encoding="utf-8").splitlines()
    fields = lines[3].split("\t")                # line 3 = item 3
    lines[3] = "\t".join([fields[0], "B000000000", fields[2]])
    (folder / "item_text.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"item_text.tsv: item 3 has asin 'B000000000', items.tsv says"):
        load_dataset("beauty", tmp_path, source="root")


# -- the text feature table --------------------------------------------------------------------------------
N = 12


def fake_encode(texts):
    fake_encode.calls.append(list(texts))
    rows = [np.random.default_rng(sum(map(ord, t))).normal(size=384) for t in texts]
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), 384)


@pytest.fixture
def two_texts(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSIONBENCH_CACHE", str(tmp_path / "cache"))
    fake_encode.calls = []
    monkeypatch.setattr("fusionbench.features.text.encode_texts", fake_encode)
    prefix = [""] + [f"prefix {i}" if i != 4 else "" for i in range(1, N + 1)]
    title = [""] + [f"Full Title Number {i}" if i not in (2, 7) else "" for i in range(1, N + 1)]
    return ItemSide(titles=prefix, title_source="prefix", extra_texts={"title": title})


def text_table(side, text):
    return modality_tables(side, N, "same-checksum", n_clusters=3, k=1, reduce="none", modalities=["text"],
                           text=text)["text"]


def test_the_option_picks_the_text_and_empty_texts_are_absent(two_texts):
    for source in ("title", "prefix"):
        texts = two_texts.text_sources()[source]
        table = text_table(two_texts, source)
        assert table.present.tolist() == [bool(t) for t in texts]
        rows = [i for i, t in enumerate(texts) if t]
        np.testing.assert_array_equal(table.features[rows].numpy(), fake_encode([texts[i] for i in rows]))
    with pytest.raises(UserInputError, match=r"option 'text' = 'description': this dataset has no text source "
                                             r"'description'; its text sources: prefix, title"):
        text_table(two_texts, "description")


def test_the_feature_cache_key_differs_per_source_and_per_text(two_texts, tmp_path):
    text_table(two_texts, "title")
    text_table(two_texts, "prefix")
    assert len(fake_encode.calls) == 2 and len(list((tmp_path / "cache" / "features").glob("*.npz"))) == 2
    text_table(two_texts, "title")
    text_table(two_texts, None)                 # None = the original text (configs from before the option)
    assert len(fake_encode.calls) == 2
    edited = dict(two_texts.extra_texts)
    edited["title"] = ["", "Another Title"] + edited["title"][2:]
    text_table(dataclasses.replace(two_texts, extra_texts=edited), "title")   # same checksum, other texts
    assert len(fake_encode.calls) == 3 and fake_encode.calls[-1][0] == "Another Title"


def test_runs_pass_their_recorded_source_to_the_tables(monkeypatch, beauty):
    seen = []
    monkeypatch.setattr("fusionbench.features.tables.modality_tables", lambda *a, **kw: seen.append(kw) or {})
    config = resolve(RunRequest("early", feature_options={"text": "prefix"}))
    build_context(config, beauty)
    build_context({**config, "features": {k: v for k, v in config["features"].items() if k != "text"}}, beauty)
    assert [kw["text"] for kw in seen] == ["prefix", None]


# -- old runs ----------------------------------------------------------------------------------------------
def before_text(config):
    """``config`` as stored before ``features.text`` existed."""
    return {**config, "features": {k: v for k, v in config["features"].items() if k != "text"}}


@pytest.mark.parametrize("request_, filled", [
    (RunRequest("early"), "prefix"),
    (RunRequest("mmsr", dataset="sports"), "prefix"),
    (RunRequest("late", dataset="folder", dataset_options={"path": "x"}), "title"),
    (RunRequest("early", feature_options={"modalities": "attr"}), None),   # no text channel built
    (RunRequest("early", dataset="synthetic"), None),                       # its text channel is given
    (RunRequest("early", dataset="clothing"), None),
])
def test_the_upgrade_step_records_the_text_old_runs_read(request_, filled):
    old = before_text(resolve(request_))
    new = text_source_step(old, RunData())
    assert new["features"].get("text") == filled
    assert {**new, "features": None} == {**old, "features": None}
    assert text_source_step(resolve(request_), RunData()) == resolve(request_)        # current: untouched
    assert text_source_step(resolve(RunRequest("sasrec")), RunData()) == resolve(RunRequest("sasrec"))


def test_upgrade_gives_an_old_beauty_run_the_prefix_it_read(tmp_path):
    """A hand-made record of a feature run stored before features.text: the upgrade finds it under the
    config that asks for the prefix, and the default (full titles) is another run."""
    config = {**resolve(RunRequest("early")), "dataset_checksum": BEAUTY_CHECKSUM}
    old = before_text(config)
    store = ResultStore(tmp_path / "r.db")
    run_id = store.start(old, BEAUTY_CHECKSUM, {}, "old")
    store.finish(run_id, {"test": {"HR@5": 0.25}, "valid": {"HR@5": 0.5}},
                 {"test": np.arange(4), "valid": np.arange(4)}, RunSummary(best_epoch=1))

    (result,) = upgrade_store(ResultStore(tmp_path / "r.db"))
    prefix = {**resolve(RunRequest("early", feature_options={"text": "prefix"})), "dataset_checksum": BEAUTY_CHECKSUM}
    assert (result.status, result.old_hash, result.new_hash) == ("upgraded", config_hash(old), config_hash(prefix))
    assert result.added == ("features.text",)
    store = ResultStore(tmp_path / "r.db")
    assert store.status(config_hash(prefix)) == "done" and store.status(config_hash(config)) is None
    assert json.loads(store.runs().config.iloc[0])["features"]["text"] == "prefix"
    assert store.metrics(store.run_id(config_hash(prefix)), "test") == {"HR@5": 0.25}
    assert {u.status for u in upgrade_store(store)} == {"current"}

"""Toys with real product photos: ``fusionbench features image`` on photos named by ASIN (mapping, coverage,
unreadable files, NaN rows, resuming a killed extraction, the cache), the ``toys`` image sources
(``features.image=efficientnet|clip``), its text sources (``title``, ``title_description``), ``data info``
coverage and the errors for bad input. Photos: ten of the shared Toys photos copied into a temporary folder,
next to one corrupt file and an item without a file."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.context import CODE_SENTINEL
from fusionbench.data.core import ImageSource, ItemSide
from fusionbench.data.datasets import declared_image_sources, item_keys, load_dataset
from fusionbench.data.io import read_feature_matrix
from fusionbench.errors import DataError, UserInputError
from fusionbench.features import image
from fusionbench.features.tables import modality_tables
from fusionbench.runner import RunRequest, build_context, load_data, resolve
from fusionbench.store import config_hash
from fusionbench.store.upgrade import CannotTell, RunData, image_source_step

TOYS_CHECKSUM = "8c97ddb327bb44f39bb8d3283d3ca0fcfc85d1e76f0448c1402af27002ab5b05"
"""``SequenceData.checksum()`` of toys before it had image sources and full-title text sources."""
PHOTO_ITEMS = (1, 2, 3, 4, 6, 7, 8, 9, 10, 11)   # items whose photo is copied
NO_FILE = 5                                       # has a photo in the shared folder, none in the copy
CORRUPT = 13                                      # its file holds no image
N_TOYS = 11924


@pytest.fixture(scope="module")
def toys(shared_data):
    return load_dataset("toys", shared_data)


@pytest.fixture(scope="module")
def asins(shared_data):
    return item_keys("toys", "asin", shared_data)[0]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A feature cache of this test only (the session one is shared by the other tests)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FUSIONBENCH_CACHE", str(folder))
    return folder


@pytest.fixture()
def photos(tmp_path, shared_data, asins):
    folder = tmp_path / "photos"
    folder.mkdir()
    for item in PHOTO_ITEMS:
        shutil.copy2(shared_data / "amazon_toys" / "images" / f"{asins[item]}.jpg", folder)
    (folder / f"{asins[CORRUPT]}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not a photo of an item\n")
    return folder


@pytest.fixture()
def toys_root(tmp_path, shared_data, photos):
    """A data root whose ``amazon_toys`` is the shared one with ``images/`` = the small photo folder."""
    folder = tmp_path / "root" / "amazon_toys"
    folder.mkdir(parents=True)
    for entry in (shared_data / "amazon_toys").iterdir():
        if entry.name != "images":
            (folder / entry.name).symlink_to(entry)
    (folder / "images").symlink_to(photos)
    return folder.parent


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- mapping by ASIN -----------------------------------------------------------------------------------------


def test_photos_named_by_asin_map_to_their_items(photos, asins):
    files, unmatched = image.files_by_key(photos, asins)
    assert sorted(files) == sorted(PHOTO_ITEMS + (CORRUPT,))
    assert all(files[i].name == f"{asins[i]}.jpg" for i in files)
    assert NO_FILE not in files and [p.name for p in unmatched] == ["notes.txt"]


def test_key_mapping_errors_name_the_file(photos, asins, tmp_path):
    shutil.copy(photos / f"{asins[2]}.jpg", photos / f"{asins[2]}.png")
    with pytest.raises(DataError, match=rf"{asins[2]}\.png: asin '{asins[2]}' \(item 2\) already has an image"):
        image.files_by_key(photos, asins)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "1.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"other: no file is named by an item's asin"):
        image.files_by_key(tmp_path / "other", asins)
    with pytest.raises(DataError, match=r"nowhere not found"):
        image.files_by_key(tmp_path / "nowhere", asins)
    with pytest.raises(DataError, match=r"asin 'X' belongs to items 1 and 2"):
        image.files_by_key(photos, ["", "X", "X"])


# -- the command -----------------------------------------------------------------------------------------------


def test_cli_maps_asins_reports_coverage_lists_unreadable_and_writes_nan_rows(photos, shared_data, asins, tmp_path,
                                                                                 cache):
    out = tmp_path / "image.npy"
    result = invoke("features", "image", "--images", photos, "--dataset", "toys", "--data-root", shared_data,
                    "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"11 of {N_TOYS} items of toys have a photo in {photos} (by asin, " in result.output
    assert "1 files match no item and were skipped: notes.txt" in result.output
    assert re.search(rf"1 unreadable files.*\n  {asins[CORRUPT]}\.jpg: cannot read as an image", result.output)
    assert f"wrote {out}: {N_TOYS} items x 1280 features, 10 with an image (11 encoded)" in result.output
    array = np.load(out)
    assert array.shape == (N_TOYS + 1, 1280) and array.dtype == np.float32
    finite = np.isfinite(array).all(1)
    assert np.flatnonzero(finite).tolist() == list(PHOTO_ITEMS)
    assert np.isnan(array[[0, NO_FILE, CORRUPT, 12, N_TOYS]]).all()
    # row i holds item i's photo: the same features as encoding that file alone
    direct = image.encode_images([photos / f"{asins[i]}.jpg" for i in (2, 11)])
    np.testing.assert_allclose(array[[2, 11]], direct, rtol=1e-4, atol=1e-4)
    assert not (cache / image.PARTIAL_NAMESPACE).exists() or not any((cache / image.PARTIAL_NAMESPACE).iterdir())


def test_integer_id_names_still_work_and_unreadable_files_do_not_stop_them(shared_data, asins, tmp_path, cache):
    folder = tmp_path / "ids"
    folder.mkdir()
    shutil.copy(shared_data / "amazon_toys" / "images" / f"{asins[1]}.jpg", folder / "1.jpg")
    (folder / "3.jpg").write_bytes(b"broken")
    out = tmp_path / "image.npy"
    result = invoke("features", "image", "--images", folder, "--out", out, "--n-items", 4, "--quiet")
    assert result.exit_code == 0, result.output
    assert "3.jpg: cannot read as an image" in result.output
    assert "4 items x 1280 features, 1 with an image" in result.output
    assert np.isfinite(np.load(out)).all(1).tolist() == [False, True, False, False, False]


def test_a_folder_dataset_maps_its_own_id_column_into_its_original_item_ids(shared_data, asins, tmp_path, cache):
    """Photos named by a ``sku`` column of ``items.tsv``; rows follow the original ids (the folder format)."""
    data = tmp_path / "mine"
    (data / "features").mkdir(parents=True)
    (data / "sequences.txt").write_text("a 10 20 30 10\nb 30 20 10 20\n")
    (data / "items.tsv").write_text("item_id\tsku\n10\tsku-a\n20\tsku-b\n30\tsku-c\n")
    photos = tmp_path / "skus"
    photos.mkdir()
    for sku, item in (("sku-a", 1), ("sku-c", 2)):
        shutil.copy(shared_data / "amazon_toys" / "images" / f"{asins[item]}.jpg", photos / f"{sku}.jpg")
    out = data / "features" / "image.npy"
    result = invoke("features", "image", "--images", photos, "--dataset", "folder", "--set", f"path={data}",
                    "--id-column", "sku", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "2 of 30 items of folder have a photo" in result.output
    assert np.flatnonzero(np.isfinite(np.load(out)).all(1)).tolist() == [10, 30]
    loaded = load_dataset("folder", path=str(data), min_count=1)       # re-indexed 10, 20, 30 -> 1, 2, 3
    assert loaded.side.dense["image"].present.tolist() == [False, True, False, True]


def test_a_killed_extraction_continues_from_its_chunks(photos, asins, cache):
    files, _ = image.files_by_key(photos, asins)

    def kill_after_second_chunk(number):
        if number == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        image.extract_image_channel(photos, files, N_TOYS, chunk_size=4, after_chunk=kill_after_second_chunk)
    chunks = sorted((cache / image.PARTIAL_NAMESPACE).glob("*/chunk-*.npz"))
    assert [c.name for c in chunks] == ["chunk-000000.npz", "chunk-000001.npz"]
    # chunk 0 is read back, not encoded again: give it recognisable values; chunk 1 is damaged: encoded again
    with np.load(chunks[0]) as part:
        kept = {"features": np.full_like(part["features"], 7.0), "errors": part["errors"]}
    np.savez(chunks[0], **kept)
    chunks[1].write_bytes(chunks[1].read_bytes()[:100])
    result = image.extract_image_channel(photos, files, N_TOYS, chunk_size=4)
    assert (result.resumed, result.encoded, result.cached) == (4, 7, False)
    first, second = sorted(files)[:4], sorted(files)[4:8]
    assert (result.features[first] == 7.0).all()
    np.testing.assert_allclose(result.features[second], image.encode_images([files[i] for i in second]),
                               rtol=1e-4, atol=1e-4)
    assert result.present[list(PHOTO_ITEMS)].all() and not result.present[[0, NO_FILE, CORRUPT]].any()
    assert not chunks[0].parent.exists()                 # chunks go once the channel is cached


def test_a_finished_extraction_is_a_cache_hit_until_the_folder_changes(photos, asins, cache):
    files, _ = image.files_by_key(photos, asins)
    first = image.extract_image_channel(photos, files, N_TOYS)
    assert (first.cached, first.encoded, first.n_files) == (False, 11, 11)
    image.load_model.cache_clear()
    again = image.extract_image_channel(photos, files, N_TOYS)
    assert again.cached and again.encoded == 0
    assert image.load_model.cache_info().currsize == 0    # the encoder was not even loaded
    np.testing.assert_array_equal(again.features, first.features)
    assert again.unreadable == first.unreadable == [(f"{asins[CORRUPT]}.jpg", again.unreadable[0][1])]
    assert again.unreadable[0][1].startswith("cannot read as an image (")
    before = image.folder_fingerprint(photos)
    photo = files[2]
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 10**9))   # touched, as a copy is
    assert image.folder_fingerprint(photos) == before
    assert image.extract_image_channel(photos, files, N_TOYS).cached
    photo.write_bytes(files[3].read_bytes())                                            # rewritten: a new key
    assert image.folder_fingerprint(photos) != before
    rewritten = image.extract_image_channel(photos, files, N_TOYS)
    assert not rewritten.cached and rewritten.encoded == 11
    fewer = {i: p for i, p in files.items() if i != 2}    # another mapping of the same folder: another key
    assert image.extraction_key(fewer, N_TOYS, photos) != image.extraction_key(files, N_TOYS, photos)


@pytest.mark.slow
@pytest.mark.timeout(1800)       # waits up to 600 s for the first chunk, then extracts 600 images
def test_a_sigkilled_command_resumes(photos, shared_data, tmp_path, cache):
    """A real kill: the command in a subprocess, SIGKILLed once its first chunk is on disk, then run again."""
    out = tmp_path / "image.npy"
    folder = tmp_path / "many"
    folder.mkdir()
    for path in sorted((shared_data / "amazon_toys" / "images").iterdir())[:600]:
        shutil.copy2(path, folder)
    command = [sys.executable, "-m", "fusionbench.cli", "features", "image", "--images", str(folder),
               "--dataset", "toys", "--data-root", str(shared_data), "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    deadline = time.time() + 600
    while not list((cache / image.PARTIAL_NAMESPACE).glob("*/chunk-000000.npz")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"600 with an image \(\d+ encoded, \d+ resumed from an interrupted run\)", result.stdout)


# -- the toys channels ---------------------------------------------------------------------------------------


def test_toys_declares_its_image_sources_and_its_checksum_stays(toys, shared_data):
    assert declared_image_sources("toys", {}) == ("efficientnet", "clip")
    assert declared_image_sources("beauty", {}) == () and declared_image_sources("folder", {"path": "x"}) is None
    sources = toys.side.image_sources
    assert sources["efficientnet"].path == shared_data / "amazon_toys" / "images"
    assert sources["efficientnet"].keys[1] == "B005E7BDXW" and sources["clip"].kind == "file"
    assert "image" in toys.side.modality_names()
    assert toys.checksum() == TOYS_CHECKSUM


def test_the_shipped_clip_rows_are_the_items_with_a_photo(toys):
    clip = read_feature_matrix(toys.side.image_sources["clip"].path, toys.n_items)
    assert clip.features.dtype == np.float32 and clip.features.shape == (N_TOYS + 1, 512)
    folder = toys.side.image_sources["efficientnet"].path
    photos = {p.stem for p in folder.iterdir()}
    has_photo = np.array([False] + [a in photos for a in toys.side.asins[1:]])
    assert clip.present.sum() == has_photo.sum() == 11907
    np.testing.assert_array_equal(clip.present, has_photo)


def test_a_clip_file_source_gives_float32_features_with_absent_nan_rows(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(9, 6)).astype(np.float16)
    array[[0, 3, 7]] = np.nan
    path = tmp_path / "clip.npy"
    np.save(path, array)
    side = ItemSide(image_sources={"clip": ImageSource("file", path)})
    table = modality_tables(side, 8, "tiny-clip", n_clusters=2, k=1, reduce="none", image="clip")["image"]
    assert table.features.dtype.is_floating_point and table.dim == 6
    assert table.present.tolist() == [False, True, True, False, True, True, True, False, True]
    np.testing.assert_array_equal(table.features.numpy()[table.present.numpy()],
                                  array[table.present.numpy()].astype(np.float32))
    assert not table.features[~table.present].any() and (table.codes[~table.present] == CODE_SENTINEL).all()
    array[5, 2] = np.nan                                   # a partly NaN row: an error naming the file
    np.save(path, array)
    with pytest.raises(DataError, match=r"clip\.npy: row 5 is partly NaN"):
        modality_tables(side, 8, "tiny-clip-bad", n_clusters=2, k=1, reduce="none", image="clip")
    with pytest.raises(UserInputError, match=r"option 'image' = 'efficientnet'.*its image sources: clip"):
        modality_tables(side, 8, "tiny-clip", n_clusters=2, k=1, reduce="none")


def test_the_image_source_is_part_of_the_run_config():
    default = resolve(RunRequest("early", dataset="toys"))
    clip = resolve(RunRequest("early", dataset="toys", feature_options={"image": "clip"}))
    assert default["features"]["image"] == "efficientnet" and clip["features"]["image"] == "clip"
    assert {**default["features"], "image": "clip"} == clip["features"] and config_hash(default) != config_hash(clip)
    assert default["features"]["text"] == "title"
    assert resolve(RunRequest("sasrec", dataset="toys", feature_options={"image": "clip"}))["features"] == {}


def test_the_default_encoder_channel_is_computed_on_first_use_then_cached(toys_root, cache):
    request = RunRequest("early", dataset="toys", data_root=toys_root,
                         feature_options={"modalities": "image,attr", "reduce": "none", "n_clusters": 3, "k": 1})
    config = resolve(request)
    data = load_data(config, toys_root)
    ctx = build_context(config, data)
    assert sorted(ctx.modalities) == ["attr", "image"]
    table = ctx.modalities["image"]
    assert table.dim == 1280 and np.flatnonzero(table.present.numpy()).tolist() == list(PHOTO_ITEMS)
    image.load_model.cache_clear()
    again = build_context(config, data)
    assert image.load_model.cache_info().currsize == 0   # the cached features were read
    assert np.array_equal(again.modalities["image"].features.numpy(), table.features.numpy())
    only = resolve(RunRequest("late", dataset="toys", feature_options={"modalities": "image", "image": "clip",
                                                                        "reduce": "none", "n_clusters": 3, "k": 1}))
    clip = build_context(only, data).modalities
    assert list(clip) == ["image"] and clip["image"].dim == 512 and int(clip["image"].present.sum()) == 11907


def test_title_description_joins_the_full_title_and_the_description(toys, shared_data):
    rows = {}
    for line in (shared_data / "amazon_toys" / "item_text.tsv").read_text(encoding="utf-8").splitlines()[1:13]:
        item, _, title, description = line.split("\t")
        rows[int(item)] = (title, description)
    sources = toys.side.text_sources()
    assert list(sources) == ["prefix", "title", "title_description"] and toys.side.title_source == "prefix"
    title, description = rows[2]
    assert sources["title"][2] == title == "LEGO Star Wars Clone Troopers vs Droidekas 75000"
    assert sources["title_description"][2] == f"{title} {description.strip()}"
    assert rows[12][1] == "" and sources["title_description"][12] == rows[12][0]   # no description: the title
    config = resolve(RunRequest("early", dataset="toys", feature_options={"text": "title_description"}))
    assert config["features"]["text"] == "title_description"


# -- data info -----------------------------------------------------------------------------------------------


def test_data_info_reports_the_coverage_of_every_toys_channel(shared_data, toys_root, cache):
    out = invoke("data", "info", "toys", "--data-root", shared_data)
    assert out.exit_code == 0, out.output
    for pattern in (
        r"modality image \(clip\)\s+11907 / 11924 items \(99\.86%\), 512-d features from clip_vit_b32_image\.npy "
        r"\(features\.image=clip\)",
        r"modality image \(efficientnet\)\s+11907 / 11924 items \(99\.86%\) with a photo, EfficientNet-Lite0 "
        r"features not computed yet \(on first use\) \(features\.image=efficientnet, the default\)",
        r"modality text \(title\)\s+11924 / 11924 items \(100\.00%\) \(features\.text=title, the default\)",
        r"modality text \(title_description\)\s+11924 / 11924 items",
        r"modality attr\s+11924 / 11924 items \(100\.00%\), 1027 attribute ids",
    ):
        assert re.search(pattern, out.output), pattern
    # after the extraction, the photos that could be read
    data = load_dataset("toys", toys_root)
    source = data.side.image_sources["efficientnet"]
    image.extract_image_channel(source.path, image.files_by_key(source.path, source.keys)[0], N_TOYS)
    out = invoke("data", "info", "toys", "--data-root", toys_root)
    assert re.search(r"modality image \(efficientnet\)\s+10 / 11924 items \(0\.08%\) with a readable photo "
                     r"\(11 photos, EfficientNet-Lite0 features cached\)", out.output), out.output


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--images", "{tmp}/none", "--out", "{tmp}/x.npy", "--dataset", "toys"],
     "--images: image folder {tmp}/none not found"),
    (["--images", "{tmp}/none", "--out", "{tmp}/x.npy"], "image folder {tmp}/none not found"),
    (["--images", "{photos}", "--out", "{tmp}/x.npy", "--dataset", "toys", "--id-column", "sku"],
     "--id-column 'sku': no item table of {data}/amazon_toys has a column 'sku' (items.tsv has item_id, asin, "
     "title_prefix; item_text.tsv has item_id, asin, title, description)"),
    (["--images", "{photos}", "--out", "{tmp}/x.npy", "--id-column", "asin"],
     "--id-column and --set apply with --dataset"),
    (["--images", "{photos}", "--out", "{tmp}/x.bin", "--dataset", "toys"],
     "--out {tmp}/x.bin: the output file must end in .npy"),
])
def test_bad_extraction_input_is_a_clear_error(args, message, photos, shared_data, tmp_path, cache):
    fill = {"tmp": tmp_path, "photos": photos, "data": shared_data}
    out = invoke("features", "image", "--data-root", shared_data, *[a.format(**fill) for a in args])
    assert out.exit_code == 2 and f"error: {message.format(**fill)}" in out.output, out.output


@pytest.mark.parametrize("dataset, value, sources", [
    ("toys", "resnet", "efficientnet, clip"),
    ("beauty", "clip", "none"),
])
def test_an_unknown_image_source_is_a_clear_error(dataset, value, sources, shared_data):
    out = invoke("run", "--strategy", "early", "--dataset", dataset, "--data-root", shared_data,
                 "--set", f"features.image={value}")
    assert out.exit_code == 2
    assert (f"error: features: option 'image' = {value!r}: dataset {dataset!r} has no image source {value!r}; "
            f"its image sources: {sources}") in out.output
    out = invoke("run", "--strategy", "early", "--set", "features.image=clip vectors")
    assert out.exit_code == 2 and "option 'image' must be an image source name" in out.output


# -- runs made before the image channel --------------------------------------------------------------------


def test_upgrade_keeps_toys_runs_made_before_the_image_channel():
    old = resolve(RunRequest("early", dataset="toys", feature_options={"text": "prefix"}))
    del old["features"]["image"]
    with pytest.raises(CannotTell, match="before dataset 'toys' had an image channel"):
        image_source_step(old, RunData())
    text_attr = {**old, "features": {**old["features"], "modalities": ["attr", "text"]}}
    assert image_source_step(text_attr, RunData()) == text_attr
    beauty = resolve(RunRequest("early"))
    del beauty["features"]["image"]
    assert image_source_step(beauty, RunData()) == beauty
    assert resolve(RunRequest("early"))["features"]["image"] == "efficientnet"   # re-resolving adds the default

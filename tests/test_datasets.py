"""Dataset loading: real Amazon counts (MMSR Table 1), the bundled copy, the folder format, errors."""
import gzip

import numpy as np
import pytest
import torch

from fusionbench.data.datasets import BUNDLED, kcore, load_dataset
from fusionbench.errors import DataError

TABLE1 = {
    "beauty": (22363, 12101, 198502),
    "sports": (35598, 18357, 296337),
    "toys": (19412, 11924, 167597),
    "clothing": (39387, 23033, 278677),
    "kitchen": (66519, 28237, 551682),
    "phone": (27879, 10429, 194439),
}


def counts(d):
    return d.n_users, d.n_items, d.n_interactions


def test_bundled_beauty_matches_table1_and_has_text_and_attr():
    d = load_dataset("beauty")
    assert counts(d) == TABLE1["beauty"]
    assert d.side.modality_names() == ["attr", "text"]  # no image channel exists for these data
    assert d.side.titles[1] == "nail lacquer simmer and shimmer"
    assert d.side.attributes[4] == (1, 2, 3)
    assert d.sequence(1).tolist() == [6, 7, 8, 9, 10, 4, 11]
    assert (d.lengths >= 5).all()


@pytest.mark.parametrize("name", ["Beauty.txt", "items.tsv", "Beauty_item2attributes.json", "item_text.tsv"])
def test_bundled_copy_is_byte_identical_to_shared(shared_data, name):
    with gzip.open(BUNDLED / "beauty" / f"{name}.gz", "rb") as fh:
        assert fh.read() == (shared_data / "amazon_beauty" / name).read_bytes()


@pytest.mark.parametrize("name", ["sports", "toys", "clothing", "kitchen", "phone"])
def test_shared_datasets_match_table1(shared_data, name):
    d = load_dataset(name, shared_data)
    assert counts(d) == TABLE1[name]
    if name == "toys":
        assert d.side.modality_names() == ["attr", "image", "text"]
    elif name == "sports":
        assert d.side.modality_names() == ["attr", "text"]
    else:
        assert d.side.modality_names() == []


def test_loader_rejects_wrong_counts(tmp_path, shared_data):
    folder = tmp_path / "amazon_toys"
    folder.mkdir()
    lines = (shared_data / "amazon_toys" / "Toys_and_Games.txt").read_text().splitlines()
    (folder / "Toys_and_Games.txt").write_text("\n".join(lines[:-1]) + "\n")
    (folder / "Toys_and_Games_item2attributes.json").write_text("{}")
    with pytest.raises(DataError, match="expected 19412 users"):
        load_dataset("toys", tmp_path)


def test_kcore_iterates_until_stable():
    # item 9 occurs twice; dropping it leaves user 1 with 2 items, which then drops user 1 too
    seqs = [[1, 2, 3], [1, 9, 2], [1, 2, 3, 9], [3, 1, 2]]
    flat = torch.tensor([i for s in seqs for i in s])
    offsets = torch.tensor([0, 3, 6, 10, 13])
    new_flat, new_offsets, kept = kcore(flat, offsets, k=3)
    assert kept.tolist() == [1, 2, 3]
    assert new_offsets.tolist() == [0, 3, 6, 9]
    assert new_flat.tolist() == [1, 2, 3, 1, 2, 3, 3, 1, 2]


def write_folder(path, n_items=6, features=None):
    path.mkdir(exist_ok=True)
    (path / "sequences.txt").write_text("u1 1 2 3 4 5\nu2 2 3 4 5 6\nu3 6 5 4 3 2 1\n")
    (path / "items.tsv").write_text(
        "item_id\ttitle\tattributes\n1\tred lipstick\tA|B\n2\tblue tent\tB\n3\t\t\n4\tlamp\tC\n5\tx\tA\n6\ty\tC\n"
    )
    if features is not None:
        (path / "features").mkdir(exist_ok=True)
        np.save(path / "features" / "image.npy", features)
    return path


def test_folder_format_round_trip(tmp_path):
    feats = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    feats[3] = np.nan  # item 3 has no image
    d = load_dataset("folder", path=str(write_folder(tmp_path / "mine", features=feats)), min_count=1)
    assert counts(d) == (3, 6, 16)
    assert d.side.modality_names() == ["attr", "image", "text"]
    assert d.side.titles[1:4] == ["red lipstick", "blue tent", ""]
    assert d.side.attributes[1] == (1, 2) and d.side.n_attributes == 3
    image = d.side.dense["image"]
    assert image.present.tolist() == [False, True, True, False, True, True, True]
    np.testing.assert_array_equal(image.features[3], 0)
    np.testing.assert_allclose(image.features[1], feats[1])


def test_folder_kcore_reindexes_features(tmp_path):
    feats = np.arange(6 * 2, dtype=np.float32).reshape(6, 2)  # rows 0..5: largest id in sequences is 5
    folder = write_folder(tmp_path / "k", features=feats)
    (folder / "sequences.txt").write_text("a 1 2 3\nb 2 3 4\nc 3 2 5\n")  # items 2, 3 survive a 2-core
    d = load_dataset("folder", path=str(folder), min_count=2)
    assert d.n_items == 2
    np.testing.assert_array_equal(d.side.dense["image"].features[1:], feats[[2, 3]])
    assert d.side.titles[1:] == ["blue tent", ""]


@pytest.mark.parametrize(
    "content, message",
    [
        ("u1 1 2 x 4\n", r"sequences.txt:1: item id 'x' is not an integer"),
        ("u1 1 2 3\nu2\n", r"sequences.txt:2: expected 'user_id item_id"),
        ("u1 1 0 3\n", r"sequences.txt:1: item ids must be >= 1"),
        ("u1 1 2\nu1 2 3\n", r"sequences.txt:2: user 'u1' appears on more than one line"),
    ],
)
def test_malformed_sequence_lines_name_file_and_line(tmp_path, content, message):
    (tmp_path / "sequences.txt").write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset("folder", path=str(tmp_path), min_count=1)


def test_missing_files_and_bad_feature_shapes(tmp_path):
    with pytest.raises(DataError, match="dataset folder .* not found"):
        load_dataset("folder", path=str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"missing file .*sequences.txt"):
        load_dataset("folder", path=str(tmp_path))
    folder = write_folder(tmp_path / "f", features=np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(DataError,
                       match=r"image.npy: expected .* shape \[n_items \+ 1, d\] = \[7, d\], got shape \[5, 3\]"):
        load_dataset("folder", path=str(folder), min_count=1)
    half = np.zeros((7, 3), dtype=np.float32)
    half[2, 1] = np.nan
    write_folder(folder, features=half)
    with pytest.raises(DataError, match="row 2 is partly NaN"):
        load_dataset("folder", path=str(folder), min_count=1)
    (folder / "items.tsv").write_text("id\ttitle\n1\ta\n")
    (folder / "features" / "image.npy").unlink()
    with pytest.raises(DataError, match=r"items.tsv:1: header must contain an 'item_id' column"):
        load_dataset("folder", path=str(folder), min_count=1)

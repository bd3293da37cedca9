"""Shared fixtures. The real datasets are found at ../shared/data (or $FUSIONBENCH_DATA)."""
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FUSIONBENCH_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (set FUSIONBENCH_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Feature caches of tests go to one temporary folder per session, never to ~/.cache."""
    monkeypatch.setenv("FUSIONBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture()
def cycle_folder(tmp_path):
    """``cycle_folder(n_users)``: a dataset folder in the documented format (``sequences.txt``) whose users
    walk i -> i + 1 (mod 30) from a random start for 5 to 9 steps (seed 0); returns the folder."""

    def write(n_users: int) -> Path:
        rng = np.random.default_rng(0)
        lines = []
        for user in range(n_users):
            start, length = rng.integers(0, 30), rng.integers(5, 10)
            lines.append(" ".join([f"u{user}"] + [str((start + j) % 30 + 1) for j in range(length)]))
        (tmp_path / "sequences.txt").write_text("\n".join(lines) + "\n")
        return tmp_path

    return write

"""Shared fixtures. The real datasets are found at ../shared/data (or $FUSIONBENCH_DATA)."""
import os
from pathlib import Path

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

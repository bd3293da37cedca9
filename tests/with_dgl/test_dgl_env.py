"""The ``dgl`` tox environment replaces pyproject's torch/torchvision pins with DGL's (tox.ini installs
the project with --no-deps), so its ``deps`` list must keep up with every other project dependency."""
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytest.importorskip("dgl", reason="DGL is not installed here; run the DGL tests with `tox -e dgl`")

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
REPINNED = {"torch", "torchvision"}          # tox.ini pins the versions dgl 2.1.0 runs beside


def test_every_other_project_dependency_is_installed():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    missing = []
    for spec in wanted:
        req = Requirement(spec)
        if req.name in REPINNED:
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            missing.append(spec)
            continue
        if not req.specifier.contains(installed, prereleases=True):
            missing.append(f"{spec} (have {installed})")
    assert not missing, f"add to [testenv:dgl] deps in tox.ini: {', '.join(missing)}"

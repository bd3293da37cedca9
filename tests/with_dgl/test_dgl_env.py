"""The ``dgl`` tox environment replaces pyproject's torch/torchvision pins with DGL's (tox.ini installs
the project with --no-deps), so its ``deps`` list must keep up with every other project dependency."""
import tomllib
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytest.importorskip("dgl", reason="DGL is not installed here; run the DGL tests with `tox -e dgl`")

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
REPINNED = {"torch", "torchvision"}          # tox.ini pins the versions dgl 2.1.0 runs beside


def unmet(spec: str, extras: frozenset = frozenset()) -> list[str]:
    """What of requirement ``spec`` is not installed here: the package itself (or a version outside its
    specifier) and, for ``package[extra]``, every requirement the package declares for that extra (``ray[tune]``
    names Ray Tune's own dependencies, which a bare ``ray`` does not bring). ``extras``: the extras under which
    ``spec`` is declared (its environment marker is evaluated with each)."""
    req = Requirement(spec)
    if req.marker is not None and not any(req.marker.evaluate({"extra": extra}) for extra in extras or {""}):
        return []
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        return [spec]
    if not req.specifier.contains(installed, prereleases=True):
        return [f"{spec} (have {installed})"]
    out = []
    declared = (requires(req.name) or []) if req.extras else []
    for inner in declared:
        if Requirement(inner).marker is not None:
            out += unmet(inner, frozenset(req.extras))
    return [f"{spec}: {item}" for item in out]


def test_every_other_project_dependency_is_installed():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    missing = [item for spec in wanted if Requirement(spec).name not in REPINNED for item in unmet(spec)]
    assert not missing, f"add to [testenv:dgl] deps in tox.ini: {', '.join(missing)}"


@pytest.mark.parametrize("module", ["ray.tune", "optuna", "pyarrow", "torch_geometric", "transformers", "pandas"])
def test_the_repinned_stack_imports(module):
    """Installed is not enough: a dependency built for numpy 2 (pyarrow 21+, which Ray Tune imports) is
    present by its metadata and fails at import beside dgl's numpy<2, failing every tune and Ray test."""
    __import__(module)

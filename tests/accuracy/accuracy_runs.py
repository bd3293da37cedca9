"""Fixed-seed tiny training runs whose test metrics are guarded by committed floors (``floors.json``).

Each run goes through the same steps as ``fusionbench run`` (resolve the configuration, load, split,
modality tables, train with validation-only selection, rank the test samples once), single-threaded
and seeded, so on one machine its metrics are bit-identical from run to run. ``beauty`` runs use the
first ``users`` users of the bundled data (item ids unchanged, all 12,101 items ranked) and the cheap
``attr`` channel only, so that no text encoder runs.

Regenerate the floors (after an intended change of results) with

    python tests/accuracy/accuracy_runs.py

which measures every run and rewrites ``floors.json`` atomically.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fusionbench.atomic import atomic_write
from fusionbench.data.core import SequenceData
from fusionbench.data.splits import make_split
from fusionbench.dropout import fixed_mask_draw
from fusionbench.features.codes import single_threaded
from fusionbench.registry import STRATEGIES
from fusionbench.runner import RunRequest, build_context, load_data, resolve
from fusionbench.train import TrainOptions, train

FLOORS = Path(__file__).with_name("floors.json")
COMMAND = "python tests/accuracy/accuracy_runs.py"


@dataclass(frozen=True)
class Run:
    """One tiny run: the parts of a :class:`~fusionbench.runner.RunRequest` that differ from the
    defaults, the training length and rate, and ``users`` (keep the first users; 0 = all)."""

    strategy: str
    dataset: str
    epochs: int
    users: int = 0
    max_len: int = 50
    lr: float = 1e-3
    strategy_options: dict = field(default_factory=dict)
    feature_options: dict = field(default_factory=dict)


RUNS = {
    "synthetic/sasrec": Run("sasrec", "synthetic", epochs=5, lr=5e-3),
    "synthetic/early": Run("early", "synthetic", epochs=5, lr=5e-3, feature_options={"reduce": "pca"}),
    "beauty1000/sasrec": Run("sasrec", "beauty", epochs=2, users=1000, max_len=10, lr=5e-3),
    "beauty1000/early": Run("early", "beauty", epochs=2, users=1000, max_len=10, lr=5e-3,
                            feature_options={"modalities": ("attr",)}),
    "beauty1000/mmsr": Run("mmsr", "beauty", epochs=1, users=1000, max_len=10, lr=5e-3,
                           strategy_options={"dim": 32}, feature_options={"modalities": ("attr",)}),
}
"""Run name -> run. ``synthetic``: the default ``mixed`` testbed (2,000 users, 256 items, codes by PCA)."""


def first_users(data: SequenceData, n: int) -> SequenceData:
    """The first ``n`` users' sequences (flat ``[offsets[n]]``, offsets ``[n + 1]``), items and side unchanged."""
    if not 1 <= n <= data.n_users:
        raise ValueError(f"first_users: n must be in 1..{data.n_users}, got {n}")
    return SequenceData(data.name, data.n_items, data.flat[: int(data.offsets[n])], data.offsets[: n + 1],
                        data.side, f"{data.source} (first {n} users)")


def measure(run: Run) -> dict[str, float]:
    """Train ``run`` (seed 0, one thread, dropout masks from the uniform draw on every machine) and return
    its test metrics (fractions, HR/NDCG/MRR@5/10/20)."""
    request = RunRequest(strategy=run.strategy, dataset=run.dataset, max_len=run.max_len,
                         strategy_options=run.strategy_options, feature_options=run.feature_options,
                         train_options={"epochs": run.epochs, "patience": run.epochs, "lr": run.lr})
    with single_threaded(), fixed_mask_draw("uniform"):
        config = resolve(request)
        data = load_data(config, None)
        if run.users:
            data = first_users(data, run.users)
        split = make_split(data, config["protocol"])
        model = STRATEGIES.create(run.strategy, build_context(config, data, split), **config["strategy_options"])
        result = train(model, data, split, TrainOptions.build(config["train"]), config["seed"], config["max_len"],
                       progress=False)
    return result.test


def main() -> None:
    """Measure every run and rewrite ``floors.json`` atomically."""
    floors = {}
    for name, run in RUNS.items():
        started = time.perf_counter()
        floors[name] = measure(run)
        print(f"{name}: {time.perf_counter() - started:.1f} s  NDCG@10 {floors[name]['NDCG@10']:.4f}", file=sys.stderr)
    content = {"command": COMMAND, "note": "exact test metrics of seeded single-thread runs; "
               "a run passes while every metric is >= its floor", "floors": floors}
    text = json.dumps(content, indent=2) + "\n"
    atomic_write(FLOORS, lambda f: f.write(text.encode()))
    print(f"wrote {FLOORS}", file=sys.stderr)


if __name__ == "__main__":
    main()

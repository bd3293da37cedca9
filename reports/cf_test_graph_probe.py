"""Which graph a graph-CF model should rank the test samples on: the test-time graph the harness uses
(``loo``: the training graph plus every user's validation item, docs/graph-cf.md) or the training graph
the model was fitted on (what MMRec, the BM3 authors' framework, does), each with and without the user's
own history ranked (``train.exclude_history``). From kept weights, without retraining.

For every finished clean run of a graph-CF strategy in the store (``models/`` beside it), the
validation-selected model ranks the test samples four ways and prints test metrics in %:

- ``test graph``: as the run did (:meth:`GraphCFStrategy.for_test`): the validation edge is in the graph
  the user and item vectors are propagated over, and the degrees that normalise it;
- ``train graph``: the same weights propagated over the training graph alone, as during training and
  validation: the user vector cannot take the validation item in;

each ranking every item, and ranking only the items outside the sample's history (``excl.``).

    python reports/cf_test_graph_probe.py --store runs/cfprobe.db
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator, Optional

from fusionbench.evaluate import rank_samples
from fusionbench.metrics import summarize
from fusionbench.registry import STRATEGIES
from fusionbench.runner import load_kept
from fusionbench.store import ResultStore
from strategies.cf_graph import GraphCFStrategy

METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")
WAYS = (("test graph", True, False), ("train graph", False, False),
        ("test graph, excl.", True, True), ("train graph, excl.", False, True))


def rankings(store: Path, data_root: Optional[Path] = None) -> Iterator[tuple[dict, str, dict[str, float]]]:
    """``(config, way, test metrics)`` for every finished clean graph-CF run of ``store`` with kept
    weights and each of the four ways of :data:`WAYS` (the module's docstring)."""
    results = ResultStore(store)
    for text in results.runs().sort_values("id")["config"]:
        config = json.loads(text)
        if "perturbation" in config or not issubclass(STRATEGIES.get(config["strategy"]), GraphCFStrategy):
            continue
        kept = load_kept(results, config, data_root)
        if kept is None:
            continue
        model, data, split = kept
        batch = config["train"].get("eval_batch_size", 1024)
        for way, test_graph, exclude in WAYS:
            ranked_by = model.for_test() if test_graph else model
            yield config, way, summarize(rank_samples(ranked_by, data, split.test, config["max_len"], batch,
                                                      exclude_history=exclude))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()
    print("| dataset | strategy | seed | ranked on | " + " | ".join(METRICS) + " |")
    print("|---|---|---|---|" + "---|" * len(METRICS))
    for config, way, metrics in rankings(args.store, args.data_root):
        cells = " | ".join(f"{100 * metrics[m]:.2f}" for m in METRICS)
        print(f"| {config['dataset']} | {config['strategy']} | {config['seed']} | {way} | {cells} |", flush=True)


if __name__ == "__main__":
    main()

"""How much each model loses to its own history: test metrics of finished runs with and without
``train.exclude_history`` (specs/protocol.md §3), from their kept weights, without retraining.

For every finished clean run of the store (``--strategy`` to pick some), the selected model (its kept
weights, ``models/`` beside the store) ranks the test samples twice: as the run did, and among the items
outside each sample's history. Also prints the share of test targets that repeat a history item (none on
the Amazon 5-core sets: there, every history item ranked above the target is a wasted slot). The
validation-selected epoch is the run's; a run trained with the option on could select another.

    python reports/exclude_history_probe.py --store runs/beauty.db --strategy sasrec,sasrecf,mmsr,bm3
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusionbench.evaluate import rank_samples
from fusionbench.metrics import summarize
from fusionbench.runner import load_kept
from fusionbench.store import ResultStore

METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--strategy", default="", help="comma-separated; default: every finished clean run")
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()
    wanted = {s for s in args.strategy.split(",") if s}
    results = ResultStore(args.store)
    runs = results.runs()
    print("| run | strategy | seed | repeats % | " + " | ".join(f"{m} plain / excl." for m in METRICS) + " |")
    print("|---|---|---|---|" + "---|" * len(METRICS))
    for run_id, text in zip(runs["id"], runs["config"]):
        config = json.loads(text)
        if "perturbation" in config or (wanted and config["strategy"] not in wanted):
            continue
        kept = load_kept(results, config, args.data_root)
        if kept is None:
            continue
        model, data, split = kept
        test_model = model.for_test()
        batch = config["train"].get("eval_batch_size", 1024)
        plain = summarize(rank_samples(test_model, data, split.test, config["max_len"], batch))
        excl = summarize(rank_samples(test_model, data, split.test, config["max_len"], batch, exclude_history=True))
        start = data.offsets[:-1][split.test.user]
        target = data.flat[start + split.test.pos]
        repeats = sum(int(t) in set(data.flat[s:s + p].tolist())
                      for s, p, t in zip(start.tolist(), split.test.pos.tolist(), target.tolist()))
        cells = " | ".join(f"{100 * plain[m]:.2f} / {100 * excl[m]:.2f}" for m in METRICS)
        print(f"| {run_id} | {config['strategy']} | {config['seed']} | {100 * repeats / len(target):.2f} | {cells} |",
              flush=True)


if __name__ == "__main__":
    main()

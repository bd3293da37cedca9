"""How each row's test metrics depend on where the target sits among its user's test targets (`ratio`).

Under ``ratio`` a user's last ⌊0.2·T⌋ interactions (at least one) are test targets. A sequential model sees
every earlier interaction in its input, the earlier test targets included; a graph-CF model has one user
vector, learnt from the training part only, for all of them (specs/cf-baselines.md). Splitting the test
samples into each user's first test target (k = 1) and the later ones (k ≥ 2) measures that difference from
the stored per-sample ranks, without retraining: for every finished clean run of the store on the dataset
and protocol, HR@K and NDCG@K (%) over all test samples, over k = 1, over the k = 1 targets of the users
with n ≥ 2 test targets, and over k ≥ 2 (the same users: against the column before it, one user group's
earlier and later targets), ranked among every item (``test``) and, where the run stored it, among the
items outside each history (``test_unseen``).

    python reports/target_position_probe.py --store runs/paper.db --dataset beauty --seed 0

NDCG@K of a sample with 0-based rank r is 1/log2(r + 2) when r < K, else 0; HR@K is [r < K].
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fusionbench.data.splits import Split, make_split
from fusionbench.report.collect import current_names, options_off_default, short_value
from fusionbench.runner import load_data
from fusionbench.store import ResultStore


def target_order(split: Split, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per test sample of a ``ratio`` split, k (1 for its user's first test target, 2 for the next, ...)
    and its user's number of test targets n. The validation target of user u sits at ``history_end[u]``,
    its test targets after it, up to the end of its sequence."""
    user, pos = split.test.user.numpy(), split.test.pos.numpy()
    validation = split.history_end.numpy()[user]
    return pos - validation, lengths[user] - validation - 1


def label(config: dict) -> str:
    """Strategy (+ aggregator) and the options off their defaults, as the leaderboard labels rows."""
    head = config["strategy"] + (f" + {config['aggregator']}" if config.get("aggregator") else "")
    off = options_off_default(current_names(config)) or {}
    return head + (f" ({', '.join(f'{k}={short_value(v)}' for k, v in off.items())})" if off else "")


def metrics(ranks: np.ndarray, k: int) -> tuple[float, float]:
    """HR@k and NDCG@k in % of 0-based ranks."""
    hit = ranks < k
    return 100 * hit.mean(), 100 * np.where(hit, 1 / np.log2(ranks + 2.0), 0.0).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--protocol", default="ratio", choices=["ratio"])
    parser.add_argument("--seed", type=int, default=None, help="only runs of this seed")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()
    if not args.store.exists():
        parser.error(f"--store {args.store}: no such file")
    store = ResultStore(args.store)
    table = store.runs(status="done")
    runs = [(int(row.id), int(row.seed), json.loads(row.config)) for row in table.itertuples()]
    runs = [(rid, seed, c) for rid, seed, c in runs if c["dataset"] == args.dataset and c["protocol"] == args.protocol
            and "perturbation" not in c and (args.seed is None or seed == args.seed)]
    if not runs:
        parser.error(f"no finished clean {args.protocol} run of {args.dataset!r} in {args.store}")
    data = load_data(runs[0][2], args.data_root)
    split = make_split(data, args.protocol)
    order, n_test = target_order(split, data.lengths.numpy())
    parts = {"all": order >= 1, "k = 1": order == 1, "k = 1, n ≥ 2": (order == 1) & (n_test >= 2),
             "k ≥ 2": order >= 2}
    print(f"{args.dataset}, {args.protocol}: {len(order)} test samples; {parts['k = 1'].sum()} first test targets "
          f"(k = 1), {parts['k = 1, n ≥ 2'].sum()} of them of users with two or more (n ≥ 2), whose later "
          f"targets (k ≥ 2) are {parts['k ≥ 2'].sum()}. HR@{args.k} / NDCG@{args.k} in %.\n")
    heads = [f"{ranking} {part}" for ranking in ("all items", "unseen") for part in parts]
    print("| run | seed | " + " | ".join(heads) + " |")
    print("|---|---|" + "---|" * len(heads))
    for rid, seed, config in runs:
        cells = []
        for split_name in ("test", "test_unseen"):
            try:
                ranks = store.ranks(rid, split_name)
            except KeyError:
                cells += ["–"] * len(parts)
                continue
            if len(ranks) != len(order):
                raise SystemExit(f"run {rid}: {len(ranks)} {split_name} ranks, the split has {len(order)} samples")
            cells += ["{:.2f} / {:.2f}".format(*metrics(ranks[mask], args.k)) for mask in parts.values()]
        print(f"| {label(config)} | {seed} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

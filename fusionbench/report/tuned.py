"""``leaderboard --tuned NAME``: the seed runs of the configurations a tune chose, and the caption that
states its budget.

Everything is read from the store: the tune's trials (runs whose ``tune`` column is NAME) are grouped into
their parts (one strategy configuration each, :func:`fusionbench.tune.part_key`), each part's configuration
is chosen again from the trials' stored validation histories (:func:`fusionbench.tune.choose`, the same
rule ``fusionbench tune`` applied), and the rows are the finished ordinary runs of those configurations
(any seed). The budget in the caption comes from the trials' configs (``"tune"``: scheduler, grace
period, reduction factor, maximum epochs, metric, search) and their count, so an imported archive of the
store reports the same.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Sequence

from fusionbench.errors import UserInputError
from fusionbench.report.collect import current_names, row_key
from fusionbench.store import ResultStore


def tuned_runs(store: ResultStore, name: str) -> tuple[tuple[str, ...], str]:
    """The config hashes of the finished seed runs of every configuration tune ``name`` chose, and the
    caption line stating the tune's budget. A tune the store lacks, or one without any seed run, is an
    error naming ``--tuned``."""
    from fusionbench.tune import choose, chosen_config, part_key, stored_trials, tunes_in

    trials = stored_trials(store, name)
    if not trials:
        there = tunes_in(store)
        raise UserInputError(f"--tuned {name}: no trials of a tune named {name!r} in {store.path}; "
                             + (f"tunes there: {', '.join(there)}" if there else "it holds no tune"))
    parts: dict[str, list] = defaultdict(list)
    for trial in trials:
        parts[part_key(trial.config)].append(trial)
    wanted, missing, counts = {}, [], []
    for members in parts.values():
        chosen = choose(members)
        config = members[0].config
        label = config["strategy"] + (f" + {config['aggregator']}" if config.get("aggregator") else "")
        counts.append((label, sum(t.status in ("done", "failed") for t in members), bool(config["tune"]["space"])))
        if chosen is None:
            missing.append(label)
            continue
        wanted[row_key(current_names(chosen_config(chosen)))] = label
    table = store.runs(status="done")
    table = table[table.tune.isna()]
    hashes = tuple(row.config_hash for row in table.itertuples()
                   if row_key(current_names(json.loads(row.config))) in wanted)
    if not hashes:
        raise UserInputError(f"--tuned {name}: no seed run of its chosen configurations has finished in {store.path} "
                             "(rerun the `fusionbench tune` command: it runs them)")
    found = {row_key(current_names(json.loads(row.config))) for row in table.itertuples() if row.config_hash in hashes}
    missing += [label for key, label in wanted.items() if key not in found]
    return hashes, caption(name, trials[0].config["tune"], counts, missing)


def caption(name: str, tune: dict, counts: Sequence[tuple[str, int, bool]], missing: Sequence[str]) -> str:
    """The line above a tuned leaderboard: how the configurations were chosen and with what budget."""
    searched = sorted({n for _, n, has_space in counts if has_space})
    trials = (f"{searched[0]} trials per strategy" if len(searched) == 1
              else "trials per strategy: " + ", ".join(f"{label} {n}" for label, n, s in counts if s))
    fixed = [label for label, _, has_space in counts if not has_space]
    text = (f"Tuned (`{name}`): each row is the configuration chosen for its strategy by validation {tune['metric']} "
            f"alone, from {trials}" + (f" ({', '.join(fixed)}: one, nothing to search)" if fixed else "")
            + f", {tune['search']} search, {tune['scheduler'].upper()} scheduler (grace period "
            f"{tune['grace_epochs']} epoch{'s' if tune['grace_epochs'] != 1 else ''}, reduction factor "
            f"{tune['reduction_factor']}), at most {tune['max_epochs']} epochs per trial and per seed run; the trials "
            "ranked no test sample, and test metrics were read only for the seed runs below.")
    if missing:
        text += f" Not shown (no finished seed run yet): {', '.join(sorted(set(missing)))}."
    return text

"""Accuracy regression: tiny seeded runs must reach at least the committed test metrics (floors.json).

The runs (``accuracy_runs.RUNS``) are deterministic, so each floor is the exact value measured when the
floors were last regenerated (``python tests/accuracy/accuracy_runs.py``); a change that lowers any
metric of any run fails here. Regenerate only when a change of results is intended, and say so.
"""
import json

import pytest
import torch

from accuracy_runs import COMMAND, FLOORS, RUNS, first_users, measure
from fusionbench.data.core import from_sequences

FLOOR_TABLE = json.loads(FLOORS.read_text())["floors"]


def test_first_users_keeps_their_sequences_and_every_item():
    data = from_sequences("toy", [[1, 2, 3], [4, 5], [6, 7, 8, 9]], n_items=12)
    head = first_users(data, 2)
    assert head.n_users == 2 and head.n_items == 12
    assert [head.sequence(u).tolist() for u in range(2)] == [[1, 2, 3], [4, 5]]
    assert torch.equal(head.offsets, torch.tensor([0, 3, 5]))
    with pytest.raises(ValueError, match="n must be in 1..3, got 4"):
        first_users(data, 4)


def test_every_run_has_floors_and_every_floor_a_run():
    assert sorted(FLOOR_TABLE) == sorted(RUNS), f"floors.json is stale; regenerate with {COMMAND}"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_metrics_stay_at_or_above_their_floors(name):
    got = measure(RUNS[name])
    floors = FLOOR_TABLE[name]
    assert set(floors) <= set(got)
    below = {m: f"{got[m]:.6f} < {floor:.6f}" for m, floor in floors.items() if got[m] < floor}
    assert not below, (f"{name}: test metrics fell below their floors: {below}. If the change of results "
                       f"is intended, regenerate the floors with `{COMMAND}` and say why in the commit.")

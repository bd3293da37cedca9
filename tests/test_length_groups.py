"""Causal training batches encoded in length groups (fusionbench/length_groups.py)."""
import dataclasses

import pytest
import torch

from fusionbench import length_groups as lg
from fusionbench.context import SeqBatch
from fusionbench.errors import UserInputError


def batch_of(rows, targets=True):
    """Left-padded rows given as lists of item ids (0 = an id-0 hole), with targets at every real position."""
    width = max(len(r) for r in rows)
    items = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    return SeqBatch(items=items, targets=torch.where(items > 0, items + 100, 0) if targets else None,
                    target=torch.arange(len(rows)) + 1, user=torch.arange(len(rows)) + 10,
                    present={"text": items % 2 == 0}, shown={"image": items * 3})


def test_rows_cut_every_per_position_field_to_the_last_positions_and_index_per_row_fields():
    batch = batch_of([[1, 2, 3], [4], [5, 6]])
    sub = batch.rows(torch.tensor([2, 1]), 2)
    assert sub.items.tolist() == [[5, 6], [0, 4]]
    assert sub.targets.tolist() == [[105, 106], [0, 104]]
    assert sub.present["text"].tolist() == [[False, True], [True, True]]
    assert sub.shown["image"].tolist() == [[15, 18], [0, 12]]
    assert sub.target.tolist() == [3, 2] and sub.user.tolist() == [12, 11]
    # a field added to SeqBatch must be cut here too: every field is one of these
    assert {f.name for f in dataclasses.fields(SeqBatch)} == {"items", "target", "targets", "present", "shown", "user"}


def test_widths_start_at_the_first_real_item_so_an_inner_hole_is_never_cut():
    batch = batch_of([[1, 0, 3], [4], [0, 0, 0]])        # a hole inside row 0; row 2 has no real item
    assert lg.real_widths(batch).tolist() == [3, 1, 3]


def test_groups_partition_the_rows_by_length_and_keep_every_real_position():
    lengths = [7, 1, 3, 12, 2, 2, 9, 5, 1, 4]
    batch = batch_of([list(range(1, n + 1)) for n in lengths])
    groups = lg.length_groups(batch, groups=4)
    assert [g.size for g in groups] == [3, 3, 2, 2]                # sizes differ by at most one row
    assert [g.items.shape[1] for g in groups] == [2, 4, 7, 12]     # each cut to its longest row
    assert sorted(u for g in groups for u in g.user.tolist()) == batch.user.tolist()     # every row once
    assert sum(int((g.targets > 0).sum()) for g in groups) == int((batch.targets > 0).sum()) == sum(lengths)
    for g in groups:                                               # rows are the whole batch's, padding dropped
        for row, user in zip(g.items, g.user.tolist()):
            assert row[row > 0].tolist() == list(range(1, lengths[user - 10] + 1))


def test_fewer_rows_than_groups_give_one_group_per_row():
    groups = lg.length_groups(batch_of([[1, 2], [3]]), groups=4)
    assert [g.items.shape for g in groups] == [torch.Size([1, 1]), torch.Size([1, 2])]


def test_the_choice_comes_from_the_environment_and_a_wrong_value_names_the_variable(monkeypatch):
    for value, want in (("", "grouped"), ("auto", "grouped"), (" Whole ", "whole"), ("grouped", "grouped")):
        monkeypatch.setenv("FUSIONBENCH_CAUSAL_PASS", value)
        lg.causal_pass.cache_clear()
        assert lg.causal_pass() == want
    monkeypatch.setenv("FUSIONBENCH_CAUSAL_PASS", "packed")
    lg.causal_pass.cache_clear()
    with pytest.raises(UserInputError, match="FUSIONBENCH_CAUSAL_PASS must be grouped, whole or auto"):
        lg.causal_pass()
    monkeypatch.delenv("FUSIONBENCH_CAUSAL_PASS")
    lg.causal_pass.cache_clear()

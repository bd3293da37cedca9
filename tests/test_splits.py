"""Protocols (specs/protocol.md §2) and batch assembly on hand-made sequences."""
import torch

from fusionbench.data.core import from_sequences
from fusionbench.data.splits import causal_batch, causal_rows, make_split, sample_batch

SEQS = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 4, 11], list(range(1, 13)), [3, 3, 2, 3, 1]]
DATA = from_sequences("hand", SEQS, n_items=12)


def pairs(data, samples):
    """Set of (user, target position) pairs."""
    return set(zip(samples.user.tolist(), samples.pos.tolist()))


def test_loo_targets():
    split = make_split(DATA, "loo")
    for u, seq in enumerate(SEQS):
        t = len(seq)
        assert (u, t - 1) in pairs(DATA, split.test)
        assert (u, t - 2) in pairs(DATA, split.valid)
        assert {p for uu, p in pairs(DATA, split.train) if uu == u} == set(range(1, t - 2))
        assert split.history_end[u] == t - 2
    assert len(split.test) == len(split.valid) == len(SEQS)


def test_ratio_is_leak_free_and_ratio_paper_is_not():
    ratio, paper = make_split(DATA, "ratio"), make_split(DATA, "ratio-paper")
    # user 2 has 12 items: floor(0.2 * 12) = 2 test targets, each predicted from its full prefix
    assert {p for u, p in pairs(DATA, ratio.test) if u == 2} == {10, 11}
    assert {p for u, p in pairs(DATA, ratio.valid) if u == 2} == {9}
    assert {p for u, p in pairs(DATA, ratio.train) if u == 2} == set(range(1, 9))
    assert pairs(DATA, ratio.test) == pairs(DATA, paper.test)
    assert not pairs(DATA, ratio.valid) & pairs(DATA, ratio.test)
    assert not pairs(DATA, ratio.train) & (pairs(DATA, ratio.test) | pairs(DATA, ratio.valid))
    assert paper.leaky and not ratio.leaky
    assert pairs(DATA, paper.valid) == pairs(DATA, paper.test)
    assert {p for u, p in pairs(DATA, paper.train) if u == 2} == set(range(1, 10))


def test_sample_batch_is_left_padded_prefix():
    split = make_split(DATA, "loo")
    batch = sample_batch(DATA, split.test, max_len=4)
    row = split.test.user.tolist().index(1)
    assert batch.items[row].tolist() == [8, 9, 10, 4]
    assert batch.target[row].item() == 11
    short = sample_batch(DATA, split.train.take(torch.tensor([0])), max_len=4)
    assert short.items.tolist() == [[1]]  # trimmed to the longest history in the batch
    assert short.target.tolist() == [2]


def test_causal_rows_cover_exactly_the_prefix_pairs():
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 30, (int(n),), generator=g).tolist() for n in torch.randint(5, 40, (50,), generator=g)]
    data = from_sequences("rand", seqs, n_items=29)
    split = make_split(data, "loo")
    max_len = 7
    expected = set()
    prefix = sample_batch(data, split.train, max_len)
    for items, target in zip(prefix.items.tolist(), prefix.target.tolist()):
        expected.add((tuple(i for i in items if i), target))
    got = []
    batch = causal_batch(data, causal_rows(split.train, max_len), max_len)
    for items, targets in zip(batch.items.tolist(), batch.targets.tolist()):
        for j, t in enumerate(targets):
            if t:
                got.append((tuple(i for i in items[: j + 1] if i), t))
    assert len(got) == len(split.train)
    # every causal target sees the same history as its prefix sample (cut to max_len)
    assert set(got) == expected


def test_history_holds_no_held_out_interaction():
    data = DATA
    for protocol in ("loo", "ratio", "ratio-paper"):
        split = make_split(data, protocol)
        history = data.truncated(split.history_end)
        for u in range(data.n_users):
            seq, kept = data.sequence(u).tolist(), history.sequence(u).tolist()
            assert kept == seq[: len(kept)]
            held_out = split.valid.pos[split.valid.user == u].tolist() + split.test.pos[split.test.user == u].tolist()
            assert all(p >= len(kept) for p in held_out), (protocol, u)

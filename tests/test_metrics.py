"""Metrics: the protocol's worked examples, tie handling, and an independent implementation."""
import numpy as np
import pytest
import torch
from sklearn.metrics import label_ranking_average_precision_score, ndcg_score, top_k_accuracy_score

from fusionbench.metrics import per_sample, summarize, target_rank


def metrics_at(scores, target_item, k):
    """scores for items 1..n, target as an item id -> (HR, NDCG, MRR) at k for one sample."""
    rank = target_rank(torch.tensor([scores]), torch.tensor([target_item - 1]))
    return tuple(float(per_sample(rank, m, k)[0]) for m in ("HR", "NDCG", "MRR"))


def test_worked_example_1_no_ties():
    scores = [0.10, 0.80, 0.35, 0.60, 0.90, 0.20]
    assert target_rank(torch.tensor([scores]), torch.tensor([2])).item() == 3
    assert metrics_at(scores, 3, 5) == pytest.approx((1.0, 0.430677, 0.25), abs=1e-6)
    assert metrics_at(scores, 3, 3) == (0.0, 0.0, 0.0)
    assert metrics_at(scores, 3, 20) == pytest.approx((1.0, 0.430677, 0.25), abs=1e-6)


def test_worked_example_2_ties_count_against_the_model():
    scores = [0.5, 0.5, 0.9, 0.5, 0.2, 0.7, 0.5, 0.1]
    assert target_rank(torch.tensor([scores]), torch.tensor([3])).item() == 5
    assert metrics_at(scores, 4, 5) == (0.0, 0.0, 0.0)
    assert metrics_at(scores, 4, 20) == pytest.approx((1.0, 0.356207, 0.166667), abs=1e-6)


def test_worked_example_2_contrast_values_are_not_ours():
    # optimistic ties (r = 2) would give HR 1, NDCG 0.5, MRR 1/3 at K = 5; random order the expectations below
    optimistic = torch.tensor([2])
    assert [float(per_sample(optimistic, m, 5)[0]) for m in ("HR", "NDCG", "MRR")] == pytest.approx([1, 0.5, 1 / 3])
    uniform = torch.tensor([2, 3, 4, 5])
    expected = [0.75, 0.329382, 0.195833]
    assert [float(per_sample(uniform, m, 5).mean()) for m in ("HR", "NDCG", "MRR")] == pytest.approx(expected, abs=1e-6)
    assert metrics_at([0.5, 0.5, 0.9, 0.5, 0.2, 0.7, 0.5, 0.1], 4, 5) != (1.0, 0.5, pytest.approx(1 / 3))


def test_worked_example_3_averaging():
    out = summarize(torch.tensor([0, 3, 25]), ks=(5, 20))
    assert out["HR@5"] == pytest.approx(2 / 3, abs=1e-6)
    assert out["NDCG@5"] == pytest.approx(0.476892, abs=1e-6)
    assert out["MRR@5"] == pytest.approx(0.416667, abs=1e-6)
    for m in ("HR", "NDCG", "MRR"):
        assert out[f"{m}@20"] == pytest.approx(out[f"{m}@5"])


def test_constant_scorer_gets_zero_and_last_place():
    scores = torch.zeros(4, 10)
    rank = target_rank(scores, torch.tensor([0, 3, 5, 9]))
    assert rank.tolist() == [9, 9, 9, 9]
    assert all(v == 0 for v in summarize(rank, ks=(5, 9)).values())


def test_first_and_beyond_k():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.2, 0.9]])
    rank = target_rank(scores, torch.tensor([0, 0]))
    assert rank.tolist() == [0, 2]
    assert per_sample(rank, "NDCG", 2).tolist() == [1.0, 0.0]


def test_nan_scores_raise_and_bad_k_raises():
    with pytest.raises(ValueError, match="NaN"):
        target_rank(torch.tensor([[0.1, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="K must be"):
        per_sample(torch.tensor([0]), "HR", 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_learn_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    n_samples, n_items = 64, 40
    scores = rng.normal(size=(n_samples, n_items))  # continuous: no ties, so every convention agrees
    target = rng.integers(0, n_items, size=n_samples)
    relevance = np.zeros_like(scores)
    relevance[np.arange(n_samples), target] = 1
    rank = target_rank(torch.tensor(scores), torch.tensor(target))
    for k in (1, 5, 10, 20):
        ours_ndcg = per_sample(rank, "NDCG", k).double().mean().item()
        assert ours_ndcg == pytest.approx(ndcg_score(relevance, scores, k=k), abs=1e-6)
        ours_hr = per_sample(rank, "HR", k).double().mean().item()
        assert ours_hr == pytest.approx(top_k_accuracy_score(target, scores, k=k, labels=np.arange(n_items)))
    # with K = n nothing is cut off: MRR equals label-ranking average precision for one relevant item
    mrr = per_sample(rank, "MRR", n_items).double().mean().item()
    assert mrr == pytest.approx(label_ranking_average_precision_score(relevance, scores), abs=1e-6)


def test_matches_a_sort_based_implementation_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (200, 30), generator=g).float()  # many ties
    target = torch.randint(0, 30, (200,), generator=g)
    # independent rule: stable sort by descending score with the target placed after every equal item
    key = scores.clone()
    expected = []
    for row, t in zip(key.tolist(), target.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j == t))
        expected.append(order.index(t))
    assert target_rank(scores, target).tolist() == expected


@pytest.mark.parametrize("n_rows", [1, 31, 32, 33, 100])
def test_chunked_scoring_step_ranks_like_one_full_score_matrix(n_rows):
    """rank_block (chunks of RANK_CHUNK rows written into one reused buffer) = target_rank over the whole
    [B, n] product, for B below, at and across chunk boundaries, with ties from duplicated items."""
    from fusionbench.evaluate import RANK_CHUNK, rank_block
    g = torch.Generator().manual_seed(n_rows)
    item_emb = torch.randn(41, 8, generator=g)
    item_emb[7] = item_emb[3]  # a tie: items 3 and 7 score alike for every query
    query = torch.randn(n_rows, 8, generator=g, requires_grad=True)
    target = torch.randint(1, 41, (n_rows,), generator=g)
    target[0] = 3
    expected = target_rank(query.detach() @ item_emb[1:].T, target - 1)
    assert RANK_CHUNK < 100 and torch.equal(rank_block(query, item_emb, target), expected)

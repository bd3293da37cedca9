"""``train.exclude_history``: ranking among the items outside each sample's history (specs/protocol.md §3,
off by default). Checked on a hand case, against a per-sample loop over the whole history (not only the
model's window), for both scoring paths (the default matmul and a strategy's own ``score``)."""
import pytest
import torch

from fusionbench.data.core import from_sequences
from fusionbench.data.splits import make_split, sample_batch
from fusionbench.evaluate import exclude_seen, rank_samples
from fusionbench.metrics import target_rank
from fusionbench.registry import STRATEGIES
from fusionbench.runner import RunRequest, resolve
from fusionbench.store import config_hash
from strategy_fixtures import tiny_context


def test_hand_case_seen_items_drop_below_the_target_and_a_repeated_target_keeps_its_score():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0],
                           [5.0, 4.0, 3.0, 2.0, 1.0]])
    target = torch.tensor([3, 0])                   # items 4 and 1 (0-based columns)
    seen = torch.tensor([[1, 2, 0], [1, 3, 0]])     # row 1's target (item 1) is a repeat
    out = exclude_seen(scores.clone(), target, seen)
    assert out[0].tolist() == [float("-inf"), float("-inf"), 3.0, 2.0, 1.0]
    assert out[1].tolist() == [5.0, 4.0, float("-inf"), 2.0, 1.0]
    # ranks: row 0 had items 1, 2, 3 above it, now only item 3; row 1 stays first
    assert target_rank(scores, target).tolist() == [3, 0]
    assert target_rank(out, target).tolist() == [1, 0]


def loop_ranks(scores, data, samples):
    """The reference: per sample, count unseen items (every item before its target) scoring >= the target."""
    ranks = []
    for row, (u, p) in enumerate(zip(samples.user.tolist(), samples.pos.tolist())):
        start = int(data.offsets[u])
        history = set(data.flat[start:start + p].tolist())
        target = int(data.flat[start + p])
        s_t = scores[row, target]
        ranks.append(sum(1 for item in range(1, scores.shape[1])
                         if item != target and item not in history and scores[row, item] >= s_t))
    return ranks



@pytest.mark.parametrize("own_score", [False, True])
def test_ranks_match_a_per_sample_loop_over_the_whole_history(own_score):
    ctx = tiny_context()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, ctx.n_items + 1, (int(n),), generator=g).tolist()
            for n in torch.randint(4, 30, (12,), generator=g)]   # histories longer than the window, repeats
    data = from_sequences("tiny", seqs, ctx.n_items)
    split = make_split(data, "loo")
    torch.manual_seed(0)
    model = STRATEGIES.create("sasrec", ctx)
    if own_score:  # same scores through the strategy's own ``score``, not the default matmul path
        cls = type(model)
        model.__class__ = type("OwnScoreSASRec", (cls,), {"score": lambda self, b: cls.score(self, b) + 0.0})
    model.eval()
    for samples in (split.valid, split.test):
        window = 3   # shorter than most histories: exclusion must read the whole history
        with torch.no_grad():
            scores = model.score(sample_batch(data, samples, window))
        got = rank_samples(model, data, samples, window, batch_size=5, exclude_history=True)
        assert got.tolist() == loop_ranks(scores, data, samples)
        plain = rank_samples(model, data, samples, window, batch_size=5)
        assert (got <= plain).all() and (got < plain).any(), "exclusion must lift some targets"


def test_the_option_is_part_of_the_run_identity():
    plain = resolve(RunRequest("sasrec", dataset="synthetic"))
    excluded = resolve(RunRequest("sasrec", dataset="synthetic", train_options={"exclude_history": "true"}))
    # kept in a config only when true, so runs made before the option existed keep their hashes
    assert "exclude_history" not in plain["train"] and excluded["train"]["exclude_history"] is True
    assert config_hash(plain) != config_hash(excluded)


def test_a_stored_run_records_its_test_ranks_among_unseen_items_beside_the_plain_ones(tmp_path):
    """Every run that ranks all items also stores the same model's test ranks among unseen items
    (split ``test_unseen``): never above the plain rank, and exactly what ``exclude_history`` ranks."""
    from fusionbench.runner import run_experiment
    from fusionbench.store import UNSEEN_TEST, ResultStore
    from test_attr_encoding import TINY_SYNTHETIC

    store = ResultStore(tmp_path / "runs.db")
    request = RunRequest("sasrec", dataset="synthetic", dataset_options=dict(TINY_SYNTHETIC),
                         strategy_options={"dim": "16", "heads": "1"}, train_options={"epochs": "1"})
    outcome = run_experiment(request, store, progress=False)
    plain, unseen = store.ranks(outcome.run_id, "test"), store.ranks(outcome.run_id, UNSEEN_TEST)
    assert plain.shape == unseen.shape and (unseen <= plain).all()
    assert torch.equal(torch.from_numpy(unseen).long(), outcome.result.unseen_test_ranks)
    assert set(store.metrics(outcome.run_id, UNSEEN_TEST)) == set(store.metrics(outcome.run_id, "test"))
    # a run made with the option on (one epoch: the same model) ranks unseen items in "test" itself and
    # records nothing beside it
    options = {"epochs": "1", "exclude_history": "true"}
    excluded = run_experiment(RunRequest(**{**request.__dict__, "train_options": options}), store, progress=False)
    assert torch.equal(torch.from_numpy(store.ranks(excluded.run_id, "test")).long(), outcome.result.unseen_test_ranks)
    with pytest.raises(KeyError):
        store.ranks(excluded.run_id, UNSEEN_TEST)

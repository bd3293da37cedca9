"""A resolved config is a run's identity: refactoring how options are declared or resolved must leave it as it
was. These hashes are of configs as `plan.Cell` resolves them (no dataset checksum), pinned when option bounds
moved into the field types (issue 23). A change here means stored runs of these configs are no longer found:
if the change is meant (a new option), add what docs/architecture.md "Adding an option" asks, then re-pin."""
import pytest

from fusionbench.perturb.plan import PerturbationRequest
from fusionbench.plan import Cell
from fusionbench.runner import RunRequest, training_config
from fusionbench.store import config_hash

PINNED = [
    (RunRequest(strategy="sasrec"), "556dd042b93e1b79", "556dd042b93e1b79"),
    (RunRequest(strategy="mmsr", aggregator="han"), "6a88e3cb00085bdf", "6a88e3cb00085bdf"),
    (RunRequest(strategy="mmsr", aggregator="rgat", dataset="synthetic"), "c9e2fccda1e6969a", "c9e2fccda1e6969a"),
    (RunRequest(strategy="early", dataset="synthetic"), "ed86508687d97f6a", "ed86508687d97f6a"),
    (RunRequest(strategy="lightgcn"), "03e0d44237cb9a37", "03e0d44237cb9a37"),
    (RunRequest(strategy="mdsrec"), "bef07d2c09d2cebb", "bef07d2c09d2cebb"),
    (RunRequest(strategy="difsr", train_options={"precision": "bf16"}), "dfbd0b0213058c7f", "dfbd0b0213058c7f"),
    (RunRequest(strategy="late", perturbation=PerturbationRequest(name="missing", severity=0.3)),
     "5231048677b321a7", "ff52374242ac7e7e"),
    (RunRequest(strategy="sasrec", seed=3, strategy_options={"dim": "32"}, train_options={"lr": "0.01", "epochs": "5"}),
     "cf4f89187cf15d09", "cf4f89187cf15d09"),
]


@pytest.mark.parametrize("request_, run_hash, training_hash", PINNED,
                         ids=[f"{r.strategy}-{r.aggregator or r.dataset}-{i}" for i, (r, _, _) in enumerate(PINNED)])
def test_resolved_configs_keep_their_hashes(request_, run_hash, training_hash):
    config = Cell(request_).config
    assert (config_hash(config), config_hash(training_config(config))) == (run_hash, training_hash)

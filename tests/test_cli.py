"""The command line end to end on a tiny folder dataset, and its error messages and exit codes."""
import re

import numpy as np
import pytest
from click.testing import CliRunner

from fusionbench.cli import main


@pytest.fixture()
def folder(cycle_folder):
    """A small dataset in the documented folder format: users walk i -> i + 1 (mod 30)."""
    return cycle_folder(80)


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


TINY = ("--set", "dim=16", "--set", "heads=1", "--set", "train.lr=0.01", "--quiet")


def test_run_prints_metrics_and_skips_done_runs(folder, tmp_path):
    args = ("run", "--strategy", "sasrec", "--dataset", "folder", "--set", f"data.path={folder}",
            "--epochs", "2", "--store", str(tmp_path / "r.db"), *TINY)
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "HR@5" in first.output and "NDCG@20" in first.output and "best epoch" in first.output
    second = invoke(*args)
    assert second.exit_code == 0
    assert "already in the store, not rerun" in second.output
    # the same metrics table both times
    assert first.output.splitlines()[-1] == second.output.splitlines()[-1]


def test_ratio_paper_is_labelled_leaky(folder):
    out = invoke("run", "--strategy", "sasrec", "--dataset", "folder", "--set", f"data.path={folder}",
                 "--protocol", "ratio-paper", "--epochs", "1", *TINY)
    assert out.exit_code == 0, out.output
    assert "test-selected, leaky" in out.output


def test_list_and_data_info(folder):
    out = invoke("list", "strategies")
    assert out.exit_code == 0 and "sasrec" in out.output and "dim (int, >= 1) = 64" in out.output
    info = invoke("data", "info", "beauty")
    assert info.exit_code == 0
    assert "22363" in info.output and re.search(r"modality image\s+absent", info.output)
    info = invoke("data", "info", "folder", "--set", f"path={folder}")
    assert "users" in info.output and "80" in info.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("run", "--strategy", "nope"), "error: unknown strategy 'nope'; known: "),
        (("run", "--strategy", "sasrec", "--dataset", "nope"), "error: unknown dataset 'nope'; known: "),
        (("run", "--strategy", "sasrec", "--protocol", "kfold"), "error: unknown protocol 'kfold'"),
        (("run", "--strategy", "sasrec", "--set", "dim"), "error: --set expects key=value"),
        (("run", "--strategy", "sasrec", "--set", "dimm=3"), "error: strategy 'sasrec': unknown option 'dimm'"),
        (("run", "--strategy", "sasrec", "--set", "train.lr=-1"), "error: train: option 'lr' must be > 0"),
        (("run", "--strategy", "sasrec", "--aggregator", "gcn"), "is not a graph strategy"),
        (("data", "info", "folder", "--set", "path=/no/such/dir"), "error: dataset folder /no/such/dir not found"),
    ],
)
def test_bad_input_gives_a_clear_message_and_exit_2(args, message):
    out = CliRunner().invoke(main, list(args))
    assert out.exit_code == 2, out.output
    assert message in out.output


def test_bad_data_files_name_file_and_line(folder):
    (folder / "sequences.txt").write_text("u1 1 2 3 4 5\nu2 3 four 5\n")
    out = CliRunner().invoke(main, ["data", "info", "folder", "--set", f"path={folder}"])
    assert out.exit_code == 2
    assert "sequences.txt:2: item id 'four' is not an integer" in out.output
    (folder / "sequences.txt").unlink()
    out = CliRunner().invoke(main, ["run", "--strategy", "sasrec", "--dataset", "folder",
                                    "--set", f"data.path={folder}"])
    assert out.exit_code == 2 and "missing file" in out.output and "sequences.txt" in out.output


def test_wrong_feature_shape_is_reported(folder):
    (folder / "features").mkdir()
    np.save(folder / "features" / "image.npy", np.zeros((3, 4), dtype=np.float32))
    out = CliRunner().invoke(main, ["data", "info", "folder", "--set", f"path={folder}"])
    assert out.exit_code == 2
    assert "image.npy: expected a 2-d array of shape [n_items + 1, d] = [31, d], got shape [3, 4]" in out.output


def test_nan_loss_exits_1_with_a_message(folder):
    out = CliRunner().invoke(main, ["run", "--strategy", "sasrec", "--dataset", "folder", "--epochs", "2",
                                    "--set", f"data.path={folder}", "--set", "train.lr=1e30", "--quiet"])
    assert out.exit_code == 1
    assert "error: training failed: sasrec/folder/loo/seed0: epoch 1" in out.output
    assert "non-finite loss" in out.output or "NaN scores" in out.output


def test_the_users_example_command_parses_to_a_valid_mmsr_han_run():
    """`fusionbench run --strategy mmsr --aggregator han`, exactly as users write it: the shared run options
    give the documented defaults and the request resolves (not trained here: it is a full beauty run)."""
    from fusionbench.cli import parse_sets, run
    from fusionbench.runner import RunRequest, resolve

    params = run.make_context("run", ["--strategy", "mmsr", "--aggregator", "han"]).params
    assert params == {"strategy": "mmsr", "aggregator": "han", "dataset": "beauty", "protocol": "loo", "epochs": None,
                      "seed": 0, "max_len": 50, "store": None, "sets": (), "data_root": None, "device": "cpu",
                      "quiet": False}
    request = RunRequest(**{k: v for k, v in params.items() if k not in ("epochs", "store", "sets", "quiet")},
                         **parse_sets(params["sets"], params["epochs"]))
    config = resolve(request)
    assert (config["strategy"], config["aggregator"], config["dataset"]) == ("mmsr", "han", "beauty")
    assert config["train"]["epochs"] == 100     # mmsr's own training default, not overridden by an absent --epochs


def test_one_key_value_parser_for_every_flag_that_takes_pairs():
    from fusionbench.cli import parse_pairs, parse_sets
    from fusionbench.errors import UserInputError

    assert parse_pairs(("mode=shift", "a==b", "mode=swap"), "--set-p") == {"mode": "swap", "a": "=b"}
    assert parse_sets(("dim=8", "train.lr=0.1", "agg.heads=2"), epochs=3) == {
        "strategy_options": {"dim": "8"}, "train_options": {"lr": "0.1", "epochs": 3},
        "aggregator_options": {"heads": "2"}, "dataset_options": {}, "feature_options": {}}
    for bad in ("dim", "=3"):
        with pytest.raises(UserInputError, match=f"--set-p expects key=value, got '{bad}'"):
            parse_pairs((bad,), "--set-p")

"""The ``fusionbench`` command line (click).

Errors caused by input (unknown names, bad options, malformed data files) print one line starting
with ``error:`` and exit with status 2; a training failure (e.g. a NaN loss) exits with status 1.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click
from tabulate import tabulate

from fusionbench.errors import TrainingError, UserInputError, report_errors
from fusionbench.metrics import DEFAULT_KS, METRICS
from fusionbench.registry import REGISTRIES
from fusionbench.terminate import unwinds_on_sigterm


def parse_pairs(pairs: Sequence[str], option: str) -> dict[str, str]:
    """``("mode=shift",)`` -> ``{"mode": "shift"}`` (a later key wins); ``option`` names the flag in errors."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"{option} expects key=value, got {pair!r}")
        options[key] = value
    return options


def parse_sets(pairs: Sequence[str], epochs: Optional[int] = None) -> dict[str, dict[str, Any]]:
    """``("dim=64", "train.lr=0.01")`` -> ``{"strategy_options": {"dim": "64"}, "train_options": {...}}``;
    ``--epochs`` (when given) sets ``train.epochs``."""
    from fusionbench.runner import group_options

    groups = group_options(parse_pairs(pairs, "--set"), "--set")
    if epochs is not None:
        groups["train_options"]["epochs"] = epochs
    return groups


def metrics_table(rows: list[tuple[str, dict[str, float]]], ks=DEFAULT_KS) -> str:
    """Rows of (label, metrics) -> a table of HR/NDCG/MRR@K in percent."""
    headers = ["split"] + [f"{m}@{k}" for m in METRICS for k in ks]
    body = [[label] + [f"{100 * values[f'{m}@{k}']:.2f}" for m in METRICS for k in ks] for label, values in rows]
    return tabulate(body, headers=headers, tablefmt="github")


@click.group()
@click.version_option(package_name="fusionbench")
def main() -> None:
    """Benchmark multimodal fusion strategies for sequential recommendation."""
    from fusionbench.memory import keep_freed_memory

    keep_freed_memory()   # FUSIONBENCH_MALLOC=keep: large per-step tensors reuse memory (opt-in)


RUN_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "strategy": (("--strategy",), dict(required=True, help="Strategy name (see `fusionbench list strategies`).")),
    "aggregator": (("--aggregator",), dict(default=None, help="Graph aggregator for graph strategies.")),
    "dataset": (("--dataset",), dict(default="beauty", show_default=True)),
    "protocol": (("--protocol",), dict(default="loo", show_default=True, help="loo | ratio | ratio-paper (leaky).")),
    "epochs": (("--epochs",), dict(type=int, default=None,
                                   help="Maximum epochs (default 200; early stopping on validation).")),
    "seed": (("--seed",), dict(type=int, default=0, show_default=True)),
    "max_len": (("--max-len",), dict(type=int, default=50, show_default=True, help="Maximum input length L.")),
    "set": (("--set", "sets"), dict(multiple=True, metavar="KEY=VALUE",
                                    help="Option override: strategy option, or train.*, agg.*, data.*, features.*.")),
    "data_root": (("--data-root",), dict(type=click.Path(path_type=Path), default=None,
                                         help="Folder holding the amazon_* datasets (default: $FUSIONBENCH_DATA, "
                                              "else ./shared/data or ../shared/data).")),
    "device": (("--device",), dict(default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")),
    "quiet": (("--quiet",), dict(is_flag=True, help="No progress bars or per-epoch lines.")),
}
"""The options of a run that several commands share (``run``, ``stress``, ``sweep``, ``bench profile``,
``data info``, ``store upgrade``): click parameter declarations and attributes, added by :func:`run_options`."""


def run_options(*names: str, **changes: dict[str, Any]) -> Callable:
    """Decorator adding the :data:`RUN_OPTIONS` ``names`` in this order (the order `--help` lists them);
    ``changes`` maps a name to the attributes that differ for this command, e.g. ``protocol=dict(help=None)``."""
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise ValueError(f"run_options: changes for options not added: {', '.join(unknown)}")

    def decorate(command: Callable) -> Callable:
        for name in reversed(names):   # click lists options bottom-up, so the first name is added last
            decls, attrs = RUN_OPTIONS[name]
            command = click.option(*decls, **{**attrs, **changes.get(name, {})})(command)
        return command

    return decorate


data_root_option = run_options("data_root")


@main.command()
@run_options("strategy", "aggregator", "dataset", "protocol", "epochs", "seed", "max_len")
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="SQLite results store; a run already done there is skipped.")
@run_options("set", "data_root", "device", "quiet", quiet=dict(help="No progress bar or per-epoch lines."))
@report_errors
@unwinds_on_sigterm
def run(strategy: str, aggregator: Optional[str], dataset: str, protocol: str, epochs: Optional[int], seed: int,
        max_len: int, store: Optional[Path], sets: tuple[str, ...], data_root: Optional[Path], device: str,
        quiet: bool) -> None:
    """Train one strategy to early stopping and print its validation and test metrics (%)."""
    from fusionbench.runner import RunRequest, run_experiment
    from fusionbench.store import ResultStore

    request = RunRequest(strategy=strategy, dataset=dataset, protocol=protocol, seed=seed, aggregator=aggregator,
                         max_len=max_len, data_root=data_root, device=device, **parse_sets(sets, epochs))
    results = ResultStore(store) if store is not None else None
    outcome = run_experiment(request, store=results, progress=not quiet)
    label = f"{strategy}" + (f" + {outcome.config['aggregator']}" if outcome.config["aggregator"] else "")
    click.echo(f"{label} on {dataset} ({protocol}, seed {seed}, run {outcome.config_hash})"
               + (" — already in the store, not rerun" if outcome.skipped else ""))
    if outcome.result is not None:
        r = outcome.result
        click.echo(f"best epoch {r.best_epoch} of {len(r.history)}; {r.epoch_seconds:.1f} s/epoch; "
                   f"test evaluation {r.eval_seconds:.2f} s")
    test_label = "test (test-selected, leaky)" if protocol == "ratio-paper" else "test"
    click.echo(metrics_table([("valid", outcome.valid), (test_label, outcome.test)]))


@main.command()
@run_options("strategy", "aggregator")
@click.option("--perturbation", required=True, help="disorder | mismatch | missing (`fusionbench list perturbations`).")
@click.option("--set-p", "set_p", multiple=True, metavar="KEY=VALUE", help="Perturbation option, e.g. mode=shift.")
@click.option("--severity", default="0,0.1,0.3,0.5,0.7,0.9,1", show_default=True, help="Comma-separated p in [0, 1].")
@click.option("--apply-to", type=click.Choice(["train", "test", "both"]), default="test", show_default=True,
              help="Perturb training (and validation), test, or both.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds (model and perturbation).")
@run_options("dataset", "protocol", "epochs", "max_len",
             protocol=dict(help="loo | ratio | ratio-paper (leaky, apply-to both)."))
@click.option("--store", type=click.Path(path_type=Path), required=True,
              help="SQLite results store; cells done there are skipped, so a rerun resumes the sweep.")
@run_options("set", "data_root", "device", "quiet")
@report_errors
@unwinds_on_sigterm
def stress(strategy: str, aggregator: Optional[str], perturbation: str, set_p: tuple[str, ...], severity: str,
           apply_to: str, seeds: str, dataset: str, protocol: str, epochs: Optional[int], max_len: int, store: Path,
           sets: tuple[str, ...], data_root: Optional[Path], device: str, quiet: bool) -> None:
    """Sweep one strategy over a perturbation's severities x seeds: one stored run per cell, resumable."""
    from fusionbench import plan
    from fusionbench import stress as stress_sweep
    from fusionbench.runner import RunRequest
    from fusionbench.store import ResultStore

    base = RunRequest(strategy=strategy, dataset=dataset, protocol=protocol, aggregator=aggregator,
                      max_len=max_len, data_root=data_root, device=device, **parse_sets(sets, epochs))
    cells = stress_sweep.plan_cells(base, perturbation, parse_pairs(set_p, "--set-p"),
                                    stress_sweep.parse_severities(severity), plan.parse_seeds(seeds),
                                    apply_to)
    stress_sweep.run_sweep(cells, ResultStore(store), progress=not quiet)
    click.echo(f"{strategy} under {perturbation} (apply to {apply_to}) on {dataset} ({protocol}): "
               f"{len(cells)} cells, {plan.skipped(cells)} already in the store")
    click.echo(stress_sweep.curve_table(cells))
    failed = stress_sweep.failed_cells(cells)
    if failed:
        raise TrainingError(failed)


@main.command()
@run_options("strategy", "aggregator", "dataset", "protocol", "epochs", "max_len",
             strategy=dict(help="Strategies to compare, comma-separated (e.g. mmsr,sasrec,late)."),
             aggregator=dict(help="Graph aggregator for the graph strategies among them."))
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds, e.g. 0,1,2.")
@click.option("--store", type=click.Path(path_type=Path), default=Path("runs/compare.db"), show_default=True,
              help="SQLite results store; runs done there are skipped, so a rerun resumes.")
@click.option("--dry-run", is_flag=True, help="List the runs and whether each is done in the store; run nothing.")
@run_options("set", "data_root", "device", "quiet")
@report_errors
@unwinds_on_sigterm
def compare(strategy: str, aggregator: Optional[str], dataset: str, protocol: str, epochs: Optional[int],
            max_len: int, seeds: str, store: Path, dry_run: bool, sets: tuple[str, ...], data_root: Optional[Path],
            device: str, quiet: bool) -> None:
    """Train several strategies under one budget and print their leaderboard with significance marks."""
    from fusionbench import compare as comparison
    from fusionbench import plan
    from fusionbench.runner import RunRequest
    from fusionbench.store import ResultStore

    strategies = comparison.parse_strategies(strategy)
    base = RunRequest(strategy=strategies[0], dataset=dataset, protocol=protocol, aggregator=aggregator,
                      max_len=max_len, data_root=data_root, device=device, **parse_sets(sets, epochs))
    cells = comparison.plan_cells(base, strategies, plan.parse_seeds(seeds))
    if dry_run:
        known = ResultStore(store) if store.exists() else None   # a dry run creates no store
        click.echo(comparison.dry_run_table(cells, known))
        return
    results = ResultStore(store)
    comparison.run_comparison(cells, results, progress=not quiet)
    click.echo(f"{', '.join(strategies)} on {dataset} ({protocol}): {len(cells)} runs, "
               f"{plan.skipped(cells)} already in {store}")
    failed = plan.failures(cells, [c.request.strategy for c in cells])
    if all(c.error is not None for c in cells):
        raise TrainingError(failed)
    click.echo(comparison.comparison_board(cells, results))
    if failed:
        raise TrainingError(failed)


@main.command()
@click.argument("sweep_file", type=click.Path(path_type=Path))
@click.option("--store", type=click.Path(path_type=Path), required=True,
              help="SQLite results store; cells done there are skipped, so a rerun resumes the sweep.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: the cells in order in this process; ray: Ray tasks (one per shared training).")
@click.option("--address", default=None, help="Ray: cluster address ('auto' = the running cluster; default: "
                                              "start a Ray instance on this machine).")
@click.option("--cpus-per-cell", type=int, default=1, show_default=True, help="Ray: CPUs (and threads) per task.")
@click.option("--gpus-per-cell", type=float, default=0.0, show_default=True,
              help="Ray: GPUs per task; a fraction (0.125) packs several runs onto one GPU. Needs --device cuda.")
@click.option("--scratch", default=None, help="Ray: folder on each node for the tasks' store, checkpoints and "
                                              "kept weights (default ~/.cache/fusionbench/sweep).")
@click.option("--archive", type=click.Path(path_type=Path), default=None,
              help="After a cell finishes, rewrite this archive with the store's finished runs (as `store export "
                   "--ranks test`), so they outlive the machine: at most once a minute (a run finished in between "
                   "is exported when the minute is up), and when the sweep stops.")
@click.option("--deadline", default=None,
              help="Local engine: start a cell only if it is expected to finish by then (a duration from now, "
                   "2h30m, or an ISO time), estimated from the store's finished runs of the same configuration "
                   "(else strategy, dataset and protocol; else strategy and dataset); later cells that fit still "
                   "run (docs/sweeps.md).")
@click.option("--estimate-from", "estimate_from", multiple=True, type=click.Path(path_type=Path),
              help="With --deadline or --dry-run: another results store whose finished runs the estimates read "
                   "too (repeatable), e.g. the store of another dataset for a strategy not yet run on this one.")
@click.option("--dry-run", is_flag=True, help="List the cells, whether each is done in the store and how long each "
                                           "left to run is expected to take (as --deadline estimates it); run "
                                           "nothing.")
@run_options("data_root", "device", "quiet")
@report_errors
@unwinds_on_sigterm
def sweep(sweep_file: Path, store: Path, engine: str, address: Optional[str], cpus_per_cell: int,
          gpus_per_cell: float, scratch: Optional[str], archive: Optional[Path], deadline: Optional[str],
          estimate_from: tuple[Path, ...], dry_run: bool, data_root: Optional[Path], device: str, quiet: bool) -> None:
    """Run every cell of a TOML sweep file (configurations x grid x severities x seeds), resumable."""
    from fusionbench import plan
    from fusionbench import sweep as sweeps
    from fusionbench.deadline import Deadline, cost_table, parse_deadline
    from fusionbench.report.collect import open_store
    from fusionbench.store import ResultStore
    from fusionbench.store.archive import KeptArchive

    if engine == "local" and (address is not None or scratch is not None or gpus_per_cell):
        raise UserInputError("--address, --scratch and --gpus-per-cell apply to --engine ray")
    if engine == "ray" and deadline is not None:
        raise UserInputError("--deadline applies to --engine local")
    ends_at = parse_deadline(deadline) if deadline is not None else None
    if estimate_from and deadline is None and not dry_run:
        raise UserInputError("--estimate-from applies with --deadline or --dry-run")
    if gpus_per_cell < 0 or (gpus_per_cell > 0 and not device.startswith("cuda")):
        raise UserInputError(f"--gpus-per-cell {gpus_per_cell:g} must be >= 0, and > 0 needs --device cuda "
                             f"(got --device {device})")
    check_archive_folder(archive)
    cells = sweeps.read_sweep(sweep_file, data_root, device)
    labels = sweeps.cell_labels(cells)
    others = [open_store(path, "--estimate-from") for path in estimate_from]
    results = ResultStore(store)
    if dry_run:
        click.echo(cost_table(cells, labels, results, data_root, others))
        return

    kept = KeptArchive(store, archive, ARCHIVE_EVERY_S) if archive is not None else None
    finished = (lambda cell: kept.cell_finished()) if kept is not None else (lambda cell: None)
    try:
        if engine == "ray":
            sweeps.run_ray(cells, results, address, cpus_per_cell, scratch, progress=not quiet,
                           gpus_per_cell=gpus_per_cell, finished=finished)
        else:
            admit = (Deadline(results, ends_at, cells, data_root, others).admit if ends_at is not None
                     else lambda cell: None)
            plan.run_local(cells, results, progress=not quiet, desc="sweep cells", finished=finished, admit=admit)
    finally:
        if kept is not None:
            kept.close()
    click.echo(f"{sweep_file}: {len(cells)} cells, {plan.skipped(cells)} already in the store")
    click.echo(plan.summary_table(cells, labels))
    deferred = plan.deferrals(cells, labels)
    if deferred:
        click.echo(deferred)
    failed = plan.failures(cells, labels)
    if failed:
        raise TrainingError(failed)


ARCHIVE_EVERY_S = 60.0
"""``fusionbench sweep|tune --archive``: the least time between two rewrites of the archive (exporting a large
store takes seconds; test-only cells and ASHA-stopped trials finish in seconds too); ``store.archive.KeptArchive``."""


def check_archive_folder(archive: Optional[Path]) -> None:
    """``--archive PATH`` must name a file in an existing folder (checked before anything runs)."""
    if archive is not None and not archive.parent.is_dir():
        raise UserInputError(f"--archive {archive}: folder {archive.parent} does not exist")


TUNE_FLAGS = ("strategy", "aggregator", "dataset", "protocol", "max_len", "sets", "budget", "max_epochs",
              "grace_epochs", "reduction_factor", "metric", "search", "seed", "seeds")
"""``fusionbench tune`` options that a tune FILE sets instead (giving both is an error)."""


@main.command("tune")
@click.argument("tune_file", type=click.Path(path_type=Path), required=False)
@run_options("strategy", "aggregator", "dataset", "protocol", "max_len", "set",
             strategy=dict(required=False, default=None, help="Strategies to tune, comma-separated (without FILE)."),
             aggregator=dict(help="Graph aggregator for the graph strategies among them."),
             dataset=dict(default=None, show_default=False, help="Dataset (default beauty)."),
             protocol=dict(default=None, show_default=False,
                           help="loo | ratio (default loo; not the leaky ratio-paper)."),
             max_len=dict(default=None, show_default=False, help="Maximum input length L (default 50)."),
             set=dict(help="Fixed option (left out of the search), as for `fusionbench run`."))
@click.option("--budget", type=int, default=None,
              help="Trials per strategy, the default configuration first (default 16; 1 for nothing to search).")
@click.option("--max-epochs", type=int, default=None,
              help="Most epochs of a trial and of a seed run, ASHA's maximum (default 50; a strategy's own lower "
                   "train.epochs wins).")
@click.option("--grace-epochs", type=int, default=None,
              help="Epochs every trial runs before ASHA may stop it (default 4).")
@click.option("--reduction-factor", type=int, default=None,
              help="ASHA keeps the best 1/F of the trials at each rung (default 4).")
@click.option("--metric", default=None,
              help="Validation metric of ASHA, early stopping and the choice (default NDCG@20).")
@click.option("--search", type=click.Choice(["auto", "tpe", "random"]), default=None,
              help="Optuna's TPE or random sampling (default auto: tpe where Optuna is installed).")
@click.option("--seed", type=int, default=None, help="Seed of the search and of every trial (default 0).")
@click.option("--seeds", default=None, help="Seeds of the chosen configurations' runs (default 0,1,2).")
@click.option("--name", default=None,
              help="The tune's name in the store (default: the FILE's stem, else DATASET_PROTOCOL).")
@click.option("--store", type=click.Path(path_type=Path), default=Path("runs/tune.db"), show_default=True,
              help="SQLite results store: trials and seed runs; a rerun resumes the tune.")
@click.option("--address", default=None, help="Ray cluster address ('auto' = the running cluster; default: start "
                                              "a Ray instance on this machine).")
@click.option("--cpus-per-trial", type=int, default=1, show_default=True, help="CPUs (and torch threads) per trial.")
@click.option("--gpus-per-trial", type=float, default=0.0, show_default=True,
              help="GPUs per trial; a fraction (0.25) lets several trials share one GPU. > 0 trains on cuda.")
@click.option("--concurrent", type=int, default=None, help="At most this many trials, and then seed runs, at a time "
                                                           "(default: as many as the CPUs and GPUs allow).")
@click.option("--scratch", default=None, help="Folder on each node for trial checkpoints and the seed runs' task "
                                              "store (default: beside --store, and ~/.cache/fusionbench/sweep).")
@click.option("--archive", type=click.Path(path_type=Path), default=None,
              help="After a trial or seed run finishes, rewrite this archive with the store's finished runs (as "
                   "`store export --ranks test`), so they outlive the machine: at most once a minute, and when the "
                   "tune stops.")
@click.option("--dry-run", is_flag=True, help="Show each strategy's search space, its stored trials and its default "
                                            "configuration (the first trial); run nothing.")
@run_options("data_root", "quiet")
@report_errors
@unwinds_on_sigterm
def tune_command(tune_file: Optional[Path], store: Path, name: Optional[str], address: Optional[str],
                 cpus_per_trial: int, gpus_per_trial: float, concurrent: Optional[int], scratch: Optional[str],
                 archive: Optional[Path], dry_run: bool, data_root: Optional[Path], quiet: bool,
                 **flags: Any) -> None:
    """Tune every strategy on validation with the same budget (Ray Tune: seeded TPE or random search, ASHA),
    then run each chosen configuration on the seeds; resumable. FILE: a tune file (docs/tuning.md)."""
    from fusionbench import plan
    from fusionbench import sweep as sweeps
    from fusionbench import tune as tuning
    from fusionbench.compare import parse_strategies
    from fusionbench.store import ResultStore
    from fusionbench.store.archive import KeptArchive

    execution = tuning.Execution(address, cpus_per_trial, gpus_per_trial, concurrent, scratch)
    execution.check()
    check_archive_folder(archive)
    root = data_root.resolve() if data_root is not None else None
    if tune_file is not None:
        given = [key for key in TUNE_FLAGS if flags[key] not in (None, ())]
        if given:
            flag = "--set" if given[0] == "sets" else "--" + given[0].replace("_", "-")
            raise UserInputError(f"{flag} applies without FILE: {tune_file} sets it ([tune] or [[run]] tables)")
        settings, parts = tuning.read_tune_file(tune_file, root, execution.device, name)
    else:
        if flags["strategy"] is None:
            raise UserInputError("give a tune FILE or --strategy a,b (with --dataset, --budget, ...)")
        dataset, protocol = flags["dataset"] or "beauty", flags["protocol"] or "loo"
        values = {key: flags[key] for key in ("budget", "max_epochs", "grace_epochs", "reduction_factor", "metric",
                                              "search", "seed")}
        values["seeds"] = tuple(plan.parse_seeds(flags["seeds"])) if flags["seeds"] is not None else None
        settings = tuning.TuneSettings.build({"name": name or f"{dataset}_{protocol}", **values},
                                             lambda key: "--" + key.replace("_", "-"))
        parts = tuning.parts_from_flags(settings, parse_strategies(flags["strategy"]),
                                        parse_pairs(flags["sets"], "--set"), aggregator=flags["aggregator"],
                                        dataset=dataset, protocol=protocol,
                                        max_len=flags["max_len"] if flags["max_len"] is not None else 50,
                                        data_root=root, device=execution.device)
    results = ResultStore(store)
    if dry_run:
        for line in tuning.plan_lines(settings, parts, results):
            click.echo(line)
        return
    click.echo(tuning.header(settings, parts))
    for line in tuning.default_notes(parts):
        click.echo(line)
    kept = KeptArchive(store, archive, ARCHIVE_EVERY_S) if archive is not None else None
    on_stored = kept.cell_finished if kept is not None else (lambda: None)
    cells: list = []

    def seed_runs(outcome: tuning.PartOutcome) -> None:
        """The part's chosen configuration on the tune's seeds, as soon as it is chosen."""
        part_cells = tuning.seed_cells(outcome, settings, root, execution.device)
        if part_cells:
            sweeps.run_ray(part_cells, results, address, cpus_per_trial, scratch, progress=not quiet,
                           gpus_per_cell=gpus_per_trial, desc="seed runs (ray)", finished=lambda cell: on_stored(),
                           max_running=concurrent)
        cells.extend(part_cells)

    try:
        outcomes, cost = tuning.run_tune(settings, parts, results, execution, progress=not quiet, on_stored=on_stored,
                                         on_chosen=seed_runs)
        click.echo(tuning.trials_table(outcomes, settings.metric))
        click.echo(cost.line())
    finally:
        if kept is not None:
            kept.close()
    labels = sweeps.cell_labels(cells)
    if cells:
        click.echo(f"seed runs of the chosen configurations ({len(cells)}, {plan.skipped(cells)} already in {store}):")
        click.echo(plan.summary_table(cells, labels))
        click.echo(f"leaderboard: fusionbench leaderboard --store {store} --tuned {settings.name}")
    problems = [f"{len(o.errors)} trials of {o.part.label} raised ({'; '.join(o.errors)})"
                for o in outcomes if o.errors]
    unchosen = [o.part.label for o in outcomes if o.chosen is None]
    if unchosen:
        problems.append(f"no trial finished for {', '.join(unchosen)}")
    failed = plan.failures(cells, labels) if cells else None
    if failed:
        problems.append(failed)
    if problems:
        raise TrainingError("; ".join(problems))


@main.command()
@click.option("--store", required=True, type=click.Path(path_type=Path), help="SQLite results store to read.")
@click.option("--dataset", default=None, help="Only this dataset (default: one table per dataset in the store).")
@click.option("--protocol", default=None, help="Only this protocol (default: one table per protocol).")
@click.option("--metrics", default="HR,NDCG,MRR", show_default=True, help="Comma-separated metrics.")
@click.option("--k", "ks", default="5,20", show_default=True, help="Comma-separated cutoffs K.")
@click.option("--proposed", default="mmsr,mdsrec", show_default=True,
              help="Strategies that are not baselines (the best baseline is underlined).")
@click.option("--format", "fmt", type=click.Choice(["md", "csv"]), default="md", show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write here (atomic) instead of stdout.")
@click.option("--significance", type=click.Path(path_type=Path), default=None,
              help="Also write every paired test (p, Holm-adjusted p) as CSV here (with --robustness: the "
                   "drop contrasts).")
@click.option("--strategy", "strategies", default=None,
              help="Only these strategies (comma-separated); one without a matching run is listed under the "
                   "leaderboard as not run yet.")
@click.option("--where", multiple=True, metavar="KEY=VALUE",
              help="Only runs with (KEY!=VALUE: without) this option value, keys as in --set "
                   "(e.g. train.epochs=5, update=ho, aggregator=han), or apply_to (apply_to!=both: clean and "
                   "test-only runs).")
@click.option("--at-default", default=None, metavar="KEY[,KEY...]",
              help="Only runs whose option KEY (as in --set) has the value `fusionbench run` resolves by default for "
                   "their strategy (runs without the option kept): e.g. features.modalities leaves out modality "
                   "ablations.")
@click.option("--robustness", "robust", is_flag=True, help="Perturbed runs: metric vs severity tables instead.")
@click.option("--robustness-metric", default="NDCG@20", show_default=True, help="Metric of --robustness tables/plots.")
@click.option("--plot-dir", type=click.Path(path_type=Path), default=None,
              help="With --robustness: write one PNG per perturbation setting here.")
@click.option("--contrast", "contrasts", multiple=True, metavar="A,B",
              help="With --robustness: test whether each perturbation costs row A more than row B (relative "
                   "drops, paired over test samples); repeatable, e.g. --contrast early,late.")
@click.option("--columns", "settings", default=None, metavar="KEY[,KEY...]",
              help="Add a column per option key (as in --set, e.g. dim,layers,train.lr,train.precision, or "
                   "aggregator) with each row's resolved value from the stored configs (n/a: the strategy has "
                   "no such option).")
@click.option("--tuned", default=None, metavar="NAME",
              help="Only the seed runs of the configurations `fusionbench tune` chose in the tune NAME, under a "
                   "caption stating its budget, each beside a row of its strategy's default configuration "
                   "(`STRATEGY (default)`, from --defaults), with a default vs tuned summary on the tune's metric "
                   "below the table.")
@click.option("--defaults", type=click.Path(path_type=Path), default=None, metavar="STORE",
              help="With --tuned: the results store holding ordinary runs of the default configurations (e.g. the "
                   "default board's store); default: --store. A strategy without such runs is listed as missing.")
@click.option("--published", "published_files", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Published numbers (reports/published/*.csv) beside ours: per row ours (mean ± std), the "
                   "paper's value and ours/paper; columns are the file's metrics plus NDCG (ours only). Repeatable.")
@click.option("--inflation", is_flag=True,
              help="Runs trained with train.record_test=true: validation-selected vs test-selected (each metric's "
                   "maximum over epochs) test metrics of the same models, and the difference.")
@click.option("--across", is_flag=True,
              help="Rank the rows per dataset × metric column (per protocol) over two or more datasets: Friedman "
                   "test, Nemenyi critical difference, Holm-corrected pairwise Wilcoxon.")
@click.option("--pool-protocols", is_flag=True, help="With --across: one analysis over every dataset × protocol table.")
@click.option("--cd-plot", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="With --across: draw the critical-difference diagram here (.png, .svg or .pdf; one file per "
                   "protocol, suffixed, when there are several).")
@click.option("--versus", default=None, metavar="KEY=VALUE",
              help="Below each leaderboard, every row against its reference row: the same configuration with "
                   "option KEY at VALUE (keys and values as in --where, e.g. features.modalities=none for a "
                   "modality ablation against each strategy's ID-only row); differences in points, paired tests, "
                   "Holm over the table.")
@click.option("--ranking", type=click.Choice(["all", "unseen"]), default="all", show_default=True,
              help="Test ranks among all items (the paper's protocol), or among the items outside each sample's "
                   "history (recorded beside them by every run; train.exclude_history).")
@report_errors
def leaderboard(**options: Any) -> None:
    """Leaderboards (mean ± std over seeds, significance marks) or robustness tables, from the store only;
    or published numbers beside ours (--published), both selections of one trajectory (--inflation), ranks
    over datasets (--across)."""
    from fusionbench.report import leaderboard_report

    text, written = leaderboard_report(**options, command=shlex.join(["fusionbench", *sys.argv[1:]]))
    if options["output"] is None:
        click.echo(text, nl=False)
    for path in written:
        click.echo(f"wrote {path}", err=True)


@main.command("list")
@click.argument("kind", type=click.Choice([*sorted(REGISTRIES), "options", "train", "features"]), required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "md"]), default="text", show_default=True,
              help="md: the strategies and aggregators reference in Markdown (what docs/strategies.md holds).")
@report_errors
def list_plugins(kind: Optional[str], fmt: str) -> None:
    """List registered plugins with their options and defaults, and the harness's own option groups
    (``options``: ``--set GROUP.NAME=VALUE``, e.g. train.lr, features.modalities; ``train`` or ``features``:
    that group alone)."""
    from fusionbench import reference

    if fmt == "md":
        if kind is not None:
            raise UserInputError("--format md prints the whole strategies and aggregators reference; give no KIND")
        click.echo(reference.strategies_markdown(), nl=False)
        return
    for name in sorted(REGISTRIES) if kind is None else [kind] if kind in REGISTRIES else []:
        for line in reference.plugin_lines(name):
            click.echo(line)
    if kind in (None, "options", "train", "features"):
        for line in reference.group_lines(None if kind in (None, "options") else [kind]):
            click.echo(line)


@main.group()
def data() -> None:
    """Inspect datasets."""


@data.command("info")
@click.argument("name")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Dataset option (e.g. path=DIR).")
@data_root_option
@report_errors
def data_info(name: str, sets: tuple[str, ...], data_root: Optional[Path]) -> None:
    """Counts and modality coverage of dataset NAME."""
    from fusionbench.data.datasets import load_dataset

    options = {k: v for k, _, v in (s.partition("=") for s in sets)}
    d = load_dataset(name, data_root, **options)
    lengths = d.lengths.double()
    rows: list[list[Any]] = [
        ["users", d.n_users], ["items", d.n_items], ["interactions", d.n_interactions],
        ["avg length", f"{lengths.mean():.2f}"], ["median length", f"{lengths.median():.0f}"],
        ["max length", int(lengths.max())],
        ["sparsity", f"{100 * (1 - d.n_interactions / (d.n_users * d.n_items)):.2f}%"],
    ]
    coverage = _coverage(d)
    for channel in ("image", "text", "attr"):
        if not any(m == channel or m.startswith(f"{channel} (") for m in coverage):
            coverage[channel] = "absent (no data for this channel)"
    rows += [[f"modality {m}", v] for m, v in sorted(coverage.items())]
    click.echo(f"{name} ({d.source})")
    click.echo(tabulate(rows, tablefmt="plain"))


def _coverage(d) -> dict[str, str]:
    from fusionbench.data.core import DEFAULT_IMAGE_SOURCE, DEFAULT_TEXT_SOURCE, pick_text_source

    side, n = d.side, d.n_items
    out: dict[str, str] = {}
    pct = lambda k: f"{k} / {n} items ({100 * k / n:.2f}%)"  # noqa: E731
    sources = side.text_sources()   # one row per text source; items with an empty text are absent
    default = pick_text_source(DEFAULT_TEXT_SOURCE, list(sources))
    for source, texts in sources.items():
        chosen = "features.text=" + (f"{source}, the default" if source == default else source)
        out[f"text ({source})"] = pct(sum(1 for t in texts[1:] if t.strip())) + f" ({chosen})"
    if side.attributes is not None:
        out["attr"] = pct(sum(1 for a in side.attributes[1:] if a)) + f", {side.n_attributes} attribute ids"
    for name, channel in side.dense.items():
        out[name] = pct(int(channel.present[1:].sum())) + f", {channel.features.shape[1]}-d features"
    for source, image in side.image_sources.items():
        chosen = "features.image=" + (f"{source}, the default" if source == DEFAULT_IMAGE_SOURCE else source)
        out[f"image ({source})"] = _image_coverage(image, n, pct) + f" ({chosen})"
    return out


def _image_coverage(source, n: int, pct) -> str:
    """Coverage of one image source without encoding anything: a feature file's present rows; a photo
    folder's items with a photo, and, once its features are cached, those whose photo could be read."""
    from fusionbench.data.io import read_feature_matrix
    from fusionbench.features.cache import read_cached
    from fusionbench.features.image import extraction_key, files_by_key

    if source.kind == "file":
        channel = read_feature_matrix(source.path, n)
        return pct(int(channel.present[1:].sum())) + f", {channel.features.shape[1]}-d features from {source.path.name}"
    files, _ = files_by_key(source.path, source.keys, source.key_column)
    cached = read_cached("features", extraction_key(files, n, source.path))
    if cached is None:
        return pct(len(files)) + " with a photo, EfficientNet-Lite0 features not computed yet (on first use)"
    return (pct(int(cached["present"][1:].sum())) + f" with a readable photo ({len(files)} photos, "
            "EfficientNet-Lite0 features cached)")


@main.group()
def features() -> None:
    """Extract modality features with offline encoders."""


@features.command("image")
@click.option("--images", "images_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of photos: <item_id>.jpg|png, or with --dataset <asin>.jpg|png (the --id-column).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output .npy file.")
@click.option("--dataset", default=None,
              help="Map file names to this dataset's items through its item table's --id-column (e.g. toys, "
                   "or folder with --set path=DIR). Default: file names are item ids.")
@click.option("--id-column", default=None, help="Item-table column the file names hold (with --dataset; default asin).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Dataset option (e.g. path=DIR).")
@data_root_option
@click.option("--n-items", type=int, default=None,
              help="Without --dataset: number of items n (default: largest id found).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per forward pass.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@report_errors
def features_image(images_dir: Path, out: Path, dataset: Optional[str], id_column: Optional[str],
                   sets: tuple[str, ...], data_root: Optional[Path], n_items: Optional[int], batch_size: int,
                   quiet: bool) -> None:
    """EfficientNet-Lite0 (ImageNet) features for a folder of item photos -> [n+1, 1280] .npy (NaN = absent).

    Unreadable files are listed and their items left without an image. The work is kept on disk in chunks, so
    a killed extraction continues where it stopped when run again; the finished features are cached under the
    folder's fingerprint (file names, sizes, mtimes), the item mapping and the encoder (docs/features.md)."""
    from fusionbench.features.image import extract_image_channel, files_by_item_id, files_by_key, save_image_channel
    from fusionbench.memory import keep_freed_memory

    keep_freed_memory(force=True)   # one batch size throughout: freed activations are reused, not faulted in again
    if out.suffix != ".npy":
        raise UserInputError(f"--out {out}: the output file must end in .npy")
    if batch_size < 1:
        raise UserInputError(f"--batch-size must be >= 1, got {batch_size}")
    unmatched: list[Path] = []
    if dataset is None:
        if id_column is not None or sets:
            raise UserInputError("--id-column and --set apply with --dataset (file names are item ids without it)")
        if n_items is not None and n_items < 1:
            raise UserInputError(f"--n-items must be >= 1, got {n_items}")
        files, n = files_by_item_id(images_dir, n_items)
        click.echo(f"{len(files)} photos named by item id in {images_dir}")
    else:
        from fusionbench.data.datasets import item_keys

        if n_items is not None:
            raise UserInputError("--n-items applies without --dataset (with it, n is the dataset's)")
        if not images_dir.is_dir():
            raise UserInputError(f"--images: image folder {images_dir} not found")
        column = id_column or "asin"
        options = {k: v for k, _, v in (s.partition("=") for s in sets)}
        keys, n, where = item_keys(dataset, column, data_root, **options)
        files, unmatched = files_by_key(images_dir, keys, column)
        click.echo(f"{len(files)} of {n} items of {dataset} have a photo in {images_dir} (by {column}, {where})")
        if unmatched:
            shown = ", ".join(p.name for p in unmatched[:10]) + (", ..." if len(unmatched) > 10 else "")
            click.echo(f"{len(unmatched)} files match no item and were skipped: {shown}")
    result = extract_image_channel(images_dir, files, n, batch_size=batch_size, progress=not quiet)
    if result.unreadable:
        click.echo(f"{len(result.unreadable)} unreadable files, their items left without an image:")
        for name, reason in result.unreadable:
            click.echo(f"  {name}: {reason}")
    save_image_channel(out, result.features, result.present)
    resumed = f", {result.resumed} resumed from an interrupted run" if result.resumed else ""
    how = "read from the cache" if result.cached else f"{result.encoded} encoded{resumed}"
    click.echo(f"wrote {out}: {n} items x {result.features.shape[1]} features, {int(result.present[1:].sum())} "
               f"with an image ({how})")


@main.group()
def store() -> None:
    """Maintain a results store."""


@store.command("upgrade")
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path), help="SQLite results file.")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@data_root_option
@report_errors
def store_upgrade(store_path: Path, dry_run: bool, data_root: Optional[Path]) -> None:
    """Re-identify stored runs after options were added (new keys at their defaults, or at what an old run did
    where the default would not reproduce it) or folded into others; see fusionbench/store/upgrade.py. Reads the
    runs' data where a step needs it. Run it while no run of the store is in progress."""
    from fusionbench.store import ResultStore
    from fusionbench.store.upgrade import upgrade_store

    if not store_path.exists():
        raise UserInputError(f"--store: no results file at {store_path}")
    results = upgrade_store(ResultStore(store_path), dry_run=dry_run, data_root=data_root)
    rows = [[u.run_id, u.old_hash, u.new_hash or "", u.status,
             ", ".join([*u.added, *(f"{key} (removed)" for key in u.removed)]) or u.reason]
            for u in results if u.status != "current"]
    if rows:
        click.echo(tabulate(rows, headers=["run", "hash", "new hash", "status", "added / removed keys / reason"]))
    counts = {s: sum(u.status == s for u in results) for s in ("upgraded", "current", "kept")}
    verb = "would be upgraded" if dry_run else "upgraded"
    click.echo(f"{counts['upgraded']} {verb}, {counts['current']} already current, {counts['kept']} kept as they are")


@store.command("show")
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path), help="SQLite results file.")
@click.option("--status", type=click.Choice(["running", "done", "failed"]), default=None,
              help="Only runs with this status (default: all).")
@click.option("--dataset", default=None, help="Only runs on this dataset.")
@click.option("--estimate-from", "estimate_from", multiple=True, type=click.Path(path_type=Path),
              help="Another results store whose finished runs the running runs' minutes left are estimated from "
                   "too (repeatable), as for `sweep --dry-run`.")
@report_errors
def store_show(store_path: Path, status: Optional[str], dataset: Optional[str],
               estimate_from: tuple[Path, ...]) -> None:
    """One line per stored run: id, status, data, run, perturbation, seed, best / run epochs (and the epoch
    at which a run's training loss ran away, if it did), seconds per epoch, wall minutes (of a resumed run:
    with its earlier processes' epochs). A run whose process died
    stays 'running': its command resumes it from its checkpoint ('resumable', with its best / epochs so far,
    seconds per epoch and minutes spent as the checkpoint has them), `fusionbench store remove` forgets it.
    A running run also shows the minutes it is expected to need still, with a core to itself (estimated
    as `sweep --dry-run` does, from the store's finished runs)."""
    from fusionbench.report.collect import open_store
    from fusionbench.store.admin import describe_runs

    others = [open_store(path, "--estimate-from") for path in estimate_from]
    rows = describe_runs(store_path, status, dataset, others)
    if not rows:
        click.echo("no runs" + (f" with status {status!r}" if status else "") + (f" on {dataset!r}" if dataset else ""))
        return
    click.echo(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".1f"))   # 21.0 stays 21.0


@store.command("curves")
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path), help="SQLite results file.")
@click.option("--id", "run_ids", type=int, multiple=True, required=True,
              help="Run id (as `fusionbench store show` lists it); repeat to put runs side by side.")
@click.option("--metric", default="NDCG@20", show_default=True, help="Validation metric to show (METRIC@K).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Also draw the validation curves here (PNG).")
@report_errors
def store_curves(store_path: Path, run_ids: tuple[int, ...], metric: str, plot_path: Optional[Path]) -> None:
    """Learning curves side by side: per epoch each run's training loss and validation metric (%), its
    best epoch starred. A run still training is read from its resume checkpoint."""
    from fusionbench.store.admin import curves_table, plot_curves, run_curves

    curves = run_curves(store_path, list(dict.fromkeys(run_ids)))
    click.echo(curves_table(curves, metric), nl=False)
    if plot_path is not None:
        plot_curves(curves, metric, plot_path)
        click.echo(f"wrote {plot_path}", err=True)


@store.command("remove")
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path), help="SQLite results file.")
@click.option("--id", "run_ids", type=int, multiple=True, required=True,
              help="Run id (as `fusionbench store show` lists it); repeat for several.")
@click.option("--force", is_flag=True, help="Also remove runs marked 'running' (stop their process first).")
@report_errors
def store_remove(store_path: Path, run_ids: tuple[int, ...], force: bool) -> None:
    """Forget runs: their metrics, ranks and resume checkpoint go, and kept trained weights that no remaining
    run refers to, so the same command trains the run afresh."""
    from fusionbench.store.admin import remove_runs

    removed = remove_runs(store_path, list(run_ids), force)
    click.echo(f"removed {len(removed)} run{'s' if len(removed) != 1 else ''}: {', '.join(removed)}")


@store.command("export")
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path), help="SQLite results file.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Archive to write (.jsonl.gz).")
@click.option("--dataset", default=None, help="Only runs on this dataset.")
@click.option("--ranks", type=click.Choice(["all", "test"]), default="all", show_default=True,
              help="Per-sample ranks of every split, or of the test rankings only (test and test_unseen: all "
                   "that leaderboards and robustness tables read; about half the archive).")
@click.option("--since", default=None, metavar="ISO-TIME",
              help="Only runs started at or after this time (e.g. 2026-12-04T14:00; UTC where no zone is given).")
@report_errors
def store_export(store_path: Path, out: Path, dataset: Optional[str], ranks: str, since: Optional[str]) -> None:
    """Write the store's finished runs (config, run facts, metrics, per-sample ranks; not the kept weights) to a
    portable archive that `fusionbench store import` adds to another store."""
    from fusionbench.store.archive import export_runs

    n = export_runs(store_path, out, dataset, ranks, since)
    click.echo(f"wrote {out}: {n} finished run{'s' if n != 1 else ''}")


@store.command("import")
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path),
              help="SQLite results file (created if missing).")
@report_errors
def store_import(archive: Path, store_path: Path) -> None:
    """Add the runs of ARCHIVE (from `fusionbench store export`) to a store, in one transaction; runs already
    done there are kept as they are."""
    from fusionbench.store.archive import import_runs

    added, present = import_runs(archive, store_path)
    click.echo(f"added {added} run{'s' if added != 1 else ''} to {store_path}, {present} already there")


from fusionbench.devtools.bench import bench  # noqa: E402  (speed regression check, its own module)

main.add_command(bench)


@bench.command("profile")
@run_options("strategy", "aggregator", "dataset", "protocol", "seed", "max_len", "set",
             protocol=dict(help=None), max_len=dict(help=None),
             set=dict(help="Option override, as for `fusionbench run` (e.g. train.precision=bf16)."))
@click.option("--every", type=int, default=20, show_default=True,
              help="Sample one batch in every N of the first epoch, spread over batch sizes.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed passes over the sample.")
@click.option("--part", "parts", multiple=True, metavar="PATH",
              help="Also label this method (a dotted path from the model: graph, layers.0.forward_rows) or "
                   "function (module:name, e.g. aggregators.han:typed_linear).")
@click.option("--top", type=int, default=15, show_default=True, help="Operators listed by self CPU time.")
@click.option("--shapes", is_flag=True, help="List operators per input shapes.")
@data_root_option
@report_errors
def bench_profile(strategy: str, aggregator: Optional[str], dataset: str, protocol: str, seed: int, max_len: int,
                  sets: tuple[str, ...], every: int, repeats: int, parts: tuple[str, ...], top: int, shapes: bool,
                  data_root: Optional[Path]) -> None:
    """Time and profile a strategy's training step on a sample of its first epoch (CPU; docs/performance.md)."""
    from fusionbench.devtools.profile import profile_training, render
    from fusionbench.runner import RunRequest

    request = RunRequest(strategy=strategy, dataset=dataset, protocol=protocol, seed=seed, aggregator=aggregator,
                         max_len=max_len, data_root=data_root, **parse_sets(sets))
    profile = profile_training(request, every=every, repeats=repeats, parts=parts, top=top, shapes=shapes)
    click.echo(render(profile))


if __name__ == "__main__":
    main()

"""``fusionbench sweep``: many runs from one TOML file, on this machine or on a Ray cluster.

A sweep file lists configurations (``[[run]]`` tables, with shared ``[defaults]``); each runs for every
seed, every point of its ``grid`` and every severity of its perturbation. The format (keys, defaults, the
order of the cells, when two cells are the same) is docs/sweeps.md, whose example a test parses.
Every cell is resolved (validated) before the first one runs; identical cells run once.

Every cell is one stored run (:func:`fusionbench.runner.run_experiment`), so the store makes a sweep
resumable: cells done there are skipped, an interrupted cell resumes from its checkpoint. Engines:

* ``local``: the cells in file order, in this process (:func:`fusionbench.plan.run_local`).
* ``ray``: one Ray task per group of cells that share their trained weights (the same training config:
  the clean run and its test-only stress cells), each group's cells in order, so a group trains once.
  Groups whose training run is already done go first (they only evaluate the kept weights).
  A task runs its cells into a store in a scratch folder of its node (checkpoints and kept weights
  there, so a retried task resumes) and returns the finished runs, which the driver adds to ``--store``
  as they arrive (``ResultStore.add_records``). Every node needs fusionbench, the data (``--data-root``
  or ``FUSIONBENCH_DATA``) and, for speed, the feature cache.

A cell whose training fails (:class:`TrainingError`) is reported and the sweep goes on; the command
then exits 1.
"""
from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from tqdm import tqdm

from fusionbench.errors import TrainingError, UserInputError
from fusionbench.perturb.plan import PerturbationRequest
from fusionbench.plan import Cell, identify, stored_outcome
from fusionbench.ray_start import init_ray
from fusionbench.registry import UnknownPluginError
from fusionbench.runner import RunRequest, group_options, run_experiment
from fusionbench.store import ResultStore, canonical_json

RUN_KEYS = ("strategy", "aggregator", "dataset", "protocol", "seeds", "max_len", "set", "grid", "perturbation")
PERTURBATION_KEYS = ("name", "severity", "apply_to", "options")


# -- the sweep file ---------------------------------------------------------------------------------
def read_sweep(path: Path, data_root: Optional[Path] = None, device: str = "cpu") -> list[Cell]:
    """Parse and expand a sweep file into resolved cells (file order; duplicates dropped). Errors name
    the file, the ``[[run]]`` table (1-based) and the key."""
    try:
        spec = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserInputError(f"sweep file {path} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise UserInputError(f"{path}: not valid TOML ({err})") from None
    unknown = set(spec) - {"defaults", "run"}
    if unknown:
        raise UserInputError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; expected [defaults] "
                             "and [[run]] tables")
    defaults = spec.get("defaults", {})
    runs = spec.get("run", [])
    if not isinstance(defaults, dict) or not isinstance(runs, list) or not runs:
        raise UserInputError(f"{path}: needs at least one [[run]] table (and [defaults] must be a table)")
    _check_keys(defaults, f"{path}: [defaults]")
    cells: dict[str, Cell] = {}
    for index, entry in enumerate(runs, start=1):
        where = f"{path}: [[run]] {index}"
        if not isinstance(entry, dict):
            raise UserInputError(f"{where} must be a table")
        _check_keys(entry, where)
        for request in expand(defaults, entry, where, data_root, device):
            try:
                cell = Cell(request, index)
            except (UserInputError, UnknownPluginError) as err:
                raise UserInputError(f"{where} ({request.strategy}): {err}") from None
            cells.setdefault(canonical_json(cell.config), cell)
    return list(cells.values())


def _check_keys(table: dict, where: str) -> None:
    unknown = sorted(set(table) - set(RUN_KEYS))
    if unknown:
        raise UserInputError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(RUN_KEYS)}")


def _typed(value: Any, kinds: tuple[type, ...], where: str, expected: str) -> Any:
    """``value`` if it is one of ``kinds`` (a bool only where ``bool`` is listed), else an error."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise UserInputError(f"{where} must be {expected}, got {value!r}")
    return value


def expand(defaults: dict, entry: dict, where: str, data_root: Optional[Path] = None,
           device: str = "cpu") -> Iterable[RunRequest]:
    """The requests of one ``[[run]]`` table: strategies x grid points x perturbations and their severities
    x seeds (in that nesting)."""
    merged = {**defaults, **entry, "set": {**defaults.get("set", {}), **entry.get("set", {})}}
    if "strategy" not in merged:
        raise UserInputError(f"{where}: missing key 'strategy'")
    strategies = merged["strategy"] if isinstance(merged["strategy"], list) else [merged["strategy"]]
    strategies = [_typed(name, (str,), f"{where}: strategy", "a strategy name or a list of them")
                  for name in strategies]
    seeds = [_typed(s, (int,), f"{where}: seeds", "a list of integers")
             for s in _typed(merged.get("seeds", [0]), (list,), f"{where}: seeds", "a list of integers")]
    sets = _typed(merged["set"], (dict,), f"{where}: set", "a table of option = value")
    grid = _typed(merged.get("grid", {}), (dict,), f"{where}: grid", "a table of option = [values]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserInputError(f"{where}: grid.{key} must be a non-empty list of values, got {values!r}")
    specs = merged.get("perturbation")
    perturbations = [p for spec in (specs if isinstance(specs, list) else [specs]) for p in _perturbations(spec, where)]
    base = dict(data_root=data_root, device=device,
                dataset=_typed(merged.get("dataset", "beauty"), (str,), f"{where}: dataset", "a name"),
                protocol=_typed(merged.get("protocol", "loo"), (str,), f"{where}: protocol", "a name"),
                aggregator=_typed(merged.get("aggregator"), (str, type(None)), f"{where}: aggregator", "a name"),
                max_len=_typed(merged.get("max_len", RunRequest.max_len), (int,), f"{where}: max_len", "an integer"))
    for strategy in strategies:
        for point in itertools.product(*grid.values()):
            groups = group_options({**sets, **dict(zip(grid, point))}, f"{where}: option")
            for perturbation in perturbations:
                for seed in seeds:
                    yield RunRequest(strategy=strategy, seed=seed, perturbation=perturbation, **base, **groups)


def _perturbations(spec: Any, where: str) -> list[Optional[PerturbationRequest]]:
    if spec is None:
        return [None]
    where = f"{where}: perturbation"
    _typed(spec, (dict,), where, "a table with name, severity, apply_to, options")
    unknown = sorted(set(spec) - set(PERTURBATION_KEYS))
    if unknown or "name" not in spec or "severity" not in spec:
        raise UserInputError(f"{where} needs name and severity (and may have apply_to, options); "
                             f"got {', '.join(sorted(spec))}")
    severities = spec["severity"] if isinstance(spec["severity"], list) else [spec["severity"]]
    options = _typed(spec.get("options", {}), (dict,), f"{where}.options", "a table")
    return [PerturbationRequest(spec["name"], _typed(p, (int, float), f"{where}.severity", "numbers in [0, 1]"),
                                spec.get("apply_to", "test"), options) for p in severities]


# -- the Ray engine ---------------------------------------------------------------------------------
def run_ray(cells: list[Cell], store: ResultStore, address: Optional[str] = None, cpus_per_cell: int = 1,
            scratch: Optional[str] = None, progress: bool = True, gpus_per_cell: float = 0.0,
            desc: str = "sweep cells (ray)", finished: Callable[[Cell], None] = lambda cell: None,
            max_running: Optional[int] = None) -> None:
    """Run the cells not yet done in ``store`` as Ray tasks (module docstring), adding each finished
    run to ``store`` as its task returns, then calling ``finished(cell)``. Cells already done get their
    stored outcome. ``gpus_per_cell`` (a fraction shares a GPU) is what each task reserves besides its
    CPUs (``fusionbench tune``'s seed runs on GPUs); ``max_running`` tasks at most are submitted at a time
    (``fusionbench tune --concurrent``; ``None``: as many as the cluster's resources let run)."""
    try:
        import ray
    except ImportError:
        raise UserInputError("--engine ray needs Ray: pip install 'fusionbench[ray]'") from None
    if cpus_per_cell < 1:
        raise UserInputError(f"--cpus-per-cell must be >= 1, got {cpus_per_cell}")
    if max_running is not None and max_running < 1:
        raise UserInputError(f"--concurrent must be >= 1, got {max_running}")
    todo: dict[str, list[tuple[Cell, dict]]] = {}
    trains: set[str] = set()    # training hashes whose own training run is among the cells to run
    for cell, (config, digest, training) in zip(cells, identify(cells)):
        if store.status(digest) == "done":
            cell.outcome = stored_outcome(store, config, digest, skipped=True)
        else:
            todo.setdefault(training, []).append((cell, config))
            if digest == training:
                trains.add(training)
    if not todo:
        return
    groups = submission_order(todo, trains)
    init_ray(address, progress)
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_cell > 0 and gpus < gpus_per_cell:
        raise UserInputError(f"--gpus-per-cell {gpus_per_cell:g}: the Ray cluster has {gpus:g} GPUs, "
                             "so no cell could start")
    task = ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=0)(run_group)
    bar = tqdm(total=sum(map(len, groups)), desc=desc, unit="cell",
               disable=None if progress else True)

    def submit(group):
        return task.remote([c.request for c, _ in group], scratch, cpus_per_cell)

    for group, ready in ray_completed(submit, groups, max_running):
        try:
            results = ray.get(ready)
        except Exception as err:  # noqa: BLE001  (the task died: its worker was killed, or it raised)
            lines = str(err).strip().splitlines()
            results = [(None, f"Ray task failed: {lines[-1] if lines else type(err).__name__}")] * len(group)
        for (cell, config), (record, error) in zip(group, results):
            if record is not None:
                store.add_records([record])
                cell.outcome = stored_outcome(store, config, record["config_hash"])
                finished(cell)
            cell.error = error
            bar.update(1)
    bar.close()


def ray_completed(submit: Callable, items: Iterable, max_running: Optional[int] = None) -> Iterator[tuple]:
    """``(item, ref)`` for each of ``items`` as its Ray task finishes, where ``submit(item)`` starts the task and
    returns its object ref; at most ``max_running`` tasks are submitted and unfinished at a time (``None``: all
    at once, the cluster's resources deciding what runs), the next item's submitted as one finishes."""
    import ray

    waiting = iter(items)
    pending = {submit(item): item for item in itertools.islice(waiting, max_running)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # a timeout lets Ctrl-C through
        if not done:
            continue
        item = pending.pop(done[0])
        pending.update((submit(following), following) for following in itertools.islice(waiting, 1))
        yield item, done[0]


def submission_order(groups: dict[str, list], trains: set[str]) -> list[list]:
    """The groups (keyed by training hash) in the order their tasks are submitted: first those whose
    training run is not among them (an earlier run kept their weights, so they only evaluate), then the
    rest, each part in file order."""
    return [groups[training] for training in sorted(groups, key=lambda training: training in trains)]


def run_group(requests: list[RunRequest], scratch: Optional[str],
              threads: int) -> list[tuple[Optional[dict], Optional[str]]]:
    """A Ray task's body: run ``requests`` in order into the node's scratch store; per request
    ``(record, None)`` (:meth:`ResultStore.records`) or ``(None, error)`` when training failed."""
    import torch

    torch.set_num_threads(threads)
    folder = Path(scratch) if scratch else Path.home() / ".cache" / "fusionbench" / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    node_store = ResultStore(folder / "store.db")
    out: list[tuple[Optional[dict], Optional[str]]] = []
    try:
        for request in requests:
            try:
                outcome = run_experiment(request, store=node_store, progress=False)
            except TrainingError as err:
                out.append((None, str(err)))
                continue
            out.append((node_store.records([outcome.run_id])[0], None))
    finally:
        node_store.close()
    return out


# -- what the command prints -------------------------------------------------------------------------
def cell_labels(cells: list[Cell]) -> list[str]:
    """One label per cell, as the leaderboard labels its rows (strategy, aggregator, non-default options;
    first the dataset with its options and the protocol, each when the cells span several: a leaderboard
    table holds one of each), then the perturbation."""
    from fusionbench.report.collect import data_name, row_key, variant_labels

    configs = [cell.config for cell in cells]
    table_of = lambda c: (data_name(c), c["protocol"])  # noqa: E731
    tables = list(dict.fromkeys(table_of(c) for c in configs))
    several = [len({t[i] for t in tables}) > 1 for i in range(2)]
    names = {}
    for table in tables:   # labels are unique within a table, as in a leaderboard
        keys = list(dict.fromkeys(row_key(c) for c in configs if table_of(c) == table))
        firsts = [next(c for c in configs if row_key(c) == key) for key in keys]
        shown = [part for part, show in zip(table, several) if show]
        prefix = f"{' / '.join(shown)}: " if shown else ""
        names.update({key: prefix + label for key, label in zip(keys, variant_labels(firsts))})
    labels = []
    for config in configs:
        p = config.get("perturbation")
        labels.append(names[row_key(config)] + (f", {p['name']} p={p['severity']:g} ({p['apply_to']})" if p else ""))
    return labels

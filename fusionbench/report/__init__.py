"""Reports read only from the results store: leaderboards with significance marks, robustness tables
and curves. One module per job: :mod:`.collect` (runs -> rows, labels, per-sample metrics from ranks),
:mod:`.significance` (paired tests, Holm–Bonferroni), :mod:`.leaderboard`, :mod:`.robustness`,
:mod:`.contrast` (does a perturbation cost one row more than another), :mod:`.published` (published
numbers beside ours), :mod:`.trajectory` (validation- vs test-selected metrics of one run), :mod:`.across`
(ranks over datasets: Friedman, Nemenyi, Holm–Wilcoxon, critical-difference diagrams), :mod:`.versus`
(every row against its reference row: ablations), :mod:`.tuned` (a tune's chosen rows beside their defaults).
:func:`leaderboard_report` is what ``fusionbench leaderboard`` calls.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import pandas as pd

from fusionbench.atomic import atomic_write
from fusionbench.errors import UserInputError
from fusionbench.report import across as across_tables
from fusionbench.report import contrast, leaderboard, published, robustness, trajectory
from fusionbench.report import tuned as tuned_tables
from fusionbench.report import versus as versus_tables
from fusionbench.report.collect import Selection, open_store, parse_column, parse_columns, parse_setting_keys


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def leaderboard_report(store: Path, dataset: Optional[str] = None, protocol: Optional[str] = None,
                       metrics: str = "HR,NDCG,MRR", ks: str = "5,20", proposed: str = ",".join(leaderboard.PROPOSED),
                       fmt: str = "md", output: Optional[Path] = None, significance: Optional[Path] = None,
                       robust: bool = False, robustness_metric: str = "NDCG@20",
                       plot_dir: Optional[Path] = None, strategies: Optional[str] = None, where: tuple[str, ...] = (),
                       at_default: Optional[str] = None,
                       contrasts: tuple[str, ...] = (), settings: Optional[str] = None,
                       published_files: tuple[Path, ...] = (), inflation: bool = False, across: bool = False,
                       pool_protocols: bool = False, cd_plot: Optional[Path] = None, ranking: str = "all",
                       command: Optional[str] = None, tuned: Optional[str] = None,
                       defaults: Optional[Path] = None, versus: Optional[str] = None) -> tuple[str, list[Path]]:
    """Build the leaderboards (with one column per option key of ``settings`` "KEY,KEY", e.g.
    "dim,train.lr") or, with ``robust``, the robustness tables and plots, and the drop contrasts of the
    ``contrasts`` pairs "A,B" of ``store``. Instead of the leaderboards: ``published_files`` the published
    numbers of each file beside ours (:mod:`.published`; columns: the files' metrics and NDCG at their
    cutoffs), ``inflation`` validation- against test-selected metrics of the runs trained with
    ``train.record_test`` (:mod:`.trajectory`), ``across`` the ranks over datasets with the Friedman,
    Nemenyi and Holm–Wilcoxon tests (:mod:`.across`; ``cd_plot``: the diagram's file); in markdown
    several of them follow one another in that order.

    Returns the report text (also written to ``output`` when given) and the files written. A markdown
    report starts with ``command`` (the command line that regenerates it) when one is given. Option
    names in errors are the CLI's. ``tuned`` (a tune's name, ``fusionbench tune``): only the seed runs of
    the configurations that tune chose, under a caption stating its budget, and on the leaderboard each
    beside its default configuration's runs from the store ``defaults`` (default: ``store``), with the
    default vs tuned summary below each table in markdown (:mod:`.tuned`). ``versus`` ("KEY=VALUE"): below
    each leaderboard, every row against the row with the same configuration but that option value
    (:mod:`.versus`; with ``--format csv`` that comparison is the table written)."""
    if fmt not in ("md", "csv"):
        raise UserInputError(f"--format must be md or csv, got {fmt!r}")
    views = [name for name, on in (("--published", bool(published_files)), ("--inflation", inflation),
                                   ("--across", across)) if on]
    if views and robust:
        raise UserInputError(f"{views[0]} reads clean runs; it does not combine with --robustness")
    if views and (significance is not None or settings is not None):
        raise UserInputError(f"--significance and --columns apply to the plain leaderboard, not with {views[0]}")
    if len(views) > 1 and fmt == "csv":
        raise UserInputError(f"--format csv writes one kind of table: give one of {', '.join(views)}")
    if pool_protocols and not across:
        raise UserInputError("--pool-protocols needs --across")
    if cd_plot is not None and not across:
        raise UserInputError("--cd-plot needs --across (it draws the critical-difference diagram)")
    if robust and ranking != "all":
        raise UserInputError("--ranking unseen applies to leaderboards, not to --robustness tables")
    if inflation and ranking != "all":
        raise UserInputError("--ranking unseen applies to leaderboards, not to --inflation (per-epoch test metrics "
                             "are recorded among all items)")
    if contrasts and not robust:
        raise UserInputError("--contrast needs --robustness (it compares drops under a perturbation)")
    if robust and significance is not None and not contrasts:
        raise UserInputError("--significance with --robustness writes the drop contrasts: pass --contrast A,B")
    pairs = contrast.parse_pairs(contrasts)
    if robust and settings is not None:
        raise UserInputError("--columns applies to leaderboards, not to --robustness tables")
    keys = parse_setting_keys(settings) if settings is not None else ()
    if not robust and plot_dir is not None:
        raise UserInputError("--plot-dir needs --robustness (plots are robustness curves)")
    if tuned is not None and robust:
        raise UserInputError("--tuned applies to leaderboards, not to --robustness tables")
    if defaults is not None and tuned is None:
        raise UserInputError("--defaults needs --tuned (it adds the default rows to a tuned leaderboard)")
    if defaults is not None and views:
        raise UserInputError(f"--defaults adds default rows to the tuned leaderboard, not to {views[0]}")
    if versus is not None and (robust or views or tuned is not None):
        other = "--robustness" if robust else views[0] if views else "--tuned"
        raise UserInputError(f"--versus compares the rows of a plain leaderboard, not with {other}")
    reference = versus_tables.Reference.parse(versus) if versus is not None else None
    written: list[Path] = []
    selection = Selection.parse(strategies, where, at_default)
    results = open_store(store)
    default_store = None
    tuned_caption = board_of_tune = None
    try:
        if tuned is not None:
            default_store = open_store(defaults, "--defaults") if defaults is not None else results
            board_of_tune = tuned_tables.tuned_board(results, tuned, default_store)
            tuned_caption = board_of_tune.caption() if not views else board_of_tune.caption(with_defaults=False)
            selection = dataclasses.replace(selection, run_hashes=board_of_tune.hashes)
        if robust:
            tables = robustness.build_robustness(results, dataset, protocol,
                                                 parse_column(robustness_metric, "--robustness-metric"), selection)
            text = (robustness.render_markdown(tables) if fmt == "md"
                    else robustness.to_frame(tables).to_csv(index=False))
            if pairs:
                absent = sorted(set.intersection(*(set(table.not_run) for table in tables)))  # in no table
                found = contrast.drop_contrasts(tables, pairs, absent)
                if fmt == "md":
                    text += "\n" + contrast.render_markdown(found, robustness_metric, contrast.waiting(pairs, absent))
                if significance is not None:
                    write_text(significance, contrast.to_frame(found).to_csv(index=False))
                    written.append(Path(significance))
            for table in tables if plot_dir is not None else []:
                path = Path(plot_dir) / f"{table.file_stem}.png"
                robustness.plot(table, path)
                written.append(path)
        elif views:
            chosen = tuple(s.strip() for s in proposed.split(",") if s.strip())
            text = _views(results, dataset, protocol, metrics, ks, chosen, selection, fmt, published_files,
                          inflation, across, pool_protocols, cd_plot, written, ranking)
        else:
            chosen = tuple(s.strip() for s in proposed.split(",") if s.strip())
            extra = board_of_tune.default_runs if board_of_tune is not None else ()
            labels = board_of_tune.labels if board_of_tune is not None else None
            boards = leaderboard.build_leaderboards(results, dataset, protocol, parse_columns(metrics, ks), chosen,
                                                    selection, keys, ranking=ranking, extra=extra, labels=labels)
            against = [(board, versus_tables.versus_rows(results, board, reference, ranking))
                       for board in boards] if reference is not None else []
            if fmt == "csv" and against:
                text = pd.concat([versus_tables.to_frame(entries, board, reference) for board, entries in against],
                                 ignore_index=True).to_csv(index=False)
            elif fmt == "csv":
                text = leaderboard.to_frame(boards).to_csv(index=False)
            elif against:
                text = "\n".join(leaderboard.render_markdown([board], chosen) + "\n"
                                 + versus_tables.render_markdown(entries, board, reference)
                                 for board, entries in against)
            elif board_of_tune is None:
                text = leaderboard.render_markdown(boards, chosen)
            else:
                sections = []
                for board in boards:
                    summary = tuned_tables.render_summary(
                        tuned_tables.default_vs_tuned(results, board, board_of_tune, ranking), board_of_tune)
                    sections.append(leaderboard.render_markdown([board], chosen) + (f"\n{summary}" if summary else ""))
                costs = tuned_tables.render_costs(tuned_tables.tune_costs(results, board_of_tune, selection.strategies))
                text = "\n".join(sections + ([costs] if costs else []))
            if significance is not None:
                extra = [(board, [c for e in entries for c in e.comparisons]) for board, entries in against]
                write_text(significance, leaderboard.comparisons_frame(boards, extra).to_csv(index=False))
                written.append(Path(significance))
    finally:
        results.close()
        if default_store is not None and default_store is not results:
            default_store.close()
    if tuned_caption is not None and fmt == "md":
        text = f"{tuned_caption}\n\n{text}"
    if command is not None and fmt == "md":
        text = f"<!-- generated by: {command} -->\n\n{text}"
    if output is not None:
        write_text(output, text)
        written.append(Path(output))
    return text, written


def _views(results, dataset: Optional[str], protocol: Optional[str], metrics: str, ks: str,
           chosen: tuple[str, ...], selection: Selection, fmt: str, published_files: tuple[Path, ...],
           inflation: bool, across: bool, pool_protocols: bool, cd_plot: Optional[Path],
           written: list[Path], ranking: str = "all") -> str:
    """The ``--published``, ``--inflation`` and ``--across`` sections of :func:`leaderboard_report`."""
    sections: list[str] = []
    if published_files:
        files = [published.load_published(Path(path)) for path in published_files]
        boards = leaderboard.build_leaderboards(results, dataset, protocol, published.columns_of(files), chosen,
                                                selection, significance=False, ranking=ranking)
        found = published.build_comparisons(results, files, boards)
        missing = [m for m in published.not_run(files, found) if dataset is None or m[2] == dataset]
        sections.append(published.render_markdown(found, missing) if fmt == "md"
                        else published.to_frame(found).to_csv(index=False))
    if inflation:
        tables = trajectory.build_inflation(results, dataset, protocol, parse_columns(metrics, ks), selection)
        sections.append(trajectory.render_markdown(tables) if fmt == "md"
                        else trajectory.to_frame(tables).to_csv(index=False))
    if across:
        boards = leaderboard.build_leaderboards(results, dataset, protocol, parse_columns(metrics, ks), chosen,
                                                selection, significance=False, ranking=ranking)
        analyses, skipped = across_tables.build_across(boards, pool_protocols)
        sections.append(across_tables.render_markdown(analyses, skipped) if fmt == "md"
                        else across_tables.to_frame(analyses).to_csv(index=False))
        if cd_plot is not None:
            for analysis, path in zip(analyses, across_tables.plot_paths(Path(cd_plot), analyses)):
                across_tables.plot(analysis, path)
                written.append(path)
    return "\n".join(sections)

"""Reports read only from the results store: leaderboards with significance marks, robustness tables
and curves. One module per job: :mod:`.collect` (runs -> rows, labels, per-sample metrics from ranks),
:mod:`.significance` (paired tests, Holm–Bonferroni), :mod:`.leaderboard`, :mod:`.robustness`,
:mod:`.contrast` (does a perturbation cost one row more than another).
:func:`leaderboard_report` is what ``fusionbench leaderboard`` calls.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from fusionbench.atomic import atomic_write
from fusionbench.errors import UserInputError
from fusionbench.report import contrast, leaderboard, robustness
from fusionbench.report.collect import Selection, open_store, parse_column, parse_columns, parse_setting_keys
from fusionbench.report.tuned import tuned_runs


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def leaderboard_report(store: Path, dataset: Optional[str] = None, protocol: Optional[str] = None,
                       metrics: str = "HR,NDCG,MRR", ks: str = "5,20", proposed: str = ",".join(leaderboard.PROPOSED),
                       fmt: str = "md", output: Optional[Path] = None, significance: Optional[Path] = None,
                       robust: bool = False, robustness_metric: str = "NDCG@20",
                       plot_dir: Optional[Path] = None, strategies: Optional[str] = None, where: tuple[str, ...] = (),
                       contrasts: tuple[str, ...] = (), settings: Optional[str] = None,
                       command: Optional[str] = None, tuned: Optional[str] = None) -> tuple[str, list[Path]]:
    """Build the leaderboards (with one column per option key of ``settings`` "KEY,KEY", e.g.
    "dim,train.lr") or, with ``robust``, the robustness tables and plots, and the drop contrasts of the
    ``contrasts`` pairs "A,B" of ``store``.

    Returns the report text (also written to ``output`` when given) and the files written. A markdown
    report starts with ``command`` (the command line that regenerates it) when one is given. Option
    names in errors are the CLI's. ``tuned`` (a tune's name, ``fusionbench tune``): only the seed runs of
    the configurations that tune chose, under a caption stating its budget (:mod:`.tuned`)."""
    if fmt not in ("md", "csv"):
        raise UserInputError(f"--format must be md or csv, got {fmt!r}")
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
    written: list[Path] = []
    selection = Selection.parse(strategies, where)
    results = open_store(store)
    tuned_caption = None
    try:
        if tuned is not None:
            hashes, tuned_caption = tuned_runs(results, tuned)
            selection = dataclasses.replace(selection, run_hashes=hashes)
        if robust:
            tables = robustness.build_robustness(results, dataset, protocol,
                                                 parse_column(robustness_metric, "--robustness-metric"), selection)
            text = (robustness.render_markdown(tables) if fmt == "md"
                    else robustness.to_frame(tables).to_csv(index=False))
            if pairs:
                found = contrast.drop_contrasts(tables, pairs)
                if fmt == "md":
                    text += "\n" + contrast.render_markdown(found, robustness_metric)
                if significance is not None:
                    write_text(significance, contrast.to_frame(found).to_csv(index=False))
                    written.append(Path(significance))
            for table in tables if plot_dir is not None else []:
                path = Path(plot_dir) / f"{table.file_stem}.png"
                robustness.plot(table, path)
                written.append(path)
        else:
            chosen = tuple(s.strip() for s in proposed.split(",") if s.strip())
            boards = leaderboard.build_leaderboards(results, dataset, protocol, parse_columns(metrics, ks), chosen,
                                                    selection, keys)
            text = (leaderboard.render_markdown(boards, chosen) if fmt == "md"
                    else leaderboard.to_frame(boards).to_csv(index=False))
            if significance is not None:
                write_text(significance, leaderboard.comparisons_frame(boards).to_csv(index=False))
                written.append(Path(significance))
    finally:
        results.close()
    if tuned_caption is not None and fmt == "md":
        text = f"{tuned_caption}\n\n{text}"
    if command is not None and fmt == "md":
        text = f"<!-- generated by: {command} -->\n\n{text}"
    if output is not None:
        write_text(output, text)
        written.append(Path(output))
    return text, written

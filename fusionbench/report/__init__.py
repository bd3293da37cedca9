"""Reports read only from the results store: leaderboards with significance marks, robustness tables
and curves. One module per job: :mod:`.collect` (runs -> rows, labels, per-sample metrics from ranks),
:mod:`.significance` (paired tests, Holm–Bonferroni), :mod:`.leaderboard`, :mod:`.robustness`.
:func:`leaderboard_report` is what ``fusionbench leaderboard`` calls.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from fusionbench.atomic import atomic_write
from fusionbench.errors import UserInputError
from fusionbench.report import leaderboard, robustness
from fusionbench.report.collect import open_store, parse_column, parse_columns


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def leaderboard_report(store: Path, dataset: Optional[str] = None, protocol: Optional[str] = None,
                       metrics: str = "HR,NDCG,MRR", ks: str = "5,20", proposed: str = ",".join(leaderboard.PROPOSED),
                       fmt: str = "md", output: Optional[Path] = None, significance: Optional[Path] = None,
                       robust: bool = False, robustness_metric: str = "NDCG@20",
                       plot_dir: Optional[Path] = None) -> tuple[str, list[Path]]:
    """Build the leaderboards (or, with ``robust``, the robustness tables and plots) of ``store``.

    Returns the report text (also written to ``output`` when given) and the files written. Option
    names in errors are the CLI's."""
    if fmt not in ("md", "csv"):
        raise UserInputError(f"--format must be md or csv, got {fmt!r}")
    if robust and significance is not None:
        raise UserInputError("--significance applies to the leaderboard, not to --robustness")
    if not robust and plot_dir is not None:
        raise UserInputError("--plot-dir needs --robustness (plots are robustness curves)")
    written: list[Path] = []
    results = open_store(store)
    try:
        if robust:
            tables = robustness.build_robustness(results, dataset, protocol,
                                                 parse_column(robustness_metric, "--robustness-metric"))
            text = (robustness.render_markdown(tables) if fmt == "md"
                    else robustness.to_frame(tables).to_csv(index=False))
            for table in tables if plot_dir is not None else []:
                path = Path(plot_dir) / f"{table.file_stem}.png"
                robustness.plot(table, path)
                written.append(path)
        else:
            chosen = tuple(s.strip() for s in proposed.split(",") if s.strip())
            boards = leaderboard.build_leaderboards(results, dataset, protocol, parse_columns(metrics, ks), chosen)
            text = (leaderboard.render_markdown(boards, chosen) if fmt == "md"
                    else leaderboard.to_frame(boards).to_csv(index=False))
            if significance is not None:
                write_text(significance, leaderboard.comparisons_frame(boards).to_csv(index=False))
                written.append(Path(significance))
    finally:
        results.close()
    if output is not None:
        write_text(output, text)
        written.append(Path(output))
    return text, written

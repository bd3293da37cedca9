"""Finished runs as a portable archive (``fusionbench store export | import``).

A store lives beside the machine that trained its runs; an archive carries its finished runs to another
store (another machine, a fresh checkout, a colleague) without retraining, so a leaderboard can be
regenerated from it and later seeds added to it. Format: gzip-compressed JSON lines, the first line
``{"fusionbench_archive": 1, "runs": N}``, then one line per finished run with every column of the store's
``runs`` table but the id, ``metrics`` (``{split: {"HR@5": fraction}}``) and ``ranks`` (``{split: base64
of the per-sample ranks as little-endian int32}``; every split, or the test split only: the reports read
no other). Kept trained weights (``models/``) are not part of it:
an imported clean run ranks on leaderboards, but a new test-only stress cell of it trains its weights again.

Importing is one transaction: every line is checked first (a wrong line is an error naming the file, the
line and the field), runs already done in the store are left as they are, and nothing is written when
any line is wrong.
"""
from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from fusionbench.atomic import atomic_write
from fusionbench.errors import UserInputError
from fusionbench.report.collect import open_store
from fusionbench.store import UNSEEN_TEST, ResultStore, canonical_json, config_hash

FORMAT = 1
TEST_SPLITS = ("test", UNSEEN_TEST)  # what --ranks test keeps
REQUIRED = {"config_hash": str, "config": str, "dataset": str, "protocol": str, "strategy": str, "seed": int,
            "status": str, "metrics": dict, "ranks": dict}


def export_runs(store_path: Path, out: Path, dataset: Optional[str] = None, ranks: str = "all",
                since: Optional[str] = None) -> int:
    """Write the finished runs of ``store_path`` (of ``dataset`` only, if given; started at or after the
    ISO time ``since`` only, if given) to the archive ``out`` (atomically); returns how many. ``ranks``:
    the per-sample ranks of every split ("all") or of the test rankings only ("test": ``test`` and
    ``test_unseen``, all that leaderboards and robustness tables read, in about half the archive; the
    validation metrics are kept either way)."""
    store = open_store(store_path)
    table = store.runs(status="done", **({"dataset": dataset} if dataset else {}))
    if since is not None:
        table = table[pd.to_datetime(table.started_at, utc=True) >= parse_time(since, "--since")]
    lines = [json.dumps({"fusionbench_archive": FORMAT, "runs": len(table)})]
    for record in store.records([int(i) for i in table.id]):
        record["ranks"] = {split: base64.b64encode(r.astype("<i4").tobytes()).decode("ascii")
                           for split, r in record["ranks"].items() if ranks == "all" or split in TEST_SPLITS}
        lines.append(json.dumps(record, sort_keys=True))
    payload = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
    atomic_write(Path(out), lambda f: f.write(payload))
    return len(table)


def parse_time(text: str, option: str) -> pd.Timestamp:
    """An ISO time as a UTC timestamp (a time without a zone is taken as UTC); a clear error otherwise."""
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise UserInputError(f"{option} expects an ISO time such as 2026-12-04T14:00, got {text!r}") from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _decode(line: str, where: str, columns: set[str]) -> dict[str, Any]:
    """One archive line as a :meth:`ResultStore.add_records` record; ``where`` names file and line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserInputError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise UserInputError(f"{where}: expected a JSON object (one run)")
    for field, kind in REQUIRED.items():
        if not isinstance(record.get(field), kind):
            raise UserInputError(f"{where}: field {field!r} must be a {kind.__name__}, got {record.get(field)!r:.60}")
    unknown = sorted(set(record) - columns - {"metrics", "ranks"})
    if unknown:
        raise UserInputError(f"{where}: unknown field {unknown[0]!r} (an archive from a newer fusionbench?)")
    if record["status"] != "done":
        raise UserInputError(f"{where}: field 'status' must be 'done', got {record['status']!r}")
    try:
        config = json.loads(record["config"])
    except json.JSONDecodeError:
        raise UserInputError(f"{where}: field 'config' is not valid JSON") from None
    if config_hash(config) != record["config_hash"] or canonical_json(config) != record["config"]:
        raise UserInputError(f"{where}: field 'config_hash' {record['config_hash']!r} does not match its config")
    for split, values in record["metrics"].items():
        if not isinstance(values, dict) or not all(isinstance(v, (int, float)) and "@" in name
                                                   for name, v in values.items()):
            raise UserInputError(f"{where}: field 'metrics' split {split!r} must map 'NAME@K' to numbers")
    ranks = {}
    for split, text in record["ranks"].items():
        try:
            raw = base64.b64decode(text, validate=True)
        except (TypeError, ValueError):
            raise UserInputError(f"{where}: field 'ranks' split {split!r} is not base64") from None
        if len(raw) % 4:
            raise UserInputError(f"{where}: field 'ranks' split {split!r} is not a whole number of int32 values")
        ranks[split] = np.frombuffer(raw, dtype="<i4").astype(np.int64)
    return {**record, "ranks": ranks}


def import_runs(archive: Path, store_path: Path) -> tuple[int, int]:
    """Add the runs of ``archive`` to the store at ``store_path`` (created if missing), in one transaction.
    Returns (runs added, runs already done there)."""
    archive = Path(archive)
    if not archive.is_file():
        raise UserInputError(f"ARCHIVE {archive}: no such file")
    try:
        with gzip.open(archive, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise UserInputError(f"{archive}: not a gzip-compressed fusionbench archive ({err})") from None
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("fusionbench_archive") != FORMAT:
        raise UserInputError(f"{archive}, line 1: expected the header {{\"fusionbench_archive\": {FORMAT}, ...}}")
    body = [line for line in lines[1:] if line.strip()]
    if header.get("runs") != len(body):
        raise UserInputError(f"{archive}: the header announces {header.get('runs')} runs, the file holds {len(body)} "
                             "(truncated?)")
    if store_path.exists() and not store_path.is_file():
        raise UserInputError(f"--store {store_path}: not a file")
    store = open_store(store_path) if store_path.exists() else ResultStore(store_path)
    columns = set(store.run_columns()) - {"id"}
    records = [_decode(line, f"{archive}, line {n}", columns) for n, line in enumerate(body, start=2)]
    added = store.add_records(records)
    return len(added), len(records) - len(added)


class KeptArchive:
    """An archive kept up to date while a plan runs (``fusionbench sweep --archive``): after a cell
    finishes (:meth:`cell_finished`) the store's finished runs are exported again, at once when the last
    export is at least ``every_s`` seconds old, else by a timer that fires when it becomes so (the cell
    after may train for hours: the archive must not wait for it), and once more by :meth:`close` if a run
    finished since. A store export reads the whole store (seconds on a large one), hence the interval.
    ``ranks`` as :func:`export_runs`. Exports never overlap (one lock)."""

    def __init__(self, store_path: Path, archive: Path, every_s: float, ranks: str = "test"):
        self.store_path, self.archive, self.every_s, self.ranks = Path(store_path), Path(archive), every_s, ranks
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None
        self._stale = False                  # a run finished since the last export
        self._exported_at = -float("inf")    # time.monotonic() of the last export
        self.exports = 0

    def _export(self) -> None:
        with self._lock:
            self._timer = None
            if self._stale:
                self._stale = False          # before the export: a run finishing during it makes it stale again
                try:
                    export_runs(self.store_path, self.archive, ranks=self.ranks)
                except BaseException:        # interrupted (Ctrl-C, SIGTERM) or failed: close() tries again
                    self._stale = True
                    raise
                self._exported_at = time.monotonic()
                self.exports += 1

    def cell_finished(self) -> None:
        """A cell finished: export now, or schedule the export for when the interval has passed."""
        with self._lock:
            self._stale = True
            wait = self._exported_at + self.every_s - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._export)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self._export()

    def close(self) -> None:
        """Cancel a pending timer and export what finished since the last export (the plan has ended)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._export()

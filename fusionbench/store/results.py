"""SQLite results store (WAL). A run is identified by the hash of its resolved configuration.

Tables:
    runs(id, config_hash UNIQUE, config JSON, dataset, protocol, strategy, aggregator, seed,
         status 'running'|'done'|'failed', dataset_checksum, versions JSON, git_rev, started_at,
         finished_at, wall_seconds, peak_memory_mb, best_epoch, epoch_seconds, eval_seconds,
         history JSON, error, trained_from, tune, asha_stopped)
                                              wall_seconds: of a resumed run, with the wall time its
                                               earlier processes spent on the epochs it restored;
                                               trained_from: hash of the training config whose kept
                                               weights this run evaluated (runner.training_config; the
                                               clean run's hash for a test-only cell; NULL: it trained);
                                               tune: for a trial of `fusionbench tune`, the tune's name
                                               (its config's tune.name; NULL for other runs);
                                               asha_stopped: of a finished trial, 1 when the tune's ASHA
                                               scheduler stopped it, 0 when it trained to its end
    metrics(run_id, split 'valid'|'test'|'test_unseen', metric, k, value)     values are fractions, not %; a tune's
                                                                trials have 'valid' only (fusionbench.tune)
    ranks(run_id, split, ranks BLOB int32 little-endian)        per-sample ranks, sample order

A finished run's metrics, ranks and status are written in one transaction, so a crash never leaves
a 'done' run without its metrics, nor metrics of a run that did not finish.

Files beside the store (the folder holding the SQLite file), named only by
:meth:`ResultStore.checkpoint_path` and :meth:`ResultStore.weights_path`:
    checkpoints/<run hash>.pt       resume state of an unfinished run (removed when it finishes)
    models/<training hash>.pt       selected weights of a finished run, kept for every run with the same
                                    training config (runner.training_config), which evaluates them
    claims/<training hash>.lock     the lock a process holds while it trains that config (store.claims)
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

from fusionbench.store import claims
from fusionbench.store.claims import Claim

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    config_hash TEXT UNIQUE NOT NULL,
    config TEXT NOT NULL,
    dataset TEXT NOT NULL,
    protocol TEXT NOT NULL,
    strategy TEXT NOT NULL,
    aggregator TEXT,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    dataset_checksum TEXT,
    versions TEXT,
    git_rev TEXT,
    started_at TEXT,
    finished_at TEXT,
    wall_seconds REAL,
    peak_memory_mb REAL,
    best_epoch INTEGER,
    epoch_seconds REAL,
    eval_seconds REAL,
    history TEXT,
    error TEXT,
    trained_from TEXT,
    tune TEXT,
    asha_stopped INTEGER
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    split TEXT NOT NULL,
    metric TEXT NOT NULL,
    k INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, split, metric, k)
);
CREATE TABLE IF NOT EXISTS ranks (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    split TEXT NOT NULL,
    ranks BLOB NOT NULL,
    PRIMARY KEY (run_id, split)
);
"""


def canonical_json(config: dict) -> str:
    """Sorted keys, no whitespace: the order of flags never changes the hash."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSummary:
    """What a finished run records beside its metrics and ranks (the ``runs`` columns of the same names).

    Attributes:
        wall_seconds: wall time of the run; of a resumed run, with what its earlier processes spent on the
            epochs it restored.
        peak_memory_mb: peak resident memory of the process during this run (Linux; elsewhere the
            process's peak so far: :func:`fusionbench.memory.peak_memory_mb`).
        best_epoch: 1-based epoch whose state was kept (selected on validation).
        epoch_seconds, eval_seconds: mean training time per epoch; time of the final test ranking.
        history: per epoch ``{"epoch", "loss", "seconds", "valid": {...}}`` (``train.TrainResult.history``).
        trained_from: hash of the training config whose kept weights this run evaluated (None: it trained).
        asha_stopped: a tune's trial only: whether its scheduler stopped it early (None: not a trial).
    """

    wall_seconds: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    best_epoch: Optional[int] = None
    epoch_seconds: Optional[float] = None
    eval_seconds: Optional[float] = None
    history: list = field(default_factory=list)
    trained_from: Optional[str] = None
    asha_stopped: Optional[bool] = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_results(db: sqlite3.Connection, run_id: int, metrics: dict[str, dict[str, float]],
                   ranks: dict[str, np.ndarray]) -> None:
    """Write a run's metrics (``{split: {"HR@5": v}}``) and per-sample ranks (int32 little-endian blobs)."""
    db.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)",
                   [(run_id, split, name.split("@")[0], int(name.split("@")[1]), float(value))
                    for split, values in metrics.items() for name, value in values.items()])
    db.executemany("INSERT OR REPLACE INTO ranks VALUES (?,?,?)",
                   [(run_id, split, np.asarray(r, dtype="<i4").tobytes()) for split, r in ranks.items()])


def _decode_ranks(blob: bytes) -> np.ndarray:
    """A stored ranks blob (int32 little-endian) as an int64 array."""
    return np.frombuffer(blob, dtype="<i4").astype(np.int64)


UNSEEN_TEST = "test_unseen"  # split of the test ranks among items outside each sample's history (when the
# run ranked every item: train.exclude_history off), recorded beside "test" for the same model
ADDED_COLUMNS = {"trained_from": "TEXT", "tune": "TEXT", "asha_stopped": "INTEGER"}
"""Columns of ``runs`` added after the first schema, in the order they were added."""
CHECKPOINTS = "checkpoints"
"""Folder beside the store holding the resume checkpoints of unfinished runs."""
KEPT_WEIGHTS = "models"
"""Folder beside the store holding the kept trained weights."""


BUSY_TIMEOUT_S = 60
"""How long a store waits for another process's write to finish before giving up."""


class ResultStore:
    """Results of runs in one SQLite file (created on first use)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._use_wal()
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._add_missing_columns()

    def _use_wal(self) -> None:
        """Switch the file to write-ahead logging. SQLite answers this pragma "database is locked" at once,
        without waiting on the busy timeout, while another process creates the same file (sweep tasks
        opening one fresh scratch store together), so it is retried until ``BUSY_TIMEOUT_S`` has passed."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _add_missing_columns(self) -> None:
        """Bring a store written by an earlier version up to the schema (columns are only ever added, NULL
        in the runs already there: those trained their own weights and none was a tune's trial)."""
        have = self.run_columns()
        for column, kind in ADDED_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._db.close()

    def checkpoint_path(self, run_hash: str) -> Path:
        """Where the resume state of the unfinished run ``run_hash`` lives (its folder may not exist yet)."""
        return self.path.parent / CHECKPOINTS / f"{run_hash}.pt"

    def weights_path(self, training_hash: str) -> Path:
        """Where the kept weights of the training ``training_hash`` (the hash of a run's
        ``runner.training_config``) live (its folder may not exist yet)."""
        return self.path.parent / KEPT_WEIGHTS / f"{training_hash}.pt"

    def claim(self, training_hash: str) -> Optional[Claim]:
        """Claim the training ``training_hash`` for this process among those sharing the store's folder: a
        held :class:`~fusionbench.store.claims.Claim`, or ``None`` while another process holds it
        (:meth:`claim_holder` names it)."""
        return Claim.take(self.path.parent, training_hash)

    def claim_holder(self, training_hash: str) -> str:
        """Who holds the claim on ``training_hash`` (``"pid N on HOST"``)."""
        return claims.holder(self.path.parent, training_hash)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def status(self, digest: str) -> Optional[str]:
        row = self._db.execute("SELECT status FROM runs WHERE config_hash = ?", (digest,)).fetchone()
        return row[0] if row else None

    def run_id(self, digest: str) -> Optional[int]:
        row = self._db.execute("SELECT id FROM runs WHERE config_hash = ?", (digest,)).fetchone()
        return row[0] if row else None

    def start(self, config: dict, dataset_checksum: str, versions: dict, git_rev: str) -> int:
        """Register a run as 'running' and return its id. A previous failed or interrupted attempt is
        replaced under its id, so a resumed run keeps the id that ``store show`` gave it."""
        digest = config_hash(config)
        with self._transaction() as db:
            if self.status(digest) == "done":
                raise ValueError(f"run {digest} is already done")
            earlier = db.execute("SELECT id FROM runs WHERE config_hash = ?", (digest,)).fetchone()
            db.execute("DELETE FROM runs WHERE config_hash = ?", (digest,))
            cursor = db.execute(
                "INSERT INTO runs (id, config_hash, config, dataset, protocol, strategy, aggregator, seed, status,"
                " dataset_checksum, versions, git_rev, started_at, tune) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (earlier[0] if earlier else None, digest, canonical_json(config), config["dataset"],
                 config["protocol"], config["strategy"], config.get("aggregator"), config["seed"], "running",
                 dataset_checksum, json.dumps(versions), git_rev, _now(), (config.get("tune") or {}).get("name")),
            )
            return int(cursor.lastrowid)

    def progress(self, run_id: int, history: list[dict]) -> None:
        """Record the epochs a running run has finished so far (a tune's trials, epoch by epoch)."""
        self._db.execute("UPDATE runs SET history=? WHERE id=? AND status='running'", (json.dumps(history), run_id))

    def finish(self, run_id: int, metrics: dict[str, dict[str, float]], ranks: dict[str, np.ndarray],
               summary: "RunSummary | None" = None) -> None:
        """Write metrics (``{split: {"HR@5": v}}``), per-sample ranks and the run's :class:`RunSummary`;
        mark done."""
        s = RunSummary() if summary is None else summary
        if not isinstance(s, RunSummary):
            raise TypeError(f"finish: summary must be a RunSummary, got {type(s).__name__}")
        stopped = None if s.asha_stopped is None else int(s.asha_stopped)
        with self._transaction() as db:
            _write_results(db, run_id, metrics, ranks)
            db.execute(
                "UPDATE runs SET status='done', finished_at=?, wall_seconds=?, peak_memory_mb=?, best_epoch=?,"
                " epoch_seconds=?, eval_seconds=?, history=?, trained_from=?, asha_stopped=? WHERE id=?",
                (_now(), s.wall_seconds, s.peak_memory_mb, s.best_epoch, s.epoch_seconds, s.eval_seconds,
                 json.dumps(s.history), s.trained_from, stopped, run_id),
            )

    def rekey(self, renames: dict[str, tuple[int, str, str]], trained: dict[str, str]) -> None:
        """Give runs new identities in one transaction: ``renames`` = ``{old hash: (run id, new hash, new
        config JSON)}``; ``trained`` = ``{old: new}`` hashes of training configs, which ``trained_from``
        references follow (``fusionbench.store.upgrade``)."""
        with self._transaction() as db:
            for run_id, new, config in renames.values():
                db.execute("UPDATE runs SET config_hash=?, config=? WHERE id=?", (new, config, run_id))
            for old, new in trained.items():
                db.execute("UPDATE runs SET trained_from=? WHERE trained_from=?", (new, old))

    def remove(self, run_ids: list[int]) -> list[str]:
        """Delete runs with their metrics and ranks in one transaction; returns their config hashes.
        An id not in the store is an error and nothing is deleted."""
        with self._transaction() as db:
            hashes = []
            for run_id in run_ids:
                row = db.execute("SELECT config_hash FROM runs WHERE id=?", (run_id,)).fetchone()
                if row is None:
                    raise KeyError(run_id)
                hashes.append(row[0])
            db.executemany("DELETE FROM runs WHERE id=?", [(run_id,) for run_id in run_ids])
        return hashes

    def run_columns(self) -> list[str]:
        """The columns of the ``runs`` table, in schema order."""
        return [row[1] for row in self._db.execute("PRAGMA table_info(runs)")]

    def records(self, run_ids: list[int]) -> list[dict[str, Any]]:
        """Finished runs as plain records, in ``run_ids`` order: every ``runs`` column but the id,
        ``metrics`` = ``{split: {"HR@5": value}}`` and ``ranks`` = ``{split: int64 array}``."""
        columns = [c for c in self.run_columns() if c != "id"]
        records = []
        for run_id in run_ids:
            row = self._db.execute(f"SELECT {', '.join(columns)} FROM runs WHERE id=?", (run_id,)).fetchone()
            record = dict(zip(columns, row))
            splits = [r[0] for r in self._db.execute("SELECT DISTINCT split FROM metrics WHERE run_id=?", (run_id,))]
            record["metrics"] = {split: self.metrics(run_id, split) for split in splits}
            record["ranks"] = {split: _decode_ranks(blob) for split, blob in
                               self._db.execute("SELECT split, ranks FROM ranks WHERE run_id=?", (run_id,))}
            records.append(record)
        return records

    def add_records(self, records: list[dict[str, Any]]) -> list[str]:
        """Insert finished runs given as :meth:`records` gives them, in one transaction. A run whose
        config hash is already done here is left as it is; an unfinished or failed attempt of it is
        replaced. Returns the hashes added."""
        added = []
        with self._transaction() as db:
            for record in records:
                digest = record["config_hash"]
                if self.status(digest) == "done":
                    continue
                db.execute("DELETE FROM runs WHERE config_hash = ?", (digest,))
                columns = [c for c in record if c not in ("metrics", "ranks")]
                cursor = db.execute(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                                    [record[c] for c in columns])
                _write_results(db, cursor.lastrowid, record["metrics"], record["ranks"])
                added.append(digest)
        return added

    def fail(self, run_id: int, error: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET status='failed', finished_at=?, error=? WHERE id=?", (_now(), error, run_id))

    def runs(self, status: Optional[str] = "done", **where: Any) -> pd.DataFrame:
        """Runs as a DataFrame, filtered by status and equality on any run column."""
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        for column, value in where.items():
            clauses.append(f"{column} = ?")
            params.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id"
        return pd.read_sql_query(sql, self._db, params=params)

    def metrics(self, run_id: int, split: str = "test") -> dict[str, float]:
        rows = self._db.execute("SELECT metric, k, value FROM metrics WHERE run_id=? AND split=?", (run_id, split))
        return {f"{m}@{k}": v for m, k, v in rows}

    def history(self, run_id: int) -> list[dict]:
        """The run's per-epoch history (``train.TrainResult.history``) as stored; ``[]`` when none is."""
        row = self._db.execute("SELECT history FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id}")
        return json.loads(row[0]) if row[0] else []

    def ranks(self, run_id: int, split: str = "test") -> np.ndarray:
        row = self._db.execute("SELECT ranks FROM ranks WHERE run_id=? AND split=?", (run_id, split)).fetchone()
        if row is None:
            raise KeyError(f"no {split} ranks stored for run {run_id}")
        return _decode_ranks(row[0])

"""The nightly's memory: one row per night, one per case, in ``artifacts/nightly/history.sqlite``.

Schema version in ``PRAGMA user_version``; opening a database migrates it forward, one step
per entry of ``MIGRATIONS``, inside one ``BEGIN IMMEDIATE`` transaction, so of two nightlies
started together one migrates and the other waits, then finds it done. WAL lets a report read
while the other night writes; ``busy_timeout`` makes writers queue instead of failing. A
database from a newer edgekiln is refused, never rewritten.

    nights(id, night, started, finished, exit_code, host)
    cases(night_id, recipe, bundle, target, status, reason, metrics JSON,
          published, bundle_key, recipe_digest)            -- published etc.: version 2

A green case has status ``green`` or ``baseline`` (green with nothing to compare with).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import EnvironmentProblem

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

GREEN = ("green", "baseline")
BUSY_MS = 60_000
MIGRATIONS = (
    # 1: nights and their cases, metrics as JSON
    """
    CREATE TABLE nights (id INTEGER PRIMARY KEY AUTOINCREMENT, night TEXT NOT NULL UNIQUE,
                         started REAL NOT NULL, finished REAL, exit_code INTEGER, host TEXT);
    CREATE TABLE cases (night_id INTEGER NOT NULL REFERENCES nights(id), recipe TEXT NOT NULL,
                        bundle TEXT NOT NULL, target TEXT, status TEXT NOT NULL, reason TEXT,
                        metrics TEXT NOT NULL, PRIMARY KEY (night_id, recipe, bundle));
    """,
    # 2: which night's bundle went live (version 1 published exactly the green cases)
    """
    ALTER TABLE cases ADD COLUMN published INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE cases ADD COLUMN bundle_key TEXT;
    ALTER TABLE cases ADD COLUMN recipe_digest TEXT;
    UPDATE cases SET published = status IN ('green', 'baseline'),
                     bundle_key = json_extract(metrics, '$.bundle_key'),
                     recipe_digest = json_extract(metrics, '$.recipe_digest');
    CREATE INDEX cases_by_bundle ON cases (recipe, bundle, night_id);
    """,
)
VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Case:
    """One recipe x bundle of one night, as stored."""

    recipe: str
    bundle: str
    target: str | None
    status: str  # green | baseline | regression | gate | error
    reason: str | None
    metrics: dict[str, Any]
    published: bool = False
    night: str | None = None  # filled when read back

    @property
    def green(self) -> bool:
        """Passed its gates and the regression check (or set a baseline): it publishes."""
        return self.status in GREEN


class History:
    """An open history database (a context manager; closes on exit)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=BUSY_MS / 1000, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        migrate(self.db, path)

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.close()

    def start_night(self, night: str, started: float, host: dict[str, Any]) -> int:
        """Record a night as started; returns its id (nights are ordered by it)."""
        with transaction(self.db):
            cursor = self.db.execute(
                "INSERT INTO nights (night, started, host) VALUES (?, ?, ?)",
                (night, started, json.dumps(host, sort_keys=True)))
        return int(cursor.lastrowid)  # type: ignore[arg-type]

    def finish_night(self, night_id: int, finished: float, exit_code: int) -> None:
        """Record how the night ended (a night left unfinished was killed)."""
        with transaction(self.db):
            self.db.execute("UPDATE nights SET finished = ?, exit_code = ? WHERE id = ?",
                            (finished, exit_code, night_id))

    def add_case(self, night_id: int, case: Case) -> None:
        """Store one case of night ``night_id`` (again: replace it)."""
        with transaction(self.db):
            self.db.execute(
                "INSERT OR REPLACE INTO cases (night_id, recipe, bundle, target, status, reason,"
                " metrics, published, bundle_key, recipe_digest)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (night_id, case.recipe, case.bundle, case.target, case.status, case.reason,
                 json.dumps(case.metrics, sort_keys=True), int(case.published),
                 case.metrics.get("bundle_key"), case.metrics.get("recipe_digest")))

    def last_green(self, recipe: str, bundle: str, before: int) -> Case | None:
        """The latest green case of ``recipe`` x ``bundle`` from a night before ``before``."""
        rows = self.greens(recipe, bundle, before, 1)
        return rows[0] if rows else None

    def greens(self, recipe: str, bundle: str, before: int, limit: int) -> list[Case]:
        """The ``limit`` latest green cases of ``recipe`` x ``bundle`` before night ``before``,
        newest first."""
        return self._cases(
            "SELECT c.*, n.night FROM cases c JOIN nights n ON n.id = c.night_id WHERE "
            "c.recipe = ? AND c.bundle = ? AND c.night_id < ? AND c.status IN ('green', "
            "'baseline') ORDER BY c.night_id DESC LIMIT ?", (recipe, bundle, before, limit))

    def live_night(self, recipe: str, bundle: str, key: str) -> str | None:
        """The first night that published the bundle whose publishing key is ``key`` (later
        nights that rebuilt the same key left those bytes in place)."""
        row = self.db.execute(
            "SELECT n.night FROM cases c JOIN nights n ON n.id = c.night_id WHERE c.recipe = ?"
            " AND c.bundle = ? AND c.bundle_key = ? AND c.published ORDER BY c.night_id"
            " LIMIT 1", (recipe, bundle, key)).fetchone()
        return row["night"] if row else None

    def series(self, recipe: str, bundle: str, until: int) -> list[Case]:
        """Every case of ``recipe`` x ``bundle`` up to night ``until``, oldest first."""
        return self._cases(
            "SELECT c.*, n.night FROM cases c JOIN nights n ON n.id = c.night_id WHERE "
            "c.recipe = ? AND c.bundle = ? AND c.night_id <= ? ORDER BY c.night_id",
            (recipe, bundle, until))

    def _cases(self, query: str, params: tuple[Any, ...]) -> list[Case]:
        return [Case(row["recipe"], row["bundle"], row["target"], row["status"], row["reason"],
                     json.loads(row["metrics"]), bool(row["published"]), row["night"])
                for row in self.db.execute(query, params).fetchall()]


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Bring ``db`` to ``VERSION``; returns the version it had."""
    with transaction(db):
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > VERSION:
            raise EnvironmentProblem(
                f"{path} has history schema version {found}, and this edgekiln knows up to "
                f"{VERSION}: a newer edgekiln wrote it. Upgrade edgekiln, or point "
                "--artifacts-dir elsewhere.")
        for version in range(found, VERSION):
            for statement in _statements(MIGRATIONS[version]):
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {VERSION}")
    return found


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT first: each statement runs in our transaction instead
    return [s.strip() for s in script.split(";") if s.strip()]


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE``: take the write lock up front, so readers never deadlock on upgrade."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")

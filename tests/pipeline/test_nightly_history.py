"""The nightly's SQLite history: migration from version 1, refusal of a newer schema, the last
green case, and writers from several connections at once."""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from pipeline.errors import EnvironmentProblem
from pipeline.nightly import history
from pipeline.nightly.history import Case, History

if TYPE_CHECKING:
    from pathlib import Path


def _version_1(path: Path) -> None:
    """A database as the first schema left it: a green and a failed case of one bundle."""
    db = sqlite3.connect(path)
    db.executescript(history.MIGRATIONS[0])
    db.execute("INSERT INTO nights (night, started) VALUES ('n1', 1.0), ('n2', 2.0)")
    for night_id, status, key in ((1, "baseline", "k1"), (2, "regression", "k2")):
        metrics = json.dumps({"top1_agreement": 1.0, "bundle_key": key, "recipe_digest": "d"})
        db.execute("INSERT INTO cases VALUES (?, 'team', 'cpu', 'cpu', ?, NULL, ?)",
                   (night_id, status, metrics))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def test_version_1_is_migrated_and_keeps_its_cases(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    _version_1(path)
    with History(path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == history.VERSION == 2
        rows = store.db.execute("SELECT status, published, bundle_key, recipe_digest FROM cases"
                                " ORDER BY night_id").fetchall()
        assert [tuple(row) for row in rows] == [("baseline", 1, "k1", "d"),
                                                ("regression", 0, "k2", "d")]
        green = store.last_green("team", "cpu", before=3)
        assert green is not None
        assert (green.night, green.metrics["top1_agreement"]) == ("n1", 1.0)
        assert store.live_night("team", "cpu", "k1") == "n1"
        assert store.live_night("team", "cpu", "k2") is None  # never published


def test_a_fresh_database_starts_at_the_current_version_in_wal_mode(tmp_path: Path) -> None:
    with History(tmp_path / "nightly" / "history.sqlite") as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == history.VERSION
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with History(tmp_path / "nightly" / "history.sqlite") as store:  # reopening changes nothing
        assert history.migrate(store.db, store.path) == history.VERSION


def test_a_database_from_a_newer_edgekiln_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {history.VERSION + 1}")
    db.close()
    with pytest.raises(EnvironmentProblem, match="schema version 3, and this edgekiln knows up "
                                                 "to 2"):
        History(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3


def test_last_green_skips_failed_nights_and_later_ones(tmp_path: Path) -> None:
    with History(tmp_path / "history.sqlite") as store:
        ids = [store.start_night(f"n{i}", float(i), {}) for i in range(1, 5)]
        for night_id, status in zip(ids, ("baseline", "green", "regression", "green"),
                                    strict=True):
            store.add_case(night_id, Case("r", "cpu", "cpu", status, None, {"n": night_id}))
        green = store.last_green("r", "cpu", before=ids[3])
        assert green is not None
        assert green.night == "n2"
        assert [c.status for c in store.series("r", "cpu", until=ids[2])] == [
            "baseline", "green", "regression"]
        # the latency baseline pools the latest green nights, newest first
        assert [c.night for c in store.greens("r", "cpu", before=ids[3] + 1, limit=2)] == [
            "n4", "n2"]


def _one_nightly(path: Path, worker: int) -> int:
    with History(path) as store:
        for i in range(10):
            night_id = store.start_night(f"w{worker}-{i}", float(i), {"worker": worker})
            store.add_case(night_id, Case("r", "cpu", "cpu", "green", None, {"i": i}))
            store.finish_night(night_id, float(i + 1), 0)
    return worker


def test_concurrent_nightlies_migrate_once_and_all_write(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with ThreadPoolExecutor(max_workers=4) as pool:  # each opens its own connection
        assert sorted(pool.map(_one_nightly, [path] * 4, range(4))) == [0, 1, 2, 3]
    with History(path) as store:
        assert store.db.execute("SELECT count(*) FROM nights WHERE exit_code = 0").fetchone()[0] \
            == 40
        assert store.db.execute("SELECT count(*) FROM cases").fetchone()[0] == 40

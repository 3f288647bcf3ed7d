"""Warehouse engine behaviour that the import path relies on."""

import sqlite3
from pathlib import Path

from sqlalchemy import func, select

from etl_assets.warehouse.schema import create_schema, lock_for_writing, make_engine, uploads


def test_sqlite_readers_are_not_blocked_by_a_writer(tmp_path: Path):
    """The sensor reads the journal while an import holds the write lock (WAL, deferred BEGIN)."""
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    create_schema(engine)
    with engine.begin() as writer:
        lock_for_writing(writer)
        with engine.connect() as reader:
            assert reader.execute(select(func.count()).select_from(uploads)).scalar_one() == 0
    engine.dispose()


def test_sqlite_lock_for_writing_excludes_other_writers(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    create_schema(engine)
    probe = sqlite3.connect(tmp_path / "w.db", timeout=0, isolation_level=None)
    with engine.begin() as writer:
        lock_for_writing(writer)
        try:
            probe.execute("BEGIN IMMEDIATE")
            locked = False
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            locked = "locked" in str(exc)
    assert locked
    probe.execute("BEGIN IMMEDIATE")  # released at commit
    probe.execute("ROLLBACK")
    probe.close()
    engine.dispose()

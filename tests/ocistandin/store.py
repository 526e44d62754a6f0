"""Durable state: stream partitions and buckets in one SQLite file (WAL: survives a SIGKILL)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY, partitions INTEGER NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    stream TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key BLOB, value BLOB NOT NULL, ts_ms INTEGER NOT NULL,
    PRIMARY KEY (stream, partition, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    namespace TEXT NOT NULL, bucket TEXT NOT NULL, name TEXT NOT NULL,
    size INTEGER NOT NULL, md5 TEXT NOT NULL, etag TEXT NOT NULL, content_type TEXT NOT NULL,
    created REAL NOT NULL, modified REAL NOT NULL, meta TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (namespace, bucket, name));
"""
_GET_WITH_DATA = (
    "SELECT name, size, md5, etag, content_type, created, modified, meta, data"
    " FROM objects WHERE namespace=? AND bucket=? AND name=?"
)
_GET_WITHOUT_DATA = _GET_WITH_DATA.replace(", data", ", x''")


@dataclass(frozen=True)
class StoredMessage:
    """One message at its place in a partition."""

    stream: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    ts_ms: int


@dataclass(frozen=True)
class ObjectInfo:
    """An object's metadata (and its bytes, when read with data)."""

    name: str
    size: int
    md5: str  # base64, as Content-MD5
    etag: str
    content_type: str
    created: float
    modified: float
    meta: dict[str, str] = field(default_factory=dict)  # opc-meta-* without the prefix
    data: bytes = b""


class Store:
    """Thread-safe persistence; one connection behind a lock is plenty for a test server."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "ocistandin.sqlite3"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._ends: dict[tuple[str, int], int] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- streams ---------------------------------------------------------------------------

    def stream_partitions(self, stream: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT partitions FROM streams WHERE id=?", (stream,)
            ).fetchone()
        return None if row is None else int(row[0])

    def create_stream(self, stream: str, partitions: int, now_ms: int) -> int:
        """Create a stream unless it exists; return its (fixed) partition count."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO streams (id, partitions, created_ms) VALUES (?,?,?)",
                (stream, partitions, now_ms),
            )
            row = db.execute("SELECT partitions FROM streams WHERE id=?", (stream,)).fetchone()
        return int(row[0])

    def streams(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT id, partitions FROM streams").fetchall())

    def _end(self, db: sqlite3.Connection, stream: str, partition: int) -> int:
        end = self._ends.get((stream, partition))
        if end is None:
            row = db.execute(
                "SELECT MAX(offset) FROM messages WHERE stream=? AND partition=?",
                (stream, partition),
            ).fetchone()
            end = 0 if row[0] is None else int(row[0]) + 1
            self._ends[(stream, partition)] = end
        return end

    def end_offset(self, stream: str, partition: int) -> int:
        """The offset the next message in this partition will get."""
        with self._lock:
            return self._end(self._db, stream, partition)

    def append(
        self, stream: str, rows: list[tuple[int, bytes | None, bytes]], ts_ms: int
    ) -> list[int]:
        """Store (partition, key, value) rows in one transaction; return their offsets."""
        offsets = []
        with self._tx() as db:
            ends: dict[int, int] = {}
            for partition, key, value in rows:
                offset = ends.get(partition)
                if offset is None:
                    offset = self._end(db, stream, partition)
                db.execute(
                    "INSERT INTO messages VALUES (?,?,?,?,?,?)",
                    (stream, partition, offset, key, value, ts_ms),
                )
                ends[partition] = offset + 1
                offsets.append(offset)
            # Only advance the cached ends once the rows are certain to commit.
            for partition, end in ends.items():
                self._ends[(stream, partition)] = end
        return offsets

    def read(self, stream: str, partition: int, offset: int, limit: int) -> list[StoredMessage]:
        with self._lock:
            rows = self._db.execute(
                "SELECT offset, key, value, ts_ms FROM messages"
                " WHERE stream=? AND partition=? AND offset>=? ORDER BY offset LIMIT ?",
                (stream, partition, offset, limit),
            ).fetchall()
        return [StoredMessage(stream, partition, o, k, v, t) for o, k, v, t in rows]

    def offset_at_time(self, stream: str, partition: int, ts_ms: int) -> int:
        """The first offset stored at or after ts_ms (the end if none)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(offset) FROM messages WHERE stream=? AND partition=? AND ts_ms>=?",
                (stream, partition, ts_ms),
            ).fetchone()
            return self._end(self._db, stream, partition) if row[0] is None else int(row[0])

    # -- objects ---------------------------------------------------------------------------

    def put_object(self, namespace: str, bucket: str, obj: ObjectInfo) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    namespace,
                    bucket,
                    obj.name,
                    obj.size,
                    obj.md5,
                    obj.etag,
                    obj.content_type,
                    obj.created,
                    obj.modified,
                    json.dumps(obj.meta),
                    obj.data,
                ),
            )

    def get_object(
        self, namespace: str, bucket: str, name: str, *, with_data: bool = True
    ) -> ObjectInfo | None:
        sql = _GET_WITH_DATA if with_data else _GET_WITHOUT_DATA
        with self._lock:
            row = self._db.execute(sql, (namespace, bucket, name)).fetchone()
        if row is None:
            return None
        return _info(row, bytes(row[8]))

    def delete_object(self, namespace: str, bucket: str, name: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM objects WHERE namespace=? AND bucket=? AND name=?",
                (namespace, bucket, name),
            )
        return cur.rowcount > 0

    def list_objects(
        self,
        namespace: str,
        bucket: str,
        *,
        prefix: str = "",
        start: str = "",
        after: str | None = None,
    ) -> Iterator[ObjectInfo]:
        """Objects in name order (metadata only): names with prefix, >= start and > after."""
        lower = max(prefix, start, after or "")
        with self._lock:
            rows = self._db.execute(
                "SELECT name, size, md5, etag, content_type, created, modified, meta FROM objects"
                " WHERE namespace=? AND bucket=? AND name>=? ORDER BY name",
                (namespace, bucket, lower),
            ).fetchall()
        for row in rows:
            name = row[0]
            if after is not None and name <= after:
                continue
            if not name.startswith(prefix):
                break
            yield _info(row, b"")


def _info(row: tuple[Any, ...], data: bytes) -> ObjectInfo:
    name, size, md5, etag, content_type, created, modified, meta = row[:8]
    return ObjectInfo(
        name, size, md5, etag, content_type, created, modified, json.loads(meta), data
    )

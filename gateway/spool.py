"""Spool: every micro-batch on disk before it is acknowledged, until the cloud has stored it.

SQLite in WAL mode, one row per micro-batch and lane (never per reading), written by one thread
with group commit: whatever batches arrived while the last commit ran go into the next one, so
durability costs one fsync per commit, not per batch. Lanes (``alerts``, ``scores``,
``telemetry``) have a priority, a time to live and a share of the byte budget; when a lane's
share is full its policy applies: ``block`` (the caller stops acknowledging, so the broker
buffers) or ``drop_oldest`` (never for alerts). Every body carries a CRC-32; a record that fails
it is moved to quarantine and counted, and a database that fails SQLite's own check is set aside
whole, so a damaged disk is reported, never a crash loop.

A plain synchronous structure: call it from one worker thread (the gateway's spool thread).
"""

from __future__ import annotations

import logging
import sqlite3
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import GatewayError

__all__ = [
    "Durability",
    "LaneConfig",
    "Record",
    "Spool",
    "SpoolFull",
    "SpoolStats",
    "SpoolUnavailable",
]

log = logging.getLogger(__name__)

_IN_CHUNK = 500  # seqs per DELETE … IN (…): under SQLite's bound-parameter limit

Durability = Literal["full", "normal", "off"]
# What each choice can lose on a power cut (an application crash loses nothing in any mode):
#   full   - nothing that was acknowledged: every commit is fsynced before the acks go out
#   normal - the commits since the last WAL checkpoint (SQLite's synchronous=NORMAL)
#   off    - anything not yet written back by the OS (for tests and benchmarks only)
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: part of the idempotency key
    lane    TEXT    NOT NULL,
    key     TEXT    NOT NULL,
    created REAL    NOT NULL,
    count   INTEGER NOT NULL,
    crc     INTEGER NOT NULL,
    body    BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_lane ON records (lane, seq);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER, lane TEXT, key TEXT, created REAL, count INTEGER, crc INTEGER, body BLOB,
    reason TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SpoolFull(GatewayError):
    """A ``block`` lane is at its share of the budget: stop acknowledging, try again later."""


class SpoolUnavailable(GatewayError):
    """The spool's file cannot be used for now (disk full, I/O, permissions)."""


class _Corrupt(sqlite3.DatabaseError):
    pass


_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


@dataclass(frozen=True)
class LaneConfig:
    priority: int  # lower drains first
    ttl: float  # seconds a record may wait for the cloud before it expires (counted)
    share: float  # fraction of the spool's byte budget this lane may hold
    when_full: Literal["block", "drop_oldest"] = "block"


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    lane: str
    key: str
    created: float
    count: int
    body: bytes
    size: int = -1  # bytes of the body on disk; -1: len(body)

    @property
    def nbytes(self) -> int:
        return len(self.body) if self.size < 0 else self.size


@dataclass
class _Lane:
    config: LaneConfig
    budget: int
    records: int = 0
    bytes: int = 0
    readings: int = 0
    oldest: float | None = None  # created time of the lane's oldest record


@dataclass
class SpoolStats:
    lanes: dict[str, dict[str, float]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    path: str = ""


_COUNTERS = (
    "appended_records",
    "appended_readings",
    "sent_records",
    "dropped_records",
    "dropped_readings",
    "expired_records",
    "expired_readings",
    "quarantined_records",
    "quarantined_files",
)


class Spool:
    """The on-disk queue between the scorer and the uplink."""

    def __init__(
        self,
        path: Path,
        *,
        budget: int,
        lanes: Mapping[str, LaneConfig],
        durability: Durability = "full",
    ) -> None:
        for name, lane in lanes.items():
            if name == "alerts" and lane.when_full != "block":
                raise ValueError("the alerts lane must block when full: alerts are never dropped")
        self.path = path
        self._lanes = {n: _Lane(c, int(budget * c.share)) for n, c in lanes.items()}
        self._durability = durability
        self._pending: list[tuple[str, str, float, int, bytes]] = []
        self.counters = dict.fromkeys(_COUNTERS, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    # -- opening, checking, quarantining ------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = None
        try:
            db = self._connect()
            problem = db.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise _Corrupt(problem)
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            code = getattr(exc, "sqlite_errorcode", None)
            if not isinstance(exc, _Corrupt) and code not in _CORRUPT_CODES:
                # A full disk, an I/O or permission error: the data may be fine. Say so and
                # stop; setting the spool aside would strand what it holds.
                raise SpoolUnavailable(f"spool {self.path} cannot be opened: {exc}") from exc
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                part = Path(str(self.path) + suffix)
                if part.exists():
                    part.rename(Path(str(aside) + suffix))
            log.error(
                "spool damaged, set aside path=%s moved_to=%s error=%s", self.path, aside, exc
            )
            db = self._connect()
            self._bump(db, "quarantined_files", 1)
        self._load(db)
        return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self._durability]}")
        db.executescript(_SCHEMA)
        return db

    def _load(self, db: sqlite3.Connection) -> None:
        for name, value in db.execute("SELECT name, value FROM counters"):
            if name in self.counters:
                self.counters[name] = value
        for lane, n, size, readings in db.execute(
            "SELECT lane, count(*), coalesce(sum(length(body)), 0), coalesce(sum(count), 0) "
            "FROM records GROUP BY lane"
        ):
            state = self._lanes.get(lane)
            if state is None:
                log.warning("spool has records of unknown lane=%s records=%d: kept", lane, n)
                continue
            state.records, state.bytes, state.readings = n, size, readings
        for lane, state in self._lanes.items():
            row = db.execute(
                "SELECT created FROM records WHERE lane = ? ORDER BY seq LIMIT 1", (lane,)
            ).fetchone()
            state.oldest = row[0] if row else None

    # -- writing -------------------------------------------------------------------------------
    def append(self, lane: str, key: str, body: bytes, count: int, created: float) -> None:
        """Queue one micro-batch for the next ``commit``."""
        if lane not in self._lanes:
            raise ValueError(f"unknown spool lane {lane!r}")
        self._pending.append((lane, key, created, count, body))

    def commit(self) -> None:
        """Write every appended batch in one transaction (one fsync with ``full``).

        Raises SpoolFull, writing nothing, when a ``block`` lane has no room: the caller keeps
        the batches and their acknowledgements and tries again later.
        """
        if not self._pending:
            return
        need: dict[str, int] = {}
        for lane, _, _, _, body in self._pending:
            need[lane] = need.get(lane, 0) + len(body)
        drops: list[tuple[str, int]] = []
        for lane, size in need.items():
            state = self._lanes[lane]
            over = state.bytes + size - state.budget
            if over > 0:
                if state.config.when_full == "block":
                    raise SpoolFull(
                        f"spool lane {lane} is full ({state.bytes} of {state.budget} bytes)"
                    )
                drops.append((lane, over))
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for lane, over in drops:
                self._drop_oldest(lane, over)
            db.executemany(
                "INSERT INTO records (lane, key, created, count, crc, body) VALUES (?,?,?,?,?,?)",
                [(ln, k, c, n, zlib.crc32(b), b) for ln, k, c, n, b in self._pending],
            )
            readings = sum(n for _, _, _, n, _ in self._pending)
            self._bump(db, "appended_records", len(self._pending))
            self._bump(db, "appended_readings", readings)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._reload()
            raise
        for lane, _, _, n, body in self._pending:
            state = self._lanes[lane]
            state.records += 1
            state.bytes += len(body)
            state.readings += n
            if state.oldest is None:
                state.oldest = min(c for ln, _, c, _, _ in self._pending if ln == lane)
        self._pending.clear()

    def discard_pending(self) -> None:
        """Forget what was appended since the last commit (the caller keeps it to retry)."""
        self._pending.clear()

    def _drop_oldest(self, lane: str, over: int) -> None:
        freed = records = readings = 0
        rows = self._db.execute(
            "SELECT seq, length(body), count FROM records WHERE lane = ? ORDER BY seq", (lane,)
        )
        doomed = []
        for seq, size, count in rows:
            if freed >= over:
                break
            doomed.append((seq,))
            freed, records, readings = freed + size, records + 1, readings + count
        self._db.executemany("DELETE FROM records WHERE seq = ?", doomed)
        state = self._lanes[lane]
        state.bytes, state.records, state.readings = (
            state.bytes - freed,
            state.records - records,
            state.readings - readings,
        )
        self._bump(self._db, "dropped_records", records)
        self._bump(self._db, "dropped_readings", readings)
        log.warning(
            "spool lane full, dropped oldest lane=%s records=%d readings=%d",
            lane,
            records,
            readings,
        )

    # -- reading and removing (the uplink) -----------------------------------------------------
    def oldest(self, lane: str, max_bytes: int, after: int = 0) -> list[Record]:
        """The lane's oldest records after ``after``, up to ``max_bytes`` of bodies (at least
        one). Records whose CRC fails are quarantined and skipped."""
        out: list[Record] = []
        size = 0
        bad: list[tuple[int, str]] = []
        for seq, key, created, count, crc, body in self._db.execute(
            "SELECT seq, key, created, count, crc, body FROM records "
            "WHERE lane = ? AND seq > ? ORDER BY seq LIMIT 10000",
            (lane, after),
        ):
            if zlib.crc32(body) != crc:
                bad.append((seq, "crc mismatch"))
                continue
            if out and size + len(body) > max_bytes:
                break
            out.append(Record(seq, lane, key, created, count, body))
            size += len(body)
        if bad:
            self.quarantine(bad)
        return out

    def lanes_by_priority(self) -> list[str]:
        return sorted(self._lanes, key=lambda n: self._lanes[n].config.priority)

    def remove(self, records: Iterable[Record], counter: str = "sent_records") -> None:
        """Delete records the cloud has stored (or that expired), in one transaction."""
        records = list(records)
        if not records:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # Only what is still there counts: drop_oldest or expiry may have taken some of
            # these records since the uplink read them.
            gone: set[int] = set()
            for i in range(0, len(records), _IN_CHUNK):
                chunk = [r.seq for r in records[i : i + _IN_CHUNK]]
                marks = ",".join("?" * len(chunk))
                gone.update(
                    seq
                    for (seq,) in db.execute(
                        f"DELETE FROM records WHERE seq IN ({marks}) RETURNING seq",  # noqa: S608 only "?"s
                        chunk,
                    )
                )
            records = [r for r in records if r.seq in gone]
            self._bump(db, counter, len(records))
            if counter == "expired_records":
                self._bump(db, "expired_readings", sum(r.count for r in records))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._reload()
            raise
        for r in records:
            state = self._lanes[r.lane]
            state.records -= 1
            state.bytes -= r.nbytes
            state.readings -= r.count
        for lane in {r.lane for r in records}:
            self._refresh_oldest(lane)

    def expire(self, now: float) -> int:
        """Remove records older than their lane's time to live; returns how many."""
        expired: list[Record] = []
        for lane, state in self._lanes.items():
            cutoff = now - state.config.ttl
            expired += [
                Record(seq, lane, "", created, count, b"", size)
                for seq, created, count, size in self._db.execute(
                    "SELECT seq, created, count, length(body) FROM records "
                    "WHERE lane = ? AND created < ?",
                    (lane, cutoff),
                )
            ]
        if expired:
            self.remove(expired, counter="expired_records")
            log.warning(
                "spool records expired records=%d readings=%d",
                len(expired),
                sum(r.count for r in expired),
            )
        return len(expired)

    def quarantine(self, bad: Iterable[tuple[int, str]]) -> None:
        """Move records out of the queue with the reason (kept for an operator to look at)."""
        bad = list(bad)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            for seq, reason in bad:
                db.execute(
                    "INSERT INTO quarantine SELECT seq, lane, key, created, count, crc, body, ?, ? "
                    "FROM records WHERE seq = ?",
                    (reason, now, seq),
                )
                db.execute("DELETE FROM records WHERE seq = ?", (seq,))
            self._bump(db, "quarantined_records", len(bad))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            self._reload()
        log.error(
            "spool records quarantined count=%d first_seq=%d reason=%s",
            len(bad),
            bad[0][0],
            bad[0][1],
        )

    # -- reporting -----------------------------------------------------------------------------
    def stats(self) -> SpoolStats:
        now = time.time()
        lanes: dict[str, dict[str, float]] = {}
        for name, state in self._lanes.items():
            row = self._db.execute(
                "SELECT min(created) FROM records WHERE lane = ?", (name,)
            ).fetchone()
            lanes[name] = {
                "records": state.records,
                "bytes": state.bytes,
                "readings": state.readings,
                "budget": state.budget,
                "oldest_age": round(now - row[0], 3) if row[0] is not None else 0.0,
            }
        return SpoolStats(lanes, dict(self.counters), str(self.path))

    def usage(self) -> dict[str, tuple[int, int, int]]:
        """(records, bytes, readings) per lane, from memory: cheap, for metrics."""
        return {n: (s.records, s.bytes, s.readings) for n, s in self._lanes.items()}

    def oldest_age(self, now: float) -> dict[str, float]:
        """Seconds the oldest record of each lane has waited (0 when empty), from memory."""
        return {n: now - s.oldest if s.oldest else 0.0 for n, s in self._lanes.items()}

    def _refresh_oldest(self, lane: str) -> None:
        row = self._db.execute(
            "SELECT created FROM records WHERE lane = ? ORDER BY seq LIMIT 1", (lane,)
        ).fetchone()
        self._lanes[lane].oldest = row[0] if row else None

    def close(self) -> None:
        self._db.close()

    def _reload(self) -> None:
        for state in self._lanes.values():
            state.records = state.bytes = state.readings = 0
            state.oldest = None
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self._load(self._db)

    def _bump(self, db: sqlite3.Connection, name: str, by: int) -> None:
        if not by:
            return
        db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )
        self.counters[name] = self.counters.get(name, 0) + by

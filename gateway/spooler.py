"""Spooler: commits scored micro-batches to the spool in groups, then releases their acks.

The scoring loop hands over each batch's records (telemetry, scores, alerts) with the MQTT
acknowledgements they carry; one task takes everything queued, commits it in one transaction on
the spool's own thread, and only then releases the acknowledgements: what the broker forgets,
the disk has. While a commit runs, the next batches queue and join the next commit (group
commit), so a slow fsync makes commits bigger, not the gateway slower. When a ``block`` lane is
full the batches wait, unacknowledged, and the broker holds the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from .aggregate import Columns, window_of
from .alerts import Alert
from .batcher import Batch
from .config import Settings
from .errors import ConfigError
from .spool import LaneConfig, Spool, SpoolFull, SpoolUnavailable

__all__ = ["Spooler", "Stored", "columns_of", "decode_body", "group_of", "open_spool"]
__all__ += ["Scored", "merged_records", "records_for", "split_by_window"]

log = logging.getLogger(__name__)

BODY_VERSION = 1


def open_spool(settings: Settings) -> Spool:
    """The spool as the settings describe it (blocking: call it from a thread)."""
    sp = settings.spool
    lanes = {
        "alerts": LaneConfig(0, sp.alerts_ttl, sp.alerts_share, "block"),
        "scores": LaneConfig(1, sp.scores_ttl, sp.scores_share, sp.scores_when_full),
        "telemetry": LaneConfig(2, sp.telemetry_ttl, sp.telemetry_share, sp.telemetry_when_full),
    }
    path = settings.spool_path
    try:
        return Spool(path, budget=int(sp.budget), lanes=lanes, durability=sp.durability)
    except (OSError, SpoolUnavailable) as exc:
        raise ConfigError(f"spool.path / gateway.data_dir: cannot use {path}: {exc}") from exc


def group_of(machine: str) -> str:
    """The machine group: the first segment of the machine path (``line1/press-07`` → line1)."""
    return machine.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Stored:
    """One spool row to be: lane, partition key, MessagePack body, readings in it."""

    lane: str
    key: str
    body: bytes
    count: int


def records_for(
    site: str,
    batch: Batch,
    scores: npt.NDArray[np.float32],
    label: str,
    features: Sequence[str],
    alerts: Sequence[tuple[Alert, dict[str, Any]]],
) -> list[Stored]:
    """The spool rows of one scored batch: per lane and machine group, columns packed.

    Bodies are an internal format (MessagePack, numbers as little-endian arrays); the uplink
    turns them into wire-format messages (docs/wire-format.md).
    """
    # Machines dictionary-coded in order of first appearance, a group per distinct machine:
    # C loops (dict.fromkeys, map) instead of a Python step per reading.
    names = list(dict.fromkeys(batch.machines))
    lookup = {m: i for i, m in enumerate(names)}
    codes = np.fromiter(map(lookup.__getitem__, batch.machines), np.uint32, len(batch.machines))
    of_name = [group_of(m) for m in names]
    ts = np.asarray(batch.ts, dtype=np.float64)
    out: list[Stored] = []
    one_group = len(set(of_name)) == 1
    for group in dict.fromkeys(of_name):
        key = f"{site}/{group}"
        if one_group:  # the usual case: every row, codes as they are
            idx: Any = slice(None)
            group_names, group_codes = names, codes
        else:
            members = [i for i, g in enumerate(of_name) if g == group]  # first-appearance order
            renumber = np.zeros(len(names), dtype=np.uint32)
            renumber[members] = np.arange(len(members), dtype=np.uint32)
            member = np.zeros(len(names), dtype=np.bool_)
            member[members] = True
            idx = np.flatnonzero(member[codes])
            group_names, group_codes = [names[i] for i in members], renumber[codes[idx]]
        n = len(group_codes)
        common = {
            "v": BODY_VERSION,
            "machines": group_names,
            "machine": group_codes.tobytes(),
            "ts": ts[idx].tobytes(),
        }
        telemetry = dict(
            common,
            features=list(features),
            values=np.ascontiguousarray(batch.values[idx]).tobytes(),
        )
        out.append(Stored("telemetry", key, msgpack.packb(telemetry), n))
        scored = dict(
            common, model=label, score=np.ascontiguousarray(scores[idx], dtype=np.float32).tobytes()
        )
        out.append(Stored("scores", key, msgpack.packb(scored), n))
    for alert, payload in alerts:
        body = msgpack.packb({"v": BODY_VERSION, "alerts": [payload]}, default=str)
        out.append(Stored("alerts", f"{site}/{group_of(alert.machine)}", body, 1))
    return out


def decode_body(lane: str, body: bytes) -> dict[str, Any]:
    """A spool body back to plain columns (lists), for the uplink and ``spool export``."""
    if lane == "alerts":
        return {"alerts": msgpack.unpackb(body)["alerts"]}
    c = columns_of(lane, body)
    out: dict[str, Any] = {
        "machine": [c.names[i] for i in c.machine.tolist()],
        "ts": c.ts.tolist(),
    }
    if lane == "telemetry":
        for j, name in enumerate(c.fields):
            out[name] = c.values[:, j].tolist()
    else:
        out["model"] = c.model
        out["score"] = c.values[:, 0].tolist()
    return out


def columns_of(lane: str, body: bytes) -> Columns:
    """A telemetry or scores spool body as arrays (scores widened to float64, exactly)."""
    raw: dict[str, Any] = msgpack.unpackb(body)
    ts = np.frombuffer(raw["ts"], dtype=np.float64)
    machine = np.frombuffer(raw["machine"], dtype=np.uint32)
    if lane == "telemetry":
        fields = tuple(raw["features"])
        values = np.frombuffer(raw["values"], dtype=np.float64).reshape(len(ts), len(fields))
        return Columns(raw["machines"], machine, ts, fields, values)
    if lane == "scores":
        score = np.frombuffer(raw["score"], dtype=np.float32).astype(np.float64)
        return Columns(raw["machines"], machine, ts, ("score",), score[:, None], raw["model"])
    raise ValueError(f"spool lane {lane!r} has no reading columns")


def split_by_window(record: Stored, window: float) -> list[Stored]:
    """``record`` cut so that each piece's readings fall in one aggregation window: pieces in
    window order, readings in their order. Then a window's rows never wait for the next
    window, and every reading of a closed window goes out at once."""
    raw: dict[str, Any] = msgpack.unpackb(record.body)
    ts = np.frombuffer(raw["ts"], dtype=np.float64)
    win = window_of(ts, window)
    if not len(win) or win.min() == win.max():
        return [record]
    per_reading = {  # the body's per-reading columns and the bytes of one reading in each
        name: (np.frombuffer(raw[name], dtype=np.uint8).reshape(len(ts), -1))
        for name in ("machine", "ts", "values", "score")
        if name in raw
    }
    out = []
    for w in np.unique(win):  # per window, not per reading
        rows = np.flatnonzero(win == w)
        piece = raw | {name: col[rows].tobytes() for name, col in per_reading.items()}
        out.append(Stored(record.lane, record.key, msgpack.packb(piece), len(rows)))
    return out


@dataclass(frozen=True, slots=True)
class Scored:
    """A scored batch on its way to the spool: made into rows on the spool's thread, where the
    batches of one group commit that share a model and features become one row per lane and
    machine group (fewer, larger rows: less work for SQLite, the uplink and the event loop)."""

    site: str
    batch: Batch
    scores: npt.NDArray[np.float32]
    label: str
    features: tuple[str, ...]
    alerts: Sequence[tuple[Alert, dict[str, Any]]]

    def joins(self, other: Scored) -> bool:
        return (self.site, self.label, self.features) == (other.site, other.label, other.features)


def merged_records(run: Sequence[Scored]) -> list[Stored]:
    """The spool rows of consecutive scored batches that ``join``: as if they were one batch."""
    first = run[0]
    if len(run) == 1:
        return records_for(
            first.site, first.batch, first.scores, first.label, first.features, first.alerts
        )
    values = np.concatenate([sc.batch.values for sc in run])
    batch = Batch(
        machines=list(chain.from_iterable(sc.batch.machines for sc in run)),
        ts=list(chain.from_iterable(sc.batch.ts for sc in run)),
        values=values,
        features=values.astype(np.float32),
        raw=[],
        tokens=[],
        oldest=first.batch.oldest,
    )
    scores = np.concatenate([sc.scores for sc in run])
    alerts = [a for sc in run for a in sc.alerts]
    return records_for(first.site, batch, scores, first.label, first.features, alerts)


@dataclass
class _Group:
    records: list[Stored] = field(default_factory=list)
    tokens: list[object] = field(default_factory=list)
    scored: Scored | None = None


def _rows(groups: Sequence[_Group]) -> list[Stored]:
    """The rows of queued groups, in order; runs of joining scored batches merged."""
    out: list[Stored] = []
    run: list[Scored] = []
    for g in groups:
        breaks = g.records or (g.scored is not None and run and not run[0].joins(g.scored))
        if run and breaks:
            out += merged_records(run)
            run = []
        out += g.records
        if g.scored is not None:
            run.append(g.scored)
    if run:
        out += merged_records(run)
    return out


class Spooler:
    """The one task that writes the spool; ``put`` is called by the scoring loop."""

    def __init__(
        self,
        spool: Spool,
        release: Callable[[object], None],
        *,
        retry: float = 1.0,
        commit_interval: float = 0.0,
        expire_every: float = 60.0,
        on_commit: Callable[[int, float], None] = lambda records, seconds: None,
        windows: Mapping[str, float] | None = None,
    ) -> None:
        self.spool = spool
        # lane -> aggregation window: its records are cut at window boundaries before they
        # are stored (``split_by_window``). The uplink sets it for the lanes it aggregates.
        self.windows = dict(windows or {})
        self._release = release
        self._retry = retry
        self._interval = commit_interval
        self._expire_every = expire_every
        self._on_commit = on_commit
        self._queue: list[_Group] = []
        self._wakeup: asyncio.Event | None = None
        self._closed = False
        self.blocked = False  # a block lane is full: acknowledgements are held
        self.held_tokens = 0
        self.held_readings = 0  # scored readings queued or waiting for room, not yet stored
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gateway.spool")

    def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn`` on the spool's thread (every SQLite call goes through it)."""
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def put(self, records: list[Stored], tokens: list[object]) -> None:
        """Store ``records``, then release ``tokens``."""
        self._queue.append(_Group(records, tokens))
        self._queued(tokens)

    def put_scored(self, scored: Scored, tokens: list[object]) -> None:
        """Store a scored batch (its rows are made on the spool's thread), then release."""
        self._queue.append(_Group([], tokens, scored))
        self.held_readings += len(scored.batch)
        self._queued(tokens)

    def _queued(self, tokens: list[object]) -> None:
        self.held_tokens += len(tokens)
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        """Commit until ``close``; then commit what is left and return."""
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        next_expiry = loop.time() + self._expire_every
        last_commit = -self._interval
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                timeout = max(0.0, next_expiry - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
            if loop.time() >= next_expiry:
                try:
                    await self.run_in_thread(self.spool.expire, time.time())
                except sqlite3.Error as exc:
                    log.warning("spool expiry failed, trying again later: %s", exc)
                next_expiry = loop.time() + self._expire_every
            if self._queue:
                # At most one commit an interval: batches arriving meanwhile join it, so a
                # trickle of one-reading batches costs one transaction, not one each.
                wait = last_commit + self._interval - loop.time()
                if wait > 0 and not self._closed:
                    await asyncio.sleep(wait)
                last_commit = loop.time()
                await self._commit_queued()

    async def _commit_queued(self) -> None:
        groups, self._queue = self._queue, []
        start = time.perf_counter()
        try:
            records = await self.run_in_thread(self._write, groups)
        except (SpoolFull, sqlite3.Error) as exc:
            if self._closed:
                log.warning(
                    "shutting down with batches=%d not stored: left unacknowledged, the "
                    "broker delivers them again",
                    len(groups),
                )
                self.held_tokens = self.held_readings = 0
                return
            if not self.blocked:
                log.warning(
                    "spool cannot take batches, holding acknowledgements (the broker buffers): %s",
                    exc,
                )
            self.blocked = True
            self._queue[:0] = groups  # first in line next time, order kept
            await asyncio.sleep(self._retry)
            return
        if self.blocked:
            log.info("spool has room again, acknowledging")
            self.blocked = False
        seconds = time.perf_counter() - start
        for g in groups:
            for token in g.tokens:
                self._release(token)
            self.held_tokens -= len(g.tokens)
            if g.scored is not None:
                self.held_readings -= len(g.scored.batch)
        self._on_commit(records, seconds)  # after the counts: it may resume reading

    def _write(self, groups: list[_Group]) -> int:
        """Make and commit the rows of ``groups``; returns how many (spool thread)."""
        now = time.time()
        try:
            records = _rows(groups)
            for record in records:
                window = self.windows.get(record.lane)
                for r in split_by_window(record, window) if window else (record,):
                    self.spool.append(r.lane, r.key, r.body, r.count, now)
            self.spool.commit()
        except BaseException:
            self.spool.discard_pending()  # the caller keeps the batches and tries again
            raise
        return len(records)

    def close(self) -> None:
        """Stop after committing what is queued (``run`` returns then)."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    def shutdown(self) -> None:
        self._thread.submit(self.spool.close).result()
        self._thread.shutdown(wait=True)

"""Uplink: drains the spool to OCI Streaming, alerts first, paced, deleting only what was stored.

For each lane in priority order it takes the oldest spool records, groups them by partition key
(site and machine group, so one machine stays in order in one partition), encodes wire-format v1
messages (docs/wire-format.md) and sends them with the ``oci`` SDK's ``put_messages`` in a worker
thread. Entries refused inside an HTTP 200 (429 throttled, 500) are sent again, alone, after the
delay the service names; request-level failures back off with tenacity (the SDK's own retry is
off, so attempts don't multiply). A spool record is removed only once every message made from it
was stored. Each key is paced to ``uplink.rate`` bytes/s, so a backlog after an outage drains
steadily instead of as a burst that gets the site throttled.

A lane set to ``aggregate`` sends, per machine and window of reading time, one row of count and
min/mean/max/last (``gateway.aggregate``) instead of every reading, once the window has closed;
until then its records wait in the spool, which keeps every reading either way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import aggregate
from .config import Settings
from .errors import ConfigError, TransientError, retrying
from .spool import Record
from .spooler import Spooler, columns_of, decode_body
from .wireformat import Coded, Message, encode_split

__all__ = ["Uplink", "make_stream_client", "to_message", "to_messages"]

log = logging.getLogger(__name__)

_REQUEST_MAX = 1_000_000  # bytes of keys and values in one PutMessages request
_MESSAGE_MAX = 950_000  # bytes of one message's value, leaving room for its key
_LINGER_BYTES = 256 << 10  # spool bytes of a lane worth a message without waiting
_WAIT_MS = re.compile(r"in (\d+) ms")
# Spool bytes read per pass: a request carries 1 MB at most, and a pass's records become Python
# columns many times their size (4 MiB of scores peaked at 62 MiB of heap; bench/backlog.py).
_READ_BYTES = 1 << 20


class UplinkUnavailable(TransientError):
    """OCI Streaming could not be reached or refused the request: try again later."""


def make_stream_client(settings: Settings) -> Any:
    """An ``oci`` StreamClient for the settings' endpoint, API key or instance principal."""
    import oci  # the SDK takes ~1 s to import: only when the uplink is on

    u = settings.uplink
    kwargs: dict[str, Any] = {
        "service_endpoint": u.endpoint,
        "retry_strategy": oci.retry.NoneRetryStrategy(),
        "timeout": (10.0, 60.0),
    }
    try:
        if u.auth == "instance_principal":
            signer = oci.auth.signers.InstancePrincipalsSecurityTokenSigner()
            return oci.streaming.StreamClient({}, signer=signer, **kwargs)
        config = oci.config.from_file(str(u.oci_config.expanduser()), u.oci_profile)
        return oci.streaming.StreamClient(config, **kwargs)
    except (
        oci.exceptions.ConfigFileNotFound,
        oci.exceptions.InvalidConfig,
        oci.exceptions.ProfileNotFound,
    ) as exc:
        raise ConfigError(
            f"uplink.oci_config / uplink.oci_profile: {exc} "
            f"(file {u.oci_config}, profile {u.oci_profile})"
        ) from exc


def to_message(site: str, gateway: str, lane: str, records: Sequence[Record]) -> Message:
    """The records of one lane and key as one wire-format message (columns, ``seq`` per row)."""
    if lane == "alerts":
        return _alerts_message(site, gateway, records)
    parts = [columns_of(lane, r.body) for r in records]
    counts = [len(c.ts) for c in parts]
    cols: dict[str, Any] = {
        "seq": np.repeat(np.asarray([r.seq for r in records], dtype=np.int64), counts),
        "machine": _coded([c.names for c in parts], [c.machine for c in parts]),
        "ts": np.concatenate([c.ts for c in parts]),
    }
    if lane == "telemetry":  # the caller keeps a run of records with the same fields together
        values = np.concatenate([c.values for c in parts])
        cols |= {name: values[:, j] for j, name in enumerate(parts[0].fields)}
    else:
        models = [c.model for c in parts]
        labels = list(dict.fromkeys(models))
        codes = np.repeat(np.asarray([labels.index(m) for m in models], dtype=np.int64), counts)
        cols |= {
            "model": Coded(labels, codes),
            "score": np.concatenate([c.values[:, 0] for c in parts]),
        }
    return Message(site, gateway, lane, records[0].seq, records[-1].seq, cols)


def _coded(names: list[list[str]], codes: list[npt.NDArray[np.integer[Any]]]) -> Coded:
    """Several records' dictionary-coded machines as one column: each record's codes mapped
    into one shared list of names, an array operation per record."""
    shared: dict[str, int] = {}
    mapped = []
    for local, c in zip(names, codes, strict=True):
        into = np.asarray([shared.setdefault(n, len(shared)) for n in local], dtype=np.int64)
        mapped.append(into[c])
    return Coded(list(shared), np.concatenate(mapped))


def _alerts_message(site: str, gateway: str, records: Sequence[Record]) -> Message:
    columns: dict[str, list[Any]] = {}
    seqs: list[int] = []
    for r in records:
        rows = decode_body("alerts", r.body)["alerts"]
        seqs += [r.seq] * len(rows)
        for k in ("machine", "ts", "state", "score", "threshold", "model", "reading"):
            columns.setdefault(k, []).extend(a.get(k) for a in rows)
    cols: dict[str, Any] = {"seq": np.asarray(seqs, dtype=np.int64)}
    cols |= {k: np.asarray(v, dtype=np.float64) if k == "ts" else v for k, v in columns.items()}
    return Message(site, gateway, "alerts", records[0].seq, records[-1].seq, cols)


@dataclass
class _Summary:
    """What one look at an aggregate lane found: messages, the records they summarise, and
    when a record held back (its window still open) becomes ready."""

    entries: list[tuple[str, bytes]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    readings: int = 0
    rows: int = 0
    wake: float = 0.0


def to_messages(
    site: str, gateway: str, lane: str, records: Sequence[Record]
) -> list[tuple[str, Message]]:
    """The records of one lane as (key, message): per partition key, a message per run of
    records with the same fields (a model swap may change the telemetry's)."""
    by_key: dict[str, list[list[Record]]] = {}
    fields: dict[str, tuple[str, ...] | None] = {}
    for r in records:
        runs = by_key.setdefault(r.key, [])
        shape = columns_of(lane, r.body).fields if lane == "telemetry" else None
        if not runs or shape != fields[r.key]:
            runs.append([])
            fields[r.key] = shape
        runs[-1].append(r)
    return [
        (key, to_message(site, gateway, lane, run)) for key, runs in by_key.items() for run in runs
    ]


class _Pacer:
    """Per key, no more than ``rate`` bytes a second on average (a leaky bucket)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._free_at: dict[str, float] = {}

    def delay(self, key: str, size: int, now: float) -> float:
        start = max(now, self._free_at.get(key, now))
        self._free_at[key] = start + size / self._rate
        return start - now


class Uplink:
    """The task that empties the spool into the stream."""

    def __init__(self, settings: Settings, spooler: Spooler, client: Any) -> None:
        self._settings = settings
        self._spooler = spooler
        self._client = client
        self._pacer = _Pacer(float(settings.uplink.rate))
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gateway.uplink")
        self._closed = asyncio.Event()
        u = settings.uplink
        modes = {"telemetry": u.telemetry_forward, "scores": u.scores_forward}
        self._windows = {lane: u.aggregate_window for lane, m in modes.items() if m == "aggregate"}
        spooler.windows.update(self._windows)  # a spool record then holds one window
        self._rest: dict[str, float] = {}  # aggregate lane -> nothing in it is ready before
        self.sent_messages = 0
        self.sent_bytes = 0
        self.throttled = 0
        self.retries = 0
        self.failures = 0
        self.summarised_readings = 0  # readings of aggregate lanes, sent as rows
        self.aggregate_rows = 0
        self.connected = True

    def close(self) -> None:
        self._closed.set()

    async def run(self) -> None:
        """Drain until ``close``; what is not sent stays in the spool for next time."""
        spool = self._spooler.spool
        idle = self._settings.uplink.idle
        while not self._closed.is_set():
            busy = False
            for lane in spool.lanes_by_priority():
                if time.time() < self._rest.get(lane, 0.0):
                    continue
                records = await self._spooler.run_in_thread(spool.oldest, lane, _READ_BYTES)
                if not records:
                    continue
                if lane in self._windows:
                    busy = await self._send_aggregates(lane, records)
                elif self._worth_sending(lane, records):
                    await self._send(lane, records)
                    busy = True
                if busy:
                    break  # look at the higher lanes again first
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), idle)
        self._thread.shutdown(wait=False)

    def _worth_sending(self, lane: str, records: list[Record]) -> bool:
        """Alerts go at once; the rest when there is a good batch of it or it has waited
        ``uplink.linger``: a message per second of a slow site compresses badly."""
        if lane == "alerts" or sum(r.nbytes for r in records) >= _LINGER_BYTES:
            return True
        return time.time() - records[0].created >= self._settings.uplink.linger

    async def _send(self, lane: str, records: list[Record]) -> None:
        loop = asyncio.get_running_loop()
        entries = await loop.run_in_executor(None, self._messages, lane, records)
        await self._deliver(entries, records)

    def _messages(self, lane: str, records: list[Record]) -> list[tuple[str, bytes]]:
        s = self._settings
        return [
            (key, value)
            for key, message in to_messages(s.gateway.site, s.gateway.id, lane, records)
            for value in _encode(message)
        ]

    async def _send_aggregates(self, lane: str, records: list[Record]) -> bool:
        """Sends the rows of every closed window there is; False if none has closed yet."""
        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(None, self._summarise, lane, records, time.time())
        if not done.records:
            # Until then even a late record of a closed window waits (a window and the grace
            # at most): reading and decoding the lane's oldest records again would find nothing.
            self._rest[lane] = done.wake
            return False
        await self._deliver(done.entries, done.records)
        self.summarised_readings += done.readings
        self.aggregate_rows += done.rows
        return True

    def _summarise(self, lane: str, records: list[Record], now: float) -> _Summary:
        s, u = self._settings, self._settings.uplink
        window = self._windows[lane]
        runs, wake = aggregate.closed(
            records, lambda r: columns_of(lane, r.body), window, u.aggregate_grace, now
        )
        out = _Summary(wake=wake)
        for key, run in runs.items():
            message = aggregate.message(s.gateway.site, s.gateway.id, lane, run, window)
            out.entries += [(key, v) for v in _encode(message)]
            out.records += [r for r, _ in run]
            out.readings += sum(r.count for r, _ in run)
            out.rows += message.count
        return out

    async def _deliver(self, entries: list[tuple[str, bytes]], records: list[Record]) -> None:
        """Stores every entry, paced per key, then deletes the records they were made of."""
        loop = asyncio.get_running_loop()
        for batch in _requests(entries):
            for key, value in batch:
                await asyncio.sleep(self._pacer.delay(key, len(value), loop.time()))
            await self._put_all(batch)
        await self._spooler.run_in_thread(self._spooler.spool.remove, records)

    async def _put_all(self, entries: list[tuple[str, bytes]]) -> None:
        """Until every entry is stored: per-entry refusals again after the stated delay."""
        pending = entries
        while pending:
            result = await self._put(pending)
            failed = [(e, r) for e, r in zip(pending, result.entries, strict=True) if r.error]
            stored = [e for e, r in zip(pending, result.entries, strict=True) if not r.error]
            self.sent_messages += len(stored)
            self.sent_bytes += sum(len(v) for _, v in stored)
            if not failed:
                return
            waits = [
                int(m.group(1)) for _, r in failed if (m := _WAIT_MS.search(r.error_message or ""))
            ]
            self.throttled += sum(1 for _, r in failed if r.error == "429")
            delay = max(waits) / 1000 if waits else 1.0
            log.warning(
                "uplink entries refused count=%d error=%s retry_in=%.3fs",
                len(failed),
                failed[0][1].error_message,
                delay,
            )
            await asyncio.sleep(delay)
            pending = [e for e, _ in failed]

    async def _put(self, entries: list[tuple[str, bytes]]) -> Any:
        u = self._settings.uplink
        backoff = retrying(
            UplinkUnavailable,
            u.retry_min,
            u.retry_max,
            log,
            "uplink failed",
            on_retry=self._on_retry,
        )
        async for attempt in backoff:
            with attempt:
                result = await asyncio.get_running_loop().run_in_executor(
                    self._thread, self._put_blocking, entries
                )
        if not self.connected:
            log.info("uplink resumed endpoint=%s", u.endpoint)
            self.connected = True
        return result

    def _put_blocking(self, entries: list[tuple[str, bytes]]) -> Any:
        import oci

        details = oci.streaming.models.PutMessagesDetails(
            messages=[
                oci.streaming.models.PutMessagesDetailsEntry(
                    key=base64.b64encode(k.encode()).decode(), value=base64.b64encode(v).decode()
                )
                for k, v in entries
            ]
        )
        try:
            return self._client.put_messages(self._settings.uplink.stream_id, details).data
        except oci.exceptions.ServiceError as exc:
            self.failures += 1
            raise UplinkUnavailable(
                f"OCI Streaming answered {exc.status} {exc.code}: {exc.message}"
            ) from exc
        except (oci.exceptions.RequestException, oci.exceptions.ConnectTimeout, OSError) as exc:
            raise UplinkUnavailable(f"OCI Streaming unreachable: {exc}") from exc

    def _on_retry(self) -> None:
        self.retries += 1
        self.connected = False


def _encode(message: Message) -> list[bytes]:
    return encode_split(message, max_bytes=_MESSAGE_MAX)


def _requests(entries: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    """Entries in order, cut into PutMessages requests of at most 1 MB."""
    out: list[list[tuple[str, bytes]]] = [[]]
    size = 0
    for key, value in entries:
        n = len(key) + len(value)
        if out[-1] and size + n > _REQUEST_MAX:
            out.append([])
            size = 0
        out[-1].append((key, value))
        size += n
    return [r for r in out if r]

"""OCI Streaming data plane: PutMessages, CreateCursor, GetMessages."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import time
from datetime import UTC, datetime
from typing import Any

from .faults import THROTTLE_MESSAGE, Faults, Stats
from .store import Store, StoredMessage
from .wire import MIB, Request, Response, ServiceError, json_response, parse_int, parse_json

MAX_MESSAGE_BYTES = MIB  # key + value, after base64 decoding
MAX_REQUEST_BYTES = MIB
MAX_GET_LIMIT = 10_000
CURSOR_TYPES = ("TRIM_HORIZON", "LATEST", "AT_OFFSET", "AFTER_OFFSET", "AT_TIME")


def partition_for(key: bytes, partitions: int) -> int:
    """The stable key → partition map: one key always lands in one partition."""
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % partitions


def iso_ms(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _b64(raw: Any, what: str) -> bytes:
    if not isinstance(raw, str):
        raise ServiceError(400, "InvalidParameter", f"{what} must be a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise ServiceError(400, "InvalidParameter", f"{what} is not valid base64") from exc


class Streaming:
    """Streams live in the store; partition counts are fixed when a stream is first made."""

    def __init__(
        self,
        store: Store,
        faults: Faults,
        stats: Stats,
        *,
        partitions: int = 1,
        auto_create: bool = True,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.store, self.faults, self.stats = store, faults, stats
        self.partitions = partitions
        self.auto_create = auto_create
        self._rng = random.Random()

    def create_stream(self, stream_id: str, partitions: int | None = None) -> int:
        """Create a stream (no-op if it exists); return its partition count."""
        return self.store.create_stream(
            stream_id, partitions or self.partitions, int(time.time() * 1000)
        )

    def _partitions(self, stream_id: str) -> int:
        n = self.store.stream_partitions(stream_id)
        if n is None and self.auto_create and stream_id.startswith("ocid1.stream."):
            n = self.create_stream(stream_id)
        if n is None:
            raise ServiceError(404, "NotAuthorizedOrNotFound", f"Unknown stream {stream_id}.")
        return n

    # -- PutMessages -----------------------------------------------------------------------

    def put_messages(self, stream_id: str, req: Request) -> Response:
        partitions = self._partitions(stream_id)
        messages = self._decode_messages(parse_json(req.body))
        rows: list[tuple[int, bytes | None, bytes]] = []
        row_index: list[int] = []  # entry index of each stored row
        entries: list[dict[str, Any]] = [{} for _ in messages]
        throttled: dict[int, int] = {}  # partition -> wait ms, for the rest of this request
        for i, (key, value) in enumerate(messages):
            partition = (
                self._rng.randrange(partitions) if key is None else partition_for(key, partitions)
            )
            # Once a partition throttles, later entries for it fail too: a key keeps its order.
            wait = throttled.get(partition)
            if wait is None:
                size = len(value) + len(key or b"")
                wait = self.faults.admit_entry(stream_id, partition, size) or None
            if wait:
                throttled[partition] = wait
                entries[i] = {"error": "429", "errorMessage": THROTTLE_MESSAGE.format(ms=wait)}
                continue
            rows.append((partition, key, value))
            row_index.append(i)
        ts_ms = int(time.time() * 1000)
        offsets = self.store.append(stream_id, rows, ts_ms) if rows else []
        for i, (partition, _, value), offset in zip(row_index, rows, offsets, strict=True):
            entries[i] = {"partition": str(partition), "offset": offset, "timestamp": iso_ms(ts_ms)}
            self.stats.add("bytes_stored", len(value))
        failures = len(messages) - len(rows)
        self.stats.add("entries_stored", len(rows))
        self.stats.add("entries_throttled", failures)
        return json_response(200, {"failures": failures, "entries": entries})

    @staticmethod
    def _decode_messages(payload: Any) -> list[tuple[bytes | None, bytes]]:
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            raise ServiceError(400, "InvalidParameter", 'the body must be {"messages": [...]}')
        if not payload["messages"]:
            raise ServiceError(400, "InvalidParameter", "messages must not be empty")
        out: list[tuple[bytes | None, bytes]] = []
        total = 0
        for i, m in enumerate(payload["messages"]):
            if not isinstance(m, dict) or "value" not in m:
                raise ServiceError(400, "InvalidParameter", f"messages[{i}] has no value")
            key = None if m.get("key") is None else _b64(m["key"], f"messages[{i}].key")
            value = _b64(m["value"], f"messages[{i}].value")
            size = len(value) + len(key or b"")
            if size > MAX_MESSAGE_BYTES:
                raise ServiceError(
                    400,
                    "InvalidParameter",
                    f"messages[{i}] is {size} bytes (key + value); a message must be at most"
                    f" {MAX_MESSAGE_BYTES} bytes (1 MiB)",
                )
            total += size
            out.append((key, value))
        if total > MAX_REQUEST_BYTES:
            raise ServiceError(
                400,
                "InvalidParameter",
                f"the request carries {total} bytes of keys and values; a PutMessages request"
                f" must be at most {MAX_REQUEST_BYTES} bytes (1 MiB)",
            )
        return out

    # -- cursors ---------------------------------------------------------------------------

    def create_cursor(self, stream_id: str, req: Request) -> Response:
        partitions = self._partitions(stream_id)
        d = parse_json(req.body)
        if not isinstance(d, dict):
            raise ServiceError(400, "InvalidParameter", "the body must be a JSON object")
        raw_partition, kind = d.get("partition"), d.get("type")
        if kind not in CURSOR_TYPES:
            raise ServiceError(400, "InvalidParameter", f"type must be one of {CURSOR_TYPES}")
        try:
            partition = int(str(raw_partition))
        except ValueError:
            partition = -1
        if not 0 <= partition < partitions:
            raise ServiceError(
                400,
                "InvalidParameter",
                f"partition {raw_partition!r} does not exist (the stream has {partitions})",
            )
        end = self.store.end_offset(stream_id, partition)
        if kind == "TRIM_HORIZON":
            offset = 0
        elif kind == "LATEST":
            offset = end
        elif kind == "AT_TIME":
            offset = self.store.offset_at_time(stream_id, partition, self._time_ms(d.get("time")))
        else:
            given = d.get("offset")
            if not isinstance(given, int) or isinstance(given, bool) or given < 0:
                raise ServiceError(400, "InvalidParameter", f"{kind} needs a non-negative offset")
            offset = given if kind == "AT_OFFSET" else given + 1
            if offset > end:
                raise ServiceError(
                    400, "InvalidParameter", f"offset {given} is past the partition's end ({end})"
                )
        return json_response(200, {"value": self._encode_cursor(stream_id, partition, offset)})

    @staticmethod
    def _time_ms(raw: Any) -> int:
        try:
            when = datetime.fromisoformat(str(raw))
        except ValueError as exc:
            raise ServiceError(400, "InvalidParameter", f"time {raw!r} is not RFC 3339") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp() * 1000)

    @staticmethod
    def _encode_cursor(stream_id: str, partition: int, offset: int) -> str:
        doc = {"cursorType": "partition", "s": stream_id, "p": partition, "o": offset}
        return base64.b64encode(json.dumps(doc).encode()).decode()

    @staticmethod
    def _decode_cursor(stream_id: str, raw: str | None) -> tuple[int, int]:
        if not raw:
            raise ServiceError(400, "MissingParameter", "cursor is required")
        try:
            doc = json.loads(base64.b64decode(raw, validate=True))
            partition, offset = int(doc["p"]), int(doc["o"])
            same = doc["s"] == stream_id
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise ServiceError(400, "InvalidParameter", "cursor is not a valid cursor") from exc
        if not same:
            raise ServiceError(400, "InvalidParameter", "cursor belongs to another stream")
        return partition, offset

    # -- GetMessages -----------------------------------------------------------------------

    def get_messages(self, stream_id: str, req: Request) -> Response:
        self._partitions(stream_id)
        query = req.query
        partition, offset = self._decode_cursor(stream_id, query.get("cursor"))
        limit = parse_int(query, "limit", MAX_GET_LIMIT, 1, MAX_GET_LIMIT)
        found = self.store.read(stream_id, partition, offset, limit)
        next_offset = found[-1].offset + 1 if found else offset
        return json_response(
            200,
            [self._message_json(m) for m in found],
            {"opc-next-cursor": self._encode_cursor(stream_id, partition, next_offset)},
        )

    @staticmethod
    def _message_json(m: StoredMessage) -> dict[str, Any]:
        return {
            "stream": m.stream,
            "partition": str(m.partition),
            "key": None if m.key is None else base64.b64encode(m.key).decode(),
            "value": base64.b64encode(m.value).decode(),
            "offset": m.offset,
            "timestamp": iso_ms(m.ts_ms),
        }

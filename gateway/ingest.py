"""Ingest: MQTT payloads in, validated readings out to the batcher, the rest dead-lettered.

A payload is JSON or MessagePack, one reading or a list of them. A reading is an object with
``ts`` (epoch seconds or ISO-8601), a number for every model feature, and optionally ``machine``
(otherwise the topic path after the telemetry prefix). Validation is per value but cheap: a type
check and one chained comparison that also rejects NaN, infinities and values float32 cannot hold.
A list whose readings are all plainly valid is checked a column at a time instead
(``FeatureMap.extract_all``) and reaches the batcher as one array; any doubt, and it goes reading
by reading, so that each bad one is dead-lettered with its own reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter, methodcaller
from typing import Any, Protocol

import msgpack
import numpy as np
import numpy.typing as npt
import orjson

from .errors import RejectedInput

__all__ = ["DeadLetter", "FeatureMap", "Ingest", "ReadingSink", "decode_payload"]

_FLOAT32_MAX = 3.4028234663852886e38
_NUMBERS = frozenset([float, int])
Floats = npt.NDArray[np.float64]
_DICT = {dict}
_ts = itemgetter("ts")
_has_machine = methodcaller("__contains__", "machine")
_FIELD_SAMPLE = 64
_FIELDS_MAX = 1024
_MACHINE_MAX = 256  # characters of a machine name given in a reading
# A reading or a list in MessagePack starts with a map or array marker; anything else is JSON.
_MSGPACK_START = frozenset([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])


def decode_payload(payload: bytes) -> list[Any]:
    """Decode JSON or MessagePack into a list of candidate readings (not yet validated)."""
    if not payload:
        raise RejectedInput("empty payload", kind="decode")
    if payload[0] in _MSGPACK_START:
        try:
            obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, timestamp=3)
        except (ValueError, msgpack.UnpackException, TypeError) as exc:
            raise RejectedInput(f"invalid MessagePack: {exc}", kind="decode") from exc
    else:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise RejectedInput(f"invalid JSON: {exc}", kind="decode") from exc
    if type(obj) is list:
        return obj
    if type(obj) is dict:
        return [obj]
    raise RejectedInput(
        f"payload must be a reading or a list of readings, not {type(obj).__name__}", kind="shape"
    )


def _parse_ts(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        if 0 < value < 1e11:  # epoch seconds up to year 5138; rejects ms and NaN
            return float(value)
        raise RejectedInput(f"ts {value!r} is not epoch seconds", kind="bad_ts")
    if kind is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise RejectedInput(f"ts {value!r} is not ISO-8601", kind="bad_ts") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if kind is datetime:  # MessagePack timestamp extension
        return float(value.timestamp())
    raise RejectedInput(
        f"ts must be a number or an ISO-8601 string, not {kind.__name__}", kind="bad_ts"
    )


@dataclass(frozen=True, slots=True)
class FeatureMap:
    """Maps a reading to the model's feature vector, in the manifest's order."""

    features: tuple[str, ...]
    require_ts: bool = True
    _row: Callable[[dict[Any, Any]], tuple[Any, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One C call per reading for its row; itemgetter of one key returns the bare value.
        getter: Callable[[dict[Any, Any]], tuple[Any, ...]] = itemgetter(*self.features)
        if len(self.features) == 1:
            name = self.features[0]
            getter = lambda reading: (reading[name],)  # noqa: E731
        object.__setattr__(self, "_row", getter)

    def extract_all(self, readings: list[Any]) -> tuple[list[float], Floats] | None:
        """(ts, rows as an (N, features) float64 array) for a list of readings that are all
        plainly valid, checked a column at a time in C (type sets, then numpy) instead of value
        by value in Python; None when any reading is not: an ISO timestamp, a missing or bad
        field, a ``machine`` of its own. The caller then goes reading by reading, which finds
        each one's precise reason."""
        if set(map(type, readings)) != _DICT or any(map(_has_machine, readings)):
            return None
        try:
            rows = list(map(self._row, readings))
            stamps = list(map(_ts, readings))
        except KeyError:
            return None
        if not set(map(type, chain.from_iterable(rows))) <= _NUMBERS:  # no str, bool, None
            return None
        if not set(map(type, stamps)) <= _NUMBERS:
            return None
        try:
            values = np.array(rows, dtype=np.float64)
            ts = np.array(stamps, dtype=np.float64)
        except OverflowError:  # an int beyond any float
            return None
        with np.errstate(invalid="ignore"):  # NaN compares False: that is the point
            if not (np.abs(values) <= _FLOAT32_MAX).all() or not ((ts > 0) & (ts < 1e11)).all():
                return None
        return ts.tolist(), values

    def extract(self, reading: Any, machine: str, now: float) -> tuple[str, float, tuple[Any, ...]]:
        """Return (machine, ts, row) or raise RejectedInput with the reason."""
        if type(reading) is not dict:
            raise RejectedInput(
                f"reading must be an object, not {type(reading).__name__}", kind="shape"
            )
        try:
            row = self._row(reading)
        except KeyError as exc:
            raise RejectedInput(f"missing field {exc.args[0]!r}", kind="missing_field") from None
        for value in row:
            kind = type(value)
            if (kind is not float and kind is not int) or not (
                -_FLOAT32_MAX <= value <= _FLOAT32_MAX
            ):
                raise self._bad_value(row)
        ts = reading.get("ts")
        if ts is None:
            if self.require_ts:
                raise RejectedInput("missing field 'ts'", kind="missing_field")
            ts_value = now
        else:
            ts_value = _parse_ts(ts)
        named = reading.get("machine")
        if named is not None:
            if (
                type(named) is not str
                or not 0 < len(named) <= _MACHINE_MAX
                or not named.isprintable()  # control characters break the score topic
                or "+" in named
                or "#" in named
            ):
                raise RejectedInput(f"machine {named!r} is not a valid name", kind="bad_machine")
            machine = named
        return machine, ts_value, row

    def _bad_value(self, row: Sequence[Any]) -> RejectedInput:
        for name, value in zip(self.features, row, strict=True):
            kind = type(value)
            if kind is not float and kind is not int:
                return RejectedInput(
                    f"field {name!r} is not a number: {value!r}", kind="not_number"
                )
            if not -_FLOAT32_MAX <= value <= _FLOAT32_MAX:
                return RejectedInput(f"field {name!r} is not finite: {value!r}", kind="non_finite")
        raise AssertionError("no bad value in row")  # pragma: no cover


class ReadingSink(Protocol):
    """Where valid readings go (the batcher)."""

    def add(
        self, machine: str, ts: float, row: Sequence[float], raw: dict[str, Any], arrived: float
    ) -> None: ...
    def add_many(
        self, machine: str, ts: list[float], rows: Floats, raw: list[dict[str, Any]], arrived: float
    ) -> None: ...
    def mark(self, token: object) -> None: ...
    def __len__(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    payload: bytes
    reason: str
    kind: str
    index: int | None = None


class Ingest:
    """Turns one MQTT message into readings for the sink; never raises on bad input.

    ``ack`` is the token (e.g. the MQTT message id) to release once every reading of the message
    has been handled downstream; a message with no valid reading is released at once.
    """

    def __init__(
        self,
        features: FeatureMap,
        sink: ReadingSink,
        *,
        topic_prefix: str,
        dead_letter: Callable[[DeadLetter], None],
        release: Callable[[object], None],
        max_readings: int = 10_000,
    ) -> None:
        self.features = features
        self._sink = sink
        self._prefix = topic_prefix.rstrip("/") + "/"
        self._dead_letter = dead_letter
        self._release = release
        self._max_readings = max_readings
        self.readings_in = 0
        self.accepted = 0
        # Field name -> when a sampled reading last carried it: model delivery refuses a model
        # that needs a field no reading carries. One reading in _FIELD_SAMPLE is looked at.
        self._fields: dict[str, float] = {}

    def _saw(self, reading: dict[Any, Any], now: float) -> None:
        fields = self._fields
        for name in reading:
            if type(name) is str:
                fields[name] = now
        if len(fields) > _FIELDS_MAX:  # readings with ever new keys must not grow memory
            newest = sorted(fields.items(), key=lambda item: item[1])[-_FIELDS_MAX // 2 :]
            self._fields = dict(newest)

    def fields_seen(self, since: float) -> set[str] | None:
        """Fields carried by sampled readings that arrived at or after ``since`` (the clock of
        ``handle``'s ``now``); None when no reading arrived since then."""
        recent = {name for name, last in self._fields.items() if last >= since}
        return recent or None

    def handle(self, topic: str, payload: bytes, token: object, now: float) -> None:
        machine = topic[len(self._prefix) :] if topic.startswith(self._prefix) else topic
        try:
            readings = decode_payload(payload)
            if len(readings) > self._max_readings:
                raise RejectedInput(
                    f"{len(readings)} readings in one message, the limit is {self._max_readings}",
                    kind="too_many",
                )
        except RejectedInput as exc:
            self.readings_in += 1
            self._dead_letter(DeadLetter(topic, payload, exc.reason, exc.kind))
            self._release(token)
            return
        self.readings_in += len(readings)
        if len(readings) > 1 and (valid := self.features.extract_all(readings)) is not None:
            stamps, rows = valid
            self._sink.add_many(machine, stamps, rows, readings, now)
            if self.accepted // _FIELD_SAMPLE != (self.accepted + len(rows)) // _FIELD_SAMPLE:
                self._saw(readings[0], now)
            self.accepted += len(rows)
            self._sink.mark(token)
            return
        extract, add = self.features.extract, self._sink.add
        accepted = 0
        for index, reading in enumerate(readings):
            try:
                m, ts, row = extract(reading, machine, now)
            except RejectedInput as exc:
                self._dead_letter(
                    DeadLetter(
                        topic,
                        payload if len(readings) == 1 else _reencode(reading),
                        exc.reason,
                        exc.kind,
                        index if len(readings) > 1 else None,
                    )
                )
                continue
            add(m, ts, row, reading, now)
            if not (self.accepted + accepted) % _FIELD_SAMPLE:
                self._saw(reading, now)
            accepted += 1
        self.accepted += accepted
        if accepted:
            self._sink.mark(token)
        else:
            self._release(token)


def _reencode(reading: Any) -> bytes:
    try:
        return orjson.dumps(reading, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return repr(reading).encode()

"""Decoding and validation: every bad input gets a reason, every good one its exact row."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import RejectedInput
from gateway.ingest import DeadLetter, FeatureMap, Ingest, decode_payload

FEATURES = ("temperature", "vibration", "current")
FMAP = FeatureMap(FEATURES)
GOOD = {"ts": 1_795_000_000.5, "temperature": 41.5, "vibration": 2, "current": 17.25}


class Sink:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, list[float]]] = []
        self.tokens: list[object] = []

    def add(self, machine: str, ts: float, row: Any, raw: dict[str, Any], arrived: float) -> None:
        self.rows.append((machine, ts, list(row)))

    def add_many(
        self,
        machine: str,
        ts: list[float],
        rows: Any,
        raw: list[dict[str, Any]],
        arrived: float,
    ) -> None:
        self.rows.extend((machine, t, row) for t, row in zip(ts, rows.tolist(), strict=True))

    def mark(self, token: object) -> None:
        self.tokens.append(token)

    def __len__(self) -> int:
        return len(self.rows)


def make_ingest(**kw: Any) -> tuple[Ingest, Sink, list[DeadLetter], list[object]]:
    sink, letters, released = Sink(), [], []
    ingest = Ingest(
        kw.pop("fmap", FMAP),
        sink,
        topic_prefix="telemetry/",
        dead_letter=letters.append,
        release=released.append,
        **kw,
    )
    return ingest, sink, letters, released


@pytest.mark.parametrize(
    ("reading", "kind", "words"),
    [
        ({**GOOD, "vibration": "2.0"}, "not_number", "'vibration' is not a number"),
        ({**GOOD, "vibration": True}, "not_number", "'vibration' is not a number"),
        ({**GOOD, "vibration": None}, "not_number", "'vibration'"),
        ({**GOOD, "current": math.nan}, "non_finite", "'current' is not finite"),
        ({**GOOD, "current": -math.inf}, "non_finite", "'current'"),
        ({**GOOD, "current": 1e39}, "non_finite", "'current'"),
        ({**GOOD, "current": 10**40}, "non_finite", "'current'"),
        ({k: v for k, v in GOOD.items() if k != "temperature"}, "missing_field", "'temperature'"),
        ({k: v for k, v in GOOD.items() if k != "ts"}, "missing_field", "'ts'"),
        ({**GOOD, "ts": "noon"}, "bad_ts", "not ISO-8601"),
        ({**GOOD, "ts": 1_795_000_000_000}, "bad_ts", "not epoch seconds"),
        ({**GOOD, "ts": -1}, "bad_ts", "not epoch seconds"),
        ({**GOOD, "ts": [1]}, "bad_ts", "must be a number"),
        ({**GOOD, "machine": "a/+/b"}, "bad_machine", "not a valid name"),
        ({**GOOD, "machine": 7}, "bad_machine", "not a valid name"),
        ({**GOOD, "machine": "press\n07"}, "bad_machine", "not a valid name"),
        ({**GOOD, "machine": "press\x0007"}, "bad_machine", "not a valid name"),
        ({**GOOD, "machine": "m" * 257}, "bad_machine", "not a valid name"),
        ([1, 2], "shape", "must be an object"),
    ],
)
def test_bad_readings_are_rejected_with_a_reason(reading: Any, kind: str, words: str) -> None:
    with pytest.raises(RejectedInput) as info:
        FMAP.extract(reading, "line1/m", now=0.0)
    assert info.value.kind == kind
    assert words in info.value.reason


def test_good_reading_maps_to_the_manifest_order() -> None:
    machine, ts, row = FMAP.extract({**GOOD, "extra": "ignored"}, "line1/m", now=0.0)
    assert (machine, ts, row) == ("line1/m", 1_795_000_000.5, (41.5, 2, 17.25))


def test_iso_timestamps_naive_means_utc() -> None:
    assert FMAP.extract({**GOOD, "ts": "2026-11-28T10:00:00Z"}, "m", 0)[1] == 1_795_860_000.0
    assert FMAP.extract({**GOOD, "ts": "2026-11-28T10:00:00"}, "m", 0)[1] == 1_795_860_000.0
    assert FMAP.extract({**GOOD, "ts": "2026-11-28T11:00:00+01:00"}, "m", 0)[1] == 1_795_860_000.0


def test_missing_ts_is_stamped_on_arrival_when_not_required() -> None:
    fmap = FeatureMap(FEATURES, require_ts=False)
    reading = {k: v for k, v in GOOD.items() if k != "ts"}
    assert fmap.extract(reading, "m", now=123.0)[1] == 123.0


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"", "decode"),
        (b"{", "decode"),
        (b"\x00\x01garbage", "decode"),
        (b"\x81\xa1", "decode"),  # truncated MessagePack map
        (b'"text"', "shape"),
        (b"42", "shape"),
        (msgpack.packb(3.5), "decode"),  # a MessagePack float is not JSON either
    ],
)
def test_undecodable_payloads(payload: bytes, kind: str) -> None:
    with pytest.raises(RejectedInput) as info:
        decode_payload(payload)
    assert info.value.kind == kind


def test_one_bad_reading_in_a_batch_does_not_sink_the_others() -> None:
    ingest, sink, letters, released = make_ingest()
    batch = [GOOD, {**GOOD, "current": "x"}, {**GOOD, "ts": GOOD["ts"] + 1}]
    ingest.handle("telemetry/line1/m", orjson.dumps(batch), token="t1", now=0.0)
    assert [r[1] for r in sink.rows] == [GOOD["ts"], GOOD["ts"] + 1]
    assert sink.tokens == ["t1"]
    assert released == []
    assert [(d.kind, d.index, d.topic) for d in letters] == [("not_number", 1, "telemetry/line1/m")]
    assert orjson.loads(letters[0].payload)["current"] == "x"


def test_a_message_with_nothing_valid_is_released_at_once() -> None:
    ingest, sink, letters, released = make_ingest()
    ingest.handle("telemetry/m", b"not json", token="t1", now=0.0)
    ingest.handle("telemetry/m", orjson.dumps([{"a": 1}]), token="t2", now=0.0)
    assert released == ["t1", "t2"]
    assert sink.rows == []
    assert [d.kind for d in letters] == ["decode", "missing_field"]


def test_too_many_readings_in_one_message() -> None:
    ingest, sink, letters, _ = make_ingest(max_readings=2)
    ingest.handle("telemetry/m", orjson.dumps([GOOD] * 3), token=None, now=0.0)
    assert letters[0].kind == "too_many"
    assert sink.rows == []


finite32 = st.floats(-3e38, 3e38, allow_nan=False, allow_infinity=False)
reading_st = st.fixed_dictionaries(
    {
        "ts": st.floats(1.0, 4e9),
        **{f: st.one_of(finite32, st.integers(-(2**53), 2**53)) for f in FEATURES},
    },
    optional={"machine": st.text("abcxyz/-_0123456789", min_size=1, max_size=20)},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(reading_st, min_size=1, max_size=20), st.booleans(), st.booleans())
def test_valid_readings_round_trip_in_any_encoding(
    readings: list[dict[str, Any]], use_msgpack: bool, as_list: bool
) -> None:
    ingest, sink, letters, _ = make_ingest()
    encode = msgpack.packb if use_msgpack else orjson.dumps
    if as_list:
        ingest.handle("telemetry/line/m", encode(readings), token="t", now=0.0)
    else:
        for r in readings:
            ingest.handle("telemetry/line/m", encode(r), token="t", now=0.0)
    assert letters == []
    assert [row for _, _, row in sink.rows] == [[r[f] for f in FEATURES] for r in readings]
    assert [m for m, _, _ in sink.rows] == [r.get("machine", "line/m") for r in readings]
    assert [ts for _, ts, _ in sink.rows] == [r["ts"] for r in readings]


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers(-(2**63), 2**64 - 1) | st.text(),
            lambda kids: (
                st.lists(kids, max_size=4)
                | st.dictionaries(
                    st.sampled_from([*FEATURES, "ts", "machine", "x"]), kids, max_size=6
                )
            ),
            max_leaves=20,
        ).map(lambda o: msgpack.packb(o)),
    )
)
def test_arbitrary_payloads_never_escape_the_ingest(payload: bytes) -> None:
    ingest, sink, letters, released = make_ingest()
    ingest.handle("telemetry/m", payload, token="t", now=0.0)
    # Every message is either passed on (token marked) or released, never both or neither.
    assert (sink.tokens == ["t"]) != (released == ["t"])
    assert all(d.reason for d in letters)
    for _, _, row in sink.rows:
        assert all(math.isfinite(v) and abs(v) <= 3.5e38 for v in row)


plain_reading_st = st.fixed_dictionaries(
    {
        "ts": st.one_of(st.floats(1.0, 4e9), st.integers(1, 4_000_000_000)),
        **{f: st.one_of(finite32, st.integers(-(2**53), 2**53)) for f in FEATURES},
    }
)
spoil_st = st.one_of(
    st.none(),
    st.tuples(
        st.integers(0, 7),
        st.sampled_from([*FEATURES, "ts", "machine"]),
        st.sampled_from(
            [
                math.nan,
                math.inf,
                -math.inf,
                1e39,
                2**1100,
                True,
                None,
                "1.5",
                "2026-11-28",
                -5,
                2e11,
                0,
                "m9",
                ...,
            ]  # ... deletes the field
        ),
    ),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(plain_reading_st, min_size=2, max_size=8), spoil_st)
def test_the_whole_list_check_agrees_with_the_reading_by_reading_one(
    readings: list[dict[str, Any]], spoil: tuple[int, str, Any] | None
) -> None:
    # extract_all takes a list only when extract would take every reading, with the same
    # values; it declines a list with an ISO ts or a machine of its own, which extract takes.
    if spoil is not None:
        i, name, value = spoil
        reading = readings[i % len(readings)]
        if value is ...:
            reading.pop(name, None)
        else:
            reading[name] = value
    one_by_one: list[tuple[float, list[float]]] | None = []
    for r in readings:
        try:
            _, ts, row = FMAP.extract(r, "m", 0.0)
        except RejectedInput:
            one_by_one = None
            break
        assert one_by_one is not None
        one_by_one.append((ts, list(row)))
    fast = FMAP.extract_all(readings)
    plain = all(type(r.get("ts")) in (int, float) and "machine" not in r for r in readings)
    if one_by_one is None or not plain:
        assert fast is None
    else:
        assert fast is not None
        assert list(zip(fast[0], fast[1].tolist(), strict=True)) == one_by_one


def test_a_one_feature_model_gets_rows_from_the_whole_list_check_too() -> None:
    fmap = FeatureMap(("temperature",))
    got = fmap.extract_all([GOOD, GOOD])
    assert got is not None
    assert got[0] == [GOOD["ts"]] * 2
    assert got[1].tolist() == [[41.5], [41.5]]

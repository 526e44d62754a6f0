"""Wire format v1: round trips at the promised fidelity, the byte limit, errors, golden vectors.

Fidelity promised (docs/wire-format.md, "Fidelity"): float columns bit for bit, except that a
NaN comes back as a NaN; int columns exactly (int64); ts to the microsecond, i.e. as
``rint(ts * 1e6) / 1e6``, which is ``ts`` itself for a ts already on a whole microsecond (and
below 2**32 s); str and any columns equal; the header as given.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wireformat import (
    MAX_RAW_BYTES,
    SCHEMAS,
    Coded,
    Column,
    Message,
    UnsupportedFormat,
    WireFormatError,
    decode,
    encode,
    encode_split,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "wire-format.md"
SLOW = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])


# -- strategies -----------------------------------------------------------------------------
SPECIAL = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308]
SPECIAL += [-1.7976931348623157e308, float("inf"), float("-inf"), 0.1, 1e-300, 2.0**53 + 2]
FLOAT_KINDS = {
    "any": st.floats(allow_nan=False),  # infinities, subnormals, huge, -0.0
    "float32": st.floats(allow_nan=False, width=32),
    "plc": st.integers(-(10**12), 10**12).map(lambda i: i / 1000),  # 3 decimals
    "decimal": st.tuples(st.integers(-(10**9), 10**9), st.integers(0, 9)).map(
        lambda t: t[0] / 10 ** t[1]
    ),
    "special": st.sampled_from(SPECIAL),
}
INT64 = st.integers(-(2**63), 2**63 - 1)
TS = st.one_of(
    st.floats(-4.29e9, 4.29e9),  # any float: rounded to the microsecond
    st.integers(0, 4_290_000_000_000_000).map(lambda us: us / 1e6),  # whole microseconds
    st.integers(1_700_000_000_000, 1_800_000_000_000).map(lambda ms: ms / 1e3),  # a PLC's ms
)
NAMES = st.text(min_size=1, max_size=12)  # any unicode but surrogates
PLAIN = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), NAMES
)
MODELS, STATES = ["iforest@3.1", "mlp@1.0"], ["raised", "cleared"]
READING = st.dictionaries(NAMES, st.one_of(PLAIN, st.lists(PLAIN, max_size=3)), max_size=5)


@st.composite
def floats(draw: st.DrawFn, n: int) -> list[float]:
    """One column: mostly one kind of value (as a real column is), sometimes a mix."""
    kind = draw(st.sampled_from([*FLOAT_KINDS, "mixed"]))
    values = st.one_of(*FLOAT_KINDS.values()) if kind == "mixed" else FLOAT_KINDS[kind]
    return draw(st.lists(values, min_size=n, max_size=n))


@st.composite
def messages(draw: st.DrawFn, kind: str, size: st.SearchStrategy[int] | None = None) -> Message:
    n = draw(size if size is not None else st.integers(0, 40))
    pool = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    first = draw(st.integers(0, 2**40))
    seq = (first + np.cumsum(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))).tolist()
    seq_first = first - draw(st.integers(0, min(first, 2)))
    seq_last = (seq[-1] if n else first) + draw(st.integers(0, 2))
    cols: dict[str, Any] = {
        "seq": seq,
        "machine": draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)),
        "ts": draw(st.lists(TS, min_size=n, max_size=n)),
    }
    score32 = st.lists(st.floats(width=32), min_size=n, max_size=n)  # NaN included
    if kind == "telemetry":
        for name in draw(st.lists(NAMES.filter(lambda s: s not in cols), max_size=4, unique=True)):
            ints = draw(st.booleans()) and draw(st.booleans())
            cols[name] = draw(st.lists(INT64, min_size=n, max_size=n) if ints else floats(n))
    elif kind.endswith("_agg"):
        cols["ts_end"] = draw(st.lists(TS, min_size=n, max_size=n))
        cols["ts_last"] = draw(st.lists(TS, min_size=n, max_size=n))
        cols["count"] = draw(st.lists(st.integers(0, 2**31), min_size=n, max_size=n))
        field = "temperature"
        if kind == "scores_agg":
            cols["model"] = draw(st.lists(st.sampled_from(MODELS), min_size=n, max_size=n))
            cols["nonfinite"] = draw(st.lists(st.integers(0, 2**31), min_size=n, max_size=n))
            field = "score"
        for stat in ("min", "mean", "max", "last"):
            nan = kind == "scores_agg" and draw(st.booleans())
            cols[f"{field}.{stat}"] = draw(
                st.lists(st.floats(), min_size=n, max_size=n) if nan else floats(n)
            )
    elif kind == "scores":
        cols["score"] = np.array(draw(score32), dtype=np.float32)
        cols["model"] = draw(st.lists(st.sampled_from(MODELS), min_size=n, max_size=n))
    else:
        cols["state"] = draw(st.lists(st.sampled_from(STATES), min_size=n, max_size=n))
        cols["score"] = np.array(draw(score32), dtype=np.float32)
        cols["threshold"] = draw(floats(n))
        cols["model"] = ["mlp@1.0"] * n
        cols["reading"] = draw(st.lists(READING, min_size=n, max_size=n))
    site, gateway = draw(NAMES), draw(NAMES)
    return Message(site, gateway, kind, seq_first, seq_last, cols)


def logical(kind: str, name: str, values: Any) -> str:
    if name in SCHEMAS[kind]:
        return SCHEMAS[kind][name]
    return "int" if all(type(v) is int for v in values) and len(values) else "float"


def assert_faithful(want: Message, got: Message) -> None:
    head = ("site", "gateway", "kind", "seq_first", "seq_last", "part", "parts", "offset")
    assert [getattr(got, k) for k in head] == [getattr(want, k) for k in head]
    assert list(got.columns) == list(want.columns)
    for name, values in want.columns.items():
        have, kind = got.columns[name], logical(want.kind, name, values)
        if kind in ("str", "any"):
            assert have == list(values), name
            continue
        assert isinstance(have, np.ndarray), name
        assert len(have) == len(values), name
        if kind == "int":
            assert have.dtype == np.int64, name
            assert have.tolist() == list(values), name
            continue
        expect = np.asarray(values, dtype=np.float64)
        assert have.dtype == np.float64, name
        if kind == "ts":  # an instant: -0.0 is 0.0
            assert have.tolist() == (np.rint(expect * 1e6) / 1e6).tolist(), name
            continue
        nan = np.isnan(expect)
        assert (np.isnan(have) == nan).all(), name
        assert have[~nan].view(np.int64).tolist() == expect[~nan].view(np.int64).tolist(), name


# -- round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(SCHEMAS))
@SLOW
@given(data=st.data())
def test_every_kind_round_trips_at_the_promised_fidelity(kind: str, data: st.DataObject) -> None:
    message = data.draw(messages(kind))
    wire = encode(message)
    assert_faithful(message, decode(wire))
    assert encode(message) == wire  # deterministic: a retry sends the same bytes


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
@pytest.mark.parametrize("n", [0, 1])
@SLOW
@given(data=st.data())
def test_empty_and_single_record_batches(kind: str, n: int, data: st.DataObject) -> None:
    message = data.draw(messages(kind, st.just(n)))
    assert_faithful(message, decode(encode(message)))


@settings(deadline=None, max_examples=200)
@given(st.lists(st.floats(0, 4.29e9), min_size=1, max_size=20))
def test_ts_on_whole_microseconds_come_back_exactly(seconds: list[float]) -> None:
    ts = (np.rint(np.array(seconds) * 1e6) / 1e6).tolist()
    cols = {"seq": [0] * len(ts), "machine": ["m"] * len(ts), "ts": ts}
    got = decode(encode(Message("s", "g", "telemetry", 0, 0, cols)))
    assert got.columns["ts"].tolist() == ts  # type: ignore[union-attr]


def test_rows_and_record_identity() -> None:
    m = Message(
        "plant-a", "gw-1", "alerts", 10, 12,
        {"seq": [10, 10, 12], "machine": ["a", "b", "a"], "ts": [1.0, 2.0, 3.0],
         "state": ["raised", "raised", "cleared"], "score": [0.9, 0.8, 0.1],
         "threshold": [0.5, 0.5, 0.3], "model": ["m@1"] * 3,
         "reading": [{"t": 41.5}, {"t": 40}, {"t": 20.25, "note": None}]},
    )  # fmt: skip
    got = decode(encode(m))
    assert got.index().tolist() == [0, 1, 0]
    assert got.rows()[2] == {
        "seq": 12, "machine": "a", "ts": 3.0, "state": "cleared", "score": 0.1,
        "threshold": 0.3, "model": "m@1", "reading": {"t": 20.25, "note": None},
    }  # fmt: skip


def test_int_field_stays_int_and_a_mixed_field_becomes_float() -> None:
    cols: dict[str, Any] = {"seq": [1, 1], "machine": ["a", "a"], "ts": [1.0, 2.0]}
    cols |= {"n": [1, 2], "x": [1, 2.5]}
    got = decode(encode(Message("s", "g", "telemetry", 1, 1, cols)))
    assert got.columns["n"].dtype == np.int64  # type: ignore[union-attr]
    assert got.columns["x"].tolist() == [1.0, 2.5]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"kind": "events"}, "unknown kind"),
        ({"columns": {"seq": [1], "machine": ["a"]}}, "need columns"),
        ({"columns": {"seq": [1, 2], "machine": ["a"], "ts": [1.0]}}, "differ in length"),
        ({"columns": {"seq": [2, 1], "machine": ["a"] * 2, "ts": [1.0] * 2}}, "non-decreasing"),
        ({"seq_first": 5}, "seq range"),
        ({"columns": {"seq": [1], "machine": ["a"], "ts": [float("nan")]}}, "finite"),
        ({"columns": {"seq": [1], "machine": [3], "ts": [1.0]}}, "not a str"),
        ({"columns": {"seq": [1], "machine": ["a"], "ts": [1.0], "x": ["hot"]}}, "numeric"),
        ({"columns": {"seq": [1], "machine": ["a"], "ts": [1.0], "x": [2**64]}}, "int64"),
    ],
)
def test_records_the_format_cannot_carry_are_refused(change: dict[str, Any], why: str) -> None:
    fields: dict[str, Any] = {"site": "s", "gateway": "g", "kind": "telemetry"}
    fields |= {"seq_first": 1, "seq_last": 1}
    fields |= {"columns": {"seq": [1], "machine": ["a"], "ts": [1.0]}}
    with pytest.raises(ValueError, match=why):
        encode(Message(**(fields | change)))


def test_aggregate_kinds_need_their_columns() -> None:
    row = {"seq": [3], "machine": ["a"], "ts": [60.0], "ts_end": [120.0], "ts_last": [61.5]}
    row |= {"count": [2], "model": ["m@1"], "nonfinite": [1]}
    row |= {f"score.{stat}": [0.5] for stat in ("min", "mean", "max")} | {"score.last": [math.nan]}
    got = decode(encode(Message("s", "g", "scores_agg", 3, 3, row))).rows()
    assert got[0]["nonfinite"] == 1
    assert math.isnan(got[0]["score.last"])
    with pytest.raises(ValueError, match="need columns"):
        encode(
            Message(
                "s", "g", "scores_agg", 3, 3, {k: v for k, v in row.items() if k != "nonfinite"}
            )
        )
    b = body(Message("s", "g", "scores_agg", 3, 3, row))
    del b["cols"]["ts_last"]
    with pytest.raises(WireFormatError, match="ts_last"):
        decode(pack(b))


# -- the byte limit -------------------------------------------------------------------------
def fleet(n: int, per_record: int, seed: int = 3) -> Message:
    """Telemetry as a PLC sends it (3 decimals, ms clock), ``per_record`` readings a spool row."""
    rng = np.random.default_rng(seed)
    machines = [f"line{i // 6 + 1}/m-{i:02d}" for i in range(12)]
    ts = 1_764_300_000 + np.round(np.sort(rng.uniform(0, n / 50, n)), 3)
    cols: dict[str, Any] = {
        "seq": (100 + np.arange(n) // per_record).tolist(),
        "machine": [machines[i] for i in np.arange(n) % 12],
        "ts": ts,
    }
    which = np.arange(n) % 12
    for j, name in enumerate(["temperature", "vibration", "current", "pressure", "speed"]):
        level = rng.uniform(10.0**j, 2 * 10.0**j, 12)[which]  # each machine has its own
        cols[name] = np.round(level + rng.normal(0, 10.0 ** (j - 2), n), 3)
    cols["runtime"] = (rng.integers(0, 10**9, 12)[which] + 200 * (np.arange(n) // 12)).tolist()
    cols["alarm"] = rng.integers(0, 4, n).tolist()
    return Message("plant-a", "gw-1", "telemetry", 90, 100 + (n - 1) // per_record + 5, cols)


def _slice(m: Message, i: int) -> Message:
    """Record ``i`` alone, as a message."""
    cols = {k: v[i : i + 1] for k, v in m.columns.items()}
    seq = int(np.asarray(m.columns["seq"])[i])
    return Message(m.site, m.gateway, m.kind, seq, seq, cols)


def joined(pieces: list[Message]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in pieces:
        for k, v in p.columns.items():
            out.setdefault(k, []).extend(v.tolist() if isinstance(v, np.ndarray) else v)
    return out


def test_split_keeps_spool_records_whole_and_partitions_the_seq_range() -> None:
    m = fleet(6_000, per_record=40)
    wire = encode_split(m, max_bytes=6_000)
    assert len(wire) > 4
    assert all(len(w) <= 6_000 for w in wire)
    pieces = [decode(w) for w in wire]
    assert [p.parts for p in pieces] == [1] * len(pieces)
    assert pieces[0].seq_first == m.seq_first
    assert pieces[-1].seq_last == m.seq_last
    for a, b in itertools.pairwise(pieces):
        assert b.seq_first == a.seq_last + 1
        assert a.columns["seq"][-1] < b.columns["seq"][0]  # no spool record in two messages
    whole = joined(pieces)
    assert whole["machine"] == m.columns["machine"]
    for k in ("seq", "ts", "temperature", "speed"):
        assert whole[k] == list(np.asarray(m.columns[k]).tolist()), k


def test_a_spool_record_too_big_alone_becomes_numbered_parts() -> None:
    m = fleet(3_000, per_record=3_000)
    wire = encode_split(m, max_bytes=5_000)
    pieces = [decode(w) for w in wire]
    assert all(len(w) <= 5_000 for w in wire)
    assert [p.part for p in pieces] == list(range(len(pieces)))
    assert len(pieces) > 2
    assert {p.parts for p in pieces} == {len(pieces)}
    assert {(p.seq_first, p.seq_last) for p in pieces} == {(m.seq_first, m.seq_last)}
    assert [p.offset for p in pieces] == np.cumsum([0] + [p.count for p in pieces[:-1]]).tolist()
    assert np.concatenate([p.index() for p in pieces]).tolist() == list(range(3_000))
    assert joined(pieces)["ts"] == m.columns["ts"].tolist()  # type: ignore[union-attr]


def test_a_batch_that_fits_is_one_message_identical_to_encode() -> None:
    m = fleet(500, per_record=10)
    assert encode_split(m) == [encode(m)]


def test_one_record_over_the_limit_is_refused() -> None:
    blob = "".join(chr(0x4E00 + i % 20_000) for i in range(3_000))  # hardly compressible
    m = Message("s", "g", "alerts", 1, 1, {
        "seq": [1], "machine": ["a"], "ts": [1.0], "state": ["raised"], "score": [1.0],
        "threshold": [0.5], "model": ["m@1"], "reading": [{"note": blob}],
    })  # fmt: skip
    with pytest.raises(ValueError, match="alone exceeds"):
        encode_split(m, max_bytes=2_000)


def test_the_decompressed_limit_splits_too() -> None:
    n, big = 20, "x" * 1_000_000  # 20 MB of body, a few kB compressed
    m = Message("s", "g", "alerts", 0, n - 1, {
        "seq": list(range(n)), "machine": ["a"] * n, "ts": [1.0] * n, "state": ["raised"] * n,
        "score": [1.0] * n, "threshold": [0.5] * n, "model": ["m@1"] * n,
        "reading": [{"blob": big}] * n,
    })  # fmt: skip
    with pytest.raises(ValueError, match="encode_split"):
        encode(m)
    wire = encode_split(m)
    assert len(wire) == 2
    assert sum(decode(w).count for w in wire) == n


@SLOW
@given(data=st.data(), max_bytes=st.integers(400, 3_000))
def test_split_never_exceeds_the_limit(data: st.DataObject, max_bytes: int) -> None:
    m = data.draw(messages("telemetry", st.integers(0, 120)))
    alone = max(len(encode(_slice(m, i))) for i in range(m.count)) if m.count else 0
    if alone > max_bytes:
        with pytest.raises(ValueError, match="alone exceeds"):
            encode_split(m, max_bytes=max_bytes)
        return
    wire = encode_split(m, max_bytes=max_bytes)
    assert all(len(w) <= max_bytes for w in wire)
    pieces = [decode(w) for w in wire]
    assert sum(p.count for p in pieces) == m.count
    assert joined(pieces).get("machine", []) == m.columns["machine"]


# -- decoding errors ------------------------------------------------------------------------
def body(m: Message) -> dict[str, Any]:
    raw = zstandard.ZstdDecompressor().decompress(encode(m))
    unpacked: dict[str, Any] = msgpack.unpackb(raw)
    return unpacked


def pack(b: Any) -> bytes:
    return zstandard.ZstdCompressor().compress(msgpack.packb(b, use_bin_type=True))


SMALL = Message("s", "g", "telemetry", 1, 2, {
    "seq": [1, 1, 2], "machine": ["a", "b", "a"], "ts": [1.0, 1.5, 2.0], "x": [1.5, 2.5, 3.0],
})  # fmt: skip


def test_truncated_input_is_a_wire_format_error_at_every_length() -> None:
    wire = encode(SMALL)
    for cut in range(len(wire)):
        with pytest.raises(WireFormatError):
            decode(wire[:cut])


def test_any_flipped_bit_is_detected_or_harmless() -> None:
    wire = encode(SMALL)
    for i in range(len(wire) * 8):
        bad = bytearray(wire)
        bad[i // 8] ^= 1 << (i % 8)
        try:
            got = decode(bytes(bad))
        except WireFormatError:
            continue
        assert_faithful(SMALL, got)  # only a flip zstd ignores (e.g. an unused header bit)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b'{"v": 1}',
        b"\x28\xb5\x2f\xfd",
        zstandard.ZstdCompressor().compress(b"\xc1"),  # not MessagePack
        zstandard.ZstdCompressor().compress(msgpack.packb([1, 2])),  # not a map
        encode(SMALL) + encode(SMALL),  # two frames
        encode(SMALL) + b"\0",
        zstandard.ZstdCompressor().compress(b"\0" * (MAX_RAW_BYTES + 1)),  # a zstd bomb
        zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (MAX_RAW_BYTES + 1)),
    ],
)
def test_garbage_is_a_wire_format_error(data: bytes) -> None:
    with pytest.raises(WireFormatError):
        decode(data)


def edit(path: str, value: Any) -> bytes:
    b = body(SMALL)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    node: Any = b
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return pack(b)


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        ("v", 2, UnsupportedFormat),
        ("v", DELETE, WireFormatError),
        ("v", "1", WireFormatError),
        ("cols/x/0", "f16", UnsupportedFormat),
        ("cols/x", ["dec", 2, [7, 0, 1, b"\0\0\0"]], UnsupportedFormat),
        ("count", 4, WireFormatError),
        ("count", -1, WireFormatError),
        ("seq_first", 3, WireFormatError),
        ("seq_last", DELETE, WireFormatError),
        ("site", 7, WireFormatError),
        ("cols/seq", DELETE, WireFormatError),
        ("cols/ts", DELETE, WireFormatError),
        ("cols/ts", ["int", [0, 1, 1, b"\0\1\2"]], WireFormatError),  # ts must be a ts column
        ("cols/machine/1", ["a"], WireFormatError),  # code 1 out of range
        ("cols/machine/1", [0, "b"], WireFormatError),
        ("cols/x", ["f64", b"\0" * 23], WireFormatError),
        ("cols/x", ["dec", 23, [0, 0, 0, b""]], WireFormatError),
        ("cols/x", ["int", [0, 0, 9, b"\0" * 27]], WireFormatError),
        ("cols/x", ["int", [1, "nope", [0], 0, 0, b""]], WireFormatError),
        ("cols/x", ["int", [1, None, [0, 0], 0, 0, b""]], WireFormatError),
        ("cols/x", ["int", [2, "machine", [0], 0, b""]], WireFormatError),
        ("cols/x", ["int", [0, 1.5, 0, b""]], WireFormatError),
        ("cols/x", ["any", [1, 2]], WireFormatError),
        ("cols/x", ["f64"], WireFormatError),
        ("cols/seq", ["int", [0, 1, 1, b"\1\0\0"]], WireFormatError),  # decreasing
        ("cols/seq", ["int", [0, 1, 1, b"\0\0\5"]], WireFormatError),  # beyond seq_last
        ("parts", 2, WireFormatError),  # a part must hold one spool record
        ("cols", [], WireFormatError),
        ("cols/x/0", 5, UnsupportedFormat),
    ],
)
def test_inconsistent_bodies_are_refused(path: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        decode(edit(path, value))
    assert type(info.value) is error


def test_unknown_header_keys_are_ignored_and_unknown_kinds_decode_generically() -> None:
    got = decode(edit("priority", "high"))
    assert_faithful(SMALL, got)
    other = decode(edit("kind", "events"))
    assert other.kind == "events"
    assert other.columns["x"].tolist() == [1.5, 2.5, 3.0]  # type: ignore[union-attr]


def test_extension_types_are_refused() -> None:
    b = body(SMALL)
    b["cols"]["x"] = ["any", [msgpack.ExtType(5, b"x")] * 3]
    with pytest.raises(WireFormatError, match="extension"):
        decode(pack(b))


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with pytest.raises(WireFormatError):
        decode(data)


LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=5),
    st.binary(max_size=12), st.sampled_from(["dict", "int", "ts", "dec", "f32", "machine"]),
)  # fmt: skip
VALUE = st.recursive(LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c))


@settings(deadline=None, max_examples=400)
@given(data=st.data())
def test_mutated_bodies_decode_or_raise_a_wire_format_error(data: st.DataObject) -> None:
    b = body(SMALL)
    node: Any = b
    while True:  # walk to a random node, then replace it with anything
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if not isinstance(child, dict | list) or not child or data.draw(st.booleans()):
            node[key] = data.draw(VALUE)
            break
        node = child
    with contextlib.suppress(WireFormatError):
        decode(pack(b))


# -- the spec, by hand ----------------------------------------------------------------------
def planes(values: list[int], width: int) -> bytes:
    return np.array(values, dtype="<u8").view(np.uint8).reshape(-1, 8)[:, :width].T.tobytes()


def test_a_body_written_from_the_spec_alone_decodes() -> None:
    """Every codec and block mode, built by hand from docs/wire-format.md, not by the encoder."""
    f32 = np.array([1.5, -0.0, np.inf, 3.25], dtype="<f4")
    f64 = np.array([0.1, 5e-324, -2.5, 1e300], dtype="<f8")
    cols = {
        "seq": ["int", [1, None, [10], 0, 1, bytes([0, 1, 1])]],  # 10 10 11 12
        "machine": ["dict", ["a", "b"], [0, 0, 1, bytes([0, 1, 0, 1])]],
        # per machine: a 1000 ms then +200; b 1100 ms then +210 (base 200, data 0 and 10)
        "ts": ["ts", 3, [1, "machine", [1_764_300_000_000, 1_764_300_000_100], 200, 1, b"\0\x0a"]],
        # offset from the machine's reference: a 4100 + 5 / + 7, b 4000 + 0 / + 9, in 1/100
        "temperature": ["dec", 2, [2, "machine", [4100, 4000], 1, bytes([5, 0, 7, 9])]],
        "vibration": ["f32", f32.view(np.uint8).reshape(4, 4).T.tobytes()],
        "current": ["f64", f64.view(np.uint8).reshape(4, 8).T.tobytes()],
        "count": ["int", [0, -300, 2, planes([0, 300, 65535, 1], 2)]],
        "flags": ["int", [0, -1, 8, planes([0, 2**64 - 1, 1, 2**63], 8)]],  # wraps mod 2**64
    }
    b = {"v": 1, "site": "s", "gateway": "g", "kind": "telemetry", "seq_first": 9,
         "seq_last": 12, "count": 4, "cols": cols}  # fmt: skip
    got = decode(pack(b)).columns
    assert got["seq"].tolist() == [10, 10, 11, 12]  # type: ignore[union-attr]
    assert got["machine"] == ["a", "b", "a", "b"]
    ms = np.array([0, 100, 200, 310]) + 1_764_300_000_000
    assert got["ts"].tolist() == (ms * 1000 / 1e6).tolist()  # type: ignore[union-attr]
    assert got["temperature"].tolist() == [41.05, 40.0, 41.07, 40.09]  # type: ignore[union-attr]
    assert got["vibration"].tolist() == [1.5, -0.0, np.inf, 3.25]  # type: ignore[union-attr]
    assert np.signbit(got["vibration"][1])
    assert got["current"].tobytes() == f64.tobytes()  # type: ignore[union-attr]
    assert got["count"].tolist() == [-300, 0, 65235, -299]  # type: ignore[union-attr]
    assert got["flags"].tolist() == [-1, -2, 0, 2**63 - 1]  # type: ignore[union-attr]


# -- golden vectors -------------------------------------------------------------------------
GOLDEN_TELEMETRY = Message(
    site="plant-a", gateway="gw-1", kind="telemetry", seq_first=41, seq_last=42,
    columns={
        "seq": [41, 41, 42, 42],
        "machine": ["line1/press-01", "line1/pump-02", "line1/press-01", "line1/pump-02"],
        "ts": [1764300000.0, 1764300000.004, 1764300000.2, 1764300000.203],
        "temperature": [41.237, 38.5, 41.241, 38.512],
        "vibration": [2.5, 0.75, 2.625, 0.8125],
        "current": [16.12345678901234, 9.87654321098765, 16.2, 9.9],
    },
)  # fmt: skip
GOLDEN_SCORES = Message(
    site="plant-a", gateway="gw-1", kind="scores", seq_first=7, seq_last=7,
    columns={
        "seq": [7, 7, 7],
        "machine": ["m1", "m2", "m1"],
        "ts": [1764300000.000001, 1764300000.000002, 1764300000.2],
        "score": np.array([0.25, np.nan, 3.4028234663852886e38], dtype=np.float32),
        "model": ["demo@1.0.0"] * 3,
    },
)  # fmt: skip


def doc_hex(name: str) -> bytes:
    """The hex block after ``<!-- name -->`` in docs/wire-format.md."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"<!-- {name} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert found, f"docs/wire-format.md has no {name} block"
    return bytes.fromhex(re.sub(r"\s+", "", found.group(1)))


@pytest.mark.parametrize(
    ("message", "name"), [(GOLDEN_TELEMETRY, "telemetry"), (GOLDEN_SCORES, "scores")]
)
def test_golden_vectors_in_the_spec(message: Message, name: str) -> None:
    """The MessagePack body is the format (stable); the zstd frame may differ between zstd
    versions, so the frame from the spec must decode, and ours must decompress to the body."""
    wire = encode(message)
    assert zstandard.ZstdDecompressor().decompress(wire) == doc_hex(f"{name}-body")
    assert_faithful(message, decode(doc_hex(f"{name}-frame")))


def test_golden_digest_of_a_larger_batch() -> None:
    """Pins the encoder's choices (every block mode) on 600 readings."""
    raw = zstandard.ZstdDecompressor().decompress(encode(fleet(600, per_record=25)))
    digest = hashlib.sha256(raw).hexdigest()
    assert digest == GOLDEN_DIGEST
    modes = {
        (c[-1][0], c[-1][1] if c[-1][0] else None) for c in msgpack.unpackb(raw)["cols"].values()
    }
    assert modes == {(0, None), (1, None), (1, "machine"), (2, "machine")}


GOLDEN_DIGEST = "f4c282926b422d53035824604ab35b4791fa1843939d18560e7e7e4784f8e2da"


def test_a_coded_column_encodes_as_its_strings_even_sliced_with_names_unused() -> None:
    names = ["l1/z", "l1/a", "l1/b", "l1/unused"]
    codes = np.array([2, 2, 1, 0, 1, 2], dtype=np.int64)
    coded = Coded(names, codes)

    def message(machine: Column, n: int) -> Message:
        cols = {"seq": np.arange(1, n + 1), "machine": machine, "ts": 1.795e9 + np.arange(n)}
        return Message("s", "gw", "telemetry", 1, n, cols | {"x": np.ones(n)})

    for part in (slice(None), slice(3, 6), slice(0, 2)):
        n = len(codes[part])
        assert encode(message(coded[part], n)) == encode(message(coded[part].tolist(), n))

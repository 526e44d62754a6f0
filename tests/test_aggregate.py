"""Aggregate lanes: rows equal to numpy's reduction of the readings, windows cut in the spool,
closed windows only, partial rows that combine into the whole, and, end to end through the real
broker, gateway and stand-in, aggregates that match what was published at a fraction of the bytes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.aggregate import Columns, closed, combine, message, ready_at, summarise
from gateway.alerts import Alert
from gateway.batcher import Batch
from gateway.spool import LaneConfig, Record, Spool
from gateway.spooler import Spooler, columns_of, records_for, split_by_window
from gateway.telemetry import FEATURES, Fleet
from gateway.wireformat import Message, decode, encode
from tests.ocistandin import StandIn, make_credentials

from .conftest import Client, GatewayProc, flatten

SLOW = settings(deadline=None, max_examples=80, suppress_health_check=[HealthCheck.too_slow])
LANES = {
    "alerts": LaneConfig(0, 1e9, 0.05),
    "scores": LaneConfig(1, 1e9, 0.25, "drop_oldest"),
    "telemetry": LaneConfig(2, 1e9, 0.7, "drop_oldest"),
}
LABEL = "machine-health@1.0.0"


# -- what a row must be: numpy over each (machine, window[, model]) on its own ---------------
Reading = tuple[int, str, float, list[float], str]  # seq, machine, ts, values, model


def expected(
    readings: list[Reading], window: float, *, scores: bool, fields: Any = ("temperature", "speed")
) -> dict[tuple[Any, ...], Any]:
    """Per (machine, window start, model): the row, computed reading group by reading group."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (_, machine, ts, _, model) in enumerate(readings):
        start = math.floor(us(ts) / window) * window
        groups.setdefault((machine, us(start), model if scores else None), []).append(i)
    out = {}
    for key, idx in groups.items():
        v = np.array([readings[i][3] for i in idx], dtype=np.float64)
        last = max(idx, key=lambda i: (us(readings[i][2]), i))  # greatest ts, later arrival
        row: dict[str, Any] = {"seq": readings[idx[0]][0], "count": len(idx)}
        start = math.floor(us(readings[idx[0]][2]) / window) * window
        row |= {"ts_end": us(start + window), "ts_last": us(readings[last][2])}
        ok = np.isfinite(v) if scores else np.ones_like(v, dtype=bool)
        if scores:
            row["nonfinite"] = int((~ok[:, 0]).sum())
        for j, name in enumerate(["score"] if scores else fields):
            have = v[ok[:, j], j]
            row[f"{name}.min"] = have.min() if len(have) else math.nan
            row[f"{name}.mean"] = have.mean() if len(have) else math.nan
            row[f"{name}.max"] = have.max() if len(have) else math.nan
            row[f"{name}.last"] = readings[last][3][j]
        out[key] = row
    return out


FIELDS = ["temperature", "speed"]


def us(t: float) -> float:
    """A time as the wire format carries it: to the microsecond."""
    return float(np.rint(t * 1e6) / 1e6)


def same(got: dict[str, Any], want: dict[str, Any], scale: float) -> None:
    """Exact, but the mean: a sum in another order differs in the last bits."""
    for name, value in want.items():
        have = got[name]
        if name.endswith(".mean"):
            assert math.isnan(have) == math.isnan(value), name
            assert math.isnan(value) or abs(have - value) <= 1e-12 * scale, (name, have, value)
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(have), name
        else:
            assert have == value, (name, have, value)


def key_of(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["machine"], row["ts"], row.get("model"))


@st.composite
def spool_records(draw: st.DrawFn, *, scores: bool) -> tuple[list[tuple[int, Columns]], float]:
    """Readings cut into spool records in arrival order, each with its own machine table."""
    window = draw(st.sampled_from([0.1, 0.5, 1.0, 60.0]))
    base = draw(st.integers(1_600_000_000, 1_900_000_000)) * 1.0
    pool = [f"line{i % 2}/m-{i}" for i in range(draw(st.integers(1, 4)))]
    n = draw(st.integers(1, 60))
    on_grid = draw(st.booleans())  # few distinct ts: ties for "last"
    ts_of = (
        st.integers(0, 12).map(lambda k: base + k * window / 4)
        if on_grid
        else st.floats(0, 4 * window).map(lambda x: base + x)
    )
    if scores:
        value = st.floats(width=32).map(lambda x: [x])  # NaN and infinities included
    else:
        value = st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2)
    reading = st.tuples(st.sampled_from(pool), ts_of, value, st.sampled_from(["a@1", "b@2"]))
    rows = draw(st.lists(reading, min_size=n, max_size=n))
    parts, seq, i = [], draw(st.integers(1, 1000)), 0
    while i < n:
        size = draw(st.integers(1, 8))
        chunk = rows[i : i + size]
        model = chunk[0][3]  # one model per spool record
        names = [*list(dict.fromkeys(m for m, _, _, _ in chunk))[::-1], "unused/m"]
        c = Columns(
            names,
            np.array([names.index(m) for m, _, _, _ in chunk], dtype=np.uint32),
            np.array([t for _, t, _, _ in chunk], dtype=np.float64),
            ("score",) if scores else tuple(FIELDS),
            np.array([v for _, _, v, _ in chunk], dtype=np.float64),
            model if scores else "",
        )
        parts.append((seq, c))
        seq += draw(st.integers(1, 3))
        i += size
    return parts, window


def flat(parts: list[tuple[int, Columns]]) -> list[Reading]:
    out = []
    for seq, c in parts:
        for k in range(len(c.ts)):
            machine = c.names[int(c.machine[k])]
            out.append((seq, machine, float(c.ts[k]), c.values[k].tolist(), c.model))
    return out


def rows_of(lane: str, parts: list[tuple[int, Columns]], window: float) -> list[dict[str, Any]]:
    """Through the wire: summarised, encoded, decoded."""
    kind = f"{lane}_agg"
    first, last = (parts[0][0], parts[-1][0]) if parts else (0, 0)
    wire = encode(Message("plant-a", "gw-1", kind, first, last, summarise(lane, parts, window)))
    return decode(wire).rows()


@pytest.mark.parametrize("lane", ["telemetry", "scores"])
@SLOW
@given(data=st.data())
def test_rows_are_numpys_reduction_per_machine_and_window(lane: str, data: st.DataObject) -> None:
    parts, window = data.draw(spool_records(scores=lane == "scores"))
    readings = flat(parts)
    want = expected(readings, window, scores=lane == "scores")
    got = rows_of(lane, parts, window)
    assert sorted(key_of(r) for r in got) == sorted(want), "one row per machine and window"
    scale = max([1.0] + [abs(x) for r in readings for x in r[3] if math.isfinite(x)])
    for row in got:
        same(row, want[key_of(row)], scale)
    assert sum(r["count"] for r in got) == len(readings)
    order = [(r["seq"], r["machine"], r["ts"], r.get("model", "")) for r in got]
    assert order == sorted(order)


@pytest.mark.parametrize("lane", ["telemetry", "scores"])
@SLOW
@given(data=st.data())
def test_partial_and_repeated_rows_combine_into_the_whole(lane: str, data: st.DataObject) -> None:
    """Sends of consecutive runs (late readings make later rows of a window) and, for some, a
    first attempt of a shorter run that a crash left undeleted: combined by the spec's rule,
    the rows are the rows of everything at once."""
    parts, window = data.draw(spool_records(scores=lane == "scores"))
    cuts = sorted({*data.draw(st.lists(st.integers(1, len(parts)), max_size=4)), len(parts)})
    stored: list[dict[str, Any]] = []
    start = 0
    for end in cuts:
        if data.draw(st.booleans()):  # stored, not deleted, sent again with more records
            stored += rows_of(lane, parts[start : data.draw(st.integers(start + 1, end))], window)
        stored += rows_of(lane, parts[start:end], window)
        start = end
    by_window: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in stored:
        by_window.setdefault(key_of(row), []).append(row)
    whole = {key_of(r): r for r in rows_of(lane, parts, window)}
    assert by_window.keys() == whole.keys()
    scale = max([1.0] + [abs(x) for r in flat(parts) for x in r[3] if math.isfinite(x)])
    for key, rows in by_window.items():
        same(combine(rows), whole[key], scale)


# -- cutting spool records at window boundaries ---------------------------------------------
def batch(machines: list[str], ts: list[float], values: np.ndarray | None = None) -> Batch:
    n = len(ts)
    v = values if values is not None else np.arange(n * 5, dtype=np.float64).reshape(n, 5)
    rows = v.tolist()
    raw = [{"ts": t, **dict(zip(FEATURES, r, strict=False))} for t, r in zip(ts, rows, strict=True)]
    return Batch(machines, ts, v, v.astype(np.float32), raw, [], 0.0)


def test_a_record_is_cut_at_window_boundaries_keeping_reading_order() -> None:
    ts = [10.2, 11.5, 10.9, 12.0, 11.1, 10.0]
    b = batch(["l1/a", "l1/b", "l1/a", "l1/a", "l1/b", "l1/b"], ts)
    scores = np.array([0.1, 0.2, np.nan, 0.4, 0.5, 0.6], dtype=np.float32)
    telemetry, scored = records_for("site", b, scores, LABEL, FEATURES, [])
    for record in (telemetry, scored):
        pieces = split_by_window(record, 1.0)
        assert [p.count for p in pieces] == [3, 2, 1]
        cols = [columns_of(record.lane, p.body) for p in pieces]
        assert [c.ts.tolist() for c in cols] == [[10.2, 10.9, 10.0], [11.5, 11.1], [12.0]]
        whole = columns_of(record.lane, record.body)
        for c, rows in zip(cols, [[0, 2, 5], [1, 4], [3]], strict=True):
            assert [c.names[i] for i in c.machine] == [b.machines[i] for i in rows]
            np.testing.assert_array_equal(c.values, whole.values[rows])
            assert (c.fields, c.model) == (whole.fields, whole.model)
    assert split_by_window(telemetry, 10.0) == [telemetry]  # one window: untouched


async def test_the_spooler_cuts_only_the_lanes_it_is_told_to(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", budget=1 << 30, lanes=LANES, durability="off")
    spooler = Spooler(spool, lambda token: None, windows={"telemetry": 1.0})
    task = asyncio.create_task(spooler.run())
    b = batch(["l1/a"] * 4, [0.5, 1.5, 2.5, 2.7])
    alert = Alert("l1/a", "raised", 0.9, 0.6, 2.7, 3)
    changes = [(alert, alert.payload(LABEL, b.raw[3]))]
    spooler.put(records_for("s", b, np.zeros(4, np.float32), LABEL, FEATURES, changes), [])
    spooler.close()
    await task
    try:
        telemetry = spool.oldest("telemetry", 1 << 30)
        assert [columns_of("telemetry", r.body).ts.tolist() for r in telemetry] == [
            [0.5],
            [1.5],
            [2.5, 2.7],
        ]
        assert [r.count for r in spool.oldest("scores", 1 << 30)] == [4]  # "all": as it was
        assert len(spool.oldest("alerts", 1 << 30)) == 1
    finally:
        spooler.shutdown()


# -- which records may go: closed windows, a run per key ------------------------------------
def record(seq: int, key: str, created: float, ts: list[float], fields: int = 5) -> Record:
    n = len(ts)
    b = batch([f"{key}/m"] * n, ts, np.zeros((n, fields)))
    (stored, _) = records_for("s", b, np.zeros(n, np.float32), LABEL, FEATURES[:fields], [])
    return Record(seq, "telemetry", key, created, n, stored.body)


def test_ready_at_is_the_window_end_or_a_window_after_storing_plus_grace() -> None:
    ts = np.array([100.5, 101.2])
    assert ready_at(ts, created=101.3, window=1.0, grace=0.5) == 102.5  # window [101, 102)
    assert ready_at(ts, created=50.0, window=1.0, grace=0.5) == 51.5  # a clock far ahead
    assert ready_at(ts, created=200.0, window=60.0, grace=5.0) == 125.0  # late: at once


def test_closed_takes_per_key_the_oldest_run_that_is_ready() -> None:
    w, g = 1.0, 0.5
    records = [
        record(1, "a", 10.1, [10.0, 10.3]),  # a: window 10 closed
        record(2, "b", 10.2, [10.1]),  # b: window 10 closed
        record(3, "a", 11.4, [11.2]),  # a: window 11 still open at 12.2: holds a back
        record(4, "a", 11.5, [10.8]),  # a: late for window 10, but behind record 3
        record(5, "b", 10.3, [10.2], fields=4),  # b: another model's fields: next message
        record(6, "c", 11.0, [9999.0]),  # c: a clock far ahead, held a window after storing
    ]
    decode = lambda r: columns_of("telemetry", r.body)  # noqa: E731
    runs, wake = closed(records, decode, w, g, now=12.2)
    assert {k: [r.seq for r, _ in run] for k, run in runs.items()} == {"a": [1], "b": [2]}
    assert wake == 11.5  # record 5: ready, but of other fields (record 3 and 6: at 12.5)
    runs, _ = closed(records, decode, w, g, now=12.5)
    assert {k: [r.seq for r, _ in run] for k, run in runs.items()} == {
        "a": [1, 3, 4],
        "b": [2],
        "c": [6],
    }
    runs, wake = closed(records[:1], decode, w, g, now=11.49)
    assert (runs, wake) == ({}, 11.5)  # grace: the window ended at 11


def test_a_retry_after_a_crash_rebuilds_rows_with_the_same_identity(tmp_path: Path) -> None:
    """The first send was stored but its records not deleted; late readings arrived before the
    retry. The retry's rows keep their seq and never count less; new ones come after."""
    decode = lambda r: columns_of("telemetry", r.body)  # noqa: E731
    spool = Spool(tmp_path / "spool.db", budget=1 << 30, lanes=LANES, durability="off")
    try:
        b = batch(["l1/a", "l1/b", "l1/a"], [100.1, 100.2, 101.3])
        for r in records_for("s", b, np.zeros(3, np.float32), LABEL, FEATURES, []):
            spool.append(r.lane, r.key, r.body, r.count, 101.5)
        spool.commit()
        runs, _ = closed(spool.oldest("telemetry", 1 << 30), decode, 1.0, 0.5, now=103.0)
        first = message("s", "gw", "telemetry", runs["s/l1"], 1.0).rows()
        late = batch(["l1/a", "l1/c"], [100.7, 100.9])
        for r in records_for("s", late, np.zeros(2, np.float32), LABEL, FEATURES, []):
            spool.append(r.lane, r.key, r.body, r.count, 102.0)
        spool.commit()
        runs, _ = closed(spool.oldest("telemetry", 1 << 30), decode, 1.0, 0.5, now=103.0)
        retry = message("s", "gw", "telemetry", runs["s/l1"], 1.0).rows()
    finally:
        spool.close()
    again = {(r["seq"], *key_of(r)): r["count"] for r in retry}
    for r in first:
        assert again[(r["seq"], *key_of(r))] >= r["count"]
    assert {(r["machine"], r["count"]) for r in retry if r["seq"] == 3} == {("l1/c", 1)}
    assert sum(r["count"] for r in retry) == 5


# -- end to end: the gateway as it runs, the real broker, the stand-in through the real SDK --
WINDOW, GRACE = 1.0, 0.3
MACHINES = ["line1/press-01", "line1/press-02", "line2/pump-01"]


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[StandIn, dict[str, str]]]:
    creds = make_credentials(tmp_path / "oci")
    with StandIn(
        tmp_path / "cloud", public_keys={creds.key_id: creds.public_key_pem}, partitions=2
    ) as standin:
        yield (
            standin,
            {
                "EDGEGW_UPLINK__ENDPOINT": standin.endpoint,
                "EDGEGW_UPLINK__OCI_CONFIG": str(creds.config_file),
                "EDGEGW_UPLINK__OCI_PROFILE": creds.profile,
                "EDGEGW_UPLINK__IDLE": "0.2",
                "EDGEGW_UPLINK__LINGER": "0.5",
                "EDGEGW_UPLINK__RETRY_MIN": "0.2",
                "EDGEGW_UPLINK__RETRY_MAX": "0.5",
                "EDGEGW_GATEWAY__SITE": "plant-7",
            },
        )


def plant(t0: float, windows: int, per_window: int, worn: set[tuple[int, int]]) -> list[Any]:
    """Per machine and window, ``per_window`` readings as a PLC batches them (3 decimals, ms);
    machine j is worn in window k for (j, k) in ``worn``. [(machine, [reading, ...]), ...]."""
    fleet = Fleet(len(MACHINES), seed=11)
    out: list[Any] = []
    for k in range(windows):
        fleet.wear[:] = [1.0 if (j, k) in worn else 0.0 for j in range(len(MACHINES))]
        ts = [round(t0 + (k + (i + 0.5) / per_window) * WINDOW, 3) for i in range(per_window)]
        values = np.round(np.stack([fleet.sample(t) for t in ts]), 3)  # (ts, machine, feature)
        for j, machine in enumerate(MACHINES):
            rows = [dict(zip(FEATURES, v, strict=True)) for v in values[:, j].tolist()]
            out.append((machine, [{"ts": t, **r} for t, r in zip(ts, rows, strict=True)]))
    return out


def stream(standin: StandIn, stream_id: str) -> list[tuple[Message, int]]:
    return [(decode(m.value), len(m.value)) for m in standin.messages(stream_id)]


def aggregates(messages: list[tuple[Message, int]], kind: str) -> dict[Any, list[Any]]:
    """Rows of ``kind`` by (machine, window, model), one per identity (the larger count)."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for m, _ in messages:
        if m.kind == kind:
            for r in m.rows():
                identity = (*key_of(r), r["seq"])
                if identity not in rows or r["count"] > rows[identity]["count"]:
                    rows[identity] = r
    out: dict[tuple[Any, ...], list[Any]] = {}
    for r in rows.values():
        out.setdefault(key_of(r), []).append(r)
    return out


def counted(messages: list[tuple[Message, int]], kind: str) -> int:
    return sum(r["count"] for rows in aggregates(messages, kind).values() for r in rows)


def wait(what: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.2)


@pytest.mark.slow
def test_aggregates_match_the_readings_and_cost_a_fraction_of_the_bytes(
    cloud: tuple[StandIn, dict[str, str]],
    gateway_factory: Callable[..., GatewayProc],
    client_factory: Callable[..., Client],
    tmp_path: Path,
) -> None:
    standin, env = cloud
    agg_stream, all_stream = "ocid1.stream.oc1.iad.aggregate", "ocid1.stream.oc1.iad.everything"
    gw = gateway_factory(
        **env,
        EDGEGW_UPLINK__STREAM_ID=agg_stream,
        EDGEGW_UPLINK__TELEMETRY_FORWARD="aggregate",
        EDGEGW_UPLINK__SCORES_FORWARD="aggregate",
        EDGEGW_UPLINK__AGGREGATE_WINDOW=str(WINDOW),
        EDGEGW_UPLINK__AGGREGATE_GRACE=str(GRACE),
        EDGEGW_GATEWAY__DATA_DIR=str(tmp_path / "aggregate"),
    )
    everything = gateway_factory(
        **env, EDGEGW_UPLINK__STREAM_ID=all_stream, EDGEGW_GATEWAY__DATA_DIR=str(tmp_path / "all")
    )
    sub = client_factory(f"{gw.scores}/#", f"{gw.alerts}/#")
    pub = client_factory()
    published: list[Any] = []

    def publish(batches: list[Any]) -> None:
        for machine, rows in batches:
            pub.publish(f"{gw.telemetry}/{machine}", rows)
            pub.publish(f"{everything.telemetry}/{machine}", rows)
        published.extend(batches)
        n = sum(len(rows) for _, rows in published)
        sub.wait_for(lambda: len(flatten(sub.on(gw.scores))) >= n, timeout=60)

    # Windows long closed, while the link is down: a backlog, as after an outage. Machine 1
    # wears out in window 2 (alerts raised) and is repaired in window 3 (cleared).
    t0 = math.floor(time.time() / WINDOW) * WINDOW - 120
    standin.outage(4.0)
    publish(plant(t0, windows=4, per_window=500, worn={(1, 2)}))
    wait(lambda: counted(stream(standin, agg_stream), "telemetry_agg") >= 6_000)
    # Late readings of a window already sent, and a device whose clock is an hour ahead: it
    # waits a window after it was stored, not an hour.
    late = [(MACHINES[0], [dict(r, ts=r["ts"] + 0.0005) for r in published[3][1][::25]])]
    ahead = plant(t0 + 3_720, windows=1, per_window=50, worn=set())[:1]
    publish(late + ahead)
    total = sum(len(rows) for _, rows in published)
    wait(lambda: counted(stream(standin, agg_stream), "scores_agg") >= total)
    wait(lambda: counted(stream(standin, agg_stream), "telemetry_agg") >= total)

    got = stream(standin, agg_stream)
    assert {m.kind for m, _ in got} == {"telemetry_agg", "scores_agg", "alerts"}
    readings = [
        (0, machine, r["ts"], [r[f] for f in FEATURES], "")
        for machine, rows in published
        for r in rows
    ]
    want = expected(readings, WINDOW, scores=False, fields=FEATURES)
    telemetry = aggregates(got, "telemetry_agg")
    assert telemetry.keys() == want.keys()
    late_row = max(telemetry[(MACHINES[0], t0 + 1 * WINDOW, None)], key=lambda r: r["seq"])
    assert late_row["count"] == len(late[0][1]), "late readings: a row of their own, later"
    for key, rows in telemetry.items():
        row = combine(rows)
        for name in [f"{f}.{s}" for f in FEATURES for s in ("min", "mean", "max", "last")]:
            same({name: row[name]}, {name: want[key][name]}, 2_000.0)
        assert (row["count"], row["ts_last"]) == (want[key]["count"], want[key]["ts_last"])
    assert sum(combine(rows)["count"] for rows in telemetry.values()) == total, "none twice"

    scores = flatten(sub.on(gw.scores))
    scored = [(0, s["machine"], s["ts"], [s["score"]], s["model"]) for s in scores]
    want = expected(scored, WINDOW, scores=True)
    by_window = aggregates(got, "scores_agg")
    assert by_window.keys() == want.keys()
    for key, rows in by_window.items():
        row = combine(rows)
        for name in ("count", "nonfinite", "ts_last", "score.min", "score.max", "score.last"):
            assert row[name] == want[key][name], (key, name)
        assert row["score.mean"] == pytest.approx(want[key]["score.mean"], rel=1e-12)

    # Every alert, with the reading that raised or cleared it, exactly as it was published.
    alerts = sub.on(gw.alerts)
    assert {a["state"] for a in alerts} == {"raised", "cleared"}
    sent = {(m.gateway, r["seq"], i): r for m, _ in got if m.kind == "alerts"
            for i, r in zip(m.index().tolist(), m.rows(), strict=True)}  # fmt: skip
    assert sorted((a["ts"], a["state"]) for a in sent.values()) == sorted(
        (a["ts"], a["state"]) for a in alerts
    )
    by_ts = {(machine, r["ts"]): r for machine, rows in published for r in rows}
    for a in sent.values():
        assert a["reading"] == by_ts[(a["machine"], a["reading"]["ts"])]
        assert a["reading"]["ts"] == a["ts"]

    # The same readings in full, for the bytes.
    def full(kind: str) -> int:
        return sum(m.count for m, _ in stream(standin, all_stream) if m.kind == kind)

    wait(lambda: full("telemetry") >= total and full("scores") >= total)
    wait(lambda: gw.metric("gateway_spool_records") == 0)
    lanes = ("telemetry", "scores", "telemetry_agg", "scores_agg")
    aggregated = sum(size for m, size in got if m.kind in lanes)
    in_full = sum(size for m, size in stream(standin, all_stream) if m.kind in lanes)
    assert aggregated < in_full / 5, (aggregated, in_full)
    assert gw.metric("gateway_uplink_summarised_readings_total") == 2 * total
    rows = sum(len(r) for kind in ("telemetry_agg", "scores_agg")
               for r in aggregates(got, kind).values())  # fmt: skip
    assert gw.metric("gateway_uplink_aggregate_rows_total") == rows

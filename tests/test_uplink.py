"""The uplink to the OCI stand-in through the real SDK: everything arrives, outages and
throttling included, decoded with the wire format and counted by its idempotency key."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.batcher import Batch
from gateway.config import load_settings
from gateway.spool import Record
from gateway.spooler import decode_body, records_for
from gateway.telemetry import FEATURES
from gateway.uplink import Uplink, make_stream_client, to_message, to_messages
from gateway.wireformat import Message, decode, encode
from tests.ocistandin import StandIn, make_credentials

from .conftest import Client, GatewayProc
from .test_pipeline import readings

STREAM = "ocid1.stream.oc1.iad.amaaaaaatestgatewaystream"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[StandIn, dict[str, str]]]:
    creds = make_credentials(tmp_path / "oci")
    with StandIn(
        tmp_path / "cloud", public_keys={creds.key_id: creds.public_key_pem}, partitions=2
    ) as standin:
        env = {
            "EDGEGW_UPLINK__ENDPOINT": standin.endpoint,
            "EDGEGW_UPLINK__STREAM_ID": STREAM,
            "EDGEGW_UPLINK__OCI_CONFIG": str(creds.config_file),
            "EDGEGW_UPLINK__OCI_PROFILE": creds.profile,
            "EDGEGW_UPLINK__IDLE": "0.2",
            "EDGEGW_UPLINK__LINGER": "0.5",
            "EDGEGW_UPLINK__RETRY_MIN": "0.2",
            "EDGEGW_UPLINK__RETRY_MAX": "1",
            "EDGEGW_GATEWAY__SITE": "plant-7",
        }
        yield standin, env


def arrived(standin: StandIn) -> dict[str, dict[tuple[str, int, int], dict[str, Any]]]:
    """Records per kind, keyed by (gateway, seq, index): duplicates collapse."""
    out: dict[str, dict[tuple[str, int, int], dict[str, Any]]] = {}
    for stored in standin.messages(STREAM):
        m = decode(stored.value)
        assert stored.key is not None
        assert stored.key.decode().startswith("plant-7/")
        for idx, row in zip(m.index().tolist(), m.rows(), strict=True):
            out.setdefault(m.kind, {})[(m.gateway, row["seq"], idx)] = row
    return out


def wait_arrived(standin: StandIn, kind: str, n: int, timeout: float = 60) -> dict[Any, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = arrived(standin).get(kind, {})
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_everything_reaches_the_stream_in_order_per_machine(
    cloud: tuple[StandIn, dict[str, str]],
    gateway_factory: Callable[..., GatewayProc],
    client_factory: Callable[..., Client],
) -> None:
    standin, env = cloud
    gw = gateway_factory(**env)
    pub = client_factory()
    rows = readings(100, machines=2)
    for a, b in zip(rows[0], rows[1], strict=True):
        pub.publish_async(f"{gw.telemetry}/line1/press-01", a)
        pub.publish_async(f"{gw.telemetry}/line2/pump-02", b)
    telemetry = wait_arrived(standin, "telemetry", 200)
    scores = wait_arrived(standin, "scores", 200)
    assert len(telemetry) == 200
    assert len(scores) == 200
    sent = {(r["ts"], r["vibration"]) for r in rows[0] + rows[1]}
    assert {(t["ts"], t["vibration"]) for t in telemetry.values()} == sent, "exact values"
    for machine in ("line1/press-01", "line2/pump-02"):
        mine = [t["ts"] for k, t in sorted(telemetry.items()) if t["machine"] == machine]
        assert mine == sorted(mine)
    assert gw.metric("gateway_uplink_messages_total") >= 2
    deadline = time.monotonic() + 10
    while gw.metric("gateway_spool_records") > 0:  # the spool empties once stored
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.slow
def test_outage_throttling_and_5xx_lose_nothing(
    cloud: tuple[StandIn, dict[str, str]],
    gateway_factory: Callable[..., GatewayProc],
    client_factory: Callable[..., Client],
) -> None:
    standin, env = cloud
    gw = gateway_factory(**env)
    pub = client_factory()
    rows = readings(400)[0]
    done = threading.Event()

    def publish() -> None:
        for r in rows:
            pub.publish_async(f"{gw.telemetry}/line1/press-01", r)
            time.sleep(0.005)
        done.set()

    threading.Thread(target=publish, daemon=True).start()
    time.sleep(0.5)
    standin.outage(2.0)  # connection refused for 2 s, then back
    time.sleep(2.5)
    standin.faults.update(throttle_next=3, fail_next=2, fail_status=503)
    assert done.wait(30)
    telemetry = wait_arrived(standin, "telemetry", 400)
    missing = {r["ts"] for r in rows} - {t["ts"] for t in telemetry.values()}
    raw = [(decode(m.value), m.partition, m.offset) for m in standin.messages(STREAM)]
    anywhere = {ts for m, _, _ in raw if m.kind == "telemetry" for ts in m.columns["ts"].tolist()}
    info = [(m.kind, m.seq_first, m.seq_last, m.count, p, o) for m, p, o in raw][:12]
    assert not missing, (sorted(missing)[:3], len(missing), len(missing & anywhere), info)


def test_a_model_swap_that_changes_the_fields_starts_another_message() -> None:
    """Records of one key whose telemetry has other fields cannot share columns."""

    def record(seq: int, fields: int) -> Record:
        v = np.ones((1, fields))
        b = Batch(["l1/m"], [float(seq)], v, v.astype(np.float32), [{}], [], 0.0)
        telemetry, _ = records_for("s", b, np.zeros(1, np.float32), "m@1", FEATURES[:fields], [])
        return Record(seq, "telemetry", telemetry.key, 0.0, 1, telemetry.body)

    records = [record(1, 5), record(2, 4), record(3, 4), record(4, 5)]
    got = [(k, decode(encode(m))) for k, m in to_messages("s", "gw", "telemetry", records)]
    assert [(k, m.seq_first, m.seq_last, m.count) for k, m in got] == [
        ("s/l1", 1, 1, 1),
        ("s/l1", 2, 3, 2),
        ("s/l1", 4, 4, 1),
    ]
    assert ["speed" in m.columns for _, m in got] == [True, False, True]


def _plain_message(lane: str, records: list[Record]) -> Message:
    """The message as plain lists, row by row from each spool body: what the array path in
    ``to_message`` must encode to, byte for byte."""
    columns: dict[str, list[Any]] = {}
    seqs: list[int] = []
    for r in records:
        body = decode_body(lane, r.body)
        if lane == "scores":
            body["model"] = [body["model"]] * len(body["ts"])
        seqs += [r.seq] * len(body["ts"])
        for name, values in body.items():
            columns.setdefault(name, []).extend(values)
    cols: dict[str, Any] = {"seq": np.asarray(seqs, dtype=np.int64)}
    cols |= {k: np.asarray(v, dtype=np.float64) if k == "ts" else v for k, v in columns.items()}
    return Message("s", "gw", lane, records[0].seq, records[-1].seq, cols)


batch_st = st.tuples(
    st.lists(st.sampled_from(["l1/a", "l1/b", "l1/c", "l1/d"]), min_size=1, max_size=30),
    st.sampled_from(["m@1", "m@2"]),
    st.integers(0, 2**32 - 1),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(batch_st, min_size=1, max_size=5))
def test_messages_built_from_the_spools_arrays_are_the_plain_columns_byte_for_byte(
    batches: list[tuple[list[str], str, int]],
) -> None:
    telemetry, scores = [], []
    for seq, (machines, label, seed) in enumerate(batches, start=1):
        rng = np.random.default_rng(seed)
        n = len(machines)
        v = np.round(rng.normal(50, 10, (n, len(FEATURES))), 3)
        ts = (1.795e9 + rng.uniform(0, 60, n)).round(3).tolist()
        b = Batch(machines, ts, v, v.astype(np.float32), [{}] * n, [], 0.0)
        score = rng.normal(0, 1, n).astype(np.float32)
        score[rng.random(n) < 0.1] = np.nan
        t, sc = records_for("s", b, score, label, FEATURES, [])
        telemetry.append(Record(seq, "telemetry", t.key, 0.0, n, t.body))
        scores.append(Record(seq, "scores", sc.key, 0.0, n, sc.body))
    for lane, records in (("telemetry", telemetry), ("scores", scores)):
        fast = to_message("s", "gw", lane, records)
        assert encode(fast) == encode(_plain_message(lane, records))
        # (repr: a NaN score is equal to itself there)
        assert repr(decode(encode(fast)).rows()) == repr(_plain_message(lane, records).rows())


async def test_a_throttled_entry_waits_the_stated_delay_and_goes_again_alone(
    cloud: tuple[Any, dict[str, str]],
) -> None:
    standin, env = cloud
    settings = load_settings(
        uplink={
            "endpoint": env["EDGEGW_UPLINK__ENDPOINT"],
            "stream_id": STREAM,
            "oci_config": env["EDGEGW_UPLINK__OCI_CONFIG"],
            "oci_profile": env["EDGEGW_UPLINK__OCI_PROFILE"],
        }
    )

    class _NoSpool:  # the uplink only registers its windows with the spooler here
        def __init__(self) -> None:
            self.windows: dict[str, float] = {}

    uplink = Uplink(settings, _NoSpool(), make_stream_client(settings))  # type: ignore[arg-type]
    standin.faults.update(throttle_next=1, throttle_ms=1500)
    entries = [("plant-7/line1", b"first"), ("plant-7/line2", b"second")]
    started = time.monotonic()
    await uplink._put_all(entries)
    waited = time.monotonic() - started
    assert waited >= 1.5, "the retry came before the delay the service stated"
    puts = standin.request_log("PutMessages")
    assert [r.status for r in puts] == [200, 200]
    assert sorted(m.value for m in standin.messages(STREAM)) == [b"first", b"second"]
    assert uplink.throttled == 1
    assert uplink.sent_messages == 2  # each stored once: the second request held one entry


@pytest.mark.slow
def test_a_full_block_lane_stops_reading_and_loses_nothing(
    cloud: tuple[StandIn, dict[str, str]],
    gateway_factory: Callable[..., GatewayProc],
    client_factory: Callable[..., Client],
) -> None:
    standin, env = cloud
    standin.outage()  # nothing leaves: the spool fills
    gw = gateway_factory(
        **env,
        EDGEGW_SPOOL__BUDGET="64KiB",  # telemetry's share: about 600 readings
        EDGEGW_SPOOL__TELEMETRY_WHEN_FULL="block",
        EDGEGW_SPOOL__SCORES_WHEN_FULL="block",
        EDGEGW_SPOOL__RETRY="0.2",
        EDGEGW_INGEST__MAX_PENDING="200",
    )
    pub = client_factory()
    rows = readings(1500, machines=2)
    for a, b in zip(rows[0], rows[1], strict=True):
        pub.publish_async(f"{gw.telemetry}/line1/press-01", a)
        pub.publish_async(f"{gw.telemetry}/line2/pump-02", b)
    deadline = time.monotonic() + 30
    while gw.metric("gateway_spool_blocked") < 1:  # the declared policy: hold, do not drop
        assert time.monotonic() < deadline, (gw.health(), gw.metrics()[-3000:])
        time.sleep(0.2)
    time.sleep(2.0)
    received = gw.metric("gateway_readings_received_total")
    time.sleep(1.0)
    assert gw.metric("gateway_readings_received_total") == received, "reading paused"
    assert received < 3000, "the rest waits in the broker"
    assert gw.metric("gateway_spool_dropped_records_total") == 0
    standin.recover()
    telemetry = wait_arrived(standin, "telemetry", 3000, timeout=120)
    sent = {(r["ts"], r["vibration"]) for r in rows[0] + rows[1]}
    assert {(t["ts"], t["vibration"]) for t in telemetry.values()} == sent

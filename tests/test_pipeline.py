"""The real-time path on real parts: Mosquitto from mosquitto.conf, the gateway process, ONNX."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import orjson
import pytest

from gateway.manifest import default_bundle_dir, load_bundle
from gateway.telemetry import FEATURES, Fleet

from .conftest import Client, GatewayProc, flatten

POLICY = load_bundle(default_bundle_dir()).manifest.alert


def readings(
    n: int, machines: int = 1, seed: int = 0, t0: float = 1_795_000_000.0, wear: float = 0.0
) -> list[list[dict[str, Any]]]:
    """``n`` healthy (or worn) readings per machine, ts strictly increasing."""
    fleet = Fleet(machines, seed=seed)
    fleet.wear[:] = wear
    out: list[list[dict[str, Any]]] = [[] for _ in range(machines)]
    for k in range(n):
        ts = t0 + k * 0.5
        for m, row in enumerate(fleet.sample(ts).tolist()):
            out[m].append({"ts": ts, **dict(zip(FEATURES, row, strict=True))})
    return out


def test_scores_in_order_per_machine_json_and_msgpack(
    gateway_factory: Callable[..., GatewayProc], client_factory: Callable[..., Client]
) -> None:
    gw = gateway_factory()
    sub = client_factory(f"{gw.scores}/#")
    pub = client_factory()
    per_machine = readings(40, machines=3)
    for m, rows in enumerate(per_machine):
        topic = f"{gw.telemetry}/line1/m{m}"
        for i in range(20):  # one reading a message, JSON and MessagePack alternating
            payload = orjson.dumps(rows[i]) if i % 2 else msgpack.packb(rows[i])
            pub.publish(topic, payload)
        pub.publish(topic, rows[20:30])  # a PLC's batch as a JSON list
        pub.publish(topic, msgpack.packb(rows[30:40]))  # and as MessagePack
    sub.wait_for(lambda: len(flatten(sub.on(gw.scores))) >= 120)
    time.sleep(0.3)
    scores = flatten(sub.on(gw.scores))
    assert len(scores) == 120
    for m, rows in enumerate(per_machine):
        mine = [s for s in scores if s["machine"] == f"line1/m{m}"]
        assert [s["ts"] for s in mine] == [r["ts"] for r in rows], "order per machine"
        assert all(s["model"] == "machine-health@1.0.0" for s in mine)
        assert all(0 <= s["score"] < POLICY.threshold for s in mine), "healthy readings"
    assert gw.metric("gateway_readings_scored_total") == 120


def test_reading_names_its_machine_and_iso_timestamps(
    gateway_factory: Callable[..., GatewayProc], client_factory: Callable[..., Client]
) -> None:
    gw = gateway_factory()
    sub = client_factory(f"{gw.scores}/#")
    row = readings(1)[0][0]
    row.update(ts="2026-11-28T10:00:00Z", machine="hall2/pump-9")
    client_factory().publish(f"{gw.telemetry}/gatewayed/plc-3", row)
    sub.wait_for(lambda: len(sub.on(gw.scores)) == 1)
    topic, payload, _ = sub.messages[0]
    assert topic == f"{gw.scores}/hall2/pump-9"
    assert orjson.loads(payload)["ts"] == 1_795_860_000.0


def test_alerts_raise_and_clear_with_hysteresis(
    gateway_factory: Callable[..., GatewayProc], client_factory: Callable[..., Client]
) -> None:
    gw = gateway_factory()
    sub = client_factory(f"{gw.alerts}/#", f"{gw.scores}/#")
    pub = client_factory()
    topic = f"{gw.telemetry}/line1/press-07"
    healthy = readings(30)[0]
    worn = readings(30, wear=1.0, t0=1_795_100_000.0)[0]
    # Over the threshold one reading shorter than raise_after, then healthy: no alert.
    sequence = worn[: POLICY.raise_after - 1] + healthy[:5]
    # Then a sustained fault: exactly one "raised"; then healthy readings: exactly one "cleared".
    sequence += worn[5:20] + healthy[5 : 5 + POLICY.clear_after + 5]
    for r in sequence:
        pub.publish(topic, r)
    sub.wait_for(lambda: len(flatten(sub.on(gw.scores))) == len(sequence))
    sub.wait_for(lambda: len(sub.on(gw.alerts)) >= 2)
    time.sleep(0.3)
    alerts = sub.on(gw.alerts)
    assert [a["state"] for a in alerts] == ["raised", "cleared"]
    raised, cleared = alerts
    assert raised["machine"] == "line1/press-07"
    assert raised["score"] > POLICY.threshold == raised["threshold"]
    assert raised["ts"] == worn[5 + POLICY.raise_after - 1]["ts"], "raised on the Nth reading"
    assert raised["reading"]["vibration"] == worn[5 + POLICY.raise_after - 1]["vibration"]
    assert cleared["score"] < POLICY.clear_threshold == cleared["threshold"]
    assert cleared["ts"] == healthy[5 + POLICY.clear_after - 1]["ts"], "cleared on the Mth"
    assert raised["model"] == cleared["model"] == "machine-health@1.0.0"


def test_malformed_input_is_dead_lettered_while_good_input_flows(
    gateway_factory: Callable[..., GatewayProc], client_factory: Callable[..., Client]
) -> None:
    gw = gateway_factory()
    dl_topic = f"gateway/{gw.id}/deadletter"
    sub = client_factory(f"{gw.scores}/#", dl_topic)
    pub = client_factory()
    good = readings(10)[0]
    nan = dict(good[0], pressure=float("nan"))
    bad: list[tuple[bytes, str]] = [
        (b'{"ts": 1795000000, "temperature": 41.2,', "decode"),
        (orjson.dumps(dict(good[0], vibration="high")), "not_number"),
        (orjson.dumps({k: v for k, v in good[0].items() if k != "current"}), "missing_field"),
        (msgpack.packb(nan), "non_finite"),
        (orjson.dumps(dict(good[0], speed=1e39)), "non_finite"),
        (orjson.dumps(dict(good[0], speed=True)), "not_number"),
        (orjson.dumps(dict(good[0], ts="yesterday")), "bad_ts"),
        (orjson.dumps([1]), "shape"),
        (orjson.dumps("hello"), "shape"),
        (b"\xc1\xc1\xc1", "decode"),
        (b"", "decode"),
    ]
    topic = f"{gw.telemetry}/line2/pump-01"
    for i, r in enumerate(good):
        pub.publish(topic, r)
        if i < len(bad):
            pub.publish(topic, bad[i][0])
    pub.publish(topic, bad[-1][0])
    # A batch with one bad reading in the middle: the others are scored.
    mixed = [good[0], dict(good[1], temperature=None), good[2]]
    pub.publish(f"{gw.telemetry}/line2/pump-02", mixed)
    sub.wait_for(lambda: len(flatten(sub.on(gw.scores))) == 12)
    sub.wait_for(lambda: len(sub.on(dl_topic)) == len(bad) + 1)
    letters = sub.on(dl_topic)
    assert sorted(d["kind"] for d in letters) == sorted([k for _, k in bad] + ["not_number"])
    assert all(d["reason"] and d["topic"].startswith(gw.telemetry) for d in letters)
    middle = next(d for d in letters if d["topic"].endswith("pump-02"))
    assert middle["index"] == 1
    assert "temperature" in middle["reason"]
    assert gw.metric("gateway_readings_deadlettered_total") == len(bad) + 1
    assert gw.metric("gateway_readings_scored_total") == 12
    assert gw.health()[0], "still healthy"


def test_sigterm_flushes_publishes_offline_and_exits_zero(
    gateway_factory: Callable[..., GatewayProc], client_factory: Callable[..., Client]
) -> None:
    gw = gateway_factory()
    status = f"gateway/{gw.id}/status"
    sub = client_factory(status, f"{gw.scores}/#")
    sub.wait_for(lambda: any(s["state"] == "online" for s in sub.on(status)))
    pub = client_factory()
    rows = readings(200)[0]
    pub.publish(f"{gw.telemetry}/m1", rows)
    assert gw.stop(signal.SIGTERM) == 0, gw.log
    sub.wait_for(lambda: sub.on(status)[-1]["state"] == "offline")
    assert sub.on(status)[-1]["reason"] == "shutdown"
    assert len(flatten(sub.on(gw.scores))) == 200, "pending readings were flushed"
    late = client_factory(status)  # the offline status is retained for whoever looks later
    late.wait_for(lambda: len(late.on(status)) == 1)
    assert late.on(status)[0]["state"] == "offline"


def test_readings_sent_while_down_are_scored_after_restart(
    gateway_factory: Callable[..., GatewayProc], client_factory: Callable[..., Client]
) -> None:
    gw = gateway_factory()
    assert gw.stop() == 0
    sub = client_factory(f"{gw.scores}/#")
    pub = client_factory()
    rows = readings(50)[0]
    for r in rows:
        pub.publish(f"{gw.telemetry}/m1", r, qos=1)
    gw.start()  # same id: the broker kept the session and queued the readings
    sub.wait_for(lambda: len(flatten(sub.on(gw.scores))) == 50)
    assert [s["ts"] for s in flatten(sub.on(gw.scores))] == [r["ts"] for r in rows]


def test_killed_gateway_is_reported_offline_by_its_will(
    gateway_factory: Callable[..., GatewayProc], client_factory: Callable[..., Client]
) -> None:
    gw = gateway_factory(EDGEGW_MQTT__KEEPALIVE="5")
    status = f"gateway/{gw.id}/status"
    sub = client_factory(status)
    sub.wait_for(lambda: bool(sub.on(status)) and sub.on(status)[-1]["state"] == "online")
    gw.stop(signal.SIGKILL)
    sub.wait_for(lambda: sub.on(status)[-1]["state"] == "offline")
    assert sub.on(status)[-1]["reason"] == "connection lost"


@pytest.mark.slow
def test_broker_restart_mid_stream_loses_no_reading(
    own_broker: Any,
    gateway_factory: Callable[..., GatewayProc],
    client_factory: Callable[..., Client],
) -> None:
    gw = gateway_factory(on=own_broker)
    sub = client_factory(f"{gw.scores}/#", on=own_broker, persistent=True)
    pub = client_factory(on=own_broker)
    rows = readings(300)[0]
    done = threading.Event()

    def publish() -> None:  # QoS 1 throughout; paho holds and resends what the broker missed
        for r in rows:
            pub.publish_async(f"{gw.telemetry}/m1", r)
            time.sleep(0.01)
        done.set()

    threading.Thread(target=publish, daemon=True).start()
    sub.wait_for(lambda: len(flatten(sub.on(gw.scores))) >= 50)
    own_broker.restart()  # persistence on: sessions, subscriptions and queued readings survive
    assert done.wait(60)
    expected = {r["ts"] for r in rows}
    sub.wait_for(lambda: {s["ts"] for s in flatten(sub.on(gw.scores))} >= expected, timeout=60)
    scored = [s["ts"] for s in flatten(sub.on(gw.scores))]
    # At least once: a reading in flight at the restart may be scored twice, and the readings
    # resent after the restart need not keep their order (MQTT promises none across it).
    assert set(scored) == expected, "every reading scored, nothing invented"
    assert gw.metric("gateway_broker_disconnects_total") == 1
    assert gw.health()[0]
    assert "broker connection lost" in gw.log


def test_health_and_metrics_endpoints(gateway_factory: Callable[..., GatewayProc]) -> None:
    gw = gateway_factory()
    ok, body = gw.health()
    assert ok
    assert body["broker_connected"] is True
    assert body["model"] == "machine-health@1.0.0"
    text = gw.metrics()
    for name in (
        "gateway_readings_received_total",
        "gateway_batch_size_bucket",
        "gateway_score_latency_seconds_bucket",
        "gateway_broker_connected 1.0",
        'gateway_spool_oldest_age_seconds{lane="telemetry"}',
        'gateway_model_info{name="machine-health"',
    ):
        assert name in text


def test_bad_setting_stops_startup_naming_the_key(
    gateway_factory: Callable[..., GatewayProc],
) -> None:
    gw = gateway_factory(start=False, EDGEGW_MQTT__PORT="eighteen", EDGEGW_BATCHER__MAX_BACH="4")
    gw.start(wait=False)
    assert gw.proc is not None
    assert gw.proc.wait(30) == 2
    assert "mqtt.port [EDGEGW_MQTT__PORT]" in gw.log
    assert "batcher.max_bach [EDGEGW_BATCHER__MAX_BACH]: Extra inputs" in gw.log


def test_odd_but_valid_messagepack_keys_do_not_stop_alerts(
    gateway_factory: Callable[..., GatewayProc], client_factory: Callable[..., Client]
) -> None:
    gw = gateway_factory()
    sub = client_factory(f"{gw.alerts}/#")
    pub = client_factory()
    for r in readings(POLICY.raise_after, wear=1.0)[0]:
        pub.publish(f"{gw.telemetry}/m1", msgpack.packb({**r, b"plc-extra": b"\x01\x02"}))
    sub.wait_for(lambda: len(sub.on(gw.alerts)) == 1)
    assert sub.on(gw.alerts)[0]["state"] == "raised"
    assert gw.health()[0]

"""The MQTT adapter on a real broker: batched socket reads lose and reorder nothing, acks go out
in one write, a paused reader leaves messages with the broker, and a restart starts clean."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import mqtt as mqtt_module
from gateway.config import load_settings
from gateway.errors import BrokerUnavailable
from gateway.localbroker import LocalBroker
from gateway.mqtt import Message, MqttClient

from .conftest import Client


def _settings(broker: LocalBroker, tmp_path: Path, client_id: str) -> object:
    return load_settings(
        gateway={"id": client_id, "data_dir": tmp_path},
        mqtt={"host": broker.host, "port": broker.port, "telemetry_topic": "t/#"},
    )


async def _until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_many_small_messages_arrive_whole_in_order_and_acked(
    own_broker: LocalBroker, tmp_path: Path, client_factory: Callable[..., Client]
) -> None:
    got: list[Message] = []

    def handle(msg: Message) -> None:  # acknowledged at once: 2,000 may be in flight at most
        got.append(msg)
        assert msg.ack is not None
        mqtt.ack(msg.ack)

    mqtt = MqttClient(_settings(own_broker, tmp_path, "m1"), handle)  # type: ignore[arg-type]
    async with mqtt:
        await mqtt.wait_connected(10)
        mqtt.subscribe("t/#", 1)
        await asyncio.sleep(0.3)
        pub = client_factory(on=own_broker)
        n = 3000  # one burst: many packets per kernel read, some split across reads
        bodies = [orjson.dumps({"i": i, "pad": "x" * (i % 300)}) for i in range(n)]
        await asyncio.to_thread(lambda: [pub.publish_async("t/a", orjson.loads(b)) for b in bodies])
        await _until(lambda: len(got) >= n)
        assert [m.payload for m in got] == bodies
        mqtt.flush()
        await asyncio.sleep(0.5)
    # Acknowledged: a new session with the same client id gets nothing again.
    again: list[Message] = []
    mqtt = MqttClient(_settings(own_broker, tmp_path, "m1"), again.append)  # type: ignore[arg-type]
    async with mqtt:
        await mqtt.wait_connected(10)
        await asyncio.sleep(1.0)
    assert again == []


async def test_a_paused_reader_leaves_messages_with_the_broker(
    own_broker: LocalBroker, tmp_path: Path, client_factory: Callable[..., Client]
) -> None:
    got: list[Message] = []
    mqtt = MqttClient(_settings(own_broker, tmp_path, "m2"), got.append)  # type: ignore[arg-type]
    async with mqtt:
        await mqtt.wait_connected(10)
        mqtt.subscribe("t/#", 1)
        await asyncio.sleep(0.3)
        mqtt.pause_reading()
        pub = client_factory(on=own_broker)
        for i in range(200):
            pub.publish_async("t/b", {"i": i})
        await asyncio.sleep(1.0)
        assert got == []
        mqtt.resume_reading()
        await _until(lambda: len(got) == 200)
        assert [orjson.loads(m.payload)["i"] for m in got] == list(range(200))


async def test_publishes_with_and_without_properties_both_arrive(
    own_broker: LocalBroker, tmp_path: Path
) -> None:
    got: list[Message] = []
    mqtt = MqttClient(_settings(own_broker, tmp_path, "m3"), got.append)  # type: ignore[arg-type]
    async with mqtt:
        await mqtt.wait_connected(10)
        mqtt.subscribe("t/#", 1)
        await asyncio.sleep(0.3)
        pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        pub.connect(own_broker.host, own_broker.port)
        pub.loop_start()
        try:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("line", "1")
            props.ContentType = "application/json"
            pub.publish("t/plain/ü", b"one", qos=1).wait_for_publish(5)
            pub.publish("t/props", b"two", qos=1, properties=props).wait_for_publish(5)
            pub.publish("t/qos0", b"three", qos=0).wait_for_publish(5)
            await _until(lambda: len(got) == 3)
        finally:
            pub.loop_stop()
            pub.disconnect()
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("t/plain/ü", b"one", 1),
        ("t/props", b"two", 1),
        ("t/qos0", b"three", 0),
    ]
    assert got[0].ack is not None
    assert got[2].ack is None


async def test_qos1_publishes_made_while_the_broker_is_away_go_out_after_it_returns(
    own_broker: LocalBroker,
    tmp_path: Path,
    client_factory: Callable[..., Client],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mqtt_module, "_HELD_MAX", 5)
    watcher = client_factory("out/#", on=own_broker, persistent=True)
    mqtt = MqttClient(_settings(own_broker, tmp_path, "m4"), lambda msg: None)  # type: ignore[arg-type]
    async with mqtt:
        await mqtt.wait_connected(10)
        own_broker.stop()
        await _until(lambda: not mqtt.connected)
        # While it is away, paho's queues are left alone (its connect runs in a thread).
        assert mqtt.publish("out/q0", b"lost", qos=0) == MQTTErrorCode.MQTT_ERR_NO_CONN
        for i in range(7):
            assert mqtt.publish("out/q1", str(i).encode(), qos=1) == MQTTErrorCode.MQTT_ERR_SUCCESS
        assert mqtt.held_dropped == 2  # the two oldest of seven, over the bound of five
        with pytest.raises(BrokerUnavailable):
            await mqtt.publish_confirmed("out/c", b"x", timeout=1)
        own_broker.start()
        await mqtt.wait_connected(20)
        await _until(lambda: len(watcher.messages) >= 5)
        await asyncio.sleep(0.3)
    assert [(t, p) for t, p, _ in watcher.messages] == [
        ("out/q1", str(i).encode()) for i in range(2, 7)
    ]


async def test_a_failing_handler_does_not_garble_the_messages_after_it(
    own_broker: LocalBroker, tmp_path: Path, client_factory: Callable[..., Client]
) -> None:
    got: list[bytes] = []

    def handle(msg: Message) -> None:
        if msg.payload.startswith(b"boom"):
            raise RuntimeError("a bug in the handler")
        got.append(msg.payload)

    mqtt = MqttClient(_settings(own_broker, tmp_path, "m5"), handle)  # type: ignore[arg-type]
    async with mqtt:
        await mqtt.wait_connected(10)
        mqtt.subscribe("t/#", 1)
        await asyncio.sleep(0.3)
        pub = client_factory(on=own_broker)
        for body in (b"one", b"boom 1", b"two", b"boom 2", b"three"):
            pub.publish("t/x", body)
        await _until(lambda: len(got) == 3)
        await asyncio.sleep(0.3)
        assert mqtt.connected
    assert got == [b"one", b"two", b"three"]


async def test_fast_qos0_publishes_are_whole_packets_of_every_length_class(
    own_broker: LocalBroker, tmp_path: Path, client_factory: Callable[..., Client]
) -> None:
    # Written without paho: the remaining length takes 1, 2 or 3 bytes; the topic is UTF-8.
    sizes = [0, 1, 127 - 12, 128, 16_383, 16_384, 200_000]
    watcher = client_factory("out/#", on=own_broker)
    mqtt = MqttClient(_settings(own_broker, tmp_path, "m6"), lambda msg: None)  # type: ignore[arg-type]
    async with mqtt:
        await mqtt.wait_connected(10)
        for n in sizes:
            assert mqtt.publish("out/ü/x", bytes([n % 251]) * n) == MQTTErrorCode.MQTT_ERR_SUCCESS
        mqtt.flush()
        await mqtt.publish_confirmed("out/confirmed", b"c", timeout=10)  # paho's path, confirmed
        await _until(lambda: len(watcher.messages) == len(sizes) + 1)
        assert mqtt.connected
    assert [(t, p) for t, p, _ in watcher.messages] == [
        *[("out/ü/x", bytes([n % 251]) * n) for n in sizes],
        ("out/confirmed", b"c"),
    ]

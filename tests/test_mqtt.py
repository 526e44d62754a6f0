"""The MQTT adapter on a real broker: batched socket reads lose and reorder nothing, acks go out
in one write, a paused reader leaves messages with the broker, and a restart starts clean."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson

from gateway.config import load_settings
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

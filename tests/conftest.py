"""Shared fixtures: a real Mosquitto from the repo's config, a test MQTT client, the gateway."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.localbroker import LocalBroker, free_port


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One Mosquitto for the session; tests keep apart by topic prefix and gateway id."""
    with LocalBroker(tmp_path_factory.mktemp("broker")) as b:
        yield b


REPO = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    """``bench/<script>`` as a user runs it, from the repository's root; never raises on exit."""
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A Mosquitto of this test's own, for tests that stop or restart it. It also queues QoS 0
    messages for offline persistent sessions, so a test's observer misses no score while it
    reconnects (the gateway is held to no such help: it sees the shipped configuration)."""
    b = LocalBroker(tmp_path / "broker", extra="queue_qos0_messages true").start()
    yield b
    b.stop()


class Client:
    """A test-side MQTT client (paho, its own thread) that records what it receives."""

    def __init__(self, broker: LocalBroker, *topics: str, persistent: bool = False) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed: queue.Queue[int] = queue.Queue()
        self._c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self._c.max_queued_messages_set(0)
        self._c.reconnect_delay_set(0.1, 0.5)
        self._c.on_message = self._on_message
        self._c.on_subscribe = lambda *a: self._subscribed.put(1)
        props = None
        if persistent:  # the broker keeps our subscriptions and queue across a restart
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
        self._c.connect(broker.host, broker.port, clean_start=not persistent, properties=props)
        self._c.loop_start()
        for t in topics:
            self._c.subscribe(t, qos=1)
            self._subscribed.get(timeout=10)

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def publish_async(self, topic: str, payload: dict[str, Any], qos: int = 1) -> None:
        """Publish without waiting: paho queues and resends across reconnects."""
        self._c.publish(topic, orjson.dumps(payload), qos=qos)

    def publish(
        self,
        topic: str,
        payload: bytes | dict[str, Any] | list[Any],
        qos: int = 1,
        retain: bool = False,
    ) -> None:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        self._c.publish(topic, data, qos=qos, retain=retain).wait_for_publish(10)

    def on(self, prefix: str) -> list[Any]:
        """Decoded JSON payloads received on topics starting with ``prefix``."""
        with self._cond:
            return [orjson.loads(p) for t, p, _ in self.messages if t.startswith(prefix)]

    def wait_for(self, pred: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"condition not met within {timeout}s")
                self._cond.wait(min(left, 0.2))

    def close(self) -> None:
        self._c.loop_stop()
        self._c.disconnect()


def flatten(payloads: list[Any]) -> list[dict[str, Any]]:
    """Scores arrive one per message or as a list: one flat list in arrival order."""
    out: list[dict[str, Any]] = []
    for p in payloads:
        out.extend(p if isinstance(p, list) else [p])
    return out


@pytest.fixture
def client_factory(broker: LocalBroker) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(*topics: str, on: LocalBroker | None = None, persistent: bool = False) -> Client:
        c = Client(on or broker, *topics, persistent=persistent)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@dataclass
class GatewayProc:
    """``edge-gateway run`` as a subprocess, configured by environment variables."""

    broker: LocalBroker
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=lambda: f"gw-{uuid.uuid4().hex[:8]}")
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def telemetry(self) -> str:
        return f"{self.prefix}/telemetry"

    @property
    def scores(self) -> str:
        return f"{self.prefix}/scores"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}/alerts"

    @property
    def log(self) -> str:
        path = self.workdir / f"{self.id}.log"
        return path.read_text() if path.exists() else ""

    def start(self, wait: bool = True) -> GatewayProc:
        env = dict(os.environ)
        env.update(
            {
                "EDGEGW_GATEWAY__ID": self.id,
                "EDGEGW_GATEWAY__DATA_DIR": str(self.workdir / "data"),
                "EDGEGW_MQTT__HOST": self.broker.host,
                "EDGEGW_MQTT__PORT": str(self.broker.port),
                "EDGEGW_MQTT__TELEMETRY_TOPIC": f"{self.telemetry}/#",
                "EDGEGW_MQTT__SCORES_PREFIX": self.scores,
                "EDGEGW_MQTT__ALERTS_PREFIX": self.alerts,
                "EDGEGW_MQTT__RECONNECT_MAX": "1",
                "EDGEGW_HTTP__PORT": str(self.http_port),
                **self.env,
            }
        )
        log = (self.workdir / f"{self.id}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run"], env=env, stdout=log, stderr=log
        )
        log.close()
        if wait:
            self.wait_online()
        return self

    def wait_online(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.log}")
            ok, _ = self.health()
            if ok:
                return
            time.sleep(0.1)
        raise AssertionError(f"gateway not healthy within {timeout}s:\n{self.log}")

    def health(self) -> tuple[bool, dict[str, Any]]:
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200, orjson.loads(r.read())
        except urllib.error.HTTPError as exc:
            return False, orjson.loads(exc.read())
        except OSError:
            return False, {}

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"gateway did not stop within {timeout}s:\n{self.log}") from None


@pytest.fixture
def gateway_factory(broker: LocalBroker, tmp_path: Path) -> Iterator[Callable[..., GatewayProc]]:
    made: list[GatewayProc] = []

    def make(on: LocalBroker | None = None, start: bool = True, **env: str) -> GatewayProc:
        gw = GatewayProc(on or broker, tmp_path, env=env)
        made.append(gw)
        return gw.start() if start else gw

    yield make
    for gw in made:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait()

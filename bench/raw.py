"""The raw ceiling: the fastest paho-based subscriber we could write, which only counts.

    .venv/bin/python bench/raw.py --port 1883                      # telemetry/#, QoS 1
    .venv/bin/python bench/raw.py --port 1883 --topic 'scores/#' --qos 0

``bench/compare.py`` runs it as a process of its own: against the load generator it is the most
any Python MQTT consumer could take on this machine (the gateway's ceiling), and on ``scores/#``
it is the HMI that receives the naive baseline's and the gateway's scores.

What makes it fast: MQTT 3.1.1 (no v5 properties to build for every message), the gateway's
client (``gateway.mqttwire.BufferedClient``: one ``recv`` for what the kernel holds instead of
three or four per packet, one ``send`` per round of PUBACKs, each message handed over as topic
and payload without paho's per-message objects, PUBACKs written without paho's queue), our own
``select`` loop rather than ``loop_forever`` (which goes back to ``select`` after every packet:
here a readable socket is read until it is empty, as the gateway does), and a callback that adds
two numbers. A reading is an occurrence of ``"ts"`` in a payload (telemetry
and scores carry one each), counted in C by ``bytes.count``.

It is driven by one-line commands on stdin; every answer is one JSON line on stdout:

- ``stats``: ``{"messages", "readings", "cpu_seconds"}`` since start;
- ``record N``: from now keep every Nth message with its arrival time (``time.time()``);
- ``dump PATH``: stop recording and write the kept readings' ``(ts, arrival)`` pairs to PATH
  (a ``.npy`` float64 array of shape (n, 2)), parsed only now, off the measured window;
- ``quit`` (or end of input): disconnect and exit.

On start it prints ``{"event": "ready"}`` once the broker has acknowledged the subscription.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.mqttwire import BufferedClient

_READS_PER_WAKE = 1024  # packets read per readable event, at most, before writing the PUBACKs
_MISC_EVERY = 1.0  # seconds between paho's keep-alive checks


class Counter:
    """A paho client subscribed to ``topic`` that counts messages and readings."""

    def __init__(self, host: str, port: int, topic: str, qos: int) -> None:
        self.messages = 0
        self.readings = 0
        self._stride = 0  # 0: not recording; N: keep every Nth message
        self._kept: list[tuple[float, bytes]] = []
        self._topic, self._qos = topic, qos
        self._stop = threading.Event()
        self._client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-raw-{os.getpid()}",
            protocol=paho.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: _reply({"event": "ready"})
        self._client.on_message = self._on_message  # what on_plain_publish does not take
        self._client.on_plain_publish = self._on_plain
        self._client.connect(host, port, keepalive=60)

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(self._topic, qos=self._qos)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._on_plain(msg.topic, msg.payload, msg.qos, msg.mid)

    def _on_plain(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        self.messages += 1
        self.readings += payload.count(b'"ts"')
        if self._stride and self.messages % self._stride == 0:
            self._kept.append((time.time(), payload))

    def run(self) -> None:
        """Serve the connection until ``stop``: read everything readable, then write."""
        client = self._client
        sock = client.socket()
        last_misc = time.monotonic()
        while not self._stop.is_set() and sock is not None:
            wants = [sock] if client.want_write() else []
            # Bytes already read from the kernel wait in the client: no select for them.
            readable, _, _ = select.select([sock], wants, [], 0 if client.buffered() else 0.2)
            readable = readable or ([sock] if client.buffered() else [])
            if readable:
                for _ in range(_READS_PER_WAKE):
                    if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return
                    if not client.buffered():  # what the kernel held is read
                        break
            while client.want_write():
                if client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return
            if time.monotonic() - last_misc > _MISC_EVERY:
                client.loop_misc()
                last_misc = time.monotonic()
            sock = client.socket()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._client.disconnect()

    def record(self, stride: int) -> None:
        self._kept = []
        self._stride = max(1, stride)

    def dump(self, path: Path) -> int:
        """Stop recording; write the kept readings' (ts, arrival) pairs; return how many."""
        self._stride = 0
        kept, self._kept = self._kept, []
        pairs: list[tuple[float, float]] = []
        for arrival, payload in kept:
            body = orjson.loads(payload)
            for item in body if type(body) is list else (body,):
                pairs.append((float(item["ts"]), arrival))
        np.save(path, np.asarray(pairs, dtype=np.float64).reshape(-1, 2))
        return len(pairs)


def _reply(event: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(event).decode() + "\n")
    sys.stdout.flush()


def _commands(counter: Counter) -> None:
    """Answer the harness's commands (this thread sleeps in ``readline`` in between)."""
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "stats":
            cpu = os.times()
            _reply(
                {
                    "messages": counter.messages,
                    "readings": counter.readings,
                    "cpu_seconds": cpu.user + cpu.system,
                }
            )
        elif cmd == "record":
            counter.record(int(arg or 1))
            _reply({"event": "recording"})
        elif cmd == "dump":
            _reply({"event": "dumped", "pairs": counter.dump(Path(arg))})
        elif cmd == "quit":
            break
        else:
            _reply({"event": "error", "message": f"unknown command {line.strip()!r}"})
    counter.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", default="telemetry/#")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counter = Counter(args.host, args.port, args.topic, args.qos)
    threading.Thread(target=_commands, args=(counter,), name="commands", daemon=True).start()
    counter.run()
    counter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

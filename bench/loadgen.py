"""Load generator: publishes simulated telemetry at a fixed offered rate, for ``bench/latency.py``
and ``bench/compare.py``.

    .venv/bin/python bench/loadgen.py --port 1883 --rate 2000 --duration 20 --warmup 3

Runs in its own process so that it never competes with the receiver for a GIL. It speaks MQTT
3.1.1 on a plain socket with TCP_NODELAY, like a PLC's C client: on schedule, one ``send`` per
message, so a reading's ``ts`` is taken immediately before its message is encoded and written,
and the generator itself stays cheap on the cores it shares with the gateway. Messages follow an
absolute schedule (message k is due at start + k / message rate), so the rate does not drift:
when the process falls behind it publishes everything due in one burst, a few messages a write.
Messages go to the machines round-robin (``telemetry/line1/press-01`` ...), with values from
``gateway.telemetry.Fleet`` (with ``--batch N``, N fresh readings of the machine a message).

Every reading's ``ts`` is distinct and increasing (the clock when its message is encoded, bumped
by float steps when it has not moved or within a message), so the receiver can match scores to
readings and split warm-up from the measured window by ``ts`` alone. Progress goes to stdout as
JSON lines: ``measuring`` when the warm-up ends, then ``done`` with the counts, the window's first
and last ``ts`` and how far publishing lagged.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.simulate import machine_names
from gateway.telemetry import FEATURES, Fleet

_CONNECT_TIMEOUT = 10.0
_ACK_TIMEOUT = 30.0
_KEEPALIVE = 60
_PUBACK = 0x40
# A burst (the generator behind its schedule) is written a few messages at a time: one write
# each would cost the generator a core above ~20,000 messages/s; more would delay the first
# message of a burst (its ts is taken before it is queued) by the encoding of the others.
_BURST_MESSAGES = 8
_BURST_BYTES = 16_384


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(s: str) -> bytes:
    """An MQTT UTF-8 string: two bytes of length, then the text (a topic for `publish`)."""
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


class Publisher:
    """A minimal MQTT 3.1.1 publisher on a plain socket, like a PLC's C client.

    A paced paho publisher cost 130-190 µs of CPU per QoS 1 message on the 2-core VM (MQTT
    3.1.1 / 5, mostly decoding PUBACKs); this costs about 55, so the generator takes less of the
    cores the gateway needs."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self._sock = socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        variable = mqtt_string("MQTT") + bytes((4, 0x02)) + _KEEPALIVE.to_bytes(2, "big")
        self._sock.sendall(_packet(0x10, variable + mqtt_string(client_id)))
        connack = self._recv_exactly(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"broker refused the connection: CONNACK {connack.hex()}")
        self._sock.settimeout(None)
        self._buffer = b""
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._mid = 0
        self.sent = 0
        self.acked = 0

    def publish(self, topic: bytes, payload: bytes, qos: int) -> None:
        """Queue one PUBLISH (``topic`` already length-prefixed); it is written by ``flush``,
        or at once when a few are queued (a burst goes out in a few writes, not one each)."""
        if qos:
            self._mid = self._mid % 0xFFFF + 1
            body = topic + self._mid.to_bytes(2, "big") + payload
        else:
            body = topic + payload
        self._out.append(_packet(0x30 | qos << 1, body))
        self._out_bytes += len(body)
        self.sent += 1
        if len(self._out) >= _BURST_MESSAGES or self._out_bytes >= _BURST_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write every queued PUBLISH in one ``sendall``."""
        if self._out:
            self._sock.sendall(b"".join(self._out))
            self._out.clear()
            self._out_bytes = 0

    def poll(self) -> None:
        """Count the acknowledgements that have arrived, without waiting."""
        try:
            chunk = self._sock.recv(65_536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        buf = self._buffer + chunk
        pos = 0
        while len(buf) - pos >= 2:
            length, size = buf[pos + 1], 2  # acks and pings are short: one length byte
            if length & 0x80 or len(buf) - pos < size + length:
                break
            if buf[pos] == _PUBACK:
                self.acked += 1
            pos += size + length
        self._buffer = buf[pos:]

    def ping(self) -> None:
        self.flush()
        self._sock.sendall(b"\xc0\x00")

    def close(self) -> None:
        """Write what is queued, then DISCONNECT."""
        with contextlib.suppress(OSError):
            self.flush()
            self._sock.sendall(b"\xe0\x00")
        self._sock.close()

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data


@dataclass(frozen=True)
class LoadSpec:
    """What to offer: readings per second, for how long, in what shape."""

    host: str
    port: int
    rate: float = 2_000.0
    duration: float = 20.0
    warmup: float = 3.0
    machines: int = 20
    batch: int = 1
    qos: int = 1
    prefix: str = "telemetry"

    @property
    def message_rate(self) -> float:
        return self.rate / self.batch

    def messages(self, seconds: float) -> int:
        return round(seconds * self.message_rate)


class LoadGenerator:
    """One connection publishing ``spec`` on an absolute schedule."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self._fleet = _tiled_fleet(spec.machines, spec.batch, seed=7)
        names = machine_names(spec.machines)
        self._topics = [mqtt_string(f"{spec.prefix}/{name}") for name in names]
        self._rows: list[list[list[float]]] = []
        self._last_ts = 0.0
        self._lags: list[float] = []
        self._pub: Publisher | None = None

    def connect(self) -> None:
        self._pub = Publisher(self.spec.host, self.spec.port, f"bench-loadgen-{time.time_ns():x}")

    def close(self) -> None:
        if self._pub is not None:
            self._pub.close()

    def run(self) -> dict[str, Any]:
        """Publish the warm-up, then the measured window; return the counts (JSON-ready)."""
        spec, pub = self.spec, self._pub
        assert pub is not None, "connect() first"
        warm, total = spec.messages(spec.warmup), spec.messages(spec.warmup + spec.duration)
        interval = 1.0 / spec.message_rate
        first_ts = last_ts = start_wall = cpu0 = 0.0
        t0 = last_ping = time.monotonic()
        k = 0
        while k < total:
            now = time.monotonic()
            due = t0 + k * interval
            if now < due:
                time.sleep(due - now)
                continue
            while k < total and t0 + k * interval <= now:  # everything due: one burst
                if k == warm:
                    start_wall, cpu0 = time.time(), time.process_time()
                    _emit({"event": "measuring", "wall": start_wall})
                first, last = self._publish(pub, k)
                if k >= warm:
                    self._lags.append(time.monotonic() - (t0 + k * interval))
                    first_ts = first_ts or first
                    last_ts = last  # the message's last reading: the window takes all of it
                k += 1
            pub.flush()
            pub.poll()  # acknowledgements are counted once a burst: one wake-up per burst
            if now - last_ping > _KEEPALIVE / 2:
                pub.ping()
                last_ping = now
        end_wall, cpu = time.time(), time.process_time() - cpu0
        unacked = self._await_acks(pub, total)
        measured = (total - warm) * spec.batch
        lags_ms = np.asarray(self._lags) * 1e3
        return {
            "event": "done",
            "readings": measured,
            "messages": total - warm,
            "warmup_readings": warm * spec.batch,
            "first_ts": first_ts,
            "last_ts": last_ts,
            "seconds": end_wall - start_wall,
            "rate": measured / (end_wall - start_wall) if end_wall > start_wall else 0.0,
            "unacknowledged": unacked,
            "lag_ms": {
                "p50": _pct(lags_ms, 50),
                "p99": _pct(lags_ms, 99),
                "max": float(lags_ms.max()) if lags_ms.size else 0.0,
            },
            "cpu_seconds": cpu,  # of the measured window
        }

    def _publish(self, pub: Publisher, k: int) -> tuple[float, float]:
        """Publish message ``k``; returns the ``ts`` of its first and last reading."""
        spec = self.spec
        machine = k % spec.machines
        if machine == 0 or not self._rows:  # fresh values for every machine once a round
            values = self._fleet.sample(time.time()).round(3)
            self._rows = values.reshape(spec.batch, spec.machines, -1).transpose(1, 0, 2).tolist()
        rows = self._rows[machine]
        stamps = self._stamps(len(rows))
        readings = [
            dict(zip(FEATURES, row, strict=True), ts=ts)
            for row, ts in zip(rows, stamps, strict=True)
        ]
        pub.publish(
            self._topics[machine],
            orjson.dumps(readings[0] if spec.batch == 1 else readings),
            spec.qos,
        )
        return stamps[0], stamps[-1]

    def _stamps(self, n: int) -> list[float]:
        """``n`` increasing ``ts`` for one message, from the clock now: ts is unique, as it is
        the key that matches scores to readings."""
        ts = max(time.time(), math.nextafter(self._last_ts, math.inf))
        stamps = [ts] if n == 1 else (ts + np.arange(n) * math.ulp(ts)).tolist()
        self._last_ts = stamps[-1]
        return stamps

    def _await_acks(self, pub: Publisher, total: int) -> int:
        expected = total if self.spec.qos else 0
        deadline = time.monotonic() + _ACK_TIMEOUT
        while pub.acked < expected and time.monotonic() < deadline:
            time.sleep(0.01)
            pub.poll()
        return max(0, expected - pub.acked)


def _tiled_fleet(machines: int, rows: int, seed: int) -> Fleet:
    """A fleet whose row ``r * machines + m`` is machine ``m`` (its constants, its own noise):
    one ``sample`` gives every machine ``rows`` readings, so a 50-reading message costs a
    fiftieth of a numpy call rather than fifty (35 µs each)."""
    base, tiled = Fleet(machines, seed=seed), Fleet(machines * rows, seed=seed)
    for name, value in vars(base).items():
        if isinstance(value, np.ndarray) and value.shape == (machines,):
            setattr(tiled, name, np.tile(value, rows))
    return tiled


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else 0.0


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(event).decode() + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> LoadSpec:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=2_000.0, help="readings per second offered")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds first, not counted")
    p.add_argument("--machines", type=int, default=20)
    p.add_argument("--batch", type=int, default=1, help="readings per message")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--prefix", default="telemetry")
    a = p.parse_args(argv)
    if a.rate <= 0 or a.duration <= 0 or a.warmup < 0 or a.machines < 1 or a.batch < 1:
        p.error("rate, duration and machines must be positive, warmup not negative, batch >= 1")
    return LoadSpec(
        a.host, a.port, a.rate, a.duration, a.warmup, a.machines, a.batch, a.qos, a.prefix
    )


def main(argv: list[str] | None = None) -> int:
    gen = LoadGenerator(parse_args(argv))
    gen.connect()
    try:
        _emit(gen.run())
    finally:
        gen.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

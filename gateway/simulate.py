"""Simulated plant: publishes realistic telemetry for N machines, with faults on a schedule.

    edge-gateway simulate --machines 12 --rate 5 --fault-every 20

Faults alternate between bearing wear and overheating, one machine at a time: each ramps up over
a few seconds, holds, and is repaired, so alerts raise and then clear. ``--malformed`` replaces
that share of messages with broken payloads (bad JSON, strings, missing fields, NaN) to exercise
the dead-letter path.
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .telemetry import FEATURES, Fleet

__all__ = ["FaultSchedule", "add_arguments", "machine_names", "run"]

log = logging.getLogger(__name__)

_KINDS = ("press", "pump", "fan", "mill", "lathe", "saw")


def machine_names(n: int) -> list[str]:
    """``line1/press-01``, ``line1/pump-02``, …: six machines a line."""
    return [f"line{i // 6 + 1}/{_KINDS[i % 6]}-{i + 1:02d}" for i in range(n)]


@dataclass
class FaultSchedule:
    """Every ``every`` seconds (from ``first``) the next machine develops the next fault."""

    every: float = 20.0
    first: float = 5.0
    ramp: float = 4.0
    length: float = 25.0

    def levels(self, elapsed: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        wear, heat = np.zeros(n), np.zeros(n)
        if self.every <= 0 or elapsed < self.first:
            return wear, heat
        k_last = int((elapsed - self.first) // self.every)
        for k in range(max(0, k_last - int(self.length // self.every) - 1), k_last + 1):
            age = elapsed - self.first - k * self.every
            if 0 <= age < self.length:
                level = min(1.0, age / self.ramp) if self.ramp > 0 else 1.0
                target = wear if k % 2 == 0 else heat
                target[(k * 5) % n] = max(target[(k * 5) % n], level)
        return wear, heat


def _malformed(rng: random.Random, reading: dict[str, Any], fmt: str) -> bytes:
    kind = rng.randrange(6)
    bad = dict(reading)
    if kind == 0:
        return b'{"ts": 1764300000, "temperature": 41.2, '  # truncated JSON
    if kind == 1:
        bad["vibration"] = "high"
    elif kind == 2:
        del bad["current"]
    elif kind == 3:
        bad["pressure"] = float("nan")
        return msgpack.packb(bad)  # JSON cannot carry NaN; MessagePack can
    elif kind == 4:
        return orjson.dumps([1, 2, 3])
    else:
        return b"\x00\x01garbage"
    return msgpack.packb(bad) if fmt == "msgpack" else orjson.dumps(bad)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--machines", type=int, default=12)
    p.add_argument("--rate", type=float, default=5.0, help="readings per second per machine")
    p.add_argument("--batch", type=int, default=1, help="readings per message (a PLC's batch)")
    p.add_argument("--format", choices=("json", "msgpack"), default="json")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--prefix", default="telemetry")
    p.add_argument("--duration", type=float, default=0.0, help="seconds; 0 runs until Ctrl-C")
    p.add_argument("--fault-every", type=float, default=20.0, help="seconds; 0: no faults")
    p.add_argument("--fault-length", type=float, default=25.0)
    p.add_argument("--malformed", type=float, default=0.0, help="share of malformed messages")
    p.add_argument("--seed", type=int, default=42)


def run(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Publish until the duration ends or ``stop`` is set; returns messages published."""
    stop = stop or threading.Event()
    names = machine_names(args.machines)
    fleet = Fleet(args.machines, seed=args.seed)
    schedule = FaultSchedule(every=args.fault_every, length=args.fault_length)
    rng = random.Random(args.seed)
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"simulator-{rng.getrandbits(32)}",
        protocol=paho.MQTTv5,
    )
    client.max_queued_messages_set(0)
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    pack = msgpack.packb if args.format == "msgpack" else orjson.dumps
    topics = [f"{args.prefix}/{name}" for name in names]
    pending: list[list[dict[str, Any]]] = [[] for _ in names]
    period = 1.0 / args.rate
    start = time.monotonic()
    tick = 0
    sent = 0
    log.info(
        "simulating machines=%d rate=%s/s each batch=%d format=%s",
        len(names),
        args.rate,
        args.batch,
        args.format,
    )
    try:
        while not stop.is_set():
            elapsed = tick * period
            if args.duration and elapsed >= args.duration:
                break
            delay = start + elapsed - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            fleet.wear, fleet.overheat = schedule.levels(elapsed, len(names))
            now = time.time()
            rows = fleet.sample(now).round(3).tolist()
            for i, row in enumerate(rows):
                reading: dict[str, Any] = dict(zip(FEATURES, row, strict=True))
                reading["ts"] = now
                pending[i].append(reading)
                if len(pending[i]) < args.batch:
                    continue
                batch, pending[i] = pending[i], []
                if args.malformed and rng.random() < args.malformed:
                    payload = _malformed(rng, batch[0], args.format)
                else:
                    payload = pack(batch[0] if args.batch == 1 else batch)
                client.publish(topics[i], payload, qos=args.qos)
                sent += 1
            tick += 1
    finally:
        client.loop_stop()
        client.disconnect()
    return sent

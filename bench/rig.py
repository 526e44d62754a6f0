"""The systems ``bench/compare.py`` puts side by side, each on its own broker, and one step of load.

A ``Rig`` is one system under test with everything around it, each a process of its own:

- ``raw``: the raw ceiling, ``bench/raw.py`` subscribed to ``telemetry/#`` (it only counts);
- ``naive``: ``bench/naive.py`` (the 30-line paho + ONNX Runtime script), and ``bench/raw.py`` on
  ``scores/#`` as the HMI receiving its scores;
- ``gateway``: ``python -m gateway.cli run`` with the full pipeline (scoring, alerts, the spool at
  its default durability, the uplink to the local OCI stand-in), and the same score receiver.

Each rig starts a private Mosquitto from the repo's ``mosquitto.conf`` (``LocalBroker``), then its
processes, and is ready when a probe reading has come through end to end. ``Rig.step`` offers
one rate with ``bench/loadgen.py`` (a process of its own) and measures it: loss, whether the
system kept up, latency (publish → received) of the readings stamped inside the window, and the
CPU each process used (utime + stime from /proc), per reading and per cent of a core.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from latency import (
    broker_problems,
    find_pid,
    follow_loadgen,
    machine_cpu_seconds,
    percentiles,
    process_cpu_seconds,
)
from loadgen import Publisher, mqtt_string
from procs import BENCH, REPO, Cloud, Proc, Receiver, scrape

from gateway.localbroker import LocalBroker, free_port

SYSTEMS = ("raw", "naive", "gateway")
MAX_BACKLOG_S = 0.2  # behind by more than this when the load stopped: the system did not keep up
GENERATOR_PACE = 0.95  # the generator offered less than this share of the rate: not a valid step
_QUIET = 2.0  # seconds without a new reading before the stragglers are given up on
_DRAIN_LIMIT = 15.0  # seconds a backlog may take to drain after the load before a restart
_PROBE_TOPIC = "telemetry/probe/probe-01"


def _probe_payload() -> bytes:
    """A healthy reading of the default model (its first golden sample), stamped now."""
    manifest = orjson.loads((REPO / "models" / "default" / "manifest.json").read_bytes())
    names = [f["name"] for f in manifest["features"]]
    values = manifest["golden"]["inputs"][0]
    return orjson.dumps({"ts": time.time(), **dict(zip(names, values, strict=True))})


# -- one system under test -----------------------------------------------------------------
class Rig:
    """One system, its broker and its receiver, started fresh (``start``/``restart``)."""

    def __init__(
        self, system: str, batch: int, workdir: Path, cloud: Cloud | None, machines: int
    ) -> None:
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}: one of {', '.join(SYSTEMS)}")
        if system == "gateway" and cloud is None:
            raise ValueError("the gateway's rig needs the OCI stand-in")
        self.system, self.batch, self.machines = system, batch, machines
        self._root, self._cloud = workdir, cloud
        self._starts = 0
        self.broker: LocalBroker | None = None
        self.proc: Proc | None = None  # the system's own process (raw: the receiver itself)
        self.receiver: Receiver | None = None
        self.http_port = 0
        self.problems: list[str] = []
        self.incarnations: list[dict[str, Any]] = []  # gateway: its counters when it stopped

    def __enter__(self) -> Rig:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self._starts += 1
        work = self._root / f"run{self._starts}"
        work.mkdir(parents=True)
        broker = self.broker = LocalBroker(work / "broker")
        broker.start()
        port = broker.port
        if self.system == "raw":
            self.receiver = Receiver(port, "telemetry/#", 1, work / "raw.log", "raw")
            self.proc = self.receiver
            self.receiver.wait_ready()
        else:
            if self.system == "naive":
                cmd = [sys.executable, str(BENCH / "naive.py"), "--port", str(port)]
                self.proc = Proc("naive", cmd, work / "naive.log")
            else:
                self.proc = Proc(
                    "gateway",
                    [sys.executable, "-m", "gateway.cli", "run"],
                    work / "gateway.log",
                    env=self._gateway_env(work, port),
                )
            self.receiver = Receiver(port, "scores/#", 0, work / "receiver.log", "receiver")
            self.receiver.wait_ready()
        self._probe()

    def _gateway_env(self, work: Path, mqtt_port: int) -> dict[str, str]:
        assert self._cloud is not None
        self.http_port = free_port()
        return {
            **os.environ,  # other EDGEGW_* variables pass through, to compare settings
            "EDGEGW_MQTT__HOST": "127.0.0.1",
            "EDGEGW_MQTT__PORT": str(mqtt_port),
            "EDGEGW_GATEWAY__ID": f"bench-{os.getpid()}-{self._starts}",
            "EDGEGW_GATEWAY__DATA_DIR": str(work / "data"),
            "EDGEGW_HTTP__HOST": "127.0.0.1",
            "EDGEGW_HTTP__PORT": str(self.http_port),
            **self._cloud.gateway_env(),
        }

    def _probe(self, timeout: float = 60.0) -> None:
        """Publish a probe reading every second until something comes through end to end."""
        assert self.broker is not None
        assert self.receiver is not None
        assert self.proc is not None
        base = self.receiver.readings()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.check_alive()
            probe = Publisher("127.0.0.1", self.broker.port, f"bench-probe-{os.getpid()}")
            probe.publish(mqtt_string(_PROBE_TOPIC), _probe_payload(), 1)
            probe.close()  # the DISCONNECT follows the PUBLISH, which the broker takes first
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                if self.receiver.readings() > base:
                    time.sleep(0.2)  # a second probe in flight lands before the first step
                    return
                time.sleep(0.05)
        raise TimeoutError(f"{self.system}: no probe came through within {timeout:g} s")

    def stop(self) -> None:
        if self.system == "gateway" and self.proc is not None:
            with contextlib.suppress(Exception):  # a dead gateway has no counters to give
                self.incarnations.append(self.uplink_counters())
        for proc in (self.receiver, self.proc):
            if proc is not None:
                proc.stop()
                self.problems += proc.log_problems()
                if proc.name == "gateway" and proc.exit_code != 0:
                    self.problems.append(f"gateway: exit code {proc.exit_code} on SIGTERM")
        if self.broker is not None:
            self.broker.stop()
            self.problems += broker_problems(self.broker)
        self.proc = self.receiver = self.broker = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- the gateway's uplink --------------------------------------------------------------
    def uplink_counters(self, wait: float = 0.0) -> dict[str, Any]:
        """The gateway's uplink and scoring counters, after waiting up to ``wait`` s for its
        spool to be sent (the uplink lingers up to 5 s to fill messages)."""
        deadline = time.monotonic() + wait
        while True:
            m = scrape(self.http_port)
            waiting = m.get("gateway_spool_readings", 0.0)
            if waiting == 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        return {
            "readings_scored": int(m.get("gateway_readings_scored_total", 0)),
            "uplink_bytes": int(m.get("gateway_uplink_bytes_total", 0)),
            "uplink_messages": int(m.get("gateway_uplink_messages_total", 0)),
            "uplink_throttled": int(m.get("gateway_uplink_throttled_total", 0)),
            "spool_readings_waiting": int(waiting),
            "spool_dropped_readings": int(m.get("gateway_spool_dropped_readings_total", 0)),
        }

    # -- one step --------------------------------------------------------------------------
    def step(
        self, rate: float, duration: float, warmup: float, stride: int, scratch: Path
    ) -> dict[str, Any]:
        """Offer ``rate`` readings/s for ``warmup`` + ``duration`` s and measure the window.

        Every ``stride``-th message received is kept for latency. Restarts the rig afterwards
        if a backlog did not drain, so the next step starts clean."""
        assert self.broker is not None
        assert self.receiver is not None
        assert self.proc is not None
        receiver, proc = self.receiver, self.proc
        broker_pid = find_pid(str(self.broker.config_path))
        base = receiver.readings()
        receiver.ask(f"record {stride}")
        before: dict[str, Any] = {}

        def mark() -> None:
            proc.reset_peak_rss()
            before.update(
                snap=self._snapshot(broker_pid),
                received=receiver.readings(),
                metrics=scrape(self.http_port) if self.system == "gateway" else {},
                threads=proc.threads_cpu(),
            )

        port = self.broker.port
        load = run_loadgen(port, rate, duration, warmup, self.machines, self.batch, mark)
        end_wall = time.monotonic()
        at_end = receiver.readings() - base
        expected = int(load["readings"] + load["warmup_readings"])
        backlog = max(0, expected - at_end)
        # Behind when the load stopped: saturated. Its backlog is not waited for (it drains at
        # the system's pace); the rig restarts instead, and the step's loss is not measured.
        drained = backlog / rate <= MAX_BACKLOG_S
        received = self._drain(base, expected, duration) if drained else at_end
        after = self._snapshot(broker_pid)
        pairs = _load_pairs(receiver, scratch)
        window = pairs[(pairs[:, 0] >= load["first_ts"]) & (pairs[:, 0] <= load["last_ts"])]
        published = int(load["readings"])
        lost = max(0, expected - received) if drained else None
        reason = _verdict(rate, load, lost, backlog)
        b = before["snap"]
        cpu = {name: after[name] - b[name] for name in after if name != "wall"}
        cpu["loadgen"] = float(load["cpu_seconds"])
        known = sum(v for k, v in cpu.items() if k != "machine")
        cpu["other"] = max(0.0, cpu.pop("machine") - known)
        wall = after["wall"] - b["wall"]
        result: dict[str, Any] = {
            "rate": rate,
            "duration_s": duration,
            "achieved_rate": load["rate"],
            "published": published,
            "expected": expected,
            "received": received,
            "lost": lost,
            "backlog_at_end": backlog,
            "backlog_s": backlog / rate,
            "delivered_rate": (at_end - (before["received"] - base)) / (end_wall - b["wall"]),
            "sustained": reason is None,
            "reason": reason,
            "latency_ms": percentiles((window[:, 1] - window[:, 0]) * 1e3) if len(window) else None,
            "latency_samples": int(window.shape[0]),
            "latency_stride": stride,
            "cpu_us_per_reading": cpu["system"] / published * 1e6 if published else None,
            "cpu_percent_of_one_core": {k: v / wall * 100 for k, v in cpu.items()},
            "peak_rss_bytes": proc.peak_rss(),
            "loadgen": {k: load[k] for k in ("lag_ms", "unacknowledged", "seconds")},
        }
        if self.system == "gateway":
            result["gateway"] = _gateway_deltas(
                before["metrics"], scrape(self.http_port), cpu["system"]
            )
            result["gateway"]["threads_percent_of_one_core"] = _thread_shares(
                before["threads"], proc.threads_cpu(), proc.pid, wall
            )
        if received < expected:  # the next step would measure this backlog
            self.restart()
        return result

    def _drain(self, base: int, expected: int, duration: float) -> int:
        """Wait until ``expected`` readings are in, or none came for a while; return the count."""
        assert self.receiver is not None
        start = last_change = time.monotonic()
        seen = self.receiver.readings() - base
        while seen < expected and time.monotonic() - start < _DRAIN_LIMIT + duration:
            time.sleep(0.05)
            now = self.receiver.readings() - base
            if now != seen:
                seen, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > _QUIET:
                break
        return seen

    def _snapshot(self, broker_pid: int | None) -> dict[str, float]:
        assert self.proc is not None
        assert self.receiver is not None
        snap = {
            "wall": time.monotonic(),
            "system": self.proc.cpu_seconds(),
            "broker": process_cpu_seconds(broker_pid) if broker_pid else 0.0,
            "cloud": self._cloud.cpu_seconds() if self._cloud and self.system == "gateway" else 0.0,
            "harness": time.process_time(),
            "machine": machine_cpu_seconds(),
        }
        if self.receiver is not self.proc:
            snap["receiver"] = self.receiver.cpu_seconds()
        return snap


def _verdict(rate: float, load: dict[str, Any], lost: int | None, backlog: int) -> str | None:
    """Why the step does not count as sustained, or None if it does."""
    if backlog / rate > MAX_BACKLOG_S:
        return "backlog"
    if lost:
        return "loss"
    if load["rate"] < GENERATOR_PACE * rate or load["unacknowledged"]:
        return "generator"  # the rate was not offered: the step says nothing about the system
    return None


def _thread_shares(
    before: dict[int, float], after: dict[int, float], pid: int, wall: float
) -> dict[str, float]:
    """Per cent of one core: the main thread (the gateway's event loop), then the others by
    thread id, busiest first (the scorer, spool and uplink workers, the HTTP server)."""
    used = {tid: (seconds - before.get(tid, 0.0)) / wall * 100 for tid, seconds in after.items()}
    out = {"main": used.pop(pid, 0.0)}
    out.update({f"thread {tid}": v for tid, v in sorted(used.items(), key=lambda kv: -kv[1])})
    return out


def _load_pairs(receiver: Receiver, scratch: Path) -> np.ndarray:
    path = scratch / "pairs.npy"
    receiver.ask(f"dump {path}")
    pairs: np.ndarray = np.load(path)
    path.unlink()
    return pairs


def _gateway_deltas(
    before: dict[str, float], after: dict[str, float], cpu_seconds: float
) -> dict[str, Any]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    calls = delta("gateway_batch_size_count")
    model = delta("gateway_model_call_seconds_sum")
    scored = delta("gateway_readings_scored_total")
    return {
        "readings_scored": int(scored),
        "model_calls": int(calls),
        "mean_batch": delta("gateway_batch_size_sum") / calls if calls else None,
        "model_call_seconds": model,
        "mean_model_call_us": model / calls * 1e6 if calls else None,
        # The loop's clock around each model call (gateway_model_call_seconds) over CPU time.
        "onnx_share_of_cpu": model / cpu_seconds if cpu_seconds > 0 else None,
        "uplink_bytes": int(delta("gateway_uplink_bytes_total")),
        "deadlettered": int(delta("gateway_readings_deadlettered_total")),
        "spool_commits": int(delta("gateway_spool_commit_seconds_count")),
    }


def run_loadgen(
    port: int,
    rate: float,
    duration: float,
    warmup: float,
    machines: int,
    batch: int,
    on_measuring: Callable[[], None],
) -> dict[str, Any]:
    """Run ``bench/loadgen.py`` (QoS 1) to the end; call ``on_measuring()`` as its window opens."""
    cmd = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--rate", f"{rate:g}"]
    cmd += ["--duration", f"{duration:g}", "--warmup", f"{warmup:g}", "--qos", "1"]
    cmd += ["--machines", str(machines), "--batch", str(batch)]
    return follow_loadgen(cmd, on_measuring)

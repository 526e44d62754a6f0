"""A model swap under load, and what an idle poll of the bucket costs.

    .venv/bin/python bench/modelswap.py                  # 2,000 readings/s, 30 s, 3 swaps
    .venv/bin/python bench/modelswap.py --rate 200 --duration 4 --warmup 1 --versions 2.0.0

Answers issue 4's "Done when": readings dropped while the model is swapped (must be 0), the
worst latency the swap adds, and the requests and bytes of one idle poll.

Starts the local OCI stand-in (in its own process, behind a relay here that counts the bytes on
the wire), a private Mosquitto and the gateway (``python -m gateway.cli run``) with
``model.source = oci://…`` (the real ``oci`` SDK, signed requests), a 1 s poll without jitter
and a public key. Each version of the bucket is the bundled default model, signed with a key
made for the run; ``1.0.0`` is ``LATEST`` at start, so the gateway serves it from the bucket
before the load begins. Then ``bench/loadgen.py`` (its own process, as for ``latency.py``)
offers QoS 1 readings, one a message, round-robin over the machines, while ``--versions`` are
promoted in turn (``LATEST`` rewritten), spread over the measured window; each waits for the
previous swap. By default ``2.0.0`` (downloaded), then ``1.0.0`` and ``2.0.0`` again (from the
gateway's cache): back and forth.

A subscriber here takes ``time.time()`` for every score and reads the retained
``gateway/<id>/model`` topic, whose ``last_event`` ``swapped`` carries the swap's ``ts``. It
reports readings published against distinct scores received (dropped, duplicates: both must be
0), how often the model label changes in the score stream ordered by ``ts`` (once a swap: no
reading scored by the old model after the new one took over), and publish → score latency
percentiles: in steady state (outside every swap), within ±0.5 s of each swap, and from the
promotion until 0.5 s after the swap (the download, checks and load run in worker threads while
readings stream in). The added latency of a swap is its ±0.5 s maximum minus the steady-state
p99. Each swap's timing comes from its report: promotion → swap (including the wait for the
next poll) and poll → swap (the report's ``last_poll``, when the poll that found it began).

Then, with nothing changing, ``--idle-polls`` polls: the stand-in's request log gives requests
per poll, their operation, status and body bytes (one conditional GetObject of ``LATEST``
answered 304 with no body, expected); the relay gives the bytes on the wire each way (plain
HTTP: TLS adds its record overhead) and the TCP connections opened. Last, one more version is
promoted with no load, for the gateway CPU one swap costs above its idle rate (schedstat,
nanoseconds). A table goes to stdout and JSON to ``bench/results/modelswap.json``; the exit
status is 1 if a reading was dropped or scored twice, or a swap did not happen.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson
import paho.mqtt.client as paho

# latency.py sits beside this script, which Python puts first on sys.path (as for compare.py).
from latency import (
    CpuSnapshot,
    GatewayProcess,
    ScoreCollector,
    broker_problems,
    find_pid,
    machine_info,
    run_loadgen,
    write_json,
)

from gateway.localbroker import LocalBroker, free_port
from gateway.manifest import Manifest, default_bundle_dir
from gateway.signing import generate_keypair, load_private_key, sign_manifest

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_OUT = BENCH / "results" / "modelswap.json"
SOURCE = "oci://standin/models-bench/site-a"
BASELINE = "1.0.0"  # LATEST when the gateway starts
IDLE_SWAP = "idle-swap"  # promoted once the load is over: what one swap costs the gateway
WINDOW = 0.5  # seconds either side of a swap
POLL_INTERVAL = 1.0
_SWAP_TIMEOUT = 30.0  # from a promotion to its swap
_DRAIN_QUIET = 2.0
_DRAIN_MAX = 30.0
_NOISY = 25.0  # per cent of one core used by other processes that makes a run noisy


# -- the cloud: the OCI stand-in and a byte-counting relay, in a process of their own ----------
class WireCounter:
    """A TCP relay in front of the stand-in: counts bytes each way and connections opened."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self.counts = {"connections": 0, "request_bytes": 0, "response_bytes": 0}

    def __enter__(self) -> WireCounter:
        threading.Thread(target=self._accept, name="wire.accept", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.close()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.counts["connections"] += 1
            pair = [2]  # pumps still running: the last one closes both sockets
            for src, dst, key in (
                (client, upstream, "request_bytes"),
                (upstream, client, "response_bytes"),
            ):
                threading.Thread(
                    target=self._pump, args=(src, dst, key, pair), name="wire.pump", daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, key: str, pair: list[int]) -> None:
        try:
            while data := src.recv(65_536):
                dst.sendall(data)
                with self._lock:
                    self.counts[key] += len(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            pair[0] -= 1
            last = pair[0] == 0
        if last:
            src.close()
            dst.close()


def _cloud_main(conn: Connection, workdir: str) -> None:
    """The child process: serve the parent's commands until ``stop`` or the pipe closes."""
    from gateway.modelstore import open_store
    from tests.ocistandin import StandIn, make_credentials

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it; Ctrl-C is the parent's
    root = Path(workdir)
    creds = make_credentials(root / "oci")
    keys = {creds.key_id: creds.public_key_pem}
    with StandIn(root / "data", public_keys=keys) as standin, WireCounter(standin.port) as wire:
        store = open_store(
            SOURCE,
            oci_config=creds.config_file,
            oci_profile=creds.profile,
            endpoint=standin.endpoint,
        )

        def publish(folder: str, version: str) -> None:
            for name in ("model.onnx", "manifest.json"):  # as `model publish`: LATEST untouched
                store.put(version, name, Path(folder) / name)

        def promote(version: str) -> float:
            store.set_latest(version)
            return time.time()

        commands: dict[str, Callable[..., Any]] = {
            "publish": publish,
            "promote": promote,
            "log": lambda: [dataclasses.asdict(r) for r in standin.request_log()],
            "clear": standin.clear_request_log,
            "wire": wire.snapshot,
        }
        conn.send({"endpoint": wire.endpoint, "config": str(creds.config_file)})
        while True:
            try:
                op, *args = conn.recv()
            except EOFError:
                return
            if op == "stop":
                conn.send(None)
                return
            try:
                conn.send(("ok", commands[op](*args)))
            except Exception as exc:  # reported to the parent, which raises it
                conn.send(("error", f"{op}: {exc!r}"))


class Cloud:
    """The parent's handle on the child: the stand-in's endpoint (through the relay), its
    request log, the relay's counts, and publishing and promoting versions."""

    def __init__(self, workdir: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_cloud_main, args=(child, str(workdir)), name="ocistandin", daemon=True
        )
        self._lock = threading.Lock()
        self.endpoint = self.config_file = ""

    def __enter__(self) -> Cloud:
        self._proc.start()
        if not self._conn.poll(60):
            self.__exit__()
            raise TimeoutError("the OCI stand-in did not start within 60 s")
        info = self._conn.recv()
        self.endpoint, self.config_file = info["endpoint"], info["config"]
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError, EOFError):
                self._conn.send(("stop",))
                if self._conn.poll(10):
                    self._conn.recv()
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

    def call(self, op: str, *args: Any) -> Any:
        with self._lock:
            self._conn.send((op, *args))
            status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"OCI stand-in: {value}")
        return value


# -- the gateway and the receiver --------------------------------------------------------------
class Gateway(GatewayProcess):
    """latency.py's gateway process, with this benchmark's model settings."""

    def __init__(self, workdir: Path, mqtt_port: int, gateway_id: str, env: dict[str, str]) -> None:
        super().__init__(REPO, workdir, mqtt_port, gateway_id, free_port())
        self._env.update(env)


class SwapCollector(ScoreCollector):
    """latency.py's score receiver, which also keeps each score's model label and every
    report on the retained ``gateway/<id>/model`` topic."""

    def __init__(self, host: str, port: int, gateway_id: str) -> None:
        super().__init__(host, port, gateway_id)
        self._model_topic = f"gateway/{gateway_id}/model"
        self._labels: list[str] = []
        self.reports: list[dict[str, Any]] = []

    def scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ts, received, model label) of every score so far."""
        n = self.count
        pairs = np.array(self._scores[:n], dtype=np.float64).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1], np.array(self._labels[:n], dtype=object)

    def event(self, version: str, after: float) -> dict[str, Any] | None:
        """The newest report whose ``last_event`` is about ``version``, stamped at or after
        ``after``."""
        for report in reversed(self.reports):
            last = report.get("last_event") or {}
            if last.get("version") == version and last.get("ts", 0.0) >= after:
                return report
        return None

    def wait_swapped(self, version: str, after: float, timeout: float) -> dict[str, Any]:
        """The report of ``version``'s swap; RuntimeError with the last reason if it was
        refused or did not come within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.event(version, after)
            if report is not None and report["last_event"]["event"] == "swapped":
                return report
            if report is not None and report["last_event"]["event"] in (
                "rejected",
                "shadow_rejected",
            ):
                break
            time.sleep(0.02)
        last = (self.event(version, after) or {}).get("last_event") or {}
        raise RuntimeError(
            f"version {version} was not swapped in within {timeout:g} s: "
            f"last event {last.get('event')!r}, reason {last.get('reason')!r}"
        )

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        super()._on_connect(client, userdata, flags, rc, props)
        client.subscribe(self._model_topic, 1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        received = time.time()
        if msg.topic.startswith("scores/"):
            body = orjson.loads(msg.payload)
            for score in body if type(body) is list else (body,):
                self._labels.append(score["model"])  # first: a counted score has its label
                self._scores.append((score["ts"], received))
        elif msg.topic == self._model_topic:
            self.reports.append(orjson.loads(msg.payload))
        else:
            super()._on_message(client, userdata, msg)


# -- bundles and the promotion schedule --------------------------------------------------------
def make_bundles(root: Path, versions: list[str]) -> Path:
    """Sign the bundled default model as each version; return the public key's path."""
    private, public = root / "keys" / "signing.key", root / "keys" / "signing.pub"
    generate_keypair(private, public)
    key = load_private_key(private)
    default = default_bundle_dir()
    body = Manifest.model_validate_json((default / "manifest.json").read_bytes())
    body_json = body.model_dump(mode="json", exclude={"signature"})
    for version in versions:
        folder = root / "bundles" / version
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes((default / "model.onnx").read_bytes())
        manifest = sign_manifest(Manifest.model_validate({**body_json, "version": version}), key)
        (folder / "manifest.json").write_bytes(manifest.to_json())
    return public


@dataclass
class Swap:
    """One promotion and what came of it."""

    version: str
    previous: str
    due: float  # seconds into the measured window
    promote_started: float = 0.0
    promoted_at: float = 0.0  # LATEST rewritten (wall clock)
    polled_at: float | None = None  # the poll that found it (the report's last_poll)
    swapped_at: float | None = None  # the swapped event's ts
    requests: list[str] = field(default_factory=list)  # the gateway's, promotion to swap


class Promoter(threading.Thread):
    """Promotes each version at its time in the measured window, once the previous one swapped."""

    def __init__(self, cloud: Cloud, collector: SwapCollector, swaps: list[Swap]) -> None:
        super().__init__(name="promoter", daemon=True)
        self._cloud, self._collector, self.swaps = cloud, collector, swaps
        self.start_wall = 0.0
        self.error: str | None = None

    def begin(self) -> None:
        self.start_wall = time.time()
        self.start()

    def run(self) -> None:
        try:
            for swap in self.swaps:
                if (wait := self.start_wall + swap.due - time.time()) > 0:
                    time.sleep(wait)
                self._cloud.call("clear")
                swap.promote_started = time.time()
                swap.promoted_at = self._cloud.call("promote", swap.version)
                report = self._collector.wait_swapped(
                    swap.version, swap.promote_started, _SWAP_TIMEOUT
                )
                swap.polled_at, swap.swapped_at = _poll_and_swap(report)
                log = self._cloud.call("log")
                swap.requests = [_request(r) for r in log if r["method"] != "PUT"]
        except Exception as exc:  # reported with the results; the load runs on
            self.error = str(exc)


def _poll_and_swap(report: dict[str, Any]) -> tuple[float | None, float]:
    """When the poll that found the version began, and the swap's ``ts``, from its report."""
    polled = report.get("last_poll")
    return (
        datetime.fromisoformat(polled).timestamp() if polled else None,
        float(report["last_event"]["ts"]),
    )


def _request(r: dict[str, Any]) -> str:
    name = unquote(r["target"]).split("?")[0].rsplit("/", 2)
    where = name[-1] if name[-1] == "LATEST" else "/".join(name[-2:])
    return f"{r['method']} {where} {r['status']} {r['sent']} B"


def schedule(versions: list[str], duration: float) -> list[Swap]:
    """Spread the promotions over the window: each half a second before its segment's middle
    (the swap follows at the next poll, within a second)."""
    n = len(versions)
    previous = [BASELINE, *versions[:-1]]
    return [
        Swap(v, p, max(0.5, duration * (i + 0.5) / n - 0.5))
        for i, (v, p) in enumerate(zip(versions, previous, strict=True))
    ]


# -- the swap under load -----------------------------------------------------------------------
def measure_swaps(
    args: argparse.Namespace,
    broker: LocalBroker,
    cloud: Cloud,
    gateway: Gateway,
    collector: SwapCollector,
) -> dict[str, Any]:
    """Offer the load, promote the versions during it; summarise losses and latencies."""
    swaps = schedule(args.versions, args.duration)
    promoter = Promoter(cloud, collector, swaps)
    before = gateway.metrics()
    print(
        f"offering {args.rate:,.0f} readings/s for {args.warmup:g} s + {args.duration:g} s, "
        f"promoting {', '.join(args.versions)} ...",
        flush=True,
    )
    broker_pid = find_pid(str(broker.config_path))
    snapshots: list[CpuSnapshot] = []

    def measuring() -> None:
        snapshots.append(CpuSnapshot.take(gateway, broker_pid))
        promoter.begin()

    load = run_loadgen(args, broker.port, args.rate, measuring)
    published = int(load["readings"] + load["warmup_readings"])
    collector.wait_for(
        published, quiet=_DRAIN_QUIET, limit=_DRAIN_MAX + args.warmup + args.duration
    )
    if promoter.is_alive():
        promoter.join(_SWAP_TIMEOUT + 5.0)
    shares = snapshots[0].shares(CpuSnapshot.take(gateway, broker_pid), load["cpu_seconds"])
    after = gateway.metrics()
    ts, received, labels = collector.scores()
    unique = int(np.unique(ts).size)
    order = np.argsort(ts, kind="stable")
    changes = np.flatnonzero(labels[order][1:] != labels[order][:-1]) + 1
    measured = (ts >= load["first_ts"]) & (ts <= load["last_ts"])
    latency = (received - ts) * 1e3
    done = [s for s in swaps if s.swapped_at is not None]
    steady = measured.copy()
    for s in done:
        assert s.swapped_at is not None
        steady &= ~((ts >= s.promote_started - WINDOW) & (ts <= s.swapped_at + WINDOW))
    steady_ms = _summary(latency[steady])
    rows = []
    for i, s in enumerate(swaps):
        row: dict[str, Any] = {
            "from": s.previous,
            "to": s.version,
            "due_s": round(s.due, 3),
            "promoted_at": s.promoted_at or None,
            "swapped_at": s.swapped_at,
            "requests": s.requests,
        }
        if s.swapped_at is not None:
            around = measured & (np.abs(ts - s.swapped_at) <= WINDOW)
            delivery = measured & (ts >= s.promote_started) & (ts <= s.swapped_at + WINDOW)
            first_new = float(ts[order][changes[i]]) if i < len(changes) else None
            around_ms = _summary(latency[around])
            row.update(
                promote_to_swap_s=s.swapped_at - s.promoted_at,
                poll_to_swap_s=_minus(s.swapped_at, s.polled_at),
                first_new_reading_ts=first_new,
                # Negative: readings published before the event's ts were scored by the new model.
                first_new_minus_event_ms=_minus(first_new, s.swapped_at, 1e3),
                around_swap_ms=around_ms,
                promote_to_swap_ms=_summary(latency[delivery]),
                added_ms=_minus(around_ms["max"], steady_ms["p99"]),
            )
        rows.append(row)
    added = [r["added_ms"] for r in rows if r.get("added_ms") is not None]
    return {
        "offered_rate": args.rate,
        "achieved_rate": load["rate"],
        "published": published,
        "received": unique,
        "dropped": published - unique,
        "duplicates": int(ts.size) - unique,
        "published_measured": int(load["readings"]),
        "model_changes": {"seen": len(changes), "expected": len(done)},
        "steady_ms": steady_ms,
        "measured_ms": _summary(latency[measured]),
        "swaps": rows,
        "worst_added_ms": max(added) if added else None,
        "swap_error": promoter.error,
        "gateway": {
            "swaps": int(_delta(before, after, "gateway_model_swaps_total")),
            "polls_failed": int(_delta(before, after, "gateway_model_polls_failed_total")),
            "deadlettered": int(_delta(before, after, "gateway_readings_deadlettered_total")),
            "shed": int(_delta(before, after, "gateway_readings_shed_total")),
        },
        # From the window's start until the last score came in; 100 = one core.
        "cpu_percent_of_one_core": shares,
        "loadgen": {k: load[k] for k in ("seconds", "lag_ms", "unacknowledged", "cpu_seconds")},
        "deadletters_seen": collector.deadletters,
    }


def _summary(ms: np.ndarray) -> dict[str, Any]:
    if not ms.size:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    p50, p99 = np.percentile(ms, [50, 99])
    return {
        "n": int(ms.size),
        "p50": float(p50),
        "p99": float(p99),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
    }


def _minus(a: float | None, b: float | None, scale: float = 1.0) -> float | None:
    return None if a is None or b is None else (a - b) * scale


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


# -- idle polls --------------------------------------------------------------------------------
def measure_idle(cloud: Cloud, gateway: Gateway, polls: int) -> dict[str, Any]:
    """``polls`` polls with nothing changing, counted from just after one poll to just after
    the last: the stand-in's log and the relay's byte counts."""
    print(f"idle: {polls} polls of an unchanged bucket ...", flush=True)
    before = gateway.metrics()
    _wait_polls(cloud, 1, clear=True)  # start right after a poll
    time.sleep(0.3)  # its answer has gone through the relay
    cloud.call("clear")
    wire0, cpu0, t0 = cloud.call("wire"), thread_cpu_seconds(gateway.pid), time.monotonic()
    _wait_polls(cloud, polls, clear=False)
    time.sleep(0.3)
    wire1, cpu1, t1 = cloud.call("wire"), thread_cpu_seconds(gateway.pid), time.monotonic()
    log = cloud.call("log")
    after = gateway.metrics()
    kinds = Counter(f"{r['operation']} {_request(r)}" for r in log)
    headers = sorted({h for r in log for h in r["headers"]})
    up = wire1["request_bytes"] - wire0["request_bytes"]
    down = wire1["response_bytes"] - wire0["response_bytes"]
    n = len([r for r in log if unquote(r["target"]).split("?")[0].endswith("/LATEST")])
    return {
        "polls": n,
        "seconds": t1 - t0,
        "requests": len(log),
        "requests_per_poll": len(log) / n if n else None,
        "requests_by_kind": dict(kinds),
        "statuses": dict(Counter(str(r["status"]) for r in log)),
        "conditional_headers_sent": headers,
        "response_body_bytes_per_poll": sum(r["sent"] for r in log) / n if n else None,
        "wire": {
            "request_bytes_per_poll": up / n if n else None,
            "response_bytes_per_poll": down / n if n else None,
            "connections_opened": wire1["connections"] - wire0["connections"],
        },
        "gateway_cpu_ms_per_poll": (cpu1 - cpu0) / n * 1e3 if n else None,
        "gateway_cpu_ms_per_s": (cpu1 - cpu0) / (t1 - t0) * 1e3,
        "gateway_polls": {
            k: int(_delta(before, after, f"gateway_model_polls_{k}_total"))
            for k in ("not_modified", "changed", "failed")
        },
    }


def measure_idle_swap(
    cloud: Cloud, gateway: Gateway, collector: SwapCollector, idle_cpu_ms_per_s: float
) -> dict[str, Any]:
    """Promote a fresh version with no readings flowing: the gateway CPU one swap costs
    (download, checks, session, golden samples, swap) above its idle rate."""
    print(f"idle: promoting {IDLE_SWAP} with no load ...", flush=True)
    cloud.call("clear")
    start, cpu0 = time.time(), thread_cpu_seconds(gateway.pid)
    promoted = cloud.call("promote", IDLE_SWAP)
    polled, swapped = _poll_and_swap(collector.wait_swapped(IDLE_SWAP, start, _SWAP_TIMEOUT))
    time.sleep(0.2)  # the swap's last report has gone out
    cpu1, end = thread_cpu_seconds(gateway.pid), time.time()
    log = cloud.call("log")
    return {
        "version": IDLE_SWAP,
        "promote_to_swap_s": swapped - promoted,
        "poll_to_swap_s": _minus(swapped, polled),
        "gateway_cpu_ms": (cpu1 - cpu0) * 1e3 - idle_cpu_ms_per_s * (end - start),
        "requests": [_request(r) for r in log if r["method"] != "PUT"],
    }


def thread_cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads to the nanosecond (schedstat; /proc/<pid>/stat counts
    10 ms ticks, too coarse for one swap). A thread that ends in between is not counted."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _wait_polls(cloud: Cloud, polls: int, *, clear: bool) -> list[dict[str, Any]]:
    if clear:
        cloud.call("clear")
    deadline = time.monotonic() + polls * POLL_INTERVAL * 3 + 10.0
    while time.monotonic() < deadline:
        log: list[dict[str, Any]] = cloud.call("log")
        if sum(unquote(r["target"]).split("?")[0].endswith("/LATEST") for r in log) >= polls:
            return log
        time.sleep(0.05)
    raise TimeoutError(f"the gateway did not poll {polls} times within the expected time")


# -- the whole run -----------------------------------------------------------------------------
@contextlib.contextmanager
def _stack(
    workdir: Path, versions: list[str]
) -> Iterator[tuple[Cloud, LocalBroker, Gateway, SwapCollector]]:
    """Cloud with the versions published, broker, receiver and gateway serving the baseline."""
    gateway_id = f"bench-swap-{os.getpid()}-{time.time_ns() % 10**6}"
    public_key = make_bundles(workdir, sorted({BASELINE, IDLE_SWAP, *versions}))
    with contextlib.ExitStack() as stack:
        cloud = stack.enter_context(Cloud(workdir / "cloud"))
        for folder in sorted((workdir / "bundles").iterdir()):
            cloud.call("publish", str(folder), folder.name)
        cloud.call("promote", BASELINE)
        broker = stack.enter_context(LocalBroker(workdir / "broker"))
        collector = stack.enter_context(SwapCollector(broker.host, broker.port, gateway_id))
        env = {
            "EDGEGW_MODEL__SOURCE": SOURCE,
            "EDGEGW_MODEL__ENDPOINT": cloud.endpoint,
            "EDGEGW_MODEL__PUBLIC_KEY": str(public_key),
            "EDGEGW_MODEL__POLL_INTERVAL": f"{POLL_INTERVAL:g}",
            "EDGEGW_MODEL__POLL_JITTER": "0",
            "EDGEGW_UPLINK__OCI_CONFIG": cloud.config_file,
            "EDGEGW_UPLINK__OCI_PROFILE": "DEFAULT",
        }
        gateway = stack.enter_context(
            Gateway(workdir / "gateway", broker.port, gateway_id, env=env)
        )
        collector.wait_online(timeout=30.0, alive=gateway.check_alive)
        collector.wait_swapped(BASELINE, 0.0, timeout=60.0)  # the bundled default → the bucket's
        yield cloud, broker, gateway, collector


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="edgegw-bench-swap-") as tmp:
        with _stack(Path(tmp), args.versions) as (cloud, broker, gateway, collector):
            try:
                swap = measure_swaps(args, broker, cloud, gateway, collector)
                idle = measure_idle(cloud, gateway, args.idle_polls)
                idle_swap = measure_idle_swap(
                    cloud, gateway, collector, idle["gateway_cpu_ms_per_s"]
                )
            except Exception:
                print(gateway.log_tail(), file=sys.stderr)
                raise
        problems = gateway.log_problems() + broker_problems(broker)
        if gateway.exit_code != 0:
            problems.append(f"gateway: exit code {gateway.exit_code} on SIGTERM (expected 0)")
    return {
        "benchmark": "modelswap: a model swap under load, and the cost of an idle poll",
        "date": started,
        "machine": machine_info(),
        "config": {
            "rate": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "machines": args.machines,
            "qos": args.qos,
            "batch": args.batch,
            "source": SOURCE,
            "baseline": BASELINE,
            "versions": args.versions,
            "poll_interval_s": POLL_INTERVAL,
            "window_s": WINDOW,
            "idle_polls": args.idle_polls,
            "gateway_env": {k: v for k, v in os.environ.items() if k.startswith("EDGEGW_")},
        },
        "swap_under_load": swap,
        "idle_polls": idle,
        "idle_swap": idle_swap,
        "log_problems": problems,
    }


# -- output ------------------------------------------------------------------------------------
def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _latency_row(name: str, s: dict[str, Any]) -> str:
    cells = [_num(s[k], ".2f") for k in ("p50", "p99", "max")]
    return f"{name:<34}{s['n']:>9,}" + "".join(f"{c:>9}" for c in cells)


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report: the swap under load, then the idle polls and swap."""
    m, c, r = result["machine"], result["config"], result["swap_under_load"]
    idle, one = result["idle_polls"], result["idle_swap"]
    lines = [
        f"Model swap under load: {c['rate']:,.0f} readings/s offered (QoS {c['qos']}, "
        f"{c['batch']} reading/message, {c['machines']} machines), {c['duration_s']:g} s "
        f"measured after {c['warmup_s']:g} s warm-up; {c['source']} through the OCI stand-in, "
        f"poll every {c['poll_interval_s']:g} s; {c['baseline']} → {' → '.join(c['versions'])}",
        f"{m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}, {m['mosquitto']}, {result['date']}",
        "",
        f"readings published {r['published']:,}, scores received {r['received']:,}: "
        f"dropped {r['dropped']:,}, duplicates {r['duplicates']:,}; model label changes in the "
        f"score stream {r['model_changes']['seen']} (swaps {r['model_changes']['expected']})",
        "CPU % of one core over the measured window: "
        + ", ".join(
            f"{name} {r['cpu_percent_of_one_core'][name]:.0f}"
            for name in ("gateway", "broker", "loadgen", "receiver", "other")
        ),
        "",
        f"{'publish → score, ms':<34}{'readings':>9}{'p50':>9}{'p99':>9}{'max':>9}",
        _latency_row("steady state (outside swaps)", r["steady_ms"]),
    ]
    for i, s in enumerate(r["swaps"], 1):
        if "around_swap_ms" not in s:
            continue
        lines.append(
            _latency_row(
                f"swap {i} {s['from']}→{s['to']}: ±{c['window_s']:g} s", s["around_swap_ms"]
            )
        )
        lines.append(_latency_row("  promote → swap + 0.5 s", s["promote_to_swap_ms"]))
    lines += [
        "",
        f"{'swap':<16}{'promote→swap s':>15}{'poll→swap s':>12}{'added ms':>10}  "
        "the gateway's requests (idle 304s left out)",
    ]
    for i, s in enumerate(r["swaps"], 1):
        name = f"{i} {s['from']}→{s['to']}"
        if "around_swap_ms" not in s:
            lines.append(f"{name:<16}{'not swapped':>15}")
            continue
        requests = ", ".join(q for q in s["requests"] if "LATEST 304" not in q)
        lines.append(
            f"{name:<16}{s['promote_to_swap_s']:>15.2f}{_num(s['poll_to_swap_s'], '.3f'):>12}"
            f"{_num(s['added_ms'], '.2f'):>10}  {requests}"
        )
    lines += [
        "",
        f"worst added latency during a swap: {_num(r['worst_added_ms'], '.2f')} ms "
        f"(max within ±{c['window_s']:g} s of a swap minus the steady-state p99 "
        f"{_num(r['steady_ms']['p99'], '.2f')} ms)",
        "",
        f"Idle polls: {idle['polls']} polls of an unchanged bucket, {c['poll_interval_s']:g} s "
        "apart",
        f"  requests per poll      {_num(idle['requests_per_poll'], '.2f')}  "
        + ", ".join(f"{v} x {k}" for k, v in idle["requests_by_kind"].items()),
        f"  response body bytes    {_num(idle['response_body_bytes_per_poll'], '.0f')} per poll "
        f"(headers sent: {', '.join(idle['conditional_headers_sent']) or 'none'})",
        f"  on the wire (HTTP)     {_num(idle['wire']['request_bytes_per_poll'], ',.0f')} B "
        f"request + {_num(idle['wire']['response_bytes_per_poll'], ',.0f')} B response per poll, "
        f"{idle['wire']['connections_opened']} new TCP connections",
        f"  gateway CPU            {_num(idle['gateway_cpu_ms_per_poll'], '.1f')} ms per poll "
        "(all its idle work over the span: an upper bound)",
        "",
        f"One swap with no load ({one['version']}, downloaded): "
        f"{one['gateway_cpu_ms']:.1f} ms of gateway CPU above idle, "
        f"poll → swap {_num(one['poll_to_swap_s'], '.3f')} s; " + ", ".join(one["requests"]),
    ]
    other = r["cpu_percent_of_one_core"]["other"]
    if other > _NOISY:
        lines.append(
            f"warning: other processes used {other:.0f} % of a core during the measured window: "
            "the latency figures are noisy"
        )
    if r["swap_error"]:
        lines.append(f"error: {r['swap_error']}")
    lines += [f"warning: {p}" for p in result["log_problems"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=2_000.0, help="readings per second offered")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds first, not counted")
    p.add_argument("--machines", type=int, default=20, help="machines, published round-robin")
    p.add_argument(
        "--versions",
        type=_versions,
        default=["2.0.0", BASELINE, "2.0.0"],
        help=f"versions promoted in turn after {BASELINE} (default 2.0.0,1.0.0,2.0.0)",
    )
    p.add_argument("--idle-polls", type=int, default=5, help="idle polls measured")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.machines < 1:
        p.error("rate, duration and machines must be positive, warmup not negative")
    if args.idle_polls < 1:
        p.error("--idle-polls must be at least 1")
    args.batch, args.qos = 1, 1  # what the issue measures; run_loadgen reads them
    return args


def _versions(text: str) -> list[str]:
    versions = [v.strip() for v in text.split(",") if v.strip()]
    if not versions:
        raise argparse.ArgumentTypeError(f"no versions in {text!r}")
    if IDLE_SWAP in versions:
        raise argparse.ArgumentTypeError(f"{IDLE_SWAP} is the version promoted after the load")
    for previous, version in zip([BASELINE, *versions], versions, strict=False):
        if version == previous:
            raise argparse.ArgumentTypeError(f"{version} follows itself: nothing to swap")
    return versions


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted: stand-in, broker, gateway and load generator stopped", file=sys.stderr)
        return 130
    print(format_table(result))
    write_json(result, args.out)
    print(f"\nresults: {args.out}")
    r = result["swap_under_load"]
    ok = (
        r["dropped"] == 0
        and r["duplicates"] == 0
        and r["swap_error"] is None
        and r["model_changes"]["seen"] == r["model_changes"]["expected"] == len(args.versions)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

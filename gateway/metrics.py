"""Metrics and health: Prometheus counters for every stage, served with /healthz over HTTP."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["HttpServer", "Metrics"]

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_TIME_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class Metrics:
    """Every metric of one gateway, in its own registry (tests run several in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # Per-reading counts are plain ints on the hot path, read at scrape time.
        self._live = _LiveCounters()
        r.register(self._live)
        self.deadlettered = Counter(
            "gateway_readings_deadlettered",
            "Readings or payloads rejected, by reason",
            ["reason"],
            registry=r,
        )
        self.nonfinite = Counter(
            "gateway_scores_nonfinite", "Scores the model returned as NaN or infinite", registry=r
        )
        self.alerts = Counter("gateway_alerts", "Alert state changes", ["state"], registry=r)
        self.alerts_active = Gauge("gateway_alerts_active", "Machines in alert", registry=r)
        self.pending = Gauge(
            "gateway_pending_readings", "Readings waiting for the scorer", registry=r
        )
        self.batch_size = Histogram(
            "gateway_batch_size", "Readings per model call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_delay = Histogram(
            "gateway_queue_delay_seconds",
            "Wait of a batch's oldest reading before its model call",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "gateway_model_call_seconds",
            "Duration of one ONNX Runtime call",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "gateway_score_latency_seconds",
            "Arrival of a batch's oldest reading to its scores published",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.connected = Gauge(
            "gateway_broker_connected", "1 while connected to the broker", registry=r
        )
        self.reconnects = Counter(
            "gateway_broker_disconnects", "Broker connections lost", registry=r
        )
        self.spool_commit_seconds = Histogram(
            "gateway_spool_commit_seconds",
            "One spool transaction (group commit)",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.spool_commit_records = Histogram(
            "gateway_spool_commit_records",
            "Spool rows per commit",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "gateway_model_info",
            "The model in service (value 1)",
            ["name", "version", "sha256"],
            registry=r,
        )

    def live_counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Expose a counter kept elsewhere as a plain number (cheap to increment)."""
        self._live.counters.append((name, doc, read))

    def spool(
        self,
        usage: Callable[[], dict[str, tuple[int, int, int]]],
        counters: Callable[[], dict[str, int]],
        blocked: Callable[[], bool],
        oldest_age: Callable[[], dict[str, float]],
    ) -> None:
        """Expose the spool's lanes and counters, read from memory at scrape time."""
        self._live.spool = (usage, counters, blocked, oldest_age)


class _LiveCounters(Collector):
    def __init__(self) -> None:
        self.counters: list[tuple[str, str, Callable[[], float]]] = []
        self.spool: tuple[Any, Any, Any, Any] | None = None

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        for name, doc, read in self.counters:
            yield CounterMetricFamily(name, doc, value=read())
        if self.spool is None:
            return
        usage, counters, blocked, oldest_age = self.spool
        age = GaugeMetricFamily(
            "gateway_spool_oldest_age_seconds",
            "How long the oldest record not yet sent has waited, by lane",
            labels=["lane"],
        )
        for lane, seconds in oldest_age().items():
            age.add_metric([lane], seconds)
        yield age
        lanes = usage()
        for i, (name, doc) in enumerate(
            (
                ("gateway_spool_records", "Spool rows waiting for the cloud, by lane"),
                ("gateway_spool_bytes", "Bytes waiting for the cloud, by lane"),
                ("gateway_spool_readings", "Readings waiting for the cloud, by lane"),
            )
        ):
            family = GaugeMetricFamily(name, doc, labels=["lane"])
            for lane, values in lanes.items():
                family.add_metric([lane], values[i])
            yield family
        for name, value in counters().items():
            yield CounterMetricFamily(
                f"gateway_spool_{name}", f"Spool {name.replace('_', ' ')}", value=value
            )
        yield GaugeMetricFamily(
            "gateway_spool_blocked",
            "1 while a full block lane holds acknowledgements",
            value=1 if blocked() else 0,
        )


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)


class HttpServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (JSON; 200 healthy, 503 not) in a thread."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._health = health
        self._server = make_server(host, port, self._app, _Server, handler_class=_QuietHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gateway.http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            ok, body = self._health()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [orjson.dumps(body)]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"see /metrics and /healthz\n"]

"""Run-time fault injection (5xx, per-entry 429s, a write rate limit, latency) and counters."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

THROTTLE_MESSAGE = (
    "Request was throttled because bytes limit exhausted, next request can be made in {ms} ms"
)
DEFAULT_THROTTLE_MS = 453
GROUPS = ("streaming", "objectstorage", "par")


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class Faults:
    """What goes wrong, changed at run time (Python API or `POST /_standin/faults`).

    - fail_next / fail_fraction: answer the next N (or that fraction of) API requests with
      `fail_status` and no side effect; `fail_groups` limits them to some of GROUPS.
    - throttle_next / throttle_fraction: PutMessages entries that fail with the per-entry 429.
    - bytes_per_second: a token bucket per stream partition (burst `burst_bytes`, default one
      second's worth); entries over it fail with the 429 text giving the real wait.
    - latency: seconds added before every API request is handled.
    """

    fail_next: int = 0
    fail_fraction: float = 0.0
    fail_status: int = 500
    fail_groups: tuple[str, ...] = GROUPS
    throttle_next: int = 0
    throttle_fraction: float = 0.0
    throttle_ms: int = DEFAULT_THROTTLE_MS
    bytes_per_second: float | None = None
    burst_bytes: float | None = None
    latency: float = 0.0
    seed: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _buckets: dict[tuple[str, int], _Bucket] = field(default_factory=dict, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    _SETTABLE = (
        "fail_next",
        "fail_fraction",
        "fail_status",
        "fail_groups",
        "throttle_next",
        "throttle_fraction",
        "throttle_ms",
        "bytes_per_second",
        "burst_bytes",
        "latency",
        "seed",
    )

    def update(self, **changes: Any) -> None:
        """Set several knobs at once (unknown names and bad values raise ValueError)."""
        for name, value in changes.items():
            if name not in self._SETTABLE:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(self._SETTABLE)}")
            if name == "fail_groups":
                value = tuple(value)
                unknown = set(value) - set(GROUPS)
                if unknown:
                    raise ValueError(f"unknown fail_groups {sorted(unknown)}; known: {GROUPS}")
            if name == "fail_status" and not 500 <= int(value) <= 599:
                raise ValueError(f"fail_status must be a 5xx status, got {value}")
            if name.endswith("fraction") and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
            with self._lock:
                setattr(self, name, value)
                if name == "seed":
                    self._rng.seed(value)
                if name in ("bytes_per_second", "burst_bytes"):
                    self._buckets.clear()

    def clear(self) -> None:
        """No faults: every knob back to its default."""
        self.update(
            fail_next=0,
            fail_fraction=0.0,
            fail_status=500,
            fail_groups=GROUPS,
            throttle_next=0,
            throttle_fraction=0.0,
            throttle_ms=DEFAULT_THROTTLE_MS,
            bytes_per_second=None,
            burst_bytes=None,
            latency=0.0,
        )

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {name: getattr(self, name) for name in self._SETTABLE}

    def injected_failure(self, group: str) -> int | None:
        """The 5xx status to answer this request with, or None to serve it."""
        with self._lock:
            if group not in self.fail_groups:
                return None
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status
            if self.fail_fraction and self._rng.random() < self.fail_fraction:
                return self.fail_status
        return None

    def admit_entry(self, stream: str, partition: int, size: int, now: float | None = None) -> int:
        """0 to store an entry of `size` bytes; else the wait in ms to report in its 429."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self.throttle_next > 0:
                self.throttle_next -= 1
                return self.throttle_ms
            if self.throttle_fraction and self._rng.random() < self.throttle_fraction:
                return self.throttle_ms
            if self.bytes_per_second is None:
                return 0
            rate = float(self.bytes_per_second)
            burst = float(self.burst_bytes or rate)
            b = self._buckets.setdefault((stream, partition), _Bucket(burst, now))
            b.tokens = min(burst, b.tokens + (now - b.stamp) * rate)
            b.stamp = now
            # A message bigger than the burst still passes once the bucket is full (it goes
            # into debt), so no size is throttled forever.
            if b.tokens >= size or b.tokens >= burst:
                b.tokens -= size
                return 0
            return max(1, math.ceil((min(size, burst) - b.tokens) / rate * 1000))


class Stats:
    """Counters for tests: requests by operation and status, bytes, entries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            self._counters: dict[str, int] = defaultdict(int)

    def request(self, operation: str, status: int, received: int) -> None:
        with self._lock:
            self._requests[operation][str(status)] += 1
            self._counters["requests"] += 1
            self._counters["bytes_received"] += received

    def add(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self._counters[counter] += n

    def snapshot(self) -> dict[str, Any]:
        """`{"requests": {op: {status: n}}, "bytes_received": n, "entries_stored": n, ...}`."""
        with self._lock:
            out: dict[str, Any] = {
                "requests": {op: dict(by) for op, by in self._requests.items()},
            }
            for name in (
                "bytes_received",
                "entries_stored",
                "entries_throttled",
                "bytes_stored",
                "injected_failures",
                "auth_failures",
                "outages",
            ):
                out[name] = self._counters.get(name, 0)
            out["total_requests"] = self._counters.get("requests", 0)
            return out

    def count(self, operation: str, status: int | None = None) -> int:
        """How many requests of this operation (and status) were answered."""
        with self._lock:
            by = self._requests.get(operation, {})
            return sum(by.values()) if status is None else by.get(str(status), 0)

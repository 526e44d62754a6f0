"""Batcher: collects readings and hands the scorer whatever is queued the moment it is free.

In the manner of Triton's dynamic batcher: a batch is everything pending, up to ``max_batch``,
taken as soon as the scorer asks. With ``queue_delay`` > 0 the scorer may wait up to that long
for a full batch; with the default 0 no reading ever waits for a deadline, and batches grow by
themselves under load because readings queue while the model runs. A plain synchronous
structure: ingest adds, one task takes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Batch", "Batcher"]


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings in arrival order, their feature matrix, and the tokens they release."""

    machines: list[str]
    ts: list[float]
    values: npt.NDArray[np.float64]  # the features as received, for the spool
    features: npt.NDArray[np.float32]  # the same as the model takes them
    raw: list[dict[str, Any]]
    tokens: list[object]
    oldest: float  # loop time the oldest reading arrived

    def __len__(self) -> int:
        return len(self.machines)


class Batcher:
    """Pending readings plus release tokens; ``wait`` and ``take`` are for the one consumer."""

    def __init__(self, max_batch: int, queue_delay: float = 0.0, *, n_features: int) -> None:
        self.max_batch = max_batch
        self.queue_delay = queue_delay
        self._n_features = n_features
        self._machines: list[str] = []
        self._ts: list[float] = []
        # Feature rows in arrival order: blocks (a message's readings, one array) and, after
        # them, the loose rows of single readings, which become a block when one follows.
        self._blocks: deque[npt.NDArray[np.float64]] = deque()
        self._loose: list[Sequence[float]] = []
        self._raw: list[dict[str, Any]] = []
        self._arrived: list[float] = []
        # (readings added in all before it is released, token): absolute counts, so taking a
        # batch costs the batch, not everything queued behind it.
        self._tokens: deque[tuple[int, object]] = deque()
        self._added = 0
        self._taken = 0
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 1
        self._closed = False

    def __len__(self) -> int:
        return len(self._machines)

    def add(
        self, machine: str, ts: float, row: Sequence[float], raw: dict[str, Any], arrived: float
    ) -> None:
        self._machines.append(machine)
        self._ts.append(ts)
        self._loose.append(row)
        self._raw.append(raw)
        self._arrived.append(arrived)
        self._added += 1
        if self._waiter is not None and len(self._machines) >= self._wanted:
            self._wake()

    def add_many(
        self,
        machine: str,
        ts: list[float],
        rows: npt.NDArray[np.float64],
        raw: list[dict[str, Any]],
        arrived: float,
    ) -> None:
        """``add`` for the readings of one message and machine, in one go (``rows``: one
        feature row per reading)."""
        n = len(ts)
        self._seal_loose()
        self._blocks.append(rows)
        self._machines += [machine] * n
        self._ts += ts
        self._raw += raw
        self._arrived += [arrived] * n
        self._added += n
        if self._waiter is not None and len(self._machines) >= self._wanted:
            self._wake()

    def mark(self, token: object) -> None:
        """Release ``token`` once every reading added so far has been taken and handled."""
        self._tokens.append((self._added, token))

    def set_features(self, n_features: int) -> None:
        self._n_features = n_features

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop waiting for more: ``wait`` returns at once from now on (to flush on shutdown)."""
        self._closed = True
        self._wake()

    async def wait(self) -> None:
        """Return when a batch should be taken: at once if readings are pending (or, with a
        queue delay, when a full batch is pending or the oldest reading's delay is spent).
        After ``close`` it returns at once, with or without readings."""
        if not self._machines and not self._closed:
            await self._park(1)
        if self.queue_delay > 0 and not self._closed and 0 < len(self._machines) < self.max_batch:
            loop = asyncio.get_running_loop()
            deadline = self._arrived[0] + self.queue_delay
            if deadline > loop.time():
                timer = loop.call_at(deadline, self._wake)
                try:
                    await self._park(self.max_batch)
                finally:
                    timer.cancel()

    def take(self) -> Batch:
        """Remove and return up to ``max_batch`` pending readings (at least one must be pending)."""
        n = min(len(self._machines), self.max_batch)
        if n == len(self._machines):
            machines, ts, raw, arrived = self._machines, self._ts, self._raw, self._arrived
            self._machines, self._ts, self._raw, self._arrived = [], [], [], []
        else:
            machines, ts = self._machines[:n], self._ts[:n]
            raw, arrived = self._raw[:n], self._arrived[:n]
            for pending in (self._machines, self._ts, self._raw, self._arrived):
                del pending[:n]
        values = self._take_rows(n)
        self._taken += n
        tokens: list[object] = []
        queue = self._tokens
        while queue and queue[0][0] <= self._taken:
            tokens.append(queue.popleft()[1])
        return Batch(machines, ts, values, values.astype(np.float32), raw, tokens, arrived[0])

    def _seal_loose(self) -> None:
        if self._loose:
            block = np.array(self._loose, dtype=np.float64).reshape(-1, self._n_features)
            self._blocks.append(block)
            self._loose = []

    def _take_rows(self, n: int) -> npt.NDArray[np.float64]:
        """The first ``n`` feature rows, as one array (a block's rows are not copied when one
        block is the whole batch)."""
        self._seal_loose()
        parts = []
        blocks = self._blocks
        while n:
            block = blocks[0]
            if len(block) <= n:
                parts.append(blocks.popleft())
                n -= len(block)
            else:
                parts.append(block[:n])
                blocks[0] = block[n:]
                n = 0
        if not parts:
            return np.empty((0, self._n_features), dtype=np.float64)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _park(self, wanted: int) -> None:
        self._wanted = wanted
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

"""The batcher on its own: what a batch holds, when tokens are released, when wait returns."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.batcher import Batcher


def fill(b: Batcher, n: int, start: int = 0, token: object | None = None) -> None:
    for i in range(start, start + n):
        b.add(f"m{i % 3}", float(i), [float(i), 1.0], {"i": i}, arrived=float(i))
    if token is not None:
        b.mark(token)


def test_take_returns_everything_pending_up_to_max_batch_in_order() -> None:
    b = Batcher(max_batch=4, n_features=2)
    fill(b, 10)
    sizes = []
    seen: list[float] = []
    while len(b):
        batch = b.take()
        sizes.append(len(batch))
        seen.extend(batch.ts)
        assert batch.features.dtype == np.float32
        assert batch.features.shape == (len(batch), 2)
        np.testing.assert_array_equal(batch.features[:, 0], batch.ts)
        assert batch.oldest == batch.ts[0]
    assert sizes == [4, 4, 2]
    assert seen == [float(i) for i in range(10)]


def test_token_is_released_with_the_batch_holding_its_last_reading() -> None:
    b = Batcher(max_batch=4, n_features=2)
    fill(b, 3, token="a")  # message a: readings 0-2
    fill(b, 3, start=3, token="b")  # message b: readings 3-5, split across two batches
    fill(b, 1, start=6, token="c")
    first = b.take()
    assert first.tokens == ["a"]
    second = b.take()
    assert second.tokens == ["b", "c"]
    assert len(b) == 0


def test_tokens_stay_in_order_over_many_partial_takes() -> None:
    b = Batcher(max_batch=5, n_features=2)
    expected = []
    for k in range(20):
        fill(b, 1 + k % 4, start=k * 10, token=k)
        expected.append(k)
    released = []
    while len(b):
        released.extend(b.take().tokens)
    assert released == expected


async def test_wait_returns_at_once_when_readings_are_pending() -> None:
    b = Batcher(max_batch=8, n_features=2)
    fill(b, 1)
    await asyncio.wait_for(b.wait(), 5)


async def test_wait_parks_until_the_first_reading_arrives() -> None:
    b = Batcher(max_batch=8, n_features=2)
    waiter = asyncio.ensure_future(b.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    fill(b, 1)
    await asyncio.wait_for(waiter, 5)
    assert len(b.take()) == 1


async def test_queue_delay_waits_for_a_full_batch() -> None:
    b = Batcher(max_batch=4, queue_delay=60.0, n_features=2)
    loop = asyncio.get_running_loop()
    for i in range(3):
        b.add("m", float(i), [0.0, 0.0], {}, arrived=loop.time())
    waiter = asyncio.ensure_future(b.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done(), "3 of 4 with a minute left: keep waiting"
    b.add("m", 3.0, [0.0, 0.0], {}, arrived=loop.time())
    await asyncio.wait_for(waiter, 5)
    assert len(b.take()) == 4


async def test_queue_delay_ends_at_the_oldest_readings_deadline() -> None:
    b = Batcher(max_batch=100, queue_delay=0.05, n_features=2)
    loop = asyncio.get_running_loop()
    b.add("m", 0.0, [0.0, 0.0], {}, arrived=loop.time())
    await asyncio.wait_for(b.wait(), 5)  # returns after ~50 ms with a partial batch
    assert len(b.take()) == 1


async def test_close_wakes_a_parked_waiter_and_stops_waiting() -> None:
    b = Batcher(max_batch=8, queue_delay=60.0, n_features=2)
    waiter = asyncio.ensure_future(b.wait())
    await asyncio.sleep(0.01)
    b.close()
    await asyncio.wait_for(waiter, 5)
    assert len(b) == 0
    fill(b, 2)
    await asyncio.wait_for(b.wait(), 5)  # closed: no queue delay either


@pytest.mark.parametrize("n", [1, 511, 512, 513, 2000])
def test_batch_sizes_never_exceed_max(n: int) -> None:
    b = Batcher(max_batch=512, n_features=2)
    fill(b, n)
    taken = 0
    while len(b):
        batch = b.take()
        assert 1 <= len(batch) <= 512
        taken += len(batch)
    assert taken == n


def test_single_readings_and_whole_messages_keep_arrival_order_across_any_cut() -> None:
    # add() rows and add_many() blocks interleave; batches cut through blocks anywhere.
    for max_batch in (1, 2, 3, 5, 7, 100):
        b = Batcher(max_batch=max_batch, n_features=2)
        i = 0
        for size in (1, 4, 1, 1, 6, 2, 1):
            ts = [float(i + k) for k in range(size)]
            if size == 1:
                b.add("m", ts[0], [ts[0], 1.0], {}, arrived=0.0)
            else:
                rows = np.column_stack([ts, np.ones(size)])
                b.add_many("m", ts, rows, [{}] * size, arrived=0.0)
            i += size
        seen_ts: list[float] = []
        seen_rows: list[float] = []
        while len(b):
            batch = b.take()
            assert len(batch) <= max_batch
            assert batch.values.shape == (len(batch), 2)
            seen_ts += batch.ts
            seen_rows += batch.values[:, 0].tolist()
        assert seen_ts == seen_rows == [float(k) for k in range(i)]

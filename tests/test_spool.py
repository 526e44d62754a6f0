"""The spool on a real SQLite file: order, budgets and their policies, expiry, damage."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.spool import LaneConfig, Spool, SpoolFull, SpoolUnavailable

LANES = {
    "alerts": LaneConfig(priority=0, ttl=7 * 86400, share=0.1),
    "scores": LaneConfig(priority=1, ttl=86400, share=0.3, when_full="drop_oldest"),
    "telemetry": LaneConfig(priority=2, ttl=86400, share=0.6, when_full="drop_oldest"),
}


def make(path: Path, budget: int = 1 << 20, **kw: object) -> Spool:
    return Spool(path / "spool.db", budget=budget, lanes=kw.pop("lanes", LANES), **kw)


def test_records_come_back_in_order_per_lane_and_survive_reopening(tmp_path: Path) -> None:
    s = make(tmp_path)
    for i in range(10):
        s.append("telemetry", "site/line1", f"t{i}".encode(), count=5, created=1000.0 + i)
        s.append("scores", "site/line1", f"s{i}".encode(), count=5, created=1000.0 + i)
    s.commit()
    s.close()
    s = make(tmp_path)
    assert s.lanes_by_priority() == ["alerts", "scores", "telemetry"]
    got = s.oldest("telemetry", max_bytes=1 << 20)
    assert [r.body for r in got] == [f"t{i}".encode() for i in range(10)]
    assert [r.seq for r in got] == sorted(r.seq for r in got)
    assert s.stats().lanes["telemetry"]["readings"] == 50
    s.remove(got[:4])
    assert s.oldest("telemetry", 1 << 20)[0].body == b"t4"
    st = s.stats()
    assert st.lanes["telemetry"]["records"] == 6
    assert st.counters["sent_records"] == 4
    assert s.oldest_age(2000.0)["telemetry"] == 1000.0 - 4  # t4, created at 1004, is oldest
    assert s.oldest_age(2000.0)["alerts"] == 0.0
    assert st.counters["appended_readings"] == 100


def test_oldest_respects_max_bytes_but_returns_at_least_one(tmp_path: Path) -> None:
    s = make(tmp_path)
    for i in range(5):
        s.append("scores", "k", bytes(100), count=1, created=float(i))
    s.commit()
    assert len(s.oldest("scores", max_bytes=250)) == 2
    assert len(s.oldest("scores", max_bytes=10)) == 1
    after = s.oldest("scores", max_bytes=250)[-1].seq
    assert len(s.oldest("scores", max_bytes=1000, after=after)) == 3


def test_drop_oldest_frees_exactly_enough_and_counts_it(tmp_path: Path) -> None:
    s = make(tmp_path, budget=10_000)  # telemetry may hold 6,000 bytes
    for i in range(6):
        s.append("telemetry", "k", bytes(1000), count=10, created=float(i))
    s.commit()
    s.append("telemetry", "k", bytes(1500), count=7, created=6.0)
    s.commit()
    st = s.stats()
    assert st.counters["dropped_records"] == 2  # 1,500 over: two 1,000-byte records go
    assert st.counters["dropped_readings"] == 20
    assert st.lanes["telemetry"]["bytes"] == 5500
    assert [r.created for r in s.oldest("telemetry", 1 << 20)] == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_records_dropped_while_in_flight_are_not_counted_twice(tmp_path: Path) -> None:
    s = make(tmp_path, budget=10_000)
    for i in range(6):
        s.append("telemetry", "k", bytes(1000), count=10, created=float(i))
    s.commit()
    in_flight = s.oldest("telemetry", 1 << 20)  # the uplink is sending these
    s.append("telemetry", "k", bytes(1500), count=7, created=6.0)  # drops the two oldest
    s.commit()
    s.remove(in_flight)  # stored by the cloud: what is still there goes
    st = s.stats()
    assert st.counters["dropped_records"] == 2
    assert st.counters["sent_records"] == 4
    lane = st.lanes["telemetry"]
    assert (lane["records"], lane["bytes"], lane["readings"]) == (1, 1500, 7)


def test_block_lane_refuses_and_writes_nothing(tmp_path: Path) -> None:
    s = make(tmp_path, budget=10_000)  # alerts may hold 1,000 bytes
    s.append("alerts", "k", bytes(900), count=1, created=0.0)
    s.commit()
    s.append("scores", "k", bytes(10), count=1, created=1.0)
    s.append("alerts", "k", bytes(200), count=1, created=1.0)
    with pytest.raises(SpoolFull, match="alerts is full"):
        s.commit()
    assert s.stats().lanes["scores"]["records"] == 0, "the whole group waits"
    s.remove(s.oldest("alerts", 1 << 20))
    s.commit()  # the same batches, once there is room
    assert s.stats().lanes["alerts"]["records"] == 1
    assert s.stats().lanes["scores"]["records"] == 1


def test_alerts_can_never_be_dropped(tmp_path: Path) -> None:
    lanes = dict(LANES, alerts=LaneConfig(0, 60, 0.1, when_full="drop_oldest"))
    with pytest.raises(ValueError, match="alerts are never dropped"):
        make(tmp_path, lanes=lanes)


def test_expired_records_are_removed_and_counted(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.append("scores", "k", b"old", count=3, created=1000.0)
    s.append("scores", "k", b"new", count=4, created=1000.0 + 86400 + 10)
    s.append("alerts", "k", b"alert", count=1, created=1000.0)  # alerts live a week
    s.commit()
    assert s.expire(now=1000.0 + 86400 + 5) == 1
    st = s.stats()
    assert st.counters["expired_records"] == 1
    assert st.counters["expired_readings"] == 3
    assert [r.body for r in s.oldest("scores", 1 << 20)] == [b"new"]
    assert st.lanes["alerts"]["records"] == 1


def test_a_corrupt_record_is_quarantined_and_the_rest_flows(tmp_path: Path) -> None:
    s = make(tmp_path)
    for i in range(3):
        s.append("telemetry", "k", f"body{i}".encode(), count=1, created=float(i))
    s.commit()
    s.close()
    with sqlite3.connect(tmp_path / "spool.db") as db:  # a flipped bit on disk
        db.execute("UPDATE records SET body = x'626f64793f' WHERE body = x'626f647931'")
    s = make(tmp_path)
    assert [r.body for r in s.oldest("telemetry", 1 << 20)] == [b"body0", b"body2"]
    assert s.stats().counters["quarantined_records"] == 1
    assert s.stats().lanes["telemetry"]["records"] == 2
    with sqlite3.connect(tmp_path / "spool.db") as db:
        assert db.execute("SELECT reason FROM quarantine").fetchall() == [("crc mismatch",)]


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_a_damaged_file_is_set_aside_and_a_new_spool_starts(tmp_path: Path, damage: str) -> None:
    s = make(tmp_path)
    for i in range(200):
        s.append("telemetry", "k", os.urandom(2000), count=1, created=float(i))
    s.commit()
    s._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all pages into the file
    s.close()
    path = tmp_path / "spool.db"
    size = path.stat().st_size
    with path.open("r+b") as fh:
        if damage == "garbage":
            fh.seek(0)
            fh.write(os.urandom(4096))
        else:
            fh.truncate(size // 3)
    s = make(tmp_path)  # no exception, no crash loop
    assert s.stats().counters["quarantined_files"] == 1
    assert list(tmp_path.glob("spool.db.corrupt-*")), "the damaged file is kept for a look"
    s.append("alerts", "k", b"still works", count=1, created=1.0)
    s.commit()
    assert s.oldest("alerts", 1 << 20)[0].body == b"still works"


def test_committed_batches_survive_sigkill(tmp_path: Path) -> None:
    child = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from gateway.spool import Spool
        from tests.test_spool import LANES
        s = Spool(Path({str(tmp_path / "spool.db")!r}), budget=1 << 30, lanes=LANES)
        for i in range(100_000):
            s.append("telemetry", "k", b"x" * 500, count=1, created=float(i))
            s.commit()
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = -1
    for line in proc.stdout:
        last = int(line)
        if last >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    s = make(tmp_path, budget=1 << 30)
    kept = s.oldest("telemetry", 1 << 30)
    assert len(kept) >= last + 1, "everything reported committed is there"
    assert [r.created for r in kept] == [float(i) for i in range(len(kept))]


def test_an_unopenable_file_is_reported_not_set_aside(tmp_path: Path) -> None:
    (tmp_path / "spool.db").mkdir()  # e.g. a permission or I/O problem: the data may be fine
    with pytest.raises(SpoolUnavailable, match="cannot be opened"):
        make(tmp_path)
    assert (tmp_path / "spool.db").is_dir()
    assert not list(tmp_path.glob("spool.db.corrupt-*"))


def test_sequence_numbers_are_never_reused_even_when_the_spool_empties(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.append("scores", "k", b"a", count=1, created=0.0)
    s.commit()
    first = s.oldest("scores", 1 << 20)
    s.remove(first)  # empty now: a plain rowid would start again at 1
    s.close()
    s = make(tmp_path)
    s.append("scores", "k", b"b", count=1, created=0.0)
    s.commit()
    assert s.oldest("scores", 1 << 20)[0].seq > first[0].seq, "(gateway, seq) must stay unique"

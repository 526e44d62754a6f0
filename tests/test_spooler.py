"""The spooler's group commit: scored batches of one commit become one row per lane and machine
group when they share a model and features, and stay apart when they do not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from gateway.batcher import Batch
from gateway.config import load_settings
from gateway.spooler import Scored, Spooler, decode_body, open_spool, records_for
from gateway.telemetry import FEATURES

LABEL = "machine-health@1.0.0"


def _batch(machines: list[str], t0: float, features: tuple[str, ...] = FEATURES) -> Batch:
    n, f = len(machines), len(features)
    values = np.arange(n * f, dtype=np.float64).reshape(n, f) + t0
    ts = [t0 + i for i in range(n)]
    return Batch(machines, ts, values, values.astype(np.float32), [], [], 0.0)


async def test_batches_of_one_commit_share_a_row_and_a_new_model_starts_another(
    tmp_path: Path,
) -> None:
    settings = load_settings(gateway={"data_dir": tmp_path}, spool={"commit_interval": 0.2})
    released: list[object] = []
    spooler = Spooler(open_spool(settings), released.append, commit_interval=0.2)
    task = asyncio.create_task(spooler.run())
    await asyncio.sleep(0.05)  # the first commit has run: the next ones wait their interval
    batches = [_batch(["line1/a", "line2/b"], 100.0), _batch(["line1/a"], 200.0)]
    for i, b in enumerate(batches):
        scores = np.full(len(b), i, dtype=np.float32)
        spooler.put_scored(Scored("site", b, scores, LABEL, FEATURES, []), [f"t{i}"])
    swapped = _batch(["line1/a"], 300.0, FEATURES[:3])  # a new model with other features
    spooler.put_scored(
        Scored("site", swapped, np.zeros(1, np.float32), "other@2", FEATURES[:3], []), ["t2"]
    )
    spooler.close()
    await task
    assert released == ["t0", "t1", "t2"]
    spool = spooler.spool
    rows = {
        lane: [(r.key, decode_body(lane, r.body)) for r in spool.oldest(lane, 1 << 20)]
        for lane in ("telemetry", "scores")
    }
    spooler.shutdown()
    keys = [key for key, _ in rows["telemetry"]]
    assert keys == ["site/line1", "site/line2", "site/line1"]  # merged, then the new model
    line1 = rows["telemetry"][0][1]
    assert line1["machine"] == ["line1/a", "line1/a"]
    assert line1["ts"] == [100.0, 200.0]
    assert line1["temperature"] == [100.0, 200.0]
    assert rows["scores"][0][1]["score"] == [0.0, 1.0]
    assert rows["scores"][2][1]["model"] == "other@2"
    assert set(rows["telemetry"][2][1]) == {"machine", "ts", *FEATURES[:3]}


def test_a_batch_across_groups_becomes_a_row_per_group_with_its_readings_in_order() -> None:
    machines = ["l1/a", "l2/x", "l1/b", "l2/x", "l1/a", "l3/q", "l1/b"]
    b = _batch(machines, 10.0)
    scores = np.arange(len(machines), dtype=np.float32)
    stored = records_for("site", b, scores, LABEL, FEATURES, [])
    got = {(s.lane, s.key): (s.count, decode_body(s.lane, s.body)) for s in stored}
    for group in ("l1", "l2", "l3"):
        rows = [i for i, m in enumerate(machines) if m.startswith(group + "/")]
        count, telemetry = got[("telemetry", f"site/{group}")]
        assert count == len(rows)
        assert telemetry["machine"] == [machines[i] for i in rows]
        assert telemetry["ts"] == [b.ts[i] for i in rows]
        assert telemetry["speed"] == [b.values[i, FEATURES.index("speed")] for i in rows]
        assert got[("scores", f"site/{group}")][1]["score"] == [float(i) for i in rows]

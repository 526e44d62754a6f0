"""Spool throughput: micro-batches appended and committed, then read and removed, on disk.

    .venv/bin/python bench/spool.py [--readings 1000000] [--batch 512]

Bodies are what the gateway stores per micro-batch: the batch's columns (machine, ts and five
features as received) packed with MessagePack. For each durability and group size (micro-batches
per commit: what queues while one commit runs), it reports readings/s through ``append`` +
``commit`` on the spool's own thread, and then how fast the backlog drains through ``oldest`` +
``remove``. Writes ``bench/results/spool.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np

from gateway.simulate import machine_names
from gateway.spool import LaneConfig, Spool
from gateway.telemetry import FEATURES, Fleet

LANES = {
    "alerts": LaneConfig(0, 7 * 86400, 0.05),
    "scores": LaneConfig(1, 3 * 86400, 0.25, "drop_oldest"),
    "telemetry": LaneConfig(2, 3 * 86400, 0.70, "drop_oldest"),
}


def bodies(n_batches: int, batch: int) -> list[bytes]:
    fleet = Fleet(20, seed=1)
    names = machine_names(20)
    t0 = time.time()
    out = []
    for b in range(n_batches):
        t = t0 + b * batch / 1000.0
        rows = np.concatenate([fleet.sample(t + k * 0.2) for k in range(batch // 20 + 1)])[:batch]
        rows = rows.round(3)
        cols = {
            "machine": [names[i % 20] for i in range(batch)],
            "ts": (t + np.arange(batch) * 0.001).tolist(),
        }
        cols.update({f: rows[:, j].tolist() for j, f in enumerate(FEATURES)})
        out.append(msgpack.packb(cols))
    return out


def run(args: argparse.Namespace) -> dict[str, object]:
    n_batches = args.readings // args.batch
    start = time.perf_counter()
    data = bodies(n_batches, args.batch)
    encode_us = (time.perf_counter() - start) / (n_batches * args.batch) * 1e6
    results: list[dict[str, object]] = []
    for durability in ("full", "normal"):
        for group in (1, 8, 64):
            with tempfile.TemporaryDirectory(dir=args.dir) as d:
                spool = Spool(
                    Path(d) / "spool.db", budget=8 << 30, lanes=LANES, durability=durability
                )  # type: ignore[arg-type]
                start = time.perf_counter()
                for i, body in enumerate(data):
                    spool.append("telemetry", "site/line1", body, args.batch, time.time())
                    if (i + 1) % group == 0:
                        spool.commit()
                spool.commit()
                append_s = time.perf_counter() - start
                size = sum(len(b) for b in data)
                row: dict[str, object] = {
                    "durability": durability,
                    "group": group,
                    "append_readings_per_s": round(n_batches * args.batch / append_s),
                    "append_mb_per_s": round(size / append_s / 1e6, 1),
                }
                if group == 64:
                    start = time.perf_counter()
                    drained = 0
                    while True:
                        recs = spool.oldest("telemetry", max_bytes=1 << 20)
                        if not recs:
                            break
                        spool.remove(recs)
                        drained += sum(r.count for r in recs)
                    row["drain_readings_per_s"] = round(drained / (time.perf_counter() - start))
                spool.close()
                results.append(row)
                print(row, flush=True)
    return {
        "benchmark": "spool append and drain",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "sqlite": __import__("sqlite3").sqlite_version,
        },
        "readings": n_batches * args.batch,
        "batch": args.batch,
        "body_bytes_per_reading": round(sum(len(b) for b in data) / (n_batches * args.batch), 1),
        "encode_us_per_reading": round(encode_us, 2),
        "runs": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--dir", default=None, help="where the spool files go (a real disk)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "spool.json")
    args = p.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"\nspool: {result['readings']:,} readings in micro-batches of {args.batch}, "
        f"{result['body_bytes_per_reading']} bytes a reading on disk (SQLite "
        f"{result['machine']['sqlite']}, WAL)"
    )  # type: ignore[index]
    print(
        f"{'durability':>10} {'group':>6} {'append readings/s':>18} {'MB/s':>7} "
        f"{'drain readings/s':>17}"
    )
    for r in result["runs"]:  # type: ignore[attr-defined]
        print(
            f"{r['durability']:>10} {r['group']:>6} {r['append_readings_per_s']:>18,} "
            f"{r['append_mb_per_s']:>7} {r.get('drain_readings_per_s', ''):>17}"
        )


if __name__ == "__main__":
    main()

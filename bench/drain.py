"""A backlog drains at the configured pace: 1,000,000 readings spooled, then sent to the OCI
stand-in (real SDK, signatures checked) through the gateway's uplink, paced per partition key.

    .venv/bin/python bench/drain.py [--readings 1000000] [--rate 800000]

The spool is filled the way the gateway fills it (micro-batches of 512, telemetry and scores
lanes, one machine group so one key: the worst case for pacing), then the uplink empties it.
Reports the achieved bytes/s against ``--rate``, messages and requests, and checks on the
stand-in that every reading arrived exactly once per (gateway, seq, index). Writes
``bench/results/drain.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.batcher import Batch
from gateway.config import load_settings
from gateway.simulate import machine_names
from gateway.spooler import Spooler, open_spool, records_for
from gateway.telemetry import FEATURES, Fleet
from gateway.uplink import Uplink, make_stream_client
from gateway.wireformat import decode
from tests.ocistandin import StandIn, make_credentials

STREAM = "ocid1.stream.oc1.iad.amaaaaaabenchdrainstream"


def fill(spooler: Spooler, readings: int, batch: int) -> None:
    fleet = Fleet(12, seed=3)
    names = machine_names(12)  # line1 and line2: two keys
    names = ["line1/" + n.split("/")[1] for n in names]  # one machine group: one key
    t0 = time.time() - 3600
    spool = spooler.spool
    for b in range(readings // batch):
        t = t0 + b * batch / 200
        rows = np.concatenate([fleet.sample(t + k * 0.5) for k in range(batch // 12 + 1)])[:batch]
        rows = rows.round(3)
        machines = [names[i % 12] for i in range(batch)]
        ts = (t + np.arange(batch) * 0.005).round(3).tolist()
        bt = Batch(machines, ts, rows, rows.astype(np.float32), [{}] * batch, [], 0.0)
        scores = np.abs(np.random.default_rng(b).normal(0.07, 0.02, batch)).astype(np.float32)
        for r in records_for("bench", bt, scores, "machine-health@1.0.0", FEATURES, []):
            spool.append(r.lane, r.key, r.body, r.count, time.time())
        if b % 64 == 63:
            spool.commit()
    spool.commit()


async def drain(args: argparse.Namespace, work: Path) -> dict[str, object]:
    creds = make_credentials(work / "oci")
    with StandIn(
        work / "cloud", public_keys={creds.key_id: creds.public_key_pem}, partitions=1
    ) as cloud:
        settings = load_settings(
            gateway={"id": "bench", "site": "bench", "data_dir": str(work / "data")},
            uplink={
                "endpoint": cloud.endpoint,
                "stream_id": STREAM,
                "rate": args.rate,
                "oci_config": str(creds.config_file),
                "oci_profile": creds.profile,
                "idle": 0.05,
            },
            spool={"durability": "normal", "budget": 4 << 30},
        )
        cloud.faults.update(bytes_per_second=1_000_000)  # OCI's limit per partition
        spooler = Spooler(open_spool(settings), release=lambda token: None)
        start = time.perf_counter()
        fill(spooler, args.readings, 512)
        fill_s = time.perf_counter() - start
        backlog = spooler.spool.usage()
        uplink = Uplink(settings, spooler, make_stream_client(settings))
        task = asyncio.create_task(uplink.run())
        start = time.perf_counter()
        # Watching the spool from outside is the measurement itself.
        while sum(r for r, _, _ in spooler.spool.usage().values()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        seconds = time.perf_counter() - start
        uplink.close()
        await task
        stats = cloud.stats
        seen: dict[str, set[tuple[int, int]]] = {}
        for m in cloud.messages(STREAM):
            msg = decode(m.value)
            seen.setdefault(msg.kind, set()).update(
                zip(msg.columns["seq"].tolist(), msg.index().tolist(), strict=True)
            )
        spooler.shutdown()
    return {
        "readings": args.readings,
        "backlog": {
            lane: {"records": r, "bytes": b, "readings": n} for lane, (r, b, n) in backlog.items()
        },
        "fill_seconds": round(fill_s, 1),
        "drain_seconds": round(seconds, 2),
        "rate_configured_bytes_per_s": args.rate,
        "rate_achieved_bytes_per_s": round(uplink.sent_bytes / seconds),
        "rate_ratio": round(uplink.sent_bytes / seconds / args.rate, 3),
        "messages": uplink.sent_messages,
        "bytes_sent": uplink.sent_bytes,
        "bytes_per_reading_on_the_link": round(uplink.sent_bytes / args.readings / 2, 2),
        "arrived": {k: len(v) for k, v in seen.items()},
        "throttled": uplink.throttled,
        "standin_requests": stats.get("requests") if isinstance(stats, dict) else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--rate", type=int, default=800_000, help="uplink.rate, bytes/s per key")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "drain.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        result = asyncio.run(drain(args, Path(d)))
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))
    expected = args.readings // 512 * 512
    lost = {k: expected - v for k, v in result["arrived"].items()}  # type: ignore[attr-defined]
    print(f"\nlost per kind: {lost}; achieved/configured rate: {result['rate_ratio']}")


if __name__ == "__main__":
    main()

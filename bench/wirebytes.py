"""Uplink bytes per reading: wire format v1 against the same readings as compact JSON.

    .venv/bin/python bench/wirebytes.py                  # batches of 50, 500, 5000 readings
    .venv/bin/python bench/wirebytes.py --sizes 500 --level 9

Telemetry from ``gateway.telemetry.Fleet`` for 10 machines (names from
``gateway.simulate.machine_names``), each sampled 5 times a second on its own phase with a
jitter, starting now. Three cases of the same physics:

- ``plc``: values rounded to 3 decimals and ts to the millisecond, as a PLC sends them;
- ``plc-us``: values at 3 decimals, ts to the microsecond (a sub-millisecond clock);
- ``raw``: values at full float64 precision, ts to the microsecond;
- ``agg60``: the ``plc`` readings of 10 minutes at 1 reading/s/machine as an ``aggregate`` lane
  sends them (``telemetry_agg``: per machine and 60 s window, count and min/mean/max/last).

Every case but ``agg60`` is at full fidelity: the JSON carries exactly what the wire format
carries (ts at the microsecond is the wire format's resolution), and each batch is checked to
decode to the same values (``agg60``: to the same rows). A spool record holds 10 readings in
arrival order. For each case and batch size it reports compact JSON (orjson, one object per
reading, as on MQTT), JSON + zstd, the columns as plain MessagePack + zstd (the baseline in
reference/baselines.md), and the wire format: bytes, bytes per reading, share of the JSON, and
encode (``agg60``: summarise and encode) and decode CPU time per reading (best of a few runs).
A table goes to stdout and JSON to ``bench/results/wirebytes.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import orjson
import zstandard

from gateway.aggregate import Columns, summarise
from gateway.simulate import machine_names
from gateway.telemetry import FEATURES, Fleet
from gateway.wireformat import Message, decode, encode_split

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "wirebytes.json"
CASES = {"plc": (3, 3), "plc-us": (3, 6), "raw": (None, 6)}  # (value decimals, ts decimals)
TARGET = {"case": "plc", "readings": 500, "ratio": 0.08}
MACHINES, RATE = 10, 5.0
AGGREGATE = {"window": 60.0, "rate": 1.0, "seconds": 600}  # the agg60 case


def readings(
    n: int, value_decimals: int | None, ts_decimals: int, seed: int, t0: float, rate: float = RATE
) -> Message:
    """``n`` readings in arrival order, as the uplink would hand them to the encoder."""
    fleet = Fleet(MACHINES, seed=seed)
    rng = np.random.default_rng(seed + 1)
    names = machine_names(MACHINES)
    phase = rng.uniform(0.0, 1.0 / rate, MACHINES)  # machines do not sample in step
    ticks = -(-n // MACHINES)
    ts = t0 + np.arange(ticks)[:, None] / rate + phase + rng.normal(0.0, 0.002, (ticks, MACHINES))
    values = np.stack([fleet.sample(row) for row in ts])  # (ticks, machines, features)
    if value_decimals is not None:
        values = np.round(values, value_decimals)
    ts = np.round(ts, ts_decimals)
    order = np.argsort(ts.ravel(), kind="stable")[:n]
    seq = 1_000 + np.arange(n) // MACHINES  # a spool record: 10 readings in arrival order
    cols: dict[str, Any] = {
        "seq": seq.tolist(),
        "machine": [names[i] for i in order % MACHINES],
        "ts": ts.ravel()[order],
    }
    for j, name in enumerate(FEATURES):
        cols[name] = values.reshape(-1, len(FEATURES))[order, j]
    return Message("plant-a", "gw-01", "telemetry", int(seq[0]), int(seq[-1]), cols)


def as_json(m: Message) -> bytes:
    """The same readings as compact JSON, one object per reading (what MQTT carries)."""
    cols = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in m.columns.items()}
    del cols["seq"]
    return orjson.dumps(
        [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]
    )


def as_column_msgpack(m: Message) -> bytes:
    cols = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in m.columns.items()}
    del cols["seq"]
    return msgpack.packb(cols)


def best_of(fn: Callable[[], object], seconds: float = 0.3) -> float:
    """Fastest run of ``fn`` in seconds, over at least 3 runs or ``seconds`` of running."""
    runs: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(runs) < 3 or time.perf_counter() < deadline:
        start = time.process_time()
        fn()
        runs.append(time.process_time() - start)
        if len(runs) >= 200:
            break
    return min(runs)


def check_faithful(m: Message, wire: list[bytes]) -> None:
    got: dict[str, list[Any]] = {}
    for w in wire:
        for k, v in decode(w).columns.items():
            got.setdefault(k, []).extend(v.tolist() if isinstance(v, np.ndarray) else v)
    for k, v in m.columns.items():
        want = v.tolist() if isinstance(v, np.ndarray) else list(v)
        if got[k] != want:
            raise AssertionError(f"column {k} did not survive the round trip")


def aggregated(m: Message, window: float) -> list[Message]:
    """The readings of ``m`` as an aggregate lane sends them once it keeps up: a message per
    window (one partition key: the 10 machines are one group), a row per machine in it."""
    seq, ts = np.asarray(m.columns["seq"]), np.asarray(m.columns["ts"])
    names = sorted(set(m.columns["machine"]))
    code = np.array([names.index(x) for x in m.columns["machine"]], dtype=np.uint32)
    values = np.stack([np.asarray(m.columns[f]) for f in FEATURES], axis=1)
    win = np.floor(ts / window)
    out = []
    for w in np.unique(win).tolist():  # per window and spool record, not per reading
        parts = []
        for s in np.unique(seq[win == w]).tolist():
            rows = np.flatnonzero((win == w) & (seq == s))
            parts.append((s, Columns(names, code[rows], ts[rows], FEATURES, values[rows])))
        cols = summarise("telemetry", parts, window)
        out.append(Message(m.site, m.gateway, "telemetry_agg", parts[0][0], parts[-1][0], cols))
    return out


def measure(case: str, n: int, level: int, seed: int, t0: float) -> dict[str, Any]:
    if case == "agg60":
        a = AGGREGATE
        m = readings(
            n, *CASES["plc"], seed=seed, t0=t0 // a["window"] * a["window"], rate=a["rate"]
        )
        sent = aggregated(m, a["window"])
    else:
        m = readings(n, *CASES[case], seed=seed, t0=t0)
        sent = [m]
    js = as_json(m)
    zjs = zstandard.ZstdCompressor(level=level).compress(js)
    zcol = zstandard.ZstdCompressor(level=level).compress(as_column_msgpack(m))
    wire = []
    for message in sent:
        wire += encode_split(message, level=level)
        check_faithful(message, wire[-1:])
    ours = sum(len(w) for w in wire)
    if case == "agg60":  # summarising included
        window = AGGREGATE["window"]
        enc = best_of(lambda: [encode_split(a, level=level) for a in aggregated(m, window)])
    else:
        enc = best_of(lambda: encode_split(m, level=level))
    dec = best_of(lambda: [decode(w) for w in wire])
    return {
        "case": case,
        "readings": n,
        "json_bytes": len(js),
        "json_zstd_bytes": len(zjs),
        "columns_msgpack_zstd_bytes": len(zcol),
        "wire_bytes": ours,
        "messages": len(wire),
        "wire_bytes_per_reading": ours / n,
        "json_bytes_per_reading": len(js) / n,
        "ratio": ours / len(js),
        "json_zstd_ratio": len(zjs) / len(js),
        "columns_msgpack_zstd_ratio": len(zcol) / len(js),
        "encode_us_per_reading": enc / n * 1e6,
        "decode_us_per_reading": dec / n * 1e6,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'case':<7} {'readings':>8} {'JSON B':>9} {'B/rd':>6} {'JSON+zstd':>10} "
        f"{'cols mp+zstd':>12} {'wire B':>8} {'B/rd':>6} {'wire/JSON':>9} "
        f"{'enc µs/rd':>9} {'dec µs/rd':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['case']:<7} {r['readings']:>8} {r['json_bytes']:>9,} "
            f"{r['json_bytes_per_reading']:>6.1f} {r['json_zstd_ratio']:>10.1%} "
            f"{r['columns_msgpack_zstd_ratio']:>12.1%} {r['wire_bytes']:>8,} "
            f"{r['wire_bytes_per_reading']:>6.2f} {r['ratio']:>9.2%} "
            f"{r['encode_us_per_reading']:>9.2f} {r['decode_us_per_reading']:>9.2f}"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln]
    return {
        "cpu_model": models[0] if models else platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        **{p: metadata.version(p) for p in ("numpy", "msgpack", "zstandard", "orjson")},
        "libzstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="50,500,5000", help="readings per batch, comma-separated")
    every = [*CASES, "agg60"]
    p.add_argument("--cases", default=",".join(every), help=f"some of {', '.join(every)}")
    p.add_argument("--level", type=int, default=3, help="zstd level (default 3, the gateway's)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = round(time.time(), 3)
    cases = args.cases.split(",")
    rows = [
        measure(case, int(n), args.level, args.seed, t0)
        for case in cases
        if case in CASES
        for n in args.sizes.split(",")
    ]
    if "agg60" in cases:  # its size is its duration: 10 machines, 600 s at 1 reading/s
        n = int(MACHINES * AGGREGATE["rate"] * AGGREGATE["seconds"])
        rows.append(measure("agg60", n, args.level, args.seed, t0))
    print(format_table(rows))
    target = next(
        (r for r in rows if (r["case"], r["readings"]) == (TARGET["case"], TARGET["readings"])),
        None,
    )
    verdict = None
    if target is not None:
        verdict = target["ratio"] <= TARGET["ratio"]
        print(
            f"\ntarget: ≤ {TARGET['ratio']:.0%} of compact JSON for {TARGET['readings']}-reading "
            f"{TARGET['case']} batches: {target['ratio']:.2%}, {'PASS' if verdict else 'FAIL'}"
        )
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"machines": MACHINES, "rate": RATE, "level": args.level, "seed": args.seed}
        | {"aggregate": AGGREGATE},
        "target": TARGET | {"pass": verdict},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

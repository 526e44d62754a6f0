"""Side by side, in one run: the raw MQTT ceiling, a naive ONNX script, and the gateway.

    make bench                                       # all of it, 6 to 8 minutes
    .venv/bin/python bench/compare.py                # the same (what `make bench` runs)
    .venv/bin/python bench/compare.py --shapes single --systems raw,gateway --extras none

Three systems take the same load, each on a private Mosquitto started from the repo's
``mosquitto.conf`` (see ``bench/rig.py``): the raw ceiling (``bench/raw.py``, a paho subscriber
that only counts: the most any Python MQTT consumer could take here), the naive baseline
(``bench/naive.py``: a paho callback that runs the ONNX session on each reading and publishes
its score) and the gateway (``python -m gateway.cli run``) with the full pipeline on: scoring,
alerts, the spool at its default durability and the uplink to the local OCI stand-in
(``python -m tests.ocistandin``). The load comes from ``bench/loadgen.py`` in a process of its
own, QoS 1, 20 machines, as single-reading messages and as batched messages (50 readings each).

For each system and shape it offers the fixed rates (1,000, 5,000 and 10,000 readings/s) for
latency, then finds the saturation point: it doubles the rate (quadruples while the system's
process uses under a quarter of a core) until a step is not sustained, then bisects
geometrically between the last sustained rate and the first one that was not, to within 8 %.
In the bisection a step that fails is tried once more, and the rate counts as not sustained
only if that fails too: near the limit, a hiccup of the shared machine can fail one step.
Each step is a fresh load generator: ``--warmup`` s, then ``--step-duration`` s measured
(``--latency-duration`` at the fixed rates). A step is sustained when every reading arrived
(zero loss), the receiver was less than 0.2 s behind when the load stopped (no growing
backlog) and the generator offered the rate; a backlog is not waited for: the rig restarts.

What it reports, per system and shape:

- sustained readings/s: the highest sustained step; "≥ (generator)" when the load generator,
  not the system, ran out (the raw ceiling with batched messages), so ratios over it are "≤";
- publish → received latency p50 / p99 / p99.9 at the fixed rates ("saturated" where the rate
  was not sustained): for raw the telemetry at its subscriber, else the score at the HMI's;
- at saturation, for the system's own process (utime + stime from /proc, all threads): CPU µs
  per reading of the window, peak RSS (VmHWM), and the CPU per cent of one core of every
  process (system, receiver, broker, generator, stand-in; "other" is the rest of the machine:
  above 25 % the figures are noisy);
- for the gateway: mean batch, the mean of ``gateway_model_call_seconds``, the share of its CPU
  spent in ONNX Runtime (that histogram's sum over CPU time, and calls times one call's CPU
  time measured here, see ``OnnxCost``), its threads' CPU, and uplink bytes per reading
  (``gateway_uplink_bytes_total`` over readings sent, once the spool is empty; the stand-in's
  own byte count is in the JSON);
- the targets of the benchmark issue, with pass/fail.

Then it runs ``bench/spool.py``, ``bench/drain.py`` and ``bench/wirebytes.py`` (``--extras``)
and merges their JSON. A table goes to stdout, JSON to ``bench/results/latest.json`` (every step,
the date and the machine) and a plot of latency against offered load to
``bench/results/latency.png`` (needs matplotlib, the ``bench`` extra; ``--no-plot`` skips it).

Nothing here asserts a timing: the machine's two cores are shared by the broker, the generator,
the system under test and its receiver, and whatever else runs, so figures move between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from latency import machine_info, parse_rates
from procs import Cloud
from report import evaluate, format_table, plot_latency
from rig import MAX_BACKLOG_S, SYSTEMS, Rig

from gateway import Scorer
from gateway.manifest import default_bundle_dir, load_bundle

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "latest.json"
SHAPES = ("single", "batched")
RESOLUTION = 0.08  # bisection stops when the bounds are within 8 %
RECORD_RATE = 10_000  # readings/s of latency samples kept at most (every Nth message above)
UPLINK_WAIT = 15.0  # seconds for the gateway's spool to be sent (the uplink lingers 5 s)
EXTRAS: dict[str, dict[str, list[str]]] = {  # script: arguments for a full and a small run
    "spool": {"full": [], "small": ["--readings", "10240"]},
    "drain": {"full": [], "small": ["--readings", "10240"]},
    "wirebytes": {"full": [], "small": ["--sizes", "50"]},
}


class OnnxCost:
    """CPU time of one call of the default model by batch size, measured here with the
    gateway's own ``Scorer`` (its session options: one thread, sequential).

    The gateway's histogram ``gateway_model_call_seconds`` times a call on the event loop; a
    call handed to the scorer thread is timed from the hand-off to the result, which includes
    whatever else the loop did meanwhile. Calls times this cost is the ONNX time either way."""

    def __init__(self) -> None:
        self._scorer = Scorer(load_bundle(default_bundle_dir()))
        self._golden = np.asarray(self._scorer.manifest.golden.inputs, dtype=np.float32)
        self._seconds: dict[int, float] = {}

    def seconds(self, batch: float) -> float:
        n = max(1, round(batch))
        if n not in self._seconds:
            x = np.resize(self._golden, (n, self._golden.shape[1]))
            runs = []
            for _ in range(5):
                start = time.thread_time()
                for _ in range(100):
                    self._scorer.score(x)
                runs.append((time.thread_time() - start) / 100)
            self._seconds[n] = min(runs)
        return self._seconds[n]

    def add_estimate(self, step: dict[str, Any]) -> None:
        """Put the ONNX share of the gateway's CPU, estimated from its calls, into ``step``."""
        gw = step["gateway"]
        cpu = (step["cpu_us_per_reading"] or 0.0) * step["published"] / 1e6
        if gw["model_calls"] and cpu > 0:
            onnx = gw["model_calls"] * self.seconds(gw["mean_batch"])
            gw["onnx_call_us_measured_here"] = self.seconds(gw["mean_batch"]) * 1e6
            gw["onnx_share_of_cpu_estimate"] = onnx / cpu


# -- one system: fixed rates, then the saturation point ------------------------------------
def measure_system(
    rig: Rig, args: argparse.Namespace, scratch: Path, onnx: OnnxCost
) -> dict[str, Any]:
    """Every step of one system and shape, and what they add up to."""
    steps: list[dict[str, Any]] = []

    def run(rate: float, duration: float) -> dict[str, Any]:
        stride = max(1, math.ceil(rate / RECORD_RATE))
        step = rig.step(rate, duration, args.warmup, stride, scratch)
        if "gateway" in step:
            onnx.add_estimate(step)
        steps.append(step)
        print(_progress(rig, step), flush=True)
        return step

    for rate in args.latency_rates:
        run(rate, args.latency_duration)
    lo, hi = bounds(steps)
    while lo is not None and hi is None and lo < args.max_rate:  # ramp up
        cpu = _step_at(steps, lo)["cpu_percent_of_one_core"]["system"]
        run(min(args.max_rate, lo * (4 if cpu < 25 else 2)), args.step_duration)
        lo, hi = bounds(steps)
    while lo is None and hi is not None and hi > args.min_rate:  # not even the lowest rate
        run(max(args.min_rate, hi / 4), args.step_duration)
        lo, hi = bounds(steps)
    for _ in range(args.search_steps):  # bisect (an overloaded system delivers less than it
        if lo is None or hi is None or hi / lo <= 1 + RESOLUTION:  # can sustain: no shortcut)
            break
        rate = round(math.sqrt(lo * hi), -1)
        if not run(rate, args.step_duration)["sustained"]:
            # Near the limit a hiccup of the shared machine can fail one step: a rate counts
            # as not sustained when a second try fails too (the same rule for every system).
            run(rate, args.step_duration)
        lo, hi = bounds(steps)
    return summarize(rig.system, steps, lo, hi, args.latency_rates)


def bounds(steps: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(highest sustained rate below the lowest unsustained one, lowest unsustained rate); a
    rate is sustained when any try at it was."""
    held: dict[float, bool] = {}
    for s in steps:
        held[s["rate"]] = held.get(s["rate"], False) or s["sustained"]
    failed = [rate for rate, ok in held.items() if not ok]
    hi = min(failed) if failed else None
    passed = [rate for rate, ok in held.items() if ok and (hi is None or rate < hi)]
    return (max(passed) if passed else None), hi


def _step_at(steps: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    """The step at ``rate``: the last sustained try, else the last try."""
    tries = [s for s in steps if s["rate"] == rate]
    return next((s for s in reversed(tries) if s["sustained"]), tries[-1])


def summarize(
    system: str,
    steps: list[dict[str, Any]],
    lo: float | None,
    hi: float | None,
    latency_rates: list[float],
) -> dict[str, Any]:
    at = _step_at(steps, lo) if lo is not None else None
    limit = _step_at(steps, hi)["reason"] if hi is not None else "max-rate"
    latency = {}
    for rate in latency_rates:
        step = _step_at(steps, rate)
        latency[f"{rate:g}"] = step["latency_ms"] if step["sustained"] else "saturated"
    out: dict[str, Any] = {
        "system": system,
        "sustained_readings_per_s": lo,
        "first_unsustained_rate": hi,
        "limited_by": limit,  # backlog / loss: the system; generator: the load generator
        "latency_ms": latency,
        "peak_rss_bytes": max(s["peak_rss_bytes"] for s in steps),
        "at_saturation": None,
        "steps": steps,
    }
    if at is not None:
        out["at_saturation"] = {
            "rate": at["rate"],
            "cpu_us_per_reading": at["cpu_us_per_reading"],
            "peak_rss_bytes": at["peak_rss_bytes"],
            "cpu_percent_of_one_core": at["cpu_percent_of_one_core"],
            "latency_ms": at["latency_ms"],
            **({"gateway": at["gateway"]} if "gateway" in at else {}),
        }
    return out


def uplink_summary(rig: Rig, cloud: Cloud, stored_before: int) -> dict[str, Any]:
    """Uplink bytes per reading over the gateway's life (every incarnation of the rig)."""
    final = rig.uplink_counters(wait=UPLINK_WAIT)
    runs = [*rig.incarnations, final]
    sent_bytes = sum(r["uplink_bytes"] for r in runs)
    # A reading is sent once its telemetry and its score are (the gauge counts both lanes).
    readings = sum(r["readings_scored"] - r["spool_readings_waiting"] / 2 for r in runs)
    stored = int(cloud.stats().get("bytes_stored", 0)) - stored_before
    return {
        "bytes": sent_bytes,
        "readings": int(readings),
        "bytes_per_reading": sent_bytes / readings if readings else None,
        "messages": sum(r["uplink_messages"] for r in runs),
        "throttled": sum(r["uplink_throttled"] for r in runs),
        "spool_readings_still_waiting": final["spool_readings_waiting"],
        "standin_bytes_stored": stored,
    }


def _progress(rig: Rig, step: dict[str, Any]) -> str:
    p99 = f"{step['latency_ms']['p99']:.2f}" if step["latency_ms"] else "-"
    verdict = "sustained" if step["sustained"] else f"NOT sustained ({step['reason']})"
    return (
        f"  {rig.system:>7} batch {rig.batch:>2}  {step['rate']:>11,.0f}/s  {verdict:<26}"
        f" delivered {step['delivered_rate']:>11,.0f}/s  behind {step['backlog_s']:6.2f} s"
        f"  p99 {p99:>8} ms"
        f"  {step['cpu_us_per_reading'] or 0:6.1f} µs/reading"
    )


# -- the existing scripts ------------------------------------------------------------------
def run_extras(mode: str, out_dir: Path) -> dict[str, Any]:
    """Run bench/spool.py, drain.py and wirebytes.py; their JSON, by name."""
    results: dict[str, Any] = {}
    for name, sizes in EXTRAS.items():
        out = out_dir / f"{name}.json"
        cmd = [sys.executable, str(REPO / "bench" / f"{name}.py"), *sizes[mode], "--out", str(out)]
        print(f"running {' '.join(cmd[1:])} ...", flush=True)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            results[name] = {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
            continue
        results[name] = orjson.loads(out.read_bytes())
    return results


# -- the whole run -------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    started, wall0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
    shapes: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="edgegw-compare-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        onnx = OnnxCost()
        cloud = None
        if "gateway" in args.systems:
            cloud = Cloud(work / "cloud")
            stack.callback(cloud.stop)
            cloud.wait_listening()
        for shape in args.shapes:
            batch = 1 if shape == "single" else args.batch
            for system in args.systems:
                print(f"{shape} messages ({batch} reading(s) each): {system}", flush=True)
                rig_dir = work / f"{shape}-{system}"
                stored = int(cloud.stats().get("bytes_stored", 0)) if cloud else 0
                with Rig(system, batch, rig_dir, cloud, args.machines) as rig:
                    summary = measure_system(rig, args, work, onnx)
                    if system == "gateway" and cloud is not None:
                        summary["uplink"] = uplink_summary(rig, cloud, stored)
                summary["log_problems"] = rig.problems
                shapes.setdefault(shape, {})[system] = summary
    extras = run_extras(args.extras, args.out.parent) if args.extras != "none" else {}
    ratios, targets = evaluate(shapes)
    return {
        "benchmark": "compare: raw MQTT ceiling, naive ONNX script, gateway (full pipeline)",
        "date": started,
        "machine": {
            **machine_info(),
            "sqlite": sqlite3.sqlite_version,
            **{p: metadata.version(p) for p in ("numpy", "orjson", "oci")},
        },
        "config": {
            "qos": 1,
            "machines": args.machines,
            "shapes": {s: 1 if s == "single" else args.batch for s in args.shapes},
            "systems": args.systems,
            "latency_rates": args.latency_rates,
            "latency_duration_s": args.latency_duration,
            "step_duration_s": args.step_duration,
            "warmup_s": args.warmup,
            "search_steps": args.search_steps,
            "max_rate": args.max_rate,
            "sustained_means": f"zero loss, less than {MAX_BACKLOG_S:g} s behind at the end",
            "gateway_env": {k: v for k, v in os.environ.items() if k.startswith("EDGEGW_")},
        },
        "shapes": shapes,
        "ratios": ratios,
        "targets": targets,
        "extras": extras,
        "wall_seconds": time.monotonic() - wall0,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", type=_names(SYSTEMS), default=list(SYSTEMS))
    p.add_argument("--shapes", type=_names(SHAPES), default=list(SHAPES))
    p.add_argument("--batch", type=int, default=50, help="readings per batched message")
    p.add_argument("--machines", type=int, default=20)
    p.add_argument(
        "--latency-rates", type=_rates, default=[1_000.0, 5_000.0, 10_000.0], metavar="R,R,..."
    )
    p.add_argument("--latency-duration", type=float, default=4.0, help="s measured at each")
    p.add_argument("--step-duration", type=float, default=3.0, help="s measured per search step")
    p.add_argument("--warmup", type=float, default=1.0, help="s before each step's window")
    p.add_argument("--search-steps", type=int, default=4, help="bisection steps at most")
    p.add_argument("--min-rate", type=float, default=100.0)
    p.add_argument("--max-rate", type=float, default=2_000_000.0)
    p.add_argument(
        "--extras",
        choices=("full", "small", "none"),
        default="full",
        help="run bench/spool.py, drain.py, wirebytes.py (small: tiny sizes)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    p.add_argument("--plot", type=Path, default=None, help="PNG (default: latency.png beside)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot")
    args = p.parse_args(argv)
    if min(args.latency_duration, args.step_duration) <= 0 or args.warmup < 0:
        p.error("durations must be positive, warmup not negative")
    if args.batch < 2 or args.machines < 1 or args.search_steps < 0:
        p.error("batch must be at least 2, machines positive, search steps not negative")
    args.plot = args.plot or args.out.with_name("latency.png")
    return args


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}")
        return [n for n in allowed if n in names]  # in the canonical order

    return parse


def _rates(text: str) -> list[float]:
    return sorted(parse_rates(text))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted: every broker, system and generator stopped", file=sys.stderr)
        return 130
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_plot:
        result["plot"] = plot_latency(result, args.plot)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print()
    print(format_table(result))
    print(f"\nresults: {args.out}" + (f", plot: {result['plot']}" if result.get("plot") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

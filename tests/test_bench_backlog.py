"""`bench/backlog.py` runs end to end on a tiny backlog and loses nothing (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_bench


@pytest.mark.slow
def test_backlog_bench_spools_holds_and_drains_everything(tmp_path: Path) -> None:
    out = tmp_path / "backlog.json"
    options = ["--readings", "2000", "--rate", "2000", "--batch", "50", "--hold", "1"]
    proc = run_bench("backlog.py", *options, "--drain-seconds", "30", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "peak (VmHWM" in proc.stdout
    assert "flat:" in proc.stdout

    r = json.loads(out.read_text())
    assert r.keys() >= {
        "benchmark",
        "date",
        "machine",
        "config",
        "fill",
        "spool_at_hold",
        "spool_counters",
        "rss",
        "drain",
        "arrived",
        "samples",
    }
    assert r["machine"].keys() >= {"cpu_model", "cores", "kernel", "python", "mosquitto"}
    assert r["config"]["readings"] == 2000

    fill = r["fill"]
    assert fill["published"] == 2000
    assert fill["scores_received"] == 2000
    assert fill["lost"] == 0
    assert fill["unacknowledged"] == 0

    # The whole load waited in the spool (plus the rig's probe reading), nothing dropped.
    assert r["spooled_at_hold"]["telemetry"] == 2000
    for lane in ("telemetry", "scores"):
        assert r["spool_at_hold"][lane]["readings"] >= 2000
    assert r["dropped_at_hold"] == 0
    assert r["spool_counters"]["dropped_readings"] == 0
    assert r["spool_counters"]["expired_readings"] == 0

    rss = r["rss"]
    assert rss.keys() >= {"before", "points", "hold_min", "hold_max", "drain_max", "peak_hwm"}
    assert [p["share"] for p in rss["points"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rss["peak_hwm"] >= rss["hold_max"] >= rss["hold_min"] > 0
    assert rss["verdict"].keys() >= {"peak_ok", "flat"}
    assert {s["phase"] for s in r["samples"]} >= {"before", "fill", "hold"}

    # Once the cloud was back, every reading and score arrived exactly once.
    assert r["drain"]["remaining_readings"] == 0
    for lane in ("telemetry", "scores"):
        arrived = r["arrived"][lane]
        assert arrived["distinct"] == r["spool_at_hold"][lane]["readings"]
        assert arrived["duplicates"] == 0
    assert r["problems"] == []

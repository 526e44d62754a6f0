"""The latency benchmark runs end to end and reports what it promises (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LATENCY_KEYS = {"p50", "p90", "p99", "p99_9", "max", "mean", "min"}


@pytest.mark.slow
def test_latency_bench_runs_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "latency.py"),
            "--rate",
            "200",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--machines",
            "5",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "p99 ms" in proc.stdout

    result = json.loads(out.read_text())
    assert result.keys() >= {"benchmark", "date", "machine", "config", "runs", "criterion"}
    assert result["machine"].keys() >= {
        "cpu_model",
        "cores",
        "kernel",
        "python",
        "onnxruntime",
        "mosquitto",
    }
    assert result["config"]["qos"] == 1
    assert result["criterion"]["checked"] is False  # 200/s is not the criterion's rate

    (run,) = result["runs"]
    assert run["offered_rate"] == 200
    assert run["published"] == 400
    assert run["received"] == run["published"]
    assert run["lost"] == 0
    assert run["duplicates"] == 0
    assert run["loadgen"]["unacknowledged"] == 0
    assert run["gateway"]["deadlettered"] == 0
    assert run["latency_ms"].keys() >= LATENCY_KEYS
    for key in LATENCY_KEYS:
        value = run["latency_ms"][key]
        assert isinstance(value, float), (key, value)
        assert math.isfinite(value), (key, value)
        assert value > 0, (key, value)
    assert run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] <= run["latency_ms"]["max"]
    assert run["gateway"]["cpu_seconds"] >= 0
    assert run["cpu_percent_of_one_core"].keys() >= {
        "gateway",
        "broker",
        "loadgen",
        "receiver",
        "other",
    }
    assert run["gateway"]["peak_rss_bytes"] > 0


def test_latency_bench_rejects_bad_options(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "latency.py"),
            "--rates",
            "1000,abc",
            "--out",
            str(tmp_path / "x.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "not a list of numbers" in proc.stderr
    assert not (tmp_path / "x.json").exists()

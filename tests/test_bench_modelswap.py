"""The model-swap benchmark runs end to end and reports what it promises (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_bench

SUMMARY_KEYS = {"n", "p50", "p99", "max", "mean"}


@pytest.mark.slow
def test_modelswap_bench_runs_and_drops_nothing(tmp_path: Path) -> None:
    out = tmp_path / "modelswap.json"
    proc = run_bench(
        "modelswap.py",
        "--rate",
        "200",
        "--duration",
        "4",
        "--warmup",
        "1",
        "--machines",
        "5",
        "--versions",
        "2.0.0,1.0.0",
        "--idle-polls",
        "2",
        "--out",
        str(out),
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worst added latency during a swap" in proc.stdout
    assert "requests per poll" in proc.stdout

    result = json.loads(out.read_text())
    assert result.keys() >= {
        "benchmark",
        "date",
        "machine",
        "config",
        "swap_under_load",
        "idle_polls",
        "idle_swap",
        "log_problems",
    }
    assert result["machine"].keys() >= {"cpu_model", "cores", "kernel", "python", "onnxruntime"}
    assert result["config"]["versions"] == ["2.0.0", "1.0.0"]

    run = result["swap_under_load"]
    assert run["published"] == 1_000
    assert run["received"] == run["published"]
    assert run["dropped"] == 0
    assert run["duplicates"] == 0
    assert run["swap_error"] is None
    assert run["model_changes"] == {"seen": 2, "expected": 2}
    assert run["loadgen"]["unacknowledged"] == 0
    assert run["gateway"]["deadlettered"] == 0
    assert run["steady_ms"].keys() >= SUMMARY_KEYS
    assert run["worst_added_ms"] is not None
    first, second = run["swaps"]
    assert (first["from"], first["to"]) == ("1.0.0", "2.0.0")
    assert (second["from"], second["to"]) == ("2.0.0", "1.0.0")
    for swap in run["swaps"]:
        assert swap["swapped_at"] >= swap["promoted_at"]
        assert swap["around_swap_ms"].keys() >= SUMMARY_KEYS
        assert swap["promote_to_swap_ms"].keys() >= SUMMARY_KEYS
    # The first swap downloads 2.0.0; going back to 1.0.0 comes from the gateway's cache.
    assert any(r.startswith("GET 2.0.0/model.onnx 200") for r in first["requests"])
    assert not any("model.onnx" in r for r in second["requests"])

    idle = result["idle_polls"]
    assert idle["polls"] >= 2
    assert idle["requests_per_poll"] == 1
    assert idle["statuses"] == {"304": idle["polls"]}
    assert idle["response_body_bytes_per_poll"] == 0
    assert idle["wire"]["request_bytes_per_poll"] > 0
    assert idle["gateway_polls"]["failed"] == 0

    one = result["idle_swap"]
    assert one.keys() >= {"version", "promote_to_swap_s", "poll_to_swap_s", "gateway_cpu_ms"}
    assert any(r.startswith(f"GET {one['version']}/model.onnx 200") for r in one["requests"])


def test_modelswap_bench_rejects_bad_options(tmp_path: Path) -> None:
    proc = run_bench(
        "modelswap.py",
        "--versions",
        "2.0.0,2.0.0",
        "--out",
        str(tmp_path / "x.json"),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "follows itself" in proc.stderr
    assert not (tmp_path / "x.json").exists()

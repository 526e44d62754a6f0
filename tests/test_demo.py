"""The demo: its state and renderer on scripted messages, then the real thing end to end."""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

import orjson
import pytest

from gateway import demo
from gateway.demo import (
    DemoResult,
    DemoState,
    render_event,
    render_line,
    render_screen,
    render_summary,
    run_demo,
    score_bar,
)

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MACHINES = ["line1/press-01", "line1/pump-02"]


def _state() -> DemoState:
    return DemoState(MACHINES, threshold=0.6, start=100.0)


def _feed(state: DemoState, topic: str, body: object, now: float = 110.0) -> None:
    state.handle(topic, orjson.dumps(body), now)


def _alert(machine: str, state: str, score: float) -> dict[str, object]:
    return {
        "machine": machine,
        "state": state,
        "score": score,
        "threshold": 0.6 if state == "raised" else 0.3,
        "ts": 1_764_300_000.0,
        "model": "m@1",
        "reading": {"temperature": 80.0},
    }


def test_scores_one_or_a_list_update_each_machine() -> None:
    s = _state()
    _feed(
        s,
        "scores/line1/press-01",
        {"machine": "line1/press-01", "ts": 1.0, "score": 0.25, "model": "m@1"},
    )
    _feed(
        s,
        "scores/line1/pump-02",
        [
            {"machine": "line1/pump-02", "ts": 1.0, "score": 0.1},
            {"machine": "line1/pump-02", "ts": 1.2, "score": 0.4},
        ],
    )
    _feed(s, "scores/line9/new-99", {"ts": 1.0, "score": 2})  # machine from the topic
    assert s.machines["line1/press-01"].score == 0.25
    assert s.machines["line1/pump-02"].score == 0.4
    assert s.machines["line9/new-99"].score == 2.0
    assert list(s.machines)[:2] == MACHINES  # the table keeps the fleet's order


def test_alerts_become_events_printed_once() -> None:
    s = _state()
    _feed(s, "alerts/line1/press-01", _alert("line1/press-01", "raised", 1.5), now=107.5)
    assert s.machines["line1/press-01"].alert
    events = s.drain()
    assert [(e.state, e.machine, e.at) for e in events] == [("raised", "line1/press-01", 7.5)]
    assert s.drain() == []
    _feed(s, "alerts/line1/press-01", _alert("line1/press-01", "cleared", 0.1), now=130.0)
    assert not s.machines["line1/press-01"].alert
    assert (s.raised, s.cleared, s.machines["line1/press-01"].raised) == (1, 1, 1)
    assert [e.state for e in s.events] == ["raised", "cleared"]


def test_status_counters_rate_and_offline_keeps_the_last_counters() -> None:
    s = _state()
    assert not s.online
    _feed(
        s,
        "gateway/demo/status",
        {
            "state": "online",
            "ts": 1000.0,
            "readings_received": 10,
            "readings_scored": 10,
            "readings_pending": 0,
            "alerts_active": 0,
            "model": "m@1",
        },
    )
    assert s.online
    assert s.model_label == "m@1"
    _feed(
        s,
        "gateway/demo/status",
        {
            "state": "online",
            "ts": 1002.0,
            "readings_received": 130,
            "readings_scored": 130,
            "alerts_active": 1,
        },
    )
    assert s.rate == pytest.approx(60.0)
    _feed(s, "gateway/demo/status", {"state": "offline", "ts": 1003.0, "reason": "shutdown"})
    assert not s.online
    assert s.counter("readings_scored") == 130
    _feed(s, "gateway/demo/model", {"name": "m", "version": "2", "model": "m@2"})
    assert s.model_label == "m@2"
    _feed(s, "gateway/other/status", {"state": "online", "readings_scored": 5})
    assert s.counter("readings_scored") == 130  # another gateway's status is not ours


def test_dead_letters_are_counted_by_kind() -> None:
    s = _state()
    for kind in ("decode", "decode", "not_number"):
        _feed(
            s,
            "gateway/demo/deadletter",
            {"reason": f"bad {kind}", "kind": kind, "topic": "telemetry/x"},
        )
    assert s.deadletters == {"decode": 2, "not_number": 1}
    assert s.last_deadletter == "bad not_number"


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("scores/a", b"not json"),
        ("scores/a", b'"a string"'),
        ("scores/a", b'[{"machine": "a", "score": null}, 3]'),
        ("alerts/a", b"[1, 2]"),
        ("alerts/a", b'{"machine": "a", "state": "exploded"}'),
        ("gateway/demo/status", b"42"),
    ],
)
def test_unexpected_messages_are_ignored(topic: str, payload: bytes) -> None:
    s = _state()
    s.handle(topic, payload, 110.0)
    assert list(s.machines) == MACHINES
    assert all(m.score is None and not m.alert for m in s.machines.values())
    assert (s.raised, s.cleared, s.status, s.drain()) == (0, 0, {}, [])


@pytest.mark.parametrize(
    ("score", "bar"),
    [
        (0.0, "[......|......]"),
        (0.3, "[###...|......]"),
        (0.6, "[######|......]"),
        (0.9, "[######|###...]"),
        (1.2, "[######|######]"),
        (5.0, "[######|######>"),
        (-1.0, "[......|......]"),
    ],
)
def test_score_bar_marks_the_threshold(score: float, bar: str) -> None:
    assert score_bar(score, 0.6, width=12) == bar


def test_score_bar_blank_without_a_score() -> None:
    assert score_bar(None, 0.6, width=12) == " " * 15
    assert score_bar(float("nan"), 0.6, width=12) == " " * 15


def test_screen_shows_every_machine_state_and_events() -> None:
    s = _state()
    _feed(
        s,
        "gateway/demo/status",
        {
            "state": "online",
            "ts": 1.0,
            "readings_received": 1234,
            "readings_scored": 1230,
            "alerts_active": 1,
            "model": "m@1",
        },
    )
    _feed(s, "scores/line1/press-01", {"machine": "line1/press-01", "score": 1.5})
    _feed(s, "alerts/line1/press-01", _alert("line1/press-01", "raised", 1.5))
    _feed(s, "gateway/demo/deadletter", {"reason": "invalid JSON", "kind": "decode"})
    plain = render_screen(s, 112.0, duration=60, http_port=9999, color=False)
    text = "\n".join(plain)
    assert not ANSI.search(text)
    assert "+12s of 60s" in plain[0]
    assert "m@1" in plain[0]
    assert "received 1,234" in text
    assert "scored 1,230" in text
    assert "http://127.0.0.1:9999/metrics" in text
    press = next(ln for ln in plain if ln.startswith("line1/press-01"))
    pump = next(ln for ln in plain if ln.startswith("line1/pump-02"))
    assert "ALERT" in press
    assert "1.500" in press
    assert "OK" in pump
    assert " - " in pump  # no score yet
    assert "alert raised" in text
    assert "dead letters: 1 (decode 1)" in text
    coloured = "\n".join(render_screen(s, 112.0, duration=60, http_port=9999, color=True))
    assert "\x1b[1;31mALERT\x1b[0m" in coloured
    assert ANSI.sub("", coloured) == text


def test_screen_before_anything_arrived() -> None:
    text = "\n".join(render_screen(_state(), 100.0, duration=60, http_port=1, color=False))
    assert "starting" in text
    assert "(none yet)" in text


def test_lines_for_logs_and_the_summary() -> None:
    s = _state()
    _feed(
        s,
        "gateway/demo/status",
        {"state": "online", "ts": 1.0, "readings_received": 2000, "readings_scored": 1990},
    )
    _feed(s, "alerts/line1/pump-02", _alert("line1/pump-02", "raised", 0.9), now=112.0)
    event = render_event(s.drain()[0])
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d \+ 12\.0s  alert raised   line1/pump-02 +"
        r"score 0\.900 > 0\.600",
        event,
    )
    assert render_line(s, 125.0).startswith("+ 25.0s  received 2,000  scored 1,990")
    summary = "\n".join(render_summary(s, 30.0, " (interrupted)"))
    assert "after 30.0s (interrupted)" in summary
    assert "readings scored  1,990 (received 2,000)" in summary
    assert "1 raised, 0 cleared" in summary


# -- end to end: real broker, gateway and simulator --------------------------------------------
def _children() -> list[tuple[int, str]]:
    """Processes whose parent is this test process, with their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            found.append((int(entry.name), cmdline))
    return found


def _assert_all_stopped(res: DemoResult) -> None:
    assert res.pids.keys() >= {"gateway"}
    for name, pid in res.pids.items():
        assert not Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) still running"
    # The demo's own broker runs from its work folder; other tests' brokers may still run.
    left = [
        (pid, cmd)
        for pid, cmd in _children()
        if ("mosquitto" in cmd and "edge-gateway-demo-" in cmd) or "gateway.cli" in cmd
    ]
    assert left == []


@pytest.mark.slow
def test_demo_runs_raises_an_alert_and_stops_everything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    res = DemoResult()
    assert run_demo(duration=25, result=res) == 0
    out = capsys.readouterr().out
    assert res.failure is None, out
    assert re.search(r"alert raised +line1/press-01", out), out  # the first fault, 5 s in
    assert len(re.findall(r"^\+ *\d+\.\ds  received", out, re.M)) >= 4, out
    scored = re.search(r"readings scored +([\d,]+)", out)
    assert scored is not None, out
    assert int(scored.group(1).replace(",", "")) > 500, out
    # Halfway, a new signed version lands in the site's bucket and takes over live.
    assert "data scientist published machine-health@1.1.0" in out, out
    assert re.search(
        r"model machine-health@1\.0\.0 -> machine-health@1\.1\.0 \(signed by [0-9a-f]{16}, "
        r"verified, golden samples passed; threshold 0\.600 -> 0\.510\)",
        out,
    ), out
    assert "\x1b[" not in out  # not a terminal: no escape codes
    assert set(res.pids) == {"gateway", "simulator"}
    _assert_all_stopped(res)


@pytest.mark.slow
def test_ctrl_c_stops_everything_and_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    res = DemoResult()
    before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(6.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        assert run_demo(duration=60, result=res) == 0
    finally:
        timer.cancel()
    out = capsys.readouterr().out
    assert res.interrupted, out
    assert "(interrupted)" in out
    assert signal.getsignal(signal.SIGINT) is before  # our handler is gone again
    _assert_all_stopped(res)


def test_a_gateway_that_fails_is_reported_with_its_log(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spawn = demo._spawn

    def broken(args: list[str], log: Path, env: dict[str, str] | None = None) -> demo.Proc:
        return spawn([*args, "--no-such-flag"] if args[0] == "run" else args, log, env)

    monkeypatch.setattr(demo, "_spawn", broken)
    res = DemoResult()
    assert run_demo(duration=5, result=res) == 1
    out = capsys.readouterr().out
    assert "demo failed: the gateway exited with code 2" in out
    assert "unrecognized arguments: --no-such-flag" in out  # the log's tail
    kept = re.search(r"full log: (\S+)", out)
    assert kept is not None, out
    log = Path(kept.group(1))
    assert "--no-such-flag" in log.read_text()  # the copy outlives the work folder
    log.unlink()
    assert set(res.pids) == {"gateway"}
    _assert_all_stopped(res)

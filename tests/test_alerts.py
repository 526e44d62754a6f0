"""Alert policy: raise after N over, clear after M under the lower threshold, per machine."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.alerts import AlertTracker
from gateway.manifest import AlertPolicy

POLICY = AlertPolicy(threshold=1.0, clear_threshold=0.5, raise_after=3, clear_after=2)


def feed(t: AlertTracker, machine: str, scores: list[float]) -> list[tuple[str, int]]:
    out = t.update(
        [machine] * len(scores),
        [float(i) for i in range(len(scores))],
        np.array(scores, dtype=np.float32),
    )
    return [(a.state, a.index) for a in out]


def test_raises_on_the_nth_consecutive_score_over_threshold() -> None:
    t = AlertTracker(POLICY)
    assert feed(t, "m", [2, 2, 0.1, 2, 2]) == []  # the dip resets the run
    assert feed(t, "m", [2]) == [("raised", 0)]
    assert t.is_raised("m")
    assert t.active == 1


def test_hysteresis_keeps_the_alert_between_the_two_thresholds() -> None:
    t = AlertTracker(POLICY)
    feed(t, "m", [2, 2, 2])
    assert feed(t, "m", [0.7, 0.7, 0.7, 0.7]) == []  # under threshold, not under clear
    assert feed(t, "m", [0.4, 0.9, 0.4]) == []  # the 0.9 breaks the run
    assert feed(t, "m", [0.4]) == [("cleared", 0)]
    assert not t.is_raised("m")


def test_machines_are_independent_within_one_batch() -> None:
    t = AlertTracker(POLICY)
    machines = ["a", "b", "a", "b", "a", "b"]
    scores = np.array([2, 0.1, 2, 2, 2, 2], dtype=np.float32)
    changes = t.update(machines, [float(i) for i in range(6)], scores)
    assert [(a.machine, a.state, a.index) for a in changes] == [("a", "raised", 4)]
    assert changes[0].threshold == 1.0


def test_nan_breaks_a_run_and_never_raises() -> None:
    t = AlertTracker(POLICY)
    assert feed(t, "m", [2, 2, float("nan"), 2, 2, float("nan")]) == []
    assert feed(t, "m", [float("inf")] * 2) == []  # inf is over the threshold: still 2 of 3


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 3, allow_nan=False)), max_size=200),
    st.integers(1, 50),
)
def test_changes_alternate_per_machine_whatever_the_batching(
    stream: list[tuple[str, float]], cut: int
) -> None:
    whole = AlertTracker(POLICY)
    pieces = AlertTracker(POLICY)
    machines = [m for m, _ in stream]
    scores = np.array([s for _, s in stream], dtype=np.float32)
    ts = [float(i) for i in range(len(stream))]
    a = [(c.machine, c.state, c.ts) for c in whole.update(machines, ts, scores)]
    b = []
    for i in range(0, len(stream), cut):
        b += [
            (c.machine, c.state, c.ts)
            for c in pieces.update(machines[i : i + cut], ts[i : i + cut], scores[i : i + cut])
        ]
    assert a == b, "batch boundaries never change the alerts"
    for m in "abc":
        states = [s for mm, s, _ in a if mm == m]
        assert states == ["raised", "cleared"] * (len(states) // 2) + ["raised"] * (len(states) % 2)

"""Alerts: the manifest's policy per machine, with hysteresis so a noisy sensor does not flap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .manifest import AlertPolicy

__all__ = ["Alert", "AlertTracker"]


@dataclass(frozen=True, slots=True)
class Alert:
    """A state change of one machine, as published on ``alerts/<machine>``."""

    machine: str
    state: str  # "raised" | "cleared"
    score: float
    threshold: float
    ts: float
    index: int  # row in the batch that caused it

    def payload(self, model: str, reading: dict[str, Any]) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "state": self.state,
            "score": self.score,
            "threshold": self.threshold,
            "ts": self.ts,
            "model": model,
            "reading": reading,
        }


class AlertTracker:
    """Per-machine state: raised or not, and the run of scores counting toward a change."""

    def __init__(self, policy: AlertPolicy) -> None:
        self.policy = policy
        self._raised: set[str] = set()
        self._run: dict[str, int] = {}

    @property
    def active(self) -> int:
        return len(self._raised)

    def is_raised(self, machine: str) -> bool:
        return machine in self._raised

    def update(
        self, machines: Sequence[str], ts: Sequence[float], scores: npt.NDArray[np.float32]
    ) -> list[Alert]:
        """Feed one batch of scores in reading order; return the state changes it caused.

        A non-finite score counts neither over nor under: it breaks the run.
        """
        p = self.policy
        over = (scores > p.threshold).tolist()
        under = (scores < p.clear_threshold).tolist()
        raised, run = self._raised, self._run
        changes: list[Alert] = []
        for i, machine in enumerate(machines):
            if machine in raised:
                n = run.get(machine, 0) + 1 if under[i] else 0
                if n >= p.clear_after:
                    raised.discard(machine)
                    n = 0
                    changes.append(
                        Alert(machine, "cleared", float(scores[i]), p.clear_threshold, ts[i], i)
                    )
            else:
                n = run.get(machine, 0) + 1 if over[i] else 0
                if n >= p.raise_after:
                    raised.add(machine)
                    n = 0
                    changes.append(
                        Alert(machine, "raised", float(scores[i]), p.threshold, ts[i], i)
                    )
            if n:
                run[machine] = n
            else:  # a quiet machine in no alert keeps no state: memory follows what matters
                run.pop(machine, None)
        return changes

"""Judging models by what they do live: the live model's health, and a candidate in shadow."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .batcher import Batch
from .errors import RejectedInput
from .ingest import FeatureMap
from .scoring import Scorer

__all__ = ["LiveWatch", "Shadow"]


class LiveWatch:
    """Decides when the live model is failing: ``errors`` failed calls in a row, or more than
    ``nonfinite`` of its last ``window`` scores NaN or infinite."""

    def __init__(self, errors: int, nonfinite: float, window: int) -> None:
        self.errors, self.nonfinite, self.window = errors, nonfinite, window
        self._failed_in_row = 0
        self._recent: deque[tuple[int, int]] = deque()  # (scores, non-finite) per batch
        self._scores = 0
        self._bad = 0
        self.tripped: str | None = None

    def reset(self) -> None:
        self._failed_in_row = self._scores = self._bad = 0
        self._recent.clear()
        self.tripped = None

    def scored(self, n: int, nonfinite: int) -> None:
        self._failed_in_row = 0
        self._recent.append((n, nonfinite))
        self._scores += n
        self._bad += nonfinite
        while self._recent and self._scores - self._recent[0][0] >= self.window:
            old_n, old_bad = self._recent.popleft()
            self._scores -= old_n
            self._bad -= old_bad
        if self._scores >= self.window and self._bad > self.nonfinite * self._scores:
            self.tripped = (
                f"{self._bad} of its last {self._scores} scores were NaN or infinite "
                f"(limit {self.nonfinite:g})"
            )

    def failed(self, error: str) -> None:
        self._failed_in_row += 1
        if self._failed_in_row >= self.errors:
            self.tripped = f"{self._failed_in_row} model calls in a row failed, last: {error}"


@dataclass
class Shadow:
    """A candidate scoring the live batches beside the live model, judged before it serves."""

    candidate: Scorer
    readings: int
    seconds: float
    score_min: float | None
    score_max: float | None
    max_alert_share: float
    started: float = field(default_factory=time.monotonic)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    seen: int = 0
    errors: int = 0
    missing: int = 0  # readings without a field the candidate needs
    nonfinite: int = 0
    out_of_bounds: int = 0
    over_threshold: int = 0
    last_error: str | None = None
    _cand: list[npt.NDArray[np.float32]] = field(default_factory=list)
    _live: list[npt.NDArray[np.float32]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._map: FeatureMap | None = None

    def adapt(self, live_features: Sequence[str]) -> None:
        """Readings arrive laid out for the live model; a candidate with other features reads
        its own from the raw readings."""
        if tuple(live_features) != self.candidate.features:
            self._map = FeatureMap(self.candidate.features, require_ts=False)

    def features_for(self, batch: Batch) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """The candidate's input rows for ``batch`` and which readings they are."""
        if self._map is None:
            return batch.features, np.ones(len(batch), dtype=bool)
        rows: list[tuple[Any, ...]] = []
        keep = np.zeros(len(batch), dtype=bool)
        for i, (machine, raw) in enumerate(zip(batch.machines, batch.raw, strict=True)):
            try:
                rows.append(self._map.extract(raw, machine, 0.0)[2])
                keep[i] = True
            except RejectedInput:
                self.missing += 1
        width = len(self.candidate.features)
        return np.asarray(rows, dtype=np.float32).reshape(-1, width), keep

    def observe(
        self,
        features: npt.NDArray[np.float32],
        keep: npt.NDArray[np.bool_],
        live: npt.NDArray[np.float32],
    ) -> bool:
        """Score ``features`` with the candidate (blocking) and fold the result in; True once
        the shadow stage has seen enough (the caller sets ``done`` on the loop's thread)."""
        if len(features):
            try:
                scores = self.candidate.score(features)
            except Exception as exc:  # anything the candidate raises counts against it
                self.errors += 1
                self.last_error = str(exc)
            else:
                self.fold(scores, live[keep])
        return self.seen >= self.readings and time.monotonic() - self.started >= self.seconds

    def fold(self, scores: npt.NDArray[np.float32], live: npt.NDArray[np.float32]) -> None:
        self.seen += len(scores)
        finite = np.isfinite(scores)
        self.nonfinite += int((~finite).sum())
        good = scores[finite]
        if self.score_min is not None:
            self.out_of_bounds += int((good < self.score_min).sum())
        if self.score_max is not None:
            self.out_of_bounds += int((good > self.score_max).sum())
        self.over_threshold += int((good > self.candidate.manifest.alert.threshold).sum())
        self._cand.append(scores)
        self._live.append(live)

    def verdict(self) -> tuple[bool, dict[str, Any]]:
        """(promote?, the comparison report)."""
        cand = np.concatenate(self._cand) if self._cand else np.zeros(0, np.float32)
        live = np.concatenate(self._live) if self._live else np.zeros(0, np.float32)
        report: dict[str, Any] = {
            "readings": self.seen,
            "seconds": round(time.monotonic() - self.started, 1),
            "errors": self.errors,
            "missing_fields": self.missing,
            "nonfinite": self.nonfinite,
            "out_of_bounds": self.out_of_bounds,
            "alert_share": round(self.over_threshold / self.seen, 4) if self.seen else None,
            "candidate": _summary(cand),
            "live": _summary(live),
        }
        reasons = []
        if self.errors:
            reasons.append(f"{self.errors} failed calls (last: {self.last_error})")
        if self.nonfinite:
            reasons.append(f"{self.nonfinite} NaN or infinite scores")
        if self.out_of_bounds:
            reasons.append(
                f"{self.out_of_bounds} scores outside [{self.score_min}, {self.score_max}]"
            )
        if self.seen and self.over_threshold > self.max_alert_share * self.seen:
            reasons.append(
                f"{self.over_threshold} of {self.seen} scores over its threshold "
                f"(limit {self.max_alert_share:g})"
            )
        if self.missing and not self.seen:
            reasons.append(f"no reading carried its features ({self.missing} lacked one)")
        if reasons:
            report["reason"] = "; ".join(reasons)
        return not reasons, report


def _summary(scores: npt.NDArray[np.float32]) -> dict[str, float | None]:
    finite = scores[np.isfinite(scores)].astype(np.float64)
    if not len(finite):
        return {"mean": None, "p50": None, "p99": None}
    p50, p99 = np.percentile(finite, [50, 99])
    return {"mean": round(float(finite.mean()), 6), "p50": round(p50, 6), "p99": round(p99, 6)}

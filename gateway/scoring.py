"""Scoring: one ONNX Runtime session per model, checked against its manifest before it serves."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from .errors import ModelError
from .manifest import Bundle, Manifest

__all__ = ["Scorer"]

log = logging.getLogger(__name__)

# A plant's network is no place for vendor usage reports.
ort.disable_telemetry_events()

_FLOAT_TYPES = {"tensor(float)"}


class Scorer:
    """A loaded, validated model. ``score`` is blocking and thread-safe (ONNX Runtime releases
    the GIL while it computes); call it from a worker thread."""

    def __init__(self, bundle: Bundle, *, intra_op_threads: int = 1, inter_op_threads: int = 1):
        self.manifest: Manifest = bundle.manifest
        self._features = self.manifest.feature_names  # a property that builds a tuple: once
        self.path: Path = bundle.model_path
        self.since = datetime.now(UTC)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # ONNX Runtime's own warnings go to stderr otherwise
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors on bad files
            raise ModelError(f"{self.label} does not load in ONNX Runtime: {exc}") from exc
        self._input = self.manifest.io.input
        self._outputs = [self.manifest.io.score]
        self.recent_call_seconds = 0.0  # moving average, to decide inline or worker thread
        # The call's own CPU time when ONNX Runtime computes on the calling thread: wall time in
        # a worker thread also counts its waits for the GIL, which the event loop holds, and
        # would keep a cheap model in the thread for good.
        self._clock = time.thread_time if intra_op_threads == 1 else time.perf_counter
        self._check_signature()
        self._check_golden()

    @property
    def label(self) -> str:
        return self.manifest.label

    @property
    def features(self) -> tuple[str, ...]:
        return self._features

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """One score per row of ``features`` (shape (N, len(features)))."""
        start = self._clock()
        out = self._session.run(self._outputs, {self._input: features})[0]
        took = self._clock() - start
        self.recent_call_seconds = (
            took if not self.recent_call_seconds else (0.9 * self.recent_call_seconds + 0.1 * took)
        )
        scores = np.asarray(out, dtype=np.float32).reshape(-1)
        if scores.shape[0] != features.shape[0]:
            raise ModelError(
                f"{self.label} returned {scores.shape[0]} scores for {features.shape[0]} rows"
            )
        return scores

    def _check_signature(self) -> None:
        n = len(self.features)
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        if len(inputs) != 1 or self._input not in inputs:
            raise ModelError(
                f"{self.label}: manifest input {self._input!r}, model inputs {sorted(inputs)}"
            )
        spec = inputs[self._input]
        if spec.type not in _FLOAT_TYPES:
            raise ModelError(f"{self.label}: input {self._input!r} is {spec.type}, not float32")
        shape = list(spec.shape)
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != n):
            raise ModelError(
                f"{self.label}: input {self._input!r} has shape {shape}, "
                f"the manifest lists {n} features (expected [N, {n}])"
            )
        if self.manifest.io.score not in outputs:
            raise ModelError(
                f"{self.label}: manifest score output {self.manifest.io.score!r}, "
                f"model outputs {sorted(outputs)}"
            )

    def _check_golden(self) -> None:
        golden = self.manifest.golden
        x = np.asarray(golden.inputs, dtype=np.float32)
        expected = np.asarray(golden.expected, dtype=np.float64)
        try:
            got = self.score(x).astype(np.float64)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"{self.label} fails on its golden samples: {exc}") from exc
        bad = ~np.isclose(got, expected, rtol=golden.rel_tol, atol=golden.abs_tol)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ModelError(
                f"{self.label} fails its golden samples: {int(bad.sum())} of {len(x)} off, "
                f"first at row {i} (expected {expected[i]:.6g}, got {got[i]:.6g})"
            )
        log.debug("golden samples ok model=%s rows=%d", self.label, len(x))

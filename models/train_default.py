"""Train, export and describe the bundled default model (reproducible: fixed seeds).

    .venv/bin/python models/train_default.py [--out models/default]

The model is an autoencoder: a small MLP learns to reconstruct a machine's five readings from a
three-number bottleneck, which captures how they move together (current follows load and speed,
temperature follows current and the hall's air). A worn bearing or a failing fan breaks those
relations, and the reconstruction error grows. The score is that error, the mean squared
difference in standardised units, computed inside the ONNX graph, so the gateway needs nothing
but ONNX Runtime. It costs microseconds per batch (an IsolationForest costs ~0.6 ms per call).
"""

from __future__ import annotations

import argparse
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
from skl2onnx.algebra.onnx_ops import OnnxMul, OnnxReduceMean, OnnxReshape, OnnxSub
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler

from gateway.manifest import (
    AlertPolicy,
    Feature,
    GoldenSamples,
    Manifest,
    ModelFile,
    ModelIO,
    ScoreSpec,
    sha256_file,
)
from gateway.telemetry import FEATURES, UNITS, Fleet

NAME = "machine-health"
VERSION = "1.0.0"
OPSET = 17  # ONNX Runtime >= 1.15 everywhere, including older Arm builds
CREATED = datetime(2026, 11, 28, tzinfo=UTC)  # fixed so the bundle is byte-for-byte reproducible


def make_training_data(seed: int = 1) -> np.ndarray:
    """Healthy readings of 60 machines at random moments over a week (days and nights)."""
    fleet = Fleet(60, seed=seed)
    rng = np.random.default_rng(seed)
    t0 = 1_764_000_000.0
    times = t0 + rng.uniform(0, 7 * 86_400, size=4_000)
    return np.concatenate([fleet.sample(t) for t in times]).astype(np.float32)


def make_fault_data(seed: int = 2) -> dict[str, np.ndarray]:
    """Readings of unseen machines with full bearing wear, or overheating, for the report."""
    out = {}
    for fault in ("healthy", "wear", "overheat"):
        fleet = Fleet(40, seed=seed + 1_000)
        if fault == "wear":
            fleet.wear[:] = 1.0
        elif fault == "overheat":
            fleet.overheat[:] = 1.0
        rng = np.random.default_rng(seed)
        times = 1_764_000_000.0 + rng.uniform(0, 86_400, size=250)
        out[fault] = np.concatenate([fleet.sample(t) for t in times]).astype(np.float32)
    return out


def to_onnx(scaler: StandardScaler, mlp: MLPRegressor) -> bytes:
    """score = mean((scaler(x) - mlp(scaler(x)))**2) per row, as one ONNX graph."""
    k = len(FEATURES)
    z = OnnxSubEstimator(scaler, "input", op_version=OPSET)
    recon = OnnxSubEstimator(mlp, z, op_version=OPSET)
    # skl2onnx flattens a multi-output MLPRegressor to (N*k, 1): shape it back.
    recon = OnnxReshape(recon, np.array([-1, k], dtype=np.int64), op_version=OPSET)
    err = OnnxSub(z, recon, op_version=OPSET)
    sq = OnnxMul(err, err, op_version=OPSET)
    score = OnnxReduceMean(sq, axes=[1], keepdims=0, op_version=OPSET, output_names=["score"])
    sample = np.zeros((1, k), dtype=np.float32)
    onx = score.to_onnx({"input": sample}, outputs=[("score", _float_tensor())], target_opset=OPSET)
    onx.producer_name = "edge-gateway/models/train_default.py"
    # skl2onnx gathers the opsets in a set, whose order follows PYTHONHASHSEED: sort them, or
    # the bytes (and the manifest's sha256) change from one run to the next.
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in opsets:
        onx.opset_import.add(domain=domain, version=version)
    return onx.SerializeToString()


def _float_tensor() -> object:
    from skl2onnx.common.data_types import FloatTensorType

    return FloatTensorType([None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "default")
    args = parser.parse_args()

    x = make_training_data()
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    mlp = MLPRegressor(
        hidden_layer_sizes=(24, 3, 24),
        activation="tanh",
        max_iter=60,
        batch_size=512,
        learning_rate_init=3e-3,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(z, z)

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "model.onnx"
    model_path.write_bytes(to_onnx(scaler, mlp))

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def score(rows: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(["score"], {"input": rows.astype(np.float32)})[0])

    train_scores = score(x)
    faults = make_fault_data()
    threshold = float(np.quantile(train_scores, 0.999) * 1.5)
    policy = AlertPolicy(
        threshold=round(threshold, 4),
        clear_threshold=round(threshold * 0.5, 4),
        raise_after=3,
        clear_after=5,
    )
    print(f"threshold {policy.threshold} (1.5 x the 99.9th percentile of healthy training scores)")
    for name, rows in faults.items():
        s = score(rows)
        print(
            f"{name:9s} median score {np.median(s):8.3f}  p99 {np.quantile(s, 0.99):8.3f}"
            f"  over threshold {np.mean(s > policy.threshold):6.1%}"
        )

    golden_rng = np.random.default_rng(3)
    golden = (
        np.concatenate(
            [
                faults["healthy"][golden_rng.choice(len(faults["healthy"]), 6, replace=False)],
                faults["wear"][:1],
                faults["overheat"][:1],
            ]
        )
        .round(3)
        .astype(np.float32)
    )
    manifest = Manifest(
        name=NAME,
        version=VERSION,
        created=CREATED,
        model=ModelFile(
            file="model.onnx", sha256=sha256_file(model_path), size=model_path.stat().st_size
        ),
        io=ModelIO(input="input", score="score"),
        features=[Feature(name=n, unit=u) for n, u in zip(FEATURES, UNITS, strict=True)],
        score=ScoreSpec(
            meaning=(
                "autoencoder reconstruction error: mean squared difference between the reading "
                "and its reconstruction, in standard deviations of healthy machines; "
                "about 0.05 when healthy, past the threshold with bearing wear or overheating"
            ),
            higher_is_anomalous=True,
        ),
        alert=policy,
        golden=GoldenSamples(
            inputs=golden.tolist(),
            expected=[round(float(v), 6) for v in score(golden)],
            abs_tol=1e-4,
            rel_tol=1e-3,
        ),
    )
    (args.out / "manifest.json").write_bytes(manifest.to_json() + b"\n")
    print(f"wrote {model_path} ({model_path.stat().st_size} bytes) and manifest.json")


if __name__ == "__main__":
    main()

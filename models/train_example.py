"""A data scientist's recipe: train a scikit-learn anomaly model, export it to ONNX for the gateway.

    python models/train_example.py [--csv healthy.csv] [--out work]

It fits a Gaussian mixture to healthy machine readings (the simulator's fleet by default, or a
CSV whose header names the features) and exports ONE ONNX graph whose single float32 output
``score`` holds one value per row, higher = more anomalous: the negative log-likelihood of the
reading under the mixture. Full covariances capture how the readings move together (current
with load, temperature with current), so a worn bearing or an overheating motor stands out even
when each value alone looks plausible. It writes ``model.onnx`` and ``golden.csv`` (healthy and
faulty readings for ``edge-gateway model pack --golden``) and prints the suggested thresholds
and the exact ``pack`` command. docs/model-delivery.md walks on from there.
"""

from __future__ import annotations

import argparse
import csv
import shlex
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.mixture import GaussianMixture

from gateway.telemetry import FEATURES, UNITS, Fleet

OPSET = 17  # ONNX Runtime >= 1.15 everywhere, including older Arm builds
ML_OPSET = 3  # the newest ai.onnx.ml this skl2onnx writes
Rows = npt.NDArray[np.float32]


def simulated(
    machines: int, moments: int, seed: int, *, wear: float = 0.0, heat: float = 0.0
) -> Rows:
    """Readings of a simulated fleet (gateway/telemetry.py) at random moments over a week."""
    fleet = Fleet(machines, seed=seed)
    fleet.wear[:] = wear
    fleet.overheat[:] = heat
    rng = np.random.default_rng(seed)
    times = 1_764_000_000.0 + rng.uniform(0, 7 * 86_400, size=moments)
    return np.concatenate([fleet.sample(t) for t in times]).astype(np.float32)


def read_csv(path: Path) -> tuple[list[str], Rows]:
    """A CSV of healthy readings: a header naming the features, one reading per row."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    return [h.strip() for h in rows[0]], np.asarray(rows[1:], dtype=np.float32)


def to_onnx(mixture: GaussianMixture, n_features: int) -> bytes:
    """score = -log p(x), one float32 per row, as one ONNX graph with one output."""
    onx = convert_sklearn(
        mixture,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        options={id(mixture): {"score_samples": True}},
    )
    # The converter answers label, probabilities and score_samples (log p, shape (N, 1)):
    # a two-node post-step turns log p into the single output the gateway reads.
    graph = onx.graph
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
    graph.node.extend(
        [
            helper.make_node("Neg", ["score_samples"], ["nll"]),
            helper.make_node("Reshape", ["nll", "flat"], ["score"]),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, [None]))
    onx.producer_name = "edge-gateway/models/train_example.py"
    onx.graph.name = "gaussian-mixture"  # skl2onnx picks a random one: keep the bytes reproducible
    # Its opsets come out of a set, in an order that follows PYTHONHASHSEED: sort them too.
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in opsets:
        onx.opset_import.add(domain=domain, version=version)
    onnx.checker.check_model(onx)
    return bytes(onx.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--csv", type=Path, default=None, help="healthy readings (default: simulated)"
    )
    parser.add_argument("--out", type=Path, default=Path("work"), help="folder for the outputs")
    parser.add_argument("--components", type=int, default=3, help="Gaussians in the mixture")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    faulty: dict[str, Rows] = {}
    if args.csv is not None:
        features, x = read_csv(args.csv)
        units: list[str] = []
    else:
        features, units = list(FEATURES), list(UNITS)
        x = simulated(200, 100, seed=args.seed + 1)  # many machines: each has its own constants
        faulty = {
            "bearing wear": simulated(10, 20, seed=args.seed + 2, wear=1.0),
            "overheating": simulated(10, 20, seed=args.seed + 3, heat=1.0),
        }
    mixture = GaussianMixture(args.components, covariance_type="full", random_state=args.seed)
    mixture.fit(x)

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "model.onnx"
    model_path.write_bytes(to_onnx(mixture, len(features)))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def score(rows: Rows) -> npt.NDArray[np.float32]:
        return np.asarray(session.run(["score"], {"input": rows})[0])

    # The exported graph must agree with scikit-learn before anything else happens.
    gap = float(np.abs(score(x[:1000]) + mixture.score_samples(x[:1000])).max())
    if gap > 1e-3:
        raise SystemExit(f"ONNX and scikit-learn disagree by {gap}")

    healthy = score(x)
    threshold = round(float(np.quantile(healthy, 0.999)) + 1.0, 2)
    clear = round(float(np.quantile(healthy, 0.99)), 2)
    print(f"trained on {len(x)} healthy readings of {', '.join(features)}")
    top = float(np.quantile(healthy, 0.999))
    print(f"healthy: median score {np.median(healthy):.2f}, 99.9th percentile {top:.2f}")
    print(f"suggested: threshold {threshold}, clear below {clear}")
    for name, rows in faulty.items():
        s = score(rows)
        over = float(np.mean(s > threshold))
        print(f"{name}: median score {np.median(s):.1f}, over the threshold {over:.0%}")

    rng = np.random.default_rng(args.seed)
    golden = np.concatenate(
        [x[rng.choice(len(x), 6, replace=False)], *(r[:1] for r in faulty.values())]
    )
    golden_path = args.out / "golden.csv"
    with golden_path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(features)
        out.writerows([[f"{v:.3f}" for v in row] for row in golden])
    size = model_path.stat().st_size
    print(f"wrote {model_path} ({size} bytes) and {golden_path} ({len(golden)} rows)")

    named = [f"{f}:{u}" for f, u in zip(features, units, strict=True)] if units else features
    command = [
        "edge-gateway", "model", "pack", str(model_path),
        "--name", "machine-health-gmm", "--version", "VERSION",
        "--features", ",".join(named), "--golden", str(golden_path),
        "--threshold", str(threshold), "--clear-threshold", str(clear),
        "--meaning", f"negative log-likelihood under a mixture of healthy machines: about "
        f"{np.median(healthy):.0f} when healthy, higher when readings stop moving together",
    ]  # fmt: skip
    print("next:", shlex.join(command))


if __name__ == "__main__":
    main()

"""Packing: an ONNX model plus what it means and how it alerts becomes a checked bundle folder."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import ValidationError

from .errors import ModelError
from .manifest import (
    MANIFEST_NAME,
    AlertPolicy,
    Feature,
    GoldenSamples,
    Manifest,
    ModelFile,
    ModelIO,
    ScoreSpec,
    load_bundle,
    sha256_file,
)
from .scoring import Scorer

__all__ = ["load_golden", "pack", "write_manifest"]

MODEL_NAME = "model.onnx"


def pack(
    onnx_path: Path,
    out_dir: Path,
    *,
    name: str,
    version: str,
    features: Sequence[str | Feature],
    golden: npt.ArrayLike,
    threshold: float,
    clear_threshold: float,
    raise_after: int = 3,
    clear_after: int = 5,
    meaning: str = "",
    higher_is_anomalous: bool = True,
    input_name: str | None = None,
    score_output: str | None = None,
    abs_tol: float = 1e-4,
    rel_tol: float = 1e-3,
    created: datetime | None = None,
) -> Manifest:
    """Write ``out_dir/model.onnx`` and an unsigned ``manifest.json`` whose golden samples hold
    what ONNX Runtime answers for ``golden`` (rows of feature values). ModelError says what is
    wrong with the model or the inputs; ``out_dir`` must be empty or new."""
    feats = [f if isinstance(f, Feature) else Feature(name=f) for f in features]
    if not feats:
        raise ModelError("no features: list the model's input columns in order")
    session = _session(onnx_path)
    input_name = _pick_input(session, onnx_path, input_name, len(feats))
    score_output = _pick_output(session, onnx_path, score_output)
    rows = _golden_rows(golden, len(feats))
    expected = _run(session, onnx_path, input_name, score_output, rows)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir} is not empty: pack into a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_NAME
    shutil.copyfile(onnx_path, model_path)
    try:
        manifest = Manifest(
            name=name,
            version=version,
            created=created or datetime.now(UTC).replace(microsecond=0),
            model=ModelFile(
                file=MODEL_NAME, sha256=sha256_file(model_path), size=model_path.stat().st_size
            ),
            io=ModelIO(input=input_name, score=score_output),
            features=feats,
            score=ScoreSpec(meaning=meaning, higher_is_anomalous=higher_is_anomalous),
            alert=AlertPolicy(
                threshold=threshold,
                clear_threshold=clear_threshold,
                raise_after=raise_after,
                clear_after=clear_after,
            ),
            golden=GoldenSamples(
                inputs=rows.tolist(), expected=expected, abs_tol=abs_tol, rel_tol=rel_tol
            ),
        )
    except ValidationError as exc:
        model_path.unlink()
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelError(f"invalid manifest at {where}: {first['msg']}") from exc
    write_manifest(out_dir, manifest)
    try:
        Scorer(load_bundle(out_dir))  # what a gateway will do with it: must pass here first
    except ModelError:
        for leftover in (model_path, out_dir / MANIFEST_NAME):
            leftover.unlink(missing_ok=True)
        raise
    return manifest


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Replace ``directory/manifest.json`` atomically."""
    path = directory / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_bytes(manifest.to_json() + b"\n")
    os.replace(tmp, path)


def _session(path: Path) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelError(f"{path} does not exist")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors on bad files
        raise ModelError(f"{path} does not load in ONNX Runtime: {exc}") from exc


def _pick_input(session: ort.InferenceSession, path: Path, wanted: str | None, n: int) -> str:
    inputs: dict[str, Any] = {i.name: i for i in session.get_inputs()}
    if len(inputs) != 1:
        raise ModelError(
            f"{path} has {len(inputs)} inputs {sorted(inputs)}: the gateway feeds one "
            "float32 matrix (rows x features); wrap the model so it takes one input"
        )
    (only,) = inputs
    if wanted is not None and wanted != only:
        raise ModelError(f"{path} has no input {wanted!r}; its input is {only!r}")
    spec = inputs[only]
    if spec.type != "tensor(float)":
        raise ModelError(f"{path}: input {only!r} is {spec.type}, the gateway sends float32")
    shape = list(spec.shape)
    if len(shape) != 2:
        raise ModelError(f"{path}: input {only!r} has shape {shape}, expected [N, {n}]")
    if isinstance(shape[1], int) and shape[1] != n:
        raise ModelError(
            f"{path}: input {only!r} takes {shape[1]} features per row, "
            f"but {n} features are listed; list them all, in the model's column order"
        )
    return only


def _pick_output(session: ort.InferenceSession, path: Path, wanted: str | None) -> str:
    outputs: dict[str, Any] = {o.name: o for o in session.get_outputs()}
    if wanted is None:
        if len(outputs) == 1:
            (wanted,) = outputs
        elif "score" in outputs:
            wanted = "score"
        else:
            raise ModelError(
                f"{path} has outputs {sorted(outputs)}: name the score output (--output)"
            )
    if wanted not in outputs:
        raise ModelError(f"{path} has no output {wanted!r}; its outputs are {sorted(outputs)}")
    kind = outputs[wanted].type
    if kind != "tensor(float)":
        raise ModelError(
            f"{path}: output {wanted!r} is {kind}: the score must be float32, one per row"
        )
    return wanted


def _golden_rows(golden: npt.ArrayLike, n: int) -> npt.NDArray[np.float32]:
    try:
        rows = np.asarray(golden, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"golden inputs are not a table of numbers: {exc}") from exc
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ModelError(f"golden inputs must be rows of {n} values, got shape {rows.shape}")
    if rows.shape[1] != n:
        raise ModelError(f"golden rows have {rows.shape[1]} values, but {n} features are listed")
    if not np.isfinite(rows).all():
        raise ModelError("golden inputs hold NaN or infinite values")
    return rows


def _run(
    session: ort.InferenceSession,
    path: Path,
    input_name: str,
    output: str,
    rows: npt.NDArray[np.float32],
) -> list[float]:
    try:
        out = np.asarray(session.run([output], {input_name: rows})[0])
    except Exception as exc:  # onnxruntime's errors are untyped
        raise ModelError(f"{path} fails on the golden inputs: {exc}") from exc
    n = rows.shape[0]
    if out.size != n or (out.ndim == 2 and out.shape[1] != 1) or out.ndim > 2:
        raise ModelError(
            f"{path}: output {output!r} has shape {list(out.shape)} for {n} rows; "
            f"it must be one score per row ([{n}] or [{n}, 1])"
        )
    scores = out.reshape(-1).astype(np.float32)
    if not np.isfinite(scores).all():
        raise ModelError(f"{path} gives NaN or infinite scores on the golden inputs")
    return [float(v) for v in scores]


def load_golden(path: Path, features: Sequence[str]) -> npt.NDArray[np.float32]:
    """Golden input rows from CSV (a header naming the features, in any order, or no header),
    JSON (a list of rows, or of objects keyed by feature) or .npy (a 2-D array)."""
    try:
        if path.suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read golden inputs {path}: {exc}") from exc
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path} is not valid JSON: {exc}") from exc
        if isinstance(doc, dict) and "inputs" in doc:
            doc = doc["inputs"]
        return _table(doc if isinstance(doc, list) else [doc], features, path)
    if path.suffix == ".csv":
        table = [r for r in csv.reader(io.StringIO(text)) if r]
        if table and not _numeric(table[0]):
            header = [h.strip() for h in table[0]]
            return _table([dict(zip(header, r, strict=False)) for r in table[1:]], features, path)
        return _table(table, features, path)
    raise ModelError(f"golden inputs {path}: expected a .csv, .json or .npy file")


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def _table(rows: list[Any], features: Sequence[str], path: Path) -> npt.NDArray[np.float32]:
    if rows and all(isinstance(r, dict) for r in rows):
        missing = [f for f in features if f not in rows[0]]
        if missing:
            raise ModelError(f"{path}: no column for features {missing} (has {sorted(rows[0])})")
        rows = [[r[f] for f in features] for r in rows]
    try:
        return np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: golden inputs are not a table of numbers: {exc}") from exc

"""The bundled model: its manifest, its checks, and that the recipe reproduces it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from gateway.errors import ModelError
from gateway.manifest import default_bundle_dir, load_bundle, sha256_file
from gateway.scoring import Scorer
from gateway.telemetry import Fleet

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(default_bundle_dir(), dest)
    return dest


def edit_manifest(path: Path, **changes: object) -> None:
    m = orjson.loads((path / "manifest.json").read_bytes())
    for dotted, value in changes.items():
        node = m
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (path / "manifest.json").write_bytes(orjson.dumps(m))


def test_bundled_model_loads_and_passes_its_golden_samples() -> None:
    scorer = Scorer(load_bundle(default_bundle_dir()))
    assert scorer.label == "machine-health@1.0.0"
    assert scorer.features == ("temperature", "vibration", "current", "pressure", "speed")


def test_bundled_model_separates_healthy_from_faulty_machines() -> None:
    scorer = Scorer(load_bundle(default_bundle_dir()))
    policy = scorer.manifest.alert
    t = 1_795_000_000.0 + np.arange(200) * 37.0
    unseen = Fleet(30, seed=99)
    healthy = np.concatenate([unseen.sample(x) for x in t]).astype(np.float32)
    assert np.mean(scorer.score(healthy) > policy.threshold) < 0.01
    for fault in ("wear", "overheat"):
        sick = Fleet(30, seed=99)
        getattr(sick, fault)[:] = 1.0
        rows = np.concatenate([sick.sample(x) for x in t]).astype(np.float32)
        assert np.mean(scorer.score(rows) > policy.threshold) > 0.9, fault


def test_tampered_model_file_is_refused(bundle_copy: Path) -> None:
    data = bytearray((bundle_copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bundle_copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_bundle(bundle_copy)


def test_golden_sample_mismatch_is_refused_with_the_row(bundle_copy: Path) -> None:
    m = orjson.loads((bundle_copy / "manifest.json").read_bytes())
    m["golden"]["expected"][2] += 1.0
    (bundle_copy / "manifest.json").write_bytes(orjson.dumps(m))
    with pytest.raises(ModelError, match="fails its golden samples: 1 of 8 off, first at row 2"):
        Scorer(load_bundle(bundle_copy))


def test_wrong_feature_count_is_refused(bundle_copy: Path) -> None:
    m = orjson.loads((bundle_copy / "manifest.json").read_bytes())
    m["features"].append({"name": "humidity"})
    for row in m["golden"]["inputs"]:
        row.append(0.0)
    (bundle_copy / "manifest.json").write_bytes(orjson.dumps(m))
    with pytest.raises(ModelError, match=r"the manifest lists 6 features \(expected \[N, 6\]\)"):
        Scorer(load_bundle(bundle_copy))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"io__input": "X"}, "manifest input 'X'"),
        ({"io__score": "variable"}, "manifest score output 'variable'"),
        ({"alert__clear_threshold": 99.0}, "clear_threshold must not exceed threshold"),
        ({"model__file": "../model.onnx"}, "must sit beside the manifest"),
        ({"model__size": 1}, "size mismatch"),
    ],
)
def test_manifest_errors_say_what_is_wrong(
    bundle_copy: Path, change: dict[str, object], words: str
) -> None:
    edit_manifest(bundle_copy, **change)
    with pytest.raises(ModelError, match=words.replace("(", r"\(")):
        Scorer(load_bundle(bundle_copy))


def test_not_an_onnx_file_is_refused(bundle_copy: Path) -> None:
    junk = bundle_copy / "model.onnx"
    junk.write_bytes(b"definitely not onnx")
    edit_manifest(bundle_copy, model__sha256=sha256_file(junk), model__size=junk.stat().st_size)
    with pytest.raises(ModelError, match="does not load in ONNX Runtime"):
        Scorer(load_bundle(bundle_copy))


@pytest.mark.slow
def test_recipe_reproduces_the_committed_model_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "models" / "train_default.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("model.onnx", "manifest.json"):
        assert sha256_file(tmp_path / name) == sha256_file(default_bundle_dir() / name), name

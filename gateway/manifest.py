"""The model bundle's manifest: its schema, its canonical form, and loading a bundle from disk."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ModelError

__all__ = [
    "AlertPolicy",
    "Bundle",
    "Feature",
    "GoldenSamples",
    "Manifest",
    "ModelFile",
    "default_bundle_dir",
    "load_bundle",
    "sha256_file",
]

MANIFEST_NAME = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    name: str = Field(min_length=1)
    unit: str | None = None


class ModelFile(_Strict):
    file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)


class ModelIO(_Strict):
    input: str = Field(min_length=1, description="the single float32 input, shape (N, features)")
    score: str = Field(min_length=1, description="the output holding one score per row")


class ScoreSpec(_Strict):
    meaning: str
    higher_is_anomalous: bool = True


class AlertPolicy(_Strict):
    """Raise after ``raise_after`` consecutive scores over ``threshold``; clear after
    ``clear_after`` consecutive scores under ``clear_threshold`` (hysteresis)."""

    threshold: float
    clear_threshold: float
    raise_after: int = Field(default=3, ge=1)
    clear_after: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _hysteresis(self) -> AlertPolicy:
        if self.clear_threshold > self.threshold:
            raise ValueError("clear_threshold must not exceed threshold")
        return self


class GoldenSamples(_Strict):
    inputs: list[list[float]] = Field(min_length=1)
    expected: list[float]
    abs_tol: float = Field(default=1e-4, ge=0)
    rel_tol: float = Field(default=1e-3, ge=0)

    @model_validator(mode="after")
    def _shape(self) -> GoldenSamples:
        if len(self.expected) != len(self.inputs):
            raise ValueError("golden expected must have one value per input row")
        if len({len(row) for row in self.inputs}) != 1:
            raise ValueError("golden inputs must all have the same length")
        return self


class Signature(_Strict):
    alg: Literal["ed25519"] = "ed25519"
    key_id: str
    value: str  # base64 of the signature over Manifest.canonical_bytes()


class Manifest(_Strict):
    """What a model is, what it needs and how its scores are judged."""

    format: Literal[1] = 1
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._+-]+$")
    created: datetime
    model: ModelFile
    io: ModelIO
    features: list[Feature] = Field(min_length=1)
    score: ScoreSpec
    alert: AlertPolicy
    golden: GoldenSamples
    signature: Signature | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names repeat: {names}")
        if len(self.golden.inputs[0]) != len(names):
            raise ValueError(
                f"golden inputs have {len(self.golden.inputs[0])} values, features {len(names)}"
            )
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def label(self) -> str:
        """``name@version``, as every score carries it."""
        return f"{self.name}@{self.version}"

    def canonical_bytes(self) -> bytes:
        """The bytes a signature covers: the manifest without its signature, keys sorted."""
        body = self.model_dump(mode="json", exclude={"signature"})
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    def to_json(self) -> bytes:
        return orjson.dumps(
            self.model_dump(mode="json", exclude_none=True), option=orjson.OPT_INDENT_2
        )


class Bundle(BaseModel):
    """A manifest and the verified path of its model file."""

    model_config = ConfigDict(frozen=True)

    manifest: Manifest
    model_path: Path
    directory: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(directory: Path) -> Bundle:
    """Read and check a bundle folder: manifest schema, model file size and sha256.

    Raises ModelError with the reason. Signatures are checked by the caller that holds the key.
    """
    mpath = directory / MANIFEST_NAME
    try:
        manifest = Manifest.model_validate_json(mpath.read_bytes())
    except FileNotFoundError as exc:
        raise ModelError(f"no {MANIFEST_NAME} in {directory}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelError(f"{mpath}: invalid manifest at {where}: {first['msg']}") from exc
    model_path = directory / manifest.model.file
    if model_path.parent != directory:
        raise ModelError(f"model file {manifest.model.file!r} must sit beside the manifest")
    try:
        size = model_path.stat().st_size
    except FileNotFoundError as exc:
        raise ModelError(f"model file {model_path} is missing") from exc
    if size != manifest.model.size:
        raise ModelError(
            f"size mismatch for {model_path} (expected {manifest.model.size}, got {size})"
        )
    digest = sha256_file(model_path)
    if digest != manifest.model.sha256:
        raise ModelError(
            f"sha256 mismatch for {model_path} "
            f"(expected {manifest.model.sha256[:12]}…, got {digest[:12]}…)"
        )
    return Bundle(manifest=manifest, model_path=model_path, directory=directory)


def default_bundle_dir() -> Path:
    """The bundled default model: inside the installed package, or models/default in a checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "_bundled_model"
    if (packaged / MANIFEST_NAME).exists():
        return packaged
    return here.parent / "models" / "default"

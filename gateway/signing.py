"""Model signing: Ed25519 key pairs, key ids, and signatures over a manifest's canonical bytes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ConfigError, ModelError
from .manifest import Manifest, Signature

__all__ = [
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_manifest",
    "verify_manifest",
]


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair as PEM (the private file mode 0600); return its key id.

    Refuses to overwrite either file (ConfigError)."""
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return key_id(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists: refusing to overwrite a key") from exc
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file (ConfigError naming the file otherwise)."""
    pem = _read_pem(path, "private key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file (ConfigError naming the file otherwise)."""
    pem = _read_pem(path, "public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable fingerprint: the first 16 hex digits of SHA-256 of the raw key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> Manifest:
    """A copy of ``manifest`` with its ``signature`` set (any earlier one replaced)."""
    value = private_key.sign(manifest.canonical_bytes())
    signature = Signature(
        key_id=key_id(private_key.public_key()), value=base64.b64encode(value).decode()
    )
    return manifest.model_copy(update={"signature": signature})


def verify_manifest(manifest: Manifest, public_key: Ed25519PublicKey) -> None:
    """Check the manifest's signature; ModelError says why it is not trusted."""
    trusted = key_id(public_key)
    sig = manifest.signature
    if sig is None:
        raise ModelError(f"{manifest.label} is unsigned (expected a signature by key {trusted})")
    if sig.key_id != trusted:
        raise ModelError(
            f"{manifest.label} is signed with key {sig.key_id}, this gateway trusts {trusted}"
        )
    try:
        public_key.verify(base64.b64decode(sig.value, validate=True), manifest.canonical_bytes())
    except (InvalidSignature, binascii.Error) as exc:
        raise ModelError(
            f"{manifest.label}: signature does not verify with key {trusted} "
            "(the manifest was changed after signing, or the signature is damaged)"
        ) from exc

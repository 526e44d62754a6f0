"""Verify OCI API-key request signatures (draft-cavage HTTP Signatures, as `oci.signer` signs)."""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.request import parse_http_list

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# What the SDK signs (oci/signer.py): every request signs these three ...
GENERIC_HEADERS = ("date", "(request-target)", "host")
# ... and a PUT/POST/PATCH adds these, unless the operation opts out (PutMessages, PutObject).
BODY_HEADERS = ("content-length", "content-type", "x-content-sha256")
DEFAULT_MAX_SKEW = 300.0  # OCI rejects a date more than 5 minutes off


class SignatureError(Exception):
    """The request is not signed, or not signed right; the message says why."""


@dataclass(frozen=True)
class SignedRequest:
    """What the verifier needs from an HTTP request, exactly as it arrived."""

    method: str
    target: str  # path and query exactly as sent
    headers: Mapping[str, str]  # lower-case names
    body: bytes


def parse_authorization(value: str) -> dict[str, str]:
    """Split `Signature k="v",...` into its parameters."""
    scheme, _, params = value.strip().partition(" ")
    if scheme.lower() != "signature" or not params:
        raise SignatureError(f"Authorization scheme must be 'Signature', got {scheme!r}")
    out: dict[str, str] = {}
    for item in parse_http_list(params):
        name, sep, raw = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed Authorization parameter {item!r}")
        out[name.strip()] = raw.strip().strip('"')
    return out


def signing_string(names: list[str], req: SignedRequest) -> bytes:
    """The canonical string: one `name: value` line per signed header, as httpsig_cffi builds it."""
    lines = []
    for name in names:
        if name == "(request-target)":
            lines.append(f"(request-target): {req.method.lower()} {req.target}")
            continue
        value = req.headers.get(name)
        if value is None:
            raise SignatureError(f"signed header {name!r} is missing from the request")
        lines.append(f"{name}: {value}")
    try:
        return "\n".join(lines).encode("ascii")
    except UnicodeEncodeError as exc:
        raise SignatureError("signed headers must be ASCII") from exc


def fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """OCI's key fingerprint: MD5 of the DER SubjectPublicKeyInfo, as `aa:bb:...`."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.md5(der, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 32, 2))


class KeyRing:
    """Trusted API keys, by keyId `<tenancy>/<user>/<fingerprint>`, and the verification rules."""

    def __init__(self, max_skew: float = DEFAULT_MAX_SKEW) -> None:
        self.max_skew = max_skew
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def add(self, key_id: str, pem: str | bytes) -> None:
        """Trust a public key (PEM) for a keyId."""
        data = pem.encode() if isinstance(pem, str) else pem
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"key for {key_id!r} is not an RSA public key")
        parts = key_id.split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"keyId must be <tenancy>/<user>/<fingerprint>, got {key_id!r}")
        if parts[2] != fingerprint(key):
            raise ValueError(
                f"keyId fingerprint {parts[2]} does not match the key ({fingerprint(key)})"
            )
        with self._lock:
            self._keys[key_id] = key

    def key_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._keys)

    def verify(self, req: SignedRequest, *, sign_body: bool, now: float | None = None) -> str:
        """Check the request's signature; return its keyId or raise SignatureError.

        `sign_body`: whether this operation requires the body headers to be signed (the SDK
        signs them for every PUT/POST with a body except PutMessages and PutObject)."""
        auth = req.headers.get("authorization")
        if not auth:
            raise SignatureError("the request has no Authorization header")
        params = parse_authorization(auth)
        if params.get("version", "1") != "1":
            raise SignatureError(f"unsupported signature version {params['version']!r}")
        if params.get("algorithm", "rsa-sha256").lower() != "rsa-sha256":
            raise SignatureError(f"unsupported algorithm {params.get('algorithm')!r}")
        key_id = params.get("keyId", "")
        if key_id.startswith("ST$"):
            raise SignatureError("security tokens (instance/resource principals) are not supported")
        with self._lock:
            key = self._keys.get(key_id)
        if key is None:
            raise SignatureError(f"unknown keyId {key_id!r}")
        names = [h.lower() for h in params.get("headers", "date").split()]
        self._check_required(names, req, sign_body)
        self._check_date(names, req, now)
        self._check_body_hash(names, req)
        try:
            signature = base64.b64decode(params.get("signature", ""), validate=True)
        except binascii.Error as exc:
            raise SignatureError("signature is not valid base64") from exc
        try:
            key.verify(signature, signing_string(names, req), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise SignatureError(f"signature does not verify with the key of {key_id}") from exc
        return key_id

    @staticmethod
    def _check_required(names: list[str], req: SignedRequest, sign_body: bool) -> None:
        required = ["(request-target)", "host"]
        if "x-date" not in names:
            required.append("date")
        if sign_body:
            required += BODY_HEADERS
        missing = [h for h in required if h not in names]
        if missing:
            raise SignatureError(f"headers {missing} must be signed for {req.method}")
        if "content-length" in names and req.headers.get("content-length") != str(len(req.body)):
            raise SignatureError("signed content-length does not match the body")

    def _check_date(self, names: list[str], req: SignedRequest, now: float | None) -> None:
        name = "x-date" if "x-date" in names else "date"
        raw = req.headers.get(name, "")
        try:
            sent = email.utils.parsedate_to_datetime(raw).timestamp()
        except (TypeError, ValueError) as exc:
            raise SignatureError(f"{name} header {raw!r} is not an HTTP date") from exc
        skew = (time.time() if now is None else now) - sent
        if abs(skew) > self.max_skew:
            raise SignatureError(
                f"{name} {raw!r} is {abs(skew):.0f} s off the server clock "
                f"(at most {self.max_skew:.0f} s allowed)"
            )

    @staticmethod
    def _check_body_hash(names: list[str], req: SignedRequest) -> None:
        if "x-content-sha256" not in names:
            return
        sent = req.headers.get("x-content-sha256", "")
        actual = base64.b64encode(hashlib.sha256(req.body).digest()).decode()
        if sent != actual:
            raise SignatureError("x-content-sha256 does not match the body")

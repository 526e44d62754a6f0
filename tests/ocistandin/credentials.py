"""Test API keys: an RSA key pair, well-formed OCIDs and an `~/.oci/config`-style file."""

from __future__ import annotations

import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .signing import fingerprint

_OCID_ALPHABET = string.ascii_lowercase + string.digits


def fake_ocid(kind: str, realm: str = "oc1", region: str = "") -> str:
    """A well-formed OCID (`ocid1.<kind>.<realm>.<region>.<60 chars>`), random but valid."""
    unique = "".join(secrets.choice(_OCID_ALPHABET) for _ in range(52))
    return f"ocid1.{kind}.{realm}.{region}.aaaaaaaa{unique}"


@dataclass(frozen=True)
class Credentials:
    """One API key and the config that uses it."""

    config: dict[str, str]  # for oci.*Client(config, service_endpoint=...)
    config_file: Path
    profile: str
    key_file: Path
    public_key_pem: bytes

    @property
    def key_id(self) -> str:
        """The keyId the SDK signs with: `<tenancy>/<user>/<fingerprint>`."""
        c = self.config
        return f"{c['tenancy']}/{c['user']}/{c['fingerprint']}"


def make_credentials(
    directory: Path,
    *,
    profile: str = "DEFAULT",
    region: str = "us-ashburn-1",
    tenancy: str | None = None,
    key_size: int = 2048,
) -> Credentials:
    """Generate a key pair under `directory` and write `directory/config` for it.

    The config passes `oci.config.validate_config`. Trust the key on a stand-in with
    `StandIn(public_keys={creds.key_id: creds.public_key_pem})` or `standin.add_key(...)`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    key_file = directory / f"{profile.lower()}_api_key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_file, 0o600)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / f"{profile.lower()}_api_key_public.pem").write_bytes(public_pem)
    config = {
        "user": fake_ocid("user"),
        "tenancy": tenancy or fake_ocid("tenancy"),
        "fingerprint": fingerprint(key.public_key()),
        "key_file": str(key_file),
        "region": region,
    }
    config_file = directory / "config"
    _write_profile(config_file, profile, config)
    return Credentials(config, config_file, profile, key_file, public_pem)


def load_credentials(config_file: Path, profile: str = "DEFAULT") -> Credentials:
    """Read back credentials that make_credentials wrote (e.g. on a second run of the demo)."""
    import oci  # imported late: the stand-in itself does not need the SDK

    config = {k: str(v) for k, v in oci.config.from_file(str(config_file), profile).items()}
    key_file = Path(config["key_file"])
    private = serialization.load_pem_private_key(key_file.read_bytes(), None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError(f"{key_file} is not an RSA private key")
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    wanted = {"user", "tenancy", "fingerprint", "key_file", "region"}
    return Credentials(
        {k: v for k, v in config.items() if k in wanted}, config_file, profile, key_file, public_pem
    )


def _write_profile(path: Path, profile: str, config: dict[str, str]) -> None:
    # Append a profile (or replace the file's profile of that name): one file, several keys.
    sections: dict[str, list[str]] = {}
    current = ""
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1]
                sections[current] = []
            elif current and line.strip():
                sections[current].append(line)
    sections[profile] = [f"{k}={v}" for k, v in config.items()]
    text = "".join(f"[{name}]\n" + "\n".join(lines) + "\n\n" for name, lines in sections.items())
    path.write_text(text)
    os.chmod(path, 0o600)

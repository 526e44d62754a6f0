"""``edge-gateway model …``: keys, packing, signing, verifying and publishing model bundles.

Publishing writes ``<version>/model.onnx``, then ``<version>/manifest.json`` (both with
``If-None-Match: *``: a published version is never overwritten), then ``LATEST`` last. A site's
store comes from ``--repo`` (default ``$EDGEGW_MODEL_REPO``) with ``{site}`` replaced by
``--site``: ``oci://mynamespace/models-{site}/edge`` or ``file:///srv/models/{site}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import GatewayError

if TYPE_CHECKING:
    from .manifest import Manifest
    from .modelstore import ModelStore

__all__ = ["add_parser"]

_Handler = Callable[[argparse.Namespace], int]


class _Usage(Exception):
    """A usage error: exit 2."""


class _Failed(Exception):
    """A refusal with its reason: exit 1."""


def _keygen(args: argparse.Namespace) -> int:
    from .signing import generate_keypair

    kid = generate_keypair(args.private, args.public)
    print(f"wrote {args.private} (private: keep it off the sites) and {args.public}; key id {kid}")
    return 0


def _pack(args: argparse.Namespace) -> int:
    from .manifest import Feature
    from .modelpack import load_golden, pack

    features = [_feature(f) for f in args.features.split(",") if f.strip()]
    if not features or not all(name for name, _ in features):
        raise _Usage("--features must name the model's input columns in order, e.g. a,b:unit,c")
    out = args.out or Path(f"{args.name}-{args.version}")
    manifest = pack(
        args.model,
        out,
        name=args.name,
        version=args.version,
        features=[Feature(name=n, unit=u) for n, u in features],
        golden=load_golden(args.golden, [n for n, _ in features]),
        threshold=args.threshold,
        clear_threshold=args.clear_threshold,
        raise_after=args.raise_after,
        clear_after=args.clear_after,
        meaning=args.meaning,
        input_name=args.input,
        score_output=args.output,
        abs_tol=args.abs_tol,
        rel_tol=args.rel_tol,
    )
    print(
        f"packed {manifest.label} into {out}: {manifest.model.size} bytes, "
        f"sha256 {manifest.model.sha256[:12]}…, {len(manifest.golden.inputs)} golden samples "
        "(unsigned)"
    )
    return 0


def _feature(spec: str) -> tuple[str, str | None]:
    name, _, unit = spec.strip().partition(":")
    return name.strip(), unit.strip() or None


def _sign(args: argparse.Namespace) -> int:
    from .manifest import load_bundle
    from .modelpack import write_manifest
    from .signing import load_private_key, sign_manifest

    bundle = load_bundle(args.bundle)
    signed = sign_manifest(bundle.manifest, load_private_key(args.key))
    write_manifest(args.bundle, signed)
    assert signed.signature is not None
    print(f"signed {signed.label} with key {signed.signature.key_id}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .manifest import load_bundle
    from .scoring import Scorer
    from .signing import load_public_key, verify_manifest

    bundle = load_bundle(args.bundle)
    verify_manifest(bundle.manifest, load_public_key(args.public_key))
    Scorer(bundle)  # loads in ONNX Runtime and passes its golden samples
    assert bundle.manifest.signature is not None
    print(f"ok {bundle.manifest.label} signed by {bundle.manifest.signature.key_id}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from .manifest import MANIFEST_NAME, load_bundle
    from .modelstore import VersionExists
    from .scoring import Scorer
    from .signing import load_public_key, verify_manifest

    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    if m.signature is None and not args.allow_unsigned:
        raise _Failed(
            f"{m.label} is unsigned: run `edge-gateway model sign {args.bundle} --key KEY` "
            "first (or pass --allow-unsigned for a lab)"
        )
    if args.public_key is not None:
        verify_manifest(m, load_public_key(args.public_key))
    Scorer(bundle)
    store, where = _store(args)
    try:
        store.put(m.version, bundle.model_path.name, bundle.model_path)
        print(f"uploaded {store.url}/{m.version}/{bundle.model_path.name} ({m.model.size} bytes)")
    except VersionExists:
        _resume_publish(store, m, bundle.model_path, where)
    try:
        store.put(m.version, MANIFEST_NAME, bundle.directory / MANIFEST_NAME)
    except VersionExists as exc:
        raise _Failed(_published(m, where, store)) from exc
    print(f"uploaded {store.url}/{m.version}/{MANIFEST_NAME}")
    if args.promote:
        _set_latest(store, m.version)
    else:
        print(f"LATEST unchanged; serve it with `edge-gateway model promote {where} {m.version}`")
    return 0


def _published(m: Manifest, where: str, store: ModelStore) -> str:
    return (
        f"version {m.version} is already published at {store.url}; a version is never "
        f"overwritten: pack a new version (or `edge-gateway model promote {where} "
        f"{m.version}` to serve the published one)"
    )


def _resume_publish(store: ModelStore, m: Manifest, model_path: Path, where: str) -> None:
    """model.onnx is there: a finished version (refuse) or an interrupted publish (go on if
    the uploaded model is this one)."""
    from .manifest import MANIFEST_NAME, sha256_file
    from .modelstore import NotFound

    try:
        store.read(m.version, MANIFEST_NAME)
    except NotFound:
        pass
    else:
        raise _Failed(_published(m, where, store))
    with tempfile.TemporaryDirectory() as tmp:
        there = Path(tmp) / model_path.name
        store.download(m.version, model_path.name, there)
        if sha256_file(there) != m.model.sha256:
            raise _Failed(
                f"{store.url}/{m.version}/{model_path.name} is left from an interrupted "
                "publish of a different model: pack a new version"
            )
    print(f"{store.url}/{m.version}/{model_path.name} already uploaded (same sha256)")


def _list(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    versions = store.versions()
    current = _current(store)
    print(f"{store.url}:")
    if not versions:
        print("  no versions")
    for v in versions:
        print(f"{'*' if v == current else ' '} {v}{'  (LATEST)' if v == current else ''}")
    if current is None:
        print("  no LATEST: gateways keep the model they have")
    elif current not in versions:
        print(f"  LATEST names {current}, which is not there: gateways keep the model they have")
    return 0


def _current(store: ModelStore) -> str | None:
    from .modelstore import NotFound

    try:
        latest = store.latest()
    except NotFound:
        return None
    return latest.version if latest else None


def _promote(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    _check_version(store, args.version, args.public_key)
    _set_latest(store, args.version)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from .modelstore import version_key

    store, _ = _store(args)
    target = args.version
    if target is None:
        current = _current(store)
        if current is None:
            raise _Failed(f"{store.url} has no LATEST: there is nothing to roll back from")
        older = [v for v in store.versions() if version_key(v) < version_key(current)]
        for v in reversed(older):
            try:
                _check_version(store, v, args.public_key)
            except GatewayError as exc:
                print(f"skipping {v}: {exc}")
                continue
            target = v
            break
        else:
            raise _Failed(f"no good version before {current} at {store.url}")
    else:
        _check_version(store, target, args.public_key)
    _set_latest(store, target)
    return 0


def _check_version(store: ModelStore, version: str, public_key: Path | None) -> None:
    """The version is there with a valid manifest naming it (signed by the key, if given)."""
    from pydantic import ValidationError

    from .manifest import MANIFEST_NAME, Manifest
    from .modelstore import check_name
    from .signing import load_public_key, verify_manifest

    data = store.read(check_name(version), MANIFEST_NAME)
    try:
        m = Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise _Failed(f"{store.url}/{version}/{MANIFEST_NAME} is not a valid manifest") from exc
    if m.version != version:
        raise _Failed(f"{store.url}/{version}/{MANIFEST_NAME} is for version {m.version}")
    if public_key is not None:
        verify_manifest(m, load_public_key(public_key))


def _set_latest(store: ModelStore, version: str) -> None:
    before = _current(store)
    if before == version:
        print(f"LATEST already names {version} at {store.url}")
        return
    store.set_latest(version)
    print(f"LATEST {before or '(none)'} -> {version} at {store.url}")


def _store(args: argparse.Namespace) -> tuple[ModelStore, str]:
    """The site's store, and how to name it again in a hint (``--site S``)."""
    from .modelstore import open_store

    repo: str = args.repo
    if not repo:
        raise _Usage("no model repository: pass --repo URL or set EDGEGW_MODEL_REPO")
    site: str | None = args.site
    if "{site}" in repo:
        if not site:
            raise _Usage("--site is required: the repository (--repo) has a {site} placeholder")
        if "/" in site or not site.strip():
            raise _Usage(f"--site {site!r} must be a plain name")
        url = repo.replace("{site}", site)
        where = f"--site {site}"
    elif site:
        raise _Usage(f"--site {site} would be ignored: the repository (--repo) has no {{site}}")
    else:
        url, where = repo, "--repo URL"
    store = open_store(
        url,
        oci_config=args.oci_config,
        oci_profile=args.oci_profile,
        auth=args.auth,
        endpoint=args.endpoint,
        timeout=args.timeout,
    )
    return store, where


def _guarded(func: _Handler) -> _Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except _Usage as exc:
            print(f"edge-gateway model {args.action}: {exc}", file=sys.stderr)
            return 2
        except (_Failed, GatewayError, OSError) as exc:
            reason = " ".join(str(exc).split())
            print(f"edge-gateway model {args.action}: {reason}", file=sys.stderr)
            return 1

    return run


def _store_options(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--site", default=None, help="the site, put in the repository's {site}")
    p.add_argument(
        "--repo",
        default=env("EDGEGW_MODEL_REPO", ""),
        help="store URL with a {site} placeholder: oci://NS/BUCKET/PREFIX, file:///DIR or a "
        "PAR URL (default: $EDGEGW_MODEL_REPO)",
    )
    p.add_argument(
        "--oci-config", type=Path, default=Path(env("EDGEGW_UPLINK__OCI_CONFIG", "~/.oci/config"))
    )
    p.add_argument("--oci-profile", default=env("EDGEGW_UPLINK__OCI_PROFILE", "DEFAULT"))
    p.add_argument(
        "--auth",
        choices=("api_key", "instance_principal"),
        default=env("EDGEGW_UPLINK__AUTH", "api_key"),
    )
    p.add_argument(
        "--endpoint",
        default=env("EDGEGW_MODEL__ENDPOINT", ""),
        help="Object Storage endpoint (default: the region's, from the OCI config)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``model`` and its subcommands."""
    model = sub.add_parser("model", help="package, sign and publish models for the sites")
    msub = model.add_subparsers(dest="action", required=True)

    def cmd(name: str, func: _Handler, help_: str) -> argparse.ArgumentParser:
        p = msub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=_guarded(func))
        return p

    p = cmd("keygen", _keygen, "make an Ed25519 key pair for signing models")
    p.add_argument("--private", type=Path, required=True, help="private key file to create")
    p.add_argument("--public", type=Path, required=True, help="public key file to create")

    p = cmd("pack", _pack, "bundle an ONNX model with its manifest (golden outputs computed)")
    p.add_argument("model", type=Path, help="the ONNX file: one float32 input [N, features]")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--features", required=True, help="input columns in order: a,b:unit,c")
    p.add_argument("--golden", type=Path, required=True, help="input rows: .csv, .json, .npy")
    p.add_argument("--threshold", type=float, required=True, help="score that raises an alert")
    p.add_argument("--clear-threshold", type=float, required=True, help="score that clears it")
    p.add_argument("--raise-after", type=int, default=3, help="readings in a row over threshold")
    p.add_argument("--clear-after", type=int, default=5, help="readings in a row under clear")
    p.add_argument("--meaning", default="", help="what the score means, for the people on site")
    p.add_argument("--input", default=None, help="input name (default: the model's only one)")
    p.add_argument("--output", default=None, help="score output (default: the only one)")
    p.add_argument("--abs-tol", type=float, default=1e-4, help="golden sample tolerance")
    p.add_argument("--rel-tol", type=float, default=1e-3, help="golden sample tolerance")
    p.add_argument("--out", type=Path, default=None, help="new folder (default: NAME-VERSION)")

    p = cmd("sign", _sign, "sign a bundle's manifest")
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")

    p = cmd("verify", _verify, "check a bundle: files, signature, golden samples")
    p.add_argument("bundle", type=Path)
    p.add_argument("--public-key", type=Path, required=True, help="Ed25519 public key (PEM)")

    p = cmd("publish", _publish, "upload a bundle to a site's store, then point LATEST at it")
    p.add_argument("bundle", type=Path)
    p.add_argument("--promote", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--allow-unsigned", action="store_true")
    p.add_argument("--public-key", type=Path, default=None, help="verify the signature first")
    _store_options(p)

    p = cmd("list", _list, "the versions at a site, and which one LATEST names")
    _store_options(p)

    p = cmd("promote", _promote, "point a site's LATEST at a published version")
    p.add_argument("version")
    p.add_argument("--public-key", type=Path, default=None, help="verify the signature first")
    _store_options(p)

    p = cmd("rollback", _rollback, "point LATEST at VERSION, or at the version before it")
    p.add_argument("version", nargs="?", default=None)
    p.add_argument("--public-key", type=Path, default=None, help="verify the signature first")
    _store_options(p)

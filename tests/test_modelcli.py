"""``edge-gateway model …`` end to end: keys, pack, sign, verify, publish, list, promote, rollback,
against a folder and against the OCI stand-in through the real SDK, with real ONNX Runtime."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.manifest import Manifest, default_bundle_dir
from gateway.modelstore import ModelStore, open_store
from gateway.signing import load_public_key, verify_manifest
from tests.ocistandin import Credentials, StandIn, make_credentials

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = default_bundle_dir()
FEATURES = "temperature:degC,vibration:mm/s,current:A,pressure:bar,speed:rpm"
NS = "standin"


@dataclass
class Run:
    code: int
    out: str
    err: str


Cli = Callable[..., Run]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*argv: str | Path) -> Run:
        code = main(["model", *(str(a) for a in argv)])
        got = capsys.readouterr()
        return Run(code, got.out, got.err)

    return run


def golden_csv(path: Path) -> Path:
    """The default model's golden inputs as a CSV with a header, columns shuffled."""
    manifest = Manifest.model_validate_json((DEFAULT / "manifest.json").read_bytes())
    names = list(manifest.feature_names)
    order = list(reversed(names))
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(order)
        for row in manifest.golden.inputs:
            values = dict(zip(names, row, strict=True))
            out.writerow([values[n] for n in order])
    return path


@pytest.fixture
def keys(tmp_path: Path, cli: Cli) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "models.key", tmp_path / "keys" / "models.pub"
    r = cli("keygen", "--private", private, "--public", public)
    assert r.code == 0, r.err
    return private, public


def pack(cli: Cli, tmp_path: Path, version: str, *extra: str | Path) -> Path:
    out = tmp_path / "bundles" / version
    r = cli(
        "pack", DEFAULT / "model.onnx", "--name", "machine-health", "--version", version,
        "--features", FEATURES, "--golden", golden_csv(tmp_path / "golden.csv"),
        "--threshold", "0.6", "--clear-threshold", "0.3", "--meaning", "reconstruction error",
        "--out", out, *extra,
    )  # fmt: skip
    assert r.code == 0, r.err
    return out


def signed(cli: Cli, tmp_path: Path, version: str, key: Path) -> Path:
    bundle = pack(cli, tmp_path, version)
    r = cli("sign", bundle, "--key", key)
    assert r.code == 0, r.err
    return bundle


# -- keygen, pack, sign, verify ----------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_reads(
    keys: tuple[Path, Path], cli: Cli
) -> None:
    private, public = keys
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    r = cli("keygen", "--private", private, "--public", public.with_suffix(".other"))
    assert r.code == 1
    assert "refusing to overwrite" in r.err


def test_pack_records_what_onnx_runtime_answers(tmp_path: Path, cli: Cli) -> None:
    bundle = pack(cli, tmp_path, "2.0.0")
    m = Manifest.model_validate_json((bundle / "manifest.json").read_bytes())
    reference = Manifest.model_validate_json((DEFAULT / "manifest.json").read_bytes())
    assert m.signature is None
    assert m.label == "machine-health@2.0.0"
    assert [(f.name, f.unit) for f in m.features] == [(f.name, f.unit) for f in reference.features]
    assert m.golden.inputs == reference.golden.inputs  # the CSV's columns were put in order
    assert m.golden.expected == pytest.approx(reference.golden.expected, rel=1e-3, abs=1e-4)
    assert (m.io.input, m.io.score) == ("input", "score")
    assert m.model.sha256 == reference.model.sha256
    assert (bundle / "model.onnx").read_bytes() == (DEFAULT / "model.onnx").read_bytes()


def test_pack_refuses_features_that_do_not_fit_the_model(tmp_path: Path, cli: Cli) -> None:
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps([[1.0, 2.0, 3.0]]))
    r = cli(
        "pack", DEFAULT / "model.onnx", "--name", "m", "--version", "1",
        "--features", "a,b,c", "--golden", golden, "--threshold", "1", "--clear-threshold", "0",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert r.code == 1
    assert r.err.count("\n") == 1
    assert "takes 5 features per row, but 3 features are listed" in r.err
    assert not (tmp_path / "out").exists()


def test_pack_refuses_golden_rows_of_the_wrong_width(tmp_path: Path, cli: Cli) -> None:
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps({"inputs": [[1.0, 2.0, 3.0, 4.0]]}))
    r = cli(
        "pack", DEFAULT / "model.onnx", "--name", "m", "--version", "1", "--features", FEATURES,
        "--golden", golden, "--threshold", "1", "--clear-threshold", "0", "--out", tmp_path / "o",
    )  # fmt: skip
    assert r.code == 1
    assert "golden rows have 4 values, but 5 features are listed" in r.err


def test_pack_refuses_a_file_that_is_not_a_model(tmp_path: Path, cli: Cli) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    golden = tmp_path / "golden.json"
    golden.write_text("[[1, 2]]")
    r = cli(
        "pack", bogus, "--name", "m", "--version", "1", "--features", "a,b",
        "--golden", golden, "--threshold", "1", "--clear-threshold", "0",
    )  # fmt: skip
    assert r.code == 1
    assert "does not load in ONNX Runtime" in r.err


def test_verify_accepts_a_signed_bundle(tmp_path: Path, cli: Cli, keys: tuple[Path, Path]) -> None:
    private, public = keys
    bundle = pack(cli, tmp_path, "2.0.0")
    r = cli("verify", bundle, "--public-key", public)
    assert (r.code, r.out) == (1, "")
    assert "machine-health@2.0.0 is unsigned" in r.err

    r = cli("sign", bundle, "--key", private)
    assert r.code == 0, r.err
    r = cli("verify", bundle, "--public-key", public)
    assert r.code == 0, r.err
    kid = Manifest.model_validate_json((bundle / "manifest.json").read_bytes()).signature
    assert kid is not None
    assert r.out == f"ok machine-health@2.0.0 signed by {kid.key_id}\n"


@pytest.fixture
def bundle(tmp_path: Path, cli: Cli, keys: tuple[Path, Path]) -> Path:
    return signed(cli, tmp_path, "2.0.0", keys[0])


def test_verify_refuses_a_tampered_model(bundle: Path, cli: Cli, keys: tuple[Path, Path]) -> None:
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    r = cli("verify", bundle, "--public-key", keys[1])
    assert r.code == 1
    assert "sha256 mismatch" in r.err


def test_verify_refuses_a_tampered_manifest(
    bundle: Path, cli: Cli, keys: tuple[Path, Path]
) -> None:
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["alert"]["threshold"] = 60.0  # silence the alerts
    (bundle / "manifest.json").write_text(json.dumps(doc))
    r = cli("verify", bundle, "--public-key", keys[1])
    assert r.code == 1
    assert "signature does not verify" in r.err


def test_verify_refuses_another_key(tmp_path: Path, bundle: Path, cli: Cli) -> None:
    other = tmp_path / "other.pub"
    assert cli("keygen", "--private", tmp_path / "other.key", "--public", other).code == 0
    r = cli("verify", bundle, "--public-key", other)
    assert r.code == 1
    assert "is signed with key" in r.err
    assert "this gateway trusts" in r.err


def test_verify_names_a_bad_key_file(tmp_path: Path, bundle: Path, cli: Cli) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    r = cli("verify", bundle, "--public-key", bad)
    assert r.code == 1
    assert str(bad) in r.err


# -- publish, list, promote, rollback ----------------------------------------------------------


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return make_credentials(tmp_path_factory.mktemp("oci"))


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, creds: Credentials) -> Iterator[StandIn]:
    with StandIn(
        tmp_path_factory.mktemp("standin"),
        public_keys={creds.key_id: creds.public_key_pem},
        namespace=NS,
    ) as s:
        yield s


@dataclass
class Repo:
    """Where the CLI publishes (EDGEGW_MODEL_REPO names it) and how a gateway opens it."""

    template: str
    args: list[str]
    creds: Credentials | None = None
    endpoint: str = ""

    def open(self, site: str) -> ModelStore:
        url = self.template.replace("{site}", site)
        if self.creds is None:
            return open_store(url)
        return open_store(url, oci_config=self.creds.config_file, endpoint=self.endpoint)


@pytest.fixture(params=["file", "oci"])
def repo(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    creds: Credentials,
) -> Repo:
    if request.param == "file":
        found = Repo((tmp_path / "repo").as_uri() + "/{site}", [])
    else:
        cloud: StandIn = request.getfixturevalue("cloud")
        bucket = f"models-{uuid.uuid4().hex[:8]}"
        found = Repo(
            f"oci://{NS}/{bucket}-{{site}}/edge",
            ["--endpoint", cloud.endpoint, "--oci-config", str(creds.config_file)],
            creds,
            cloud.endpoint,
        )
    monkeypatch.setenv("EDGEGW_MODEL_REPO", found.template)
    return found


def test_publish_list_promote_rollback(
    tmp_path: Path, cli: Cli, keys: tuple[Path, Path], repo: Repo
) -> None:
    private, public = keys
    site = ["--site", "plant1", *repo.args]
    first = signed(cli, tmp_path, "2.0.0", private)
    r = cli("publish", first, *site)
    assert r.code == 0, r.err
    assert r.out.splitlines()[-1].startswith("LATEST (none) -> 2.0.0 at ")

    second = signed(cli, tmp_path, "2.1.0", private)
    r = cli("publish", second, *site, "--public-key", public)
    assert r.code == 0, r.err
    assert "LATEST 2.0.0 -> 2.1.0" in r.out

    r = cli("list", *site)
    assert r.code == 0, r.err
    assert r.out.splitlines()[1:] == ["  2.0.0", "* 2.1.0  (LATEST)"]

    r = cli("rollback", *site)
    assert (r.code, r.out.split(" at ")[0]) == (0, "LATEST 2.1.0 -> 2.0.0"), r.err
    r = cli("rollback", *site)
    assert r.code == 1
    assert "no good version before 2.0.0" in r.err

    r = cli("promote", *site, "2.1.0", "--public-key", public)
    assert (r.code, r.out.split(" at ")[0]) == (0, "LATEST 2.0.0 -> 2.1.0"), r.err
    r = cli("rollback", *site, "2.0.0")
    assert (r.code, r.out.split(" at ")[0]) == (0, "LATEST 2.1.0 -> 2.0.0"), r.err

    r = cli("promote", *site, "9.9.9")
    assert r.code == 1
    assert "9.9.9/manifest.json does not exist" in r.err

    # What a gateway of that site reads: LATEST, then the signed manifest of that version.
    store = repo.open("plant1")
    latest = store.latest()
    assert latest is not None
    assert latest.version == "2.0.0"
    manifest = Manifest.model_validate_json(store.read(latest.version, "manifest.json"))
    verify_manifest(manifest, load_public_key(public))
    got = tmp_path / "cache" / "model.onnx"
    store.download(latest.version, "model.onnx", got, size=manifest.model.size)
    assert got.read_bytes() == (first / "model.onnx").read_bytes()

    r = cli("list", "--site", "plant2", *repo.args)
    assert r.out.splitlines()[1:] == [
        "  no versions",
        "  no LATEST: gateways keep the model they have",
    ]


def test_publish_never_overwrites_a_version(
    tmp_path: Path, cli: Cli, keys: tuple[Path, Path], repo: Repo
) -> None:
    bundle = signed(cli, tmp_path, "2.0.0", keys[0])
    site = ["--site", "plant1", *repo.args]
    assert cli("publish", bundle, *site).code == 0
    r = cli("publish", bundle, *site)
    assert r.code == 1
    assert "version 2.0.0 is already published" in r.err
    assert "promote --site plant1 2.0.0" in r.err


def test_publish_refuses_unsigned_bundles_unless_told(tmp_path: Path, cli: Cli, repo: Repo) -> None:
    bundle = pack(cli, tmp_path, "2.0.0")
    site = ["--site", "lab", *repo.args]
    r = cli("publish", bundle, *site)
    assert r.code == 1
    assert "machine-health@2.0.0 is unsigned" in r.err
    r = cli("publish", bundle, *site, "--allow-unsigned", "--no-promote")
    assert r.code == 0, r.err
    assert "LATEST unchanged" in r.out
    r = cli("list", *site)
    assert "no LATEST" in r.out


def test_publish_completes_an_interrupted_publish(
    tmp_path: Path, cli: Cli, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    monkeypatch.setenv("EDGEGW_MODEL_REPO", repo.as_uri())
    bundle = signed(cli, tmp_path, "2.0.0", keys[0])
    store = open_store(repo.as_uri())
    store.put("2.0.0", "model.onnx", bundle / "model.onnx")  # then the publisher died
    r = cli("publish", bundle)
    assert r.code == 0, r.err
    assert "already uploaded (same sha256)" in r.out
    assert store.read("2.0.0", "manifest.json") == (bundle / "manifest.json").read_bytes()

    other = signed(cli, tmp_path, "2.1.0", keys[0])
    store.put("2.1.0", "model.onnx", b"something else")
    r = cli("publish", other)
    assert r.code == 1
    assert "interrupted publish of a different model" in r.err


def test_rollback_skips_a_version_without_a_manifest(
    tmp_path: Path, cli: Cli, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    monkeypatch.setenv("EDGEGW_MODEL_REPO", repo.as_uri())
    for version in ("1.9.0", "1.10.0"):
        assert cli("publish", signed(cli, tmp_path, version, keys[0])).code == 0
    open_store(repo.as_uri()).put("1.9.5", "model.onnx", b"half a publish")
    r = cli("rollback")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0].startswith("skipping 1.9.5: ")
    assert r.out.splitlines()[1].startswith("LATEST 1.10.0 -> 1.9.0 at ")


def test_store_options_are_usage_errors(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEGW_MODEL_REPO", raising=False)
    r = cli("list", "--site", "plant1")
    assert r.code == 2
    assert "pass --repo URL or set EDGEGW_MODEL_REPO" in r.err
    r = cli("list", "--repo", f"file://{tmp_path}/{{site}}")
    assert r.code == 2
    assert "--site is required" in r.err
    r = cli("list", "--repo", tmp_path.as_uri(), "--site", "plant1")
    assert r.code == 2
    assert "would be ignored" in r.err
    with pytest.raises(SystemExit) as info:
        cli("promote")
    assert info.value.code == 2


# -- the data scientist's recipe ---------------------------------------------------------------


@pytest.mark.slow
def test_train_example_makes_a_model_that_packs_and_verifies(
    tmp_path: Path, cli: Cli, keys: tuple[Path, Path]
) -> None:
    out = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(ROOT / "models" / "train_example.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "over the threshold 100%" in done.stdout
    command = done.stdout.splitlines()[-1].removeprefix("next: ").split()
    assert command[:3] == ["edge-gateway", "model", "pack"]
    threshold = command[command.index("--threshold") + 1]
    clear = command[command.index("--clear-threshold") + 1]
    bundle = tmp_path / "bundle"
    r = cli(
        "pack", out / "model.onnx", "--name", "machine-health-gmm", "--version", "1.0.0",
        "--features", FEATURES, "--golden", out / "golden.csv",
        "--threshold", threshold, "--clear-threshold", clear, "--out", bundle,
    )  # fmt: skip
    assert r.code == 0, r.err
    assert cli("sign", bundle, "--key", keys[0]).code == 0
    r = cli("verify", bundle, "--public-key", keys[1])
    assert r.code == 0, r.err
    m = Manifest.model_validate_json((bundle / "manifest.json").read_bytes())
    assert max(m.golden.expected[:6]) < float(threshold) < min(m.golden.expected[6:])
    shutil.rmtree(out)

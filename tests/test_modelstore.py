"""Model stores: file://, oci:// (the real SDK against the stand-in) and PAR URLs behave alike."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from gateway.errors import ConfigError
from gateway.modelstore import (
    Latest,
    ModelStore,
    NotFound,
    StoreError,
    VersionExists,
    open_store,
    version_key,
)
from tests.ocistandin import Credentials, StandIn, make_credentials
from tests.ocistandin.server import LoggedRequest

NS = "standin"
BUCKET = "models-site1"
KINDS = ("file", "oci", "par")
BLOB = os.urandom(3 * 1024 * 1024 + 17)  # more than one download chunk


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


def oci_store(cloud: StandIn, creds: Credentials, prefix: str) -> ModelStore:
    return open_store(
        f"oci://{NS}/{BUCKET}/{prefix}",
        oci_config=creds.config_file,
        oci_profile=creds.profile,
        endpoint=cloud.endpoint,
        timeout=10,
    )


@dataclass
class Site:
    """The store under test, a store to publish into it, and the stand-in's view (if any)."""

    kind: str
    store: ModelStore
    writer: ModelStore
    cloud: StandIn | None
    token: str = ""

    def requests(self) -> list[LoggedRequest]:
        assert self.cloud is not None
        return self.cloud.request_log("GetObject", "ParGetObject")


@pytest.fixture(params=KINDS)
def site(
    request: pytest.FixtureRequest, tmp_path: Path, cloud: StandIn, creds: Credentials
) -> Site:
    prefix = f"edge/{uuid.uuid4().hex[:8]}"
    if request.param == "file":
        store = open_store((tmp_path / "repo").as_uri())
        return Site("file", store, store, None)
    writer = oci_store(cloud, creds, prefix)
    cloud.clear_request_log()
    if request.param == "oci":
        return Site("oci", writer, writer, cloud)
    token = f"par-{uuid.uuid4().hex}"
    cloud.add_par(f"{token}:{NS}/{BUCKET}/{prefix}/")
    url = f"{cloud.endpoint}/p/{token}/n/{NS}/b/{BUCKET}/o/{prefix}/"
    return Site("par", open_store(url, timeout=10), writer, cloud, token)


def publish(site: Site, version: str, model: bytes = b"onnx", *, latest: bool = True) -> None:
    site.writer.put(version, "model.onnx", model)
    site.writer.put(version, "manifest.json", b'{"version": "%s"}' % version.encode())
    if latest:
        site.writer.set_latest(version)


# -- LATEST ----------------------------------------------------------------------------------


def test_latest_is_one_conditional_request_and_none_when_unchanged(site: Site) -> None:
    publish(site, "1.0.0")
    first = site.store.latest()
    assert isinstance(first, Latest)
    assert first.version == "1.0.0"
    assert first.etag

    if site.cloud is not None:
        site.cloud.clear_request_log()
    assert site.store.latest(first.etag) is None
    if site.cloud is not None:
        (only,) = site.cloud.request_log()  # one request, no listing, no retry
        assert only.headers == {"if-none-match": first.etag}
        assert (only.status, only.sent) == (304, 0)
        assert unquote(only.target).endswith("/LATEST")

    publish(site, "1.1.0")
    second = site.store.latest(first.etag)
    assert second is not None
    assert second.version == "1.1.0"
    assert second.etag != first.etag
    assert site.store.latest(second.etag) is None


def test_missing_latest_and_missing_objects_are_not_found(site: Site, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        site.store.latest()
    with pytest.raises(NotFound):
        site.store.read("9.9.9", "manifest.json")
    with pytest.raises(NotFound):
        site.store.download("9.9.9", "model.onnx", tmp_path / "dl" / "model.onnx")
    assert not (tmp_path / "dl" / "model.onnx").exists()


def test_latest_that_is_not_a_version_is_refused(site: Site) -> None:
    site.writer.put("1.0.0", "model.onnx", b"x")
    site.writer._put("LATEST", b"../../etc\n", overwrite=True)  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="not a valid name"):
        site.store.latest()


# -- put ---------------------------------------------------------------------------------------


def test_put_never_overwrites_a_version(site: Site) -> None:
    publish(site, "1.0.0", b"first")
    with pytest.raises(VersionExists, match=r"1\.0\.0/model\.onnx already exists"):
        site.writer.put("1.0.0", "model.onnx", b"second")
    assert site.store.read("1.0.0", "model.onnx") == b"first"
    site.writer.put("1.0.0", "model.onnx", b"second", overwrite=True)
    assert site.store.read("1.0.0", "model.onnx") == b"second"


def test_put_from_a_file(site: Site, tmp_path: Path) -> None:
    src = tmp_path / "big.onnx"
    src.write_bytes(BLOB)
    site.writer.put("2.0.0", "model.onnx", src)
    site.store.download("2.0.0", "model.onnx", tmp_path / "got" / "model.onnx", size=len(BLOB))
    assert (tmp_path / "got" / "model.onnx").read_bytes() == BLOB


def test_versions_sort_by_their_numbers(site: Site) -> None:
    for v in ("1.9.0", "1.10.0", "2.0.0", "1.2.0"):
        publish(site, v, latest=False)
    assert site.store.versions() == ["1.2.0", "1.9.0", "1.10.0", "2.0.0"]


def test_version_key_compares_numbers_as_numbers() -> None:
    assert sorted(["10", "9", "1.0.10", "1.0.9", "1.0"], key=version_key) == [
        "1.0",
        "1.0.9",
        "1.0.10",
        "9",
        "10",
    ]


# -- download ----------------------------------------------------------------------------------


def test_download_streams_into_place_atomically(site: Site, tmp_path: Path) -> None:
    publish(site, "1.0.0", BLOB)
    dest = tmp_path / "cache" / "1.0.0" / "model.onnx"
    site.store.download("1.0.0", "model.onnx", dest, size=len(BLOB))
    assert dest.read_bytes() == BLOB
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.onnx"]


def test_download_resumes_a_broken_try_with_a_range(site: Site, tmp_path: Path) -> None:
    publish(site, "1.0.0", BLOB)
    dest = tmp_path / "model.onnx"
    have = 1_000_000
    part = tmp_path / "model.onnx.part"
    part.write_bytes(BLOB[:have])
    if site.cloud is not None:
        site.cloud.clear_request_log()

    site.store.download("1.0.0", "model.onnx", dest, size=len(BLOB))

    assert dest.read_bytes() == BLOB
    assert not part.exists()
    if site.cloud is not None:
        (get,) = site.requests()
        assert get.headers == {"range": f"bytes={have}-"}
        assert (get.status, get.sent) == (206, len(BLOB) - have)


def test_resume_keeps_the_bytes_it_has(tmp_path: Path) -> None:
    """A resumed download appends; it does not fetch the prefix again (the sha256 check of
    the gateway is what catches a .part that does not belong to the object)."""
    store = open_store((tmp_path / "repo").as_uri())
    store.put("1.0.0", "model.onnx", BLOB)
    (tmp_path / "model.onnx.part").write_bytes(b"\0" * 10)
    store.download("1.0.0", "model.onnx", tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").read_bytes() == b"\0" * 10 + BLOB[10:]


def test_download_starts_over_when_the_object_changed(site: Site, tmp_path: Path) -> None:
    publish(site, "1.0.0", BLOB)
    dest = tmp_path / "model.onnx"
    (tmp_path / "model.onnx.part").write_bytes(b"\0" * 1000)
    (tmp_path / "model.onnx.part.etag").write_text("an-etag-from-an-older-object")
    if site.cloud is not None:
        site.cloud.clear_request_log()

    site.store.download("1.0.0", "model.onnx", dest, size=len(BLOB))

    assert dest.read_bytes() == BLOB
    assert not (tmp_path / "model.onnx.part.etag").exists()
    if site.cloud is not None:
        stale, fresh = site.requests()
        assert stale.headers == {"range": "bytes=1000-", "if-match": "an-etag-from-an-older-object"}
        assert stale.status == 412
        assert (fresh.headers, fresh.status, fresh.sent) == ({}, 200, len(BLOB))


def test_download_starts_over_when_the_part_is_past_the_end(site: Site, tmp_path: Path) -> None:
    publish(site, "1.0.0", b"short")
    (tmp_path / "model.onnx.part").write_bytes(b"much longer than the object")
    site.store.download("1.0.0", "model.onnx", tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").read_bytes() == b"short"


@pytest.mark.parametrize("expected", [len(BLOB) + 1, len(BLOB) - 1])
def test_download_checks_the_size(site: Site, tmp_path: Path, expected: int) -> None:
    publish(site, "1.0.0", BLOB)
    dest = tmp_path / "cache" / "model.onnx"
    with pytest.raises(StoreError, match=f"size mismatch \\(expected {expected}"):
        site.store.download("1.0.0", "model.onnx", dest, size=expected)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a .part to resume from


def test_names_must_be_one_path_segment(site: Site, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a valid name"):
        site.store.download("../1.0.0", "model.onnx", tmp_path / "x")
    with pytest.raises(StoreError, match="not a valid name"):
        site.store.read("1.0.0", "a/manifest.json")


# -- PARs --------------------------------------------------------------------------------------


@pytest.fixture
def par(cloud: StandIn, creds: Credentials) -> Site:
    prefix = f"edge/{uuid.uuid4().hex[:8]}"
    token = f"secret-{uuid.uuid4().hex}"
    cloud.add_par(f"{token}:{NS}/{BUCKET}/{prefix}/")
    url = f"{cloud.endpoint}/p/{token}/n/{NS}/b/{BUCKET}/o/{prefix}/"
    return Site("par", open_store(url, timeout=5), oci_store(cloud, creds, prefix), cloud, token)


def test_par_is_read_only_and_never_shows_its_token(par: Site, tmp_path: Path) -> None:
    assert par.token not in par.store.url
    assert "/p/<redacted>/" in par.store.url
    errors: list[StoreError] = []
    for attempt in (
        lambda: par.store.put("1.0.0", "model.onnx", b"x"),
        lambda: par.store.set_latest("1.0.0"),
        lambda: par.store.latest(),  # no LATEST yet: 404
        lambda: par.store.download("1.0.0", "model.onnx", tmp_path / "m"),
    ):
        with pytest.raises(StoreError) as info:
            attempt()
        errors.append(info.value)
    assert "a PAR source is read-only" in str(errors[0])
    assert "a PAR source is read-only" in str(errors[1])
    assert isinstance(errors[2], NotFound)

    assert par.cloud is not None
    par.cloud.faults.update(fail_next=1, fail_status=503, fail_groups=["par"])
    with pytest.raises(StoreError, match="HTTP 503") as info:
        par.store.latest()
    errors.append(info.value)

    wrong = open_store(par.store.url.replace("<redacted>", par.token + "x"), timeout=5)
    with pytest.raises(NotFound) as info:
        wrong.latest()
    errors.append(info.value)
    for err in errors:
        assert par.token not in str(err), err
        assert err.__cause__ is None or par.token not in str(err.__cause__)


def test_par_unreachable_is_a_store_error_without_the_token(tmp_path: Path) -> None:
    token = "tok-" + uuid.uuid4().hex
    store = open_store(f"http://127.0.0.1:9/p/{token}/n/{NS}/b/{BUCKET}/o/edge/", timeout=2)
    with pytest.raises(StoreError, match="cannot reach the PAR") as info:
        store.latest()
    assert token not in str(info.value)
    assert info.value.__cause__ is None


# -- OCI errors --------------------------------------------------------------------------------


def test_oci_5xx_is_one_request_then_a_store_error(cloud: StandIn, creds: Credentials) -> None:
    store = oci_store(cloud, creds, f"edge/{uuid.uuid4().hex[:8]}")
    cloud.clear_request_log()
    cloud.faults.update(fail_next=1, fail_status=503, fail_groups=["objectstorage"])
    with pytest.raises(StoreError, match="503 ServiceUnavailable"):
        store.latest()
    assert len(cloud.request_log()) == 1  # the SDK's own retries are off


def test_oci_unknown_key_is_a_store_error(
    cloud: StandIn, tmp_path: Path, creds: Credentials
) -> None:
    stranger = make_credentials(tmp_path / "stranger")
    store = open_store(
        f"oci://{NS}/{BUCKET}/edge",
        oci_config=stranger.config_file,
        endpoint=cloud.endpoint,
        timeout=5,
    )
    with pytest.raises(StoreError, match=r"401 NotAuthenticated.*check the OCI config"):
        store.latest()


def test_oci_unreachable_is_a_store_error(creds: Credentials) -> None:
    store = open_store(
        f"oci://{NS}/{BUCKET}/edge",
        oci_config=creds.config_file,
        endpoint="http://127.0.0.1:9",
        timeout=2,
    )
    with pytest.raises(StoreError, match="cannot reach Object Storage"):
        store.latest()


# -- open_store --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://host/models", "must start with file://, oci:// or https://"),
        ("file://relative/dir", "absolute path"),
        ("oci://namespace-only", "oci://<namespace>/<bucket>/<prefix>"),
    ],
)
def test_open_store_refuses_bad_urls(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        open_store(url)


def test_open_store_names_a_missing_oci_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"OCI config .*missing"):
        open_store("oci://ns/bucket/edge", oci_config=tmp_path / "missing")

"""The OCI stand-in, driven by the real `oci` SDK: Streaming, Object Storage, signatures, faults."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import oci
import pytest
from cryptography.hazmat.primitives import serialization

from tests.ocistandin import (
    MAX_MESSAGE_BYTES,
    THROTTLE_MESSAGE,
    Credentials,
    Faults,
    StandIn,
    load_credentials,
    make_credentials,
    partition_for,
)

M = oci.streaming.models
STREAM = "ocid1.stream.oc1.iad.amaaaaaastandintest"
NS = "standin"
PAR_TOKEN = "par-site1"  # noqa: S105 - a test PAR token
_THROTTLED = re.compile(
    r"^Request was throttled because bytes limit exhausted, next request can be made in (\d+) ms$"
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def entry(value: bytes, key: bytes | None = None) -> Any:
    return M.PutMessagesDetailsEntry(key=None if key is None else b64(key), value=b64(value))


def put(client: Any, *entries: Any, stream: str = STREAM) -> Any:
    return client.put_messages(stream, M.PutMessagesDetails(messages=list(entries))).data


def read_partition(client: Any, partition: int, stream: str = STREAM, **cursor: Any) -> list[Any]:
    details = M.CreateCursorDetails(partition=str(partition), type="TRIM_HORIZON")
    for name, value in cursor.items():
        setattr(details, name, value)
    value = client.create_cursor(stream, details).data.value
    return list(client.get_messages(stream, value, limit=10_000).data)


def http(
    url: str, method: str = "GET", body: bytes | None = None, **headers: str
) -> tuple[int, bytes, Any]:
    """A plain, unsigned HTTP call (as a site would fetch a PAR): status, body, headers."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - the local stand-in
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), exc.headers


def admin(standin: StandIn, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    status, answer, _ = http(standin.admin_endpoint + path, method, data)
    if status != 200:
        raise AssertionError(f"admin {method} {path}: {status} {answer!r}")
    return json.loads(answer)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return make_credentials(tmp_path_factory.mktemp("oci"))


@pytest.fixture
def standin(tmp_path: Path, creds: Credentials) -> Iterator[StandIn]:
    with StandIn(
        tmp_path / "data",
        public_keys={creds.key_id: creds.public_key_pem},
        partitions=3,
        namespace=NS,
        pars=[f"{PAR_TOKEN}:{NS}/site1/models/", f"nolist:{NS}/site1:nolist"],
    ) as s:
        yield s


@pytest.fixture
def streams(standin: StandIn, creds: Credentials) -> Any:
    return oci.streaming.StreamClient(creds.config, service_endpoint=standin.endpoint)


@pytest.fixture
def objects(standin: StandIn, creds: Credentials) -> Any:
    # No SDK retries and no process-wide shared circuit breaker: a test sees each answer.
    return oci.object_storage.ObjectStorageClient(
        creds.config,
        service_endpoint=standin.endpoint,
        retry_strategy=oci.retry.NoneRetryStrategy(),
        circuit_breaker_strategy=oci.circuit_breaker.NoCircuitBreakerStrategy(),
    )


# -- credentials -----------------------------------------------------------------------------


def test_credentials_are_well_formed(creds: Credentials) -> None:
    oci.config.validate_config(creds.config)
    public = serialization.load_pem_public_key(creds.public_key_pem)
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    md5 = hashlib.md5(der, usedforsecurity=False).hexdigest()
    assert creds.config["fingerprint"] == ":".join(md5[i : i + 2] for i in range(0, 32, 2))
    assert oci.config.from_file(str(creds.config_file))["user"] == creds.config["user"]
    assert load_credentials(creds.config_file).key_id == creds.key_id


# -- streaming -------------------------------------------------------------------------------


def test_round_trip_keeps_keys_offsets_and_order_per_key(streams: Any) -> None:
    keys = [b"site1/line%d" % i for i in range(6)]
    sent = [(k, b"%s#%d" % (k, n)) for n in range(4) for k in keys]
    first = put(streams, *(entry(v, k) for k, v in sent[:12]))
    second = put(streams, *(entry(v, k) for k, v in sent[12:]), entry(b"keyless"))
    results = first.entries + second.entries
    assert first.failures == second.failures == 0
    for (key, _), result in zip(sent, results, strict=False):
        assert result.partition == str(partition_for(key, 3))
    assert len({r.partition for r in results}) > 1  # the keys spread over partitions

    got: dict[bytes | None, list[bytes]] = {}
    for p in range(3):
        msgs = read_partition(streams, p)
        assert [m.offset for m in msgs] == list(range(len(msgs)))
        assert {m.partition for m in msgs} <= {str(p)}
        for m in msgs:
            key = None if m.key is None else base64.b64decode(m.key)
            got.setdefault(key, []).append(base64.b64decode(m.value))
    for key in keys:
        assert got[key] == [v for k, v in sent if k == key]
    assert got[None] == [b"keyless"]


def test_cursor_types_and_next_cursor(streams: Any) -> None:
    key = b"one-key"
    p = partition_for(key, 3)
    put(streams, *(entry(b"a%d" % i, key) for i in range(5)))
    latest = streams.create_cursor(STREAM, M.CreateCursorDetails(partition=str(p), type="LATEST"))
    time.sleep(0.01)  # distinct millisecond timestamps for AT_TIME, not a timing assertion
    later = put(streams, entry(b"b0", key), entry(b"b1", key)).entries[0]

    def values(msgs: list[Any]) -> list[bytes]:
        return [base64.b64decode(m.value) for m in msgs]

    at = read_partition(streams, p, type="AT_OFFSET", offset=3)
    assert values(at) == [b"a3", b"a4", b"b0", b"b1"]
    after = read_partition(streams, p, type="AFTER_OFFSET", offset=3)
    assert values(after) == [b"a4", b"b0", b"b1"]
    at_time = read_partition(streams, p, type="AT_TIME", time=later.timestamp)
    assert values(at_time) == [b"b0", b"b1"]
    page = streams.get_messages(STREAM, latest.data.value, limit=1)
    assert values(page.data) == [b"b0"]
    rest = streams.get_messages(STREAM, page.headers["opc-next-cursor"])
    assert values(rest.data) == [b"b1"]
    empty = streams.get_messages(STREAM, rest.headers["opc-next-cursor"])
    assert empty.data == []
    assert empty.headers["opc-next-cursor"]

    past_end = M.CreateCursorDetails(partition=str(p), type="AT_OFFSET", offset=99)
    with pytest.raises(oci.exceptions.ServiceError) as err:
        streams.create_cursor(STREAM, past_end)
    assert (err.value.status, err.value.code) == (400, "InvalidParameter")


def test_unknown_stream_is_404_when_not_auto_created(standin: StandIn, streams: Any) -> None:
    standin.streaming.auto_create = False
    with pytest.raises(oci.exceptions.ServiceError) as err:
        put(streams, entry(b"x"), stream="ocid1.stream.oc1..unknown")
    assert (err.value.status, err.value.code) == (404, "NotAuthorizedOrNotFound")


def test_size_limits(streams: Any) -> None:
    key = b"k"
    at_limit = put(streams, entry(b"x" * (MAX_MESSAGE_BYTES - len(key)), key))
    assert at_limit.failures == 0
    with pytest.raises(oci.exceptions.ServiceError) as err:
        put(streams, entry(b"x" * (MAX_MESSAGE_BYTES - len(key) + 1), key))
    assert err.value.status == 400
    assert "1 MiB" in err.value.message
    half = b"y" * (MAX_MESSAGE_BYTES // 2)
    with pytest.raises(oci.exceptions.ServiceError) as err:
        put(streams, entry(half, key), entry(half, key))  # each fits, together 2 bytes over
    assert err.value.status == 400
    assert "PutMessages request" in err.value.message


# -- signatures ------------------------------------------------------------------------------


def test_wrong_key_unknown_key_and_no_signature_are_401(
    standin: StandIn, creds: Credentials, tmp_path: Path
) -> None:
    other = make_credentials(tmp_path / "other")
    wrong_key = {**creds.config, "key_file": other.config["key_file"]}  # right keyId, wrong key
    for config in (wrong_key, other.config):
        client = oci.streaming.StreamClient(config, service_endpoint=standin.endpoint)
        with pytest.raises(oci.exceptions.ServiceError) as err:
            put(client, entry(b"x"))
        assert (err.value.status, err.value.code) == (401, "NotAuthenticated")
    status, body, _ = http(standin.endpoint + "/n/")
    assert (status, json.loads(body)["code"]) == (401, "NotAuthenticated")
    assert standin.stats.snapshot()["auth_failures"] == 3


class _TamperingSigner(oci.signer.Signer):  # type: ignore[misc]
    """Signs as the SDK does, then changes the body: what a man in the middle would do."""

    def __call__(self, request: Any, enforce_content_headers: bool = True) -> Any:
        signed = super().__call__(request, enforce_content_headers)
        body = signed.body
        if isinstance(body, bytes):
            signed.body = body.replace(b'"0"', b'"1"')
        elif isinstance(body, str):
            signed.body = body.replace('"0"', '"1"')
        return signed


def test_tampered_signed_body_is_401(standin: StandIn, creds: Credentials) -> None:
    c = creds.config
    signer = _TamperingSigner(c["tenancy"], c["user"], c["fingerprint"], c["key_file"])
    client = oci.streaming.StreamClient(c, signer=signer, service_endpoint=standin.endpoint)
    with pytest.raises(oci.exceptions.ServiceError) as err:  # CreateCursor signs its body
        client.create_cursor(STREAM, M.CreateCursorDetails(partition="0", type="LATEST"))
    assert (err.value.status, err.value.code) == (401, "NotAuthenticated")
    assert "x-content-sha256" in err.value.message
    # PutMessages is signed without its body, by the SDK as for OCI: a changed body passes.
    assert put(client, entry(b"not signed", b"k")).failures == 0


def test_stale_date_is_401(standin: StandIn, streams: Any) -> None:
    standin.keys.max_skew = -1.0  # every date is now "too far off"
    with pytest.raises(oci.exceptions.ServiceError) as err:
        put(streams, entry(b"x"))
    assert err.value.status == 401
    assert "off the server clock" in err.value.message


# -- faults ----------------------------------------------------------------------------------


def test_per_entry_throttle_text(standin: StandIn, streams: Any) -> None:
    a, b = b"key-a", b"key-b"
    assert partition_for(a, 3) != partition_for(b, 3)
    standin.faults.update(throttle_next=1)
    result = put(streams, entry(b"a0", a), entry(b"b0", b), entry(b"a1", a))
    assert result.failures == 2  # a1 fails with a0: one key never goes out of order
    first, stored, third = result.entries
    assert (first.error, first.error_message) == (
        "429",
        "Request was throttled because bytes limit exhausted, next request can be made in 453 ms",
    )
    assert (third.error, third.error_message) == (first.error, first.error_message)
    assert stored.error is None
    assert stored.offset == 0
    assert standin.stats.snapshot()["entries_throttled"] == 2


def test_bytes_per_second_limit_reports_the_real_wait(standin: StandIn, streams: Any) -> None:
    standin.faults.update(bytes_per_second=100, burst_bytes=1000)
    key = b"k"
    value = b"v" * 399  # 400 bytes with the key
    result = put(streams, *(entry(value, key) for _ in range(4)))
    assert [e.error for e in result.entries] == [None, None, "429", "429"]
    wait = int(_THROTTLED.fullmatch(result.entries[2].error_message)[1])  # type: ignore[index]
    assert 1000 < wait <= 2000  # 200 bytes short at 100 B/s, minus what trickled in since


def test_token_bucket_semantics() -> None:
    f = Faults(bytes_per_second=1000, burst_bytes=1000)
    assert f.admit_entry("s", 0, 600, now=0.0) == 0
    wait = f.admit_entry("s", 0, 600, now=0.0)
    assert wait == 200  # 400 left, 200 short at 1000 B/s
    assert f.admit_entry("s", 0, 600, now=wait / 1000) == 0  # after the wait it goes through
    assert f.admit_entry("s", 1, 600, now=0.0) == 0  # each partition has its own bucket
    assert f.admit_entry("s", 1, 5000, now=10.0) == 0  # bigger than the burst: passes when full
    assert f.admit_entry("s", 1, 1, now=10.0) > 0  # ... and leaves the bucket in debt
    assert THROTTLE_MESSAGE.format(ms=wait).endswith("made in 200 ms")


def test_injected_5xx_then_recovery(standin: StandIn, streams: Any, objects: Any) -> None:
    standin.faults.update(fail_next=2, fail_status=503)
    for _ in range(2):  # put_messages does not retry by default: each call sees its 503
        with pytest.raises(oci.exceptions.ServiceError) as err:
            put(streams, entry(b"x"))
        assert err.value.status == 503
    assert put(streams, entry(b"x")).failures == 0
    standin.faults.update(fail_next=1, fail_groups=["objectstorage"])
    assert put(streams, entry(b"y")).failures == 0  # streaming is not in the group
    with pytest.raises(oci.exceptions.ServiceError) as err:
        objects.get_namespace()
    assert (err.value.status, err.value.code) == (503, "ServiceUnavailable")
    assert objects.get_namespace().data == NS
    assert standin.stats.count("PutMessages", 503) == 2
    assert standin.stats.snapshot()["injected_failures"] == 3
    assert len(standin.messages(STREAM)) == 2  # a failed request stored nothing


def test_outage_refuses_connections_then_recovers(standin: StandIn, streams: Any) -> None:
    assert put(streams, entry(b"before", b"k")).failures == 0  # leaves a keep-alive connection
    standin.outage()
    with pytest.raises(oci.exceptions.RequestException) as err:
        put(streams, entry(b"during"))
    assert "Connection refused" in str(err.value)
    # The SDK's own type, wrapping its vendored `requests` ConnectionError (not the PyPI one).
    assert isinstance(err.value.args[0], oci._vendor.requests.exceptions.ConnectionError)
    standin.recover()
    assert put(streams, entry(b"after", b"k")).failures == 0
    assert [m.value for m in standin.messages(STREAM)] == [b"before", b"after"]


def test_timed_outage_through_the_admin_api(standin: StandIn, streams: Any) -> None:
    assert admin(standin, "POST", "/_standin/outage", {"seconds": 60})["status"] == "down"
    with pytest.raises(oci.exceptions.RequestException):
        put(streams, entry(b"during"))
    standin.recover()  # ends it early
    assert put(streams, entry(b"between")).failures == 0
    admin(standin, "POST", "/_standin/outage", {"seconds": 0.2})
    deadline = time.monotonic() + 10  # it comes back by itself
    while standin.down and time.monotonic() < deadline:
        time.sleep(0.02)
    assert put(streams, entry(b"after")).failures == 0


def test_admin_api_faults_and_stats(standin: StandIn, streams: Any) -> None:
    snap = admin(standin, "POST", "/_standin/faults", {"throttle_next": 1, "throttle_ms": 700})
    assert snap["throttle_next"] == 1
    result = put(streams, entry(b"x", b"k"))
    assert result.entries[0].error_message.endswith("made in 700 ms")
    stats = admin(standin, "GET", "/_standin/stats")
    assert stats["requests"]["PutMessages"] == {"200": 1}
    assert stats["entries_throttled"] == 1
    assert stats["bytes_received"] > 0
    assert stats["streams"][STREAM]["partitions"] == 3
    assert admin(standin, "DELETE", "/_standin/faults")["throttle_ms"] == 453
    status, body, _ = http(
        standin.endpoint + "/_standin/faults", "POST", json.dumps({"no_such_fault": 1}).encode()
    )
    assert (status, json.loads(body)["code"]) == (400, "InvalidParameter")


def test_state_survives_a_restart(tmp_path: Path, creds: Credentials) -> None:
    keys = {creds.key_id: creds.public_key_pem}
    with StandIn(tmp_path / "data", public_keys=keys, partitions=2) as first:
        client = oci.streaming.StreamClient(creds.config, service_endpoint=first.endpoint)
        put(client, entry(b"m0", b"k"), entry(b"m1", b"k"))
        objects = oci.object_storage.ObjectStorageClient(
            creds.config, service_endpoint=first.endpoint
        )
        etag = objects.put_object(NS, "b", "models/LATEST", b"3.1").headers["etag"]
    with StandIn(tmp_path / "data", public_keys=keys, partitions=5) as second:
        client = oci.streaming.StreamClient(creds.config, service_endpoint=second.endpoint)
        stored = put(client, entry(b"m2", b"k")).entries[0]
        assert (stored.partition, stored.offset) == (str(partition_for(b"k", 2)), 2)
        got = read_partition(client, partition_for(b"k", 2))
        assert [base64.b64decode(m.value) for m in got] == [b"m0", b"m1", b"m2"]
        objects = oci.object_storage.ObjectStorageClient(
            creds.config, service_endpoint=second.endpoint
        )
        obj = objects.get_object(NS, "b", "models/LATEST")
        assert (obj.data.content, obj.headers["etag"]) == (b"3.1", etag)


def test_runs_as_a_process(tmp_path: Path) -> None:
    args = ["--data", str(tmp_path / "data"), "--credentials", str(tmp_path / "creds")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ocistandin", *args, "--par", f"tok:{NS}/site"],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        creds = load_credentials(Path(info["config_file"]))
        objects = oci.object_storage.ObjectStorageClient(
            creds.config, service_endpoint=info["endpoint"]
        )
        objects.put_object(NS, "site", "LATEST", b"7")
        assert http(f"{info['endpoint']}/p/tok/n/{NS}/b/site/o/LATEST")[:2] == (200, b"7")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()


# -- object storage --------------------------------------------------------------------------


def test_put_get_head_with_md5_and_names_with_slashes(objects: Any) -> None:
    data = b"model bytes" * 100
    md5 = b64(hashlib.md5(data, usedforsecurity=False).digest())
    put_resp = objects.put_object(
        NS, "site1", "models/3.1/model.onnx", data, content_md5=md5, opc_meta={"version": "3.1"}
    )
    etag = put_resp.headers["etag"]
    got = objects.get_object(NS, "site1", "models/3.1/model.onnx")
    assert got.data.content == data
    assert (got.headers["etag"], got.headers["content-md5"]) == (etag, md5)
    assert got.headers["opc-meta-version"] == "3.1"
    head = objects.head_object(NS, "site1", "models/3.1/model.onnx")
    assert (head.headers["content-length"], head.headers["etag"]) == (str(len(data)), etag)
    with pytest.raises(oci.exceptions.ServiceError) as err:
        objects.put_object(NS, "site1", "x", b"abc", content_md5=md5)
    assert (err.value.status, err.value.code) == (400, "UnmatchedContentMD5")
    with pytest.raises(oci.exceptions.ServiceError) as err:
        objects.get_object(NS, "site1", "models/none")
    assert (err.value.status, err.value.code) == (404, "ObjectNotFound")


def test_conditional_requests(objects: Any) -> None:
    etag = objects.put_object(NS, "site1", "LATEST", b"3.0").headers["etag"]
    for call in (objects.get_object, objects.head_object):
        with pytest.raises(oci.exceptions.ServiceError) as err:
            call(NS, "site1", "LATEST", if_none_match=etag)
        assert err.value.status == 304  # "unchanged" arrives as an exception
    assert objects.get_object(NS, "site1", "LATEST", if_none_match="other").data.content == b"3.0"
    with pytest.raises(oci.exceptions.ServiceError) as err:
        objects.put_object(NS, "site1", "LATEST", b"3.1", if_none_match="*")
    assert (err.value.status, err.value.code) == (412, "IfNoneMatchFailed")
    with pytest.raises(oci.exceptions.ServiceError) as err:
        objects.get_object(NS, "site1", "LATEST", if_match="not-the-etag")
    assert (err.value.status, err.value.code) == (412, "IfMatchFailed")
    new = objects.put_object(NS, "site1", "LATEST", b"3.1", if_match=etag).headers["etag"]
    assert new != etag
    assert objects.put_object(NS, "site1", "NEW", b"1", if_none_match="*").status == 200


def test_range_requests(objects: Any) -> None:
    objects.put_object(NS, "site1", "blob", bytes(range(100)))
    part = objects.get_object(NS, "site1", "blob", range="bytes=10-19")
    assert part.status == 206
    assert part.data.content == bytes(range(10, 20))
    assert part.headers["content-range"] == "bytes 10-19/100"
    tail = objects.get_object(NS, "site1", "blob", range="bytes=-5")
    assert tail.data.content == bytes(range(95, 100))
    with pytest.raises(oci.exceptions.ServiceError) as err:
        objects.get_object(NS, "site1", "blob", range="bytes=100-")
    assert err.value.status == 416


def test_list_with_prefix_pagination_fields_and_delimiter(objects: Any) -> None:
    names = [f"models/{v}/{f}" for v in ("1.0", "2.0") for f in ("manifest.json", "model.onnx")]
    for name in [*names, "models/LATEST", "other/x"]:
        objects.put_object(NS, "site1", name, name.encode())
    seen, start = [], None
    while True:
        kwargs = {"start": start} if start else {}
        page = objects.list_objects(NS, "site1", prefix="models/", limit=2, **kwargs).data
        seen += [o.name for o in page.objects]
        assert all(o.size is None for o in page.objects)  # only names unless fields asks
        start = page.next_start_with
        if start is None:
            break
    assert seen == [*names, "models/LATEST"]
    full = objects.list_objects(NS, "site1", prefix="models/1", fields="name,size,md5,etag").data
    assert [(o.name, o.size) for o in full.objects] == [(n, len(n)) for n in names[:2]]
    assert all(o.md5 and o.etag for o in full.objects)
    tree = objects.list_objects(NS, "site1", prefix="models/", delimiter="/").data
    assert tree.prefixes == ["models/1.0/", "models/2.0/"]
    assert [o.name for o in tree.objects] == ["models/LATEST"]


def test_pre_authenticated_requests(objects: Any, standin: StandIn) -> None:
    objects.put_object(NS, "site1", "models/LATEST", b"2.0")
    objects.put_object(NS, "site1", "secret", b"no")
    base = f"{standin.endpoint}/p/{PAR_TOKEN}/n/{NS}/b/site1/o/"

    get = http

    status, body, headers = get(base + "models%2FLATEST")
    assert (status, body) == (200, b"2.0")
    assert get(base + "models/LATEST", **{"If-None-Match": headers["etag"]})[0] == 304
    assert get(base + "models/LATEST", Range="bytes=0-0")[:2] == (206, b"2")
    listing = json.loads(get(base)[1])
    assert [o["name"] for o in listing["objects"]] == ["models/LATEST"]  # only under its prefix
    assert get(base + "secret")[0] == 404
    assert get(f"{standin.endpoint}/p/nolist/n/{NS}/b/site1/o/")[0] == 404
    assert get(f"{standin.endpoint}/p/nolist/n/{NS}/b/site1/o/secret")[1] == b"no"
    assert get(f"{standin.endpoint}/p/bogus/n/{NS}/b/site1/o/secret")[0] == 404


def test_latency_is_added(standin: StandIn, objects: Any) -> None:
    standin.faults.update(latency=0.05)
    assert objects.get_namespace().data == NS
    assert standin.faults.snapshot()["latency"] == 0.05


@pytest.mark.slow
def test_sdk_default_retry_rides_over_one_5xx_on_reads(
    standin: StandIn, creds: Credentials
) -> None:
    """Documents SDK behaviour the uplink must know: object reads retry 5xx on their own."""
    client = oci.object_storage.ObjectStorageClient(
        creds.config,
        service_endpoint=standin.endpoint,
        circuit_breaker_strategy=oci.circuit_breaker.NoCircuitBreakerStrategy(),
    )
    standin.faults.update(fail_next=1)
    assert client.get_namespace().data == NS
    assert standin.stats.count("GetNamespace") == 2


def test_timestamps_are_utc_and_current(streams: Any) -> None:
    stamp = put(streams, entry(b"x")).entries[0].timestamp
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)

"""The remote model stores: an Object Storage bucket through the ``oci`` SDK, and a PAR URL
read with plain HTTP(S) and no credentials. See ``modelstore`` for the interface."""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import orjson

from .errors import ConfigError
from .modelstore import (
    CHUNK,
    LATEST,
    Latest,
    NotFound,
    StoreError,
    VersionExists,
    _Body,
    _parse_latest,
    _Stale,
    _Store,
    check_name,
    version_key,
)

__all__ = ["OciStore", "ParStore", "open_oci_store"]

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_PAR_TOKEN = re.compile(r"/p/([^/]+)/")


class _NotModified(Exception):
    pass


def _span(status: int, headers: Any) -> tuple[int, int | None]:
    """Where a 200/206 body starts in the object, and the object's full size if known."""
    if status == 206:
        m = _CONTENT_RANGE.match(headers.get("content-range") or "")
        if m is None:
            raise StoreError(f"a 206 answer without a usable Content-Range: {headers!r}")
        return int(m[1]), int(m[3])
    length = headers.get("content-length")
    return 0, int(length) if length and length.isdigit() else None


def _md5(data: bytes | Path) -> tuple[str, int]:
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(data, Path):
        with data.open("rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                digest.update(chunk)
        size = data.stat().st_size
    else:
        digest.update(data)
        size = len(data)
    return base64.b64encode(digest.digest()).decode(), size


# -- oci:// through the SDK ---------------------------------------------------------------------


def open_oci_store(
    url: str,
    *,
    oci_config: Path,
    oci_profile: str,
    auth: str,
    endpoint: str,
    timeout: float,
) -> OciStore:
    """An OciStore for ``oci://<namespace>/<bucket>/<prefix>`` with an SDK client (API key or
    instance principal; the SDK's own retries and circuit breaker off)."""
    import oci  # the SDK takes ~1 s to import: only when a store needs it

    parts = urlsplit(url)
    bucket, _, prefix = parts.path.lstrip("/").partition("/")
    if not parts.netloc or not bucket:
        raise ConfigError(f"model source {url!r}: expected oci://<namespace>/<bucket>/<prefix>")
    kwargs: dict[str, Any] = {
        "retry_strategy": oci.retry.NoneRetryStrategy(),
        "circuit_breaker_strategy": oci.circuit_breaker.NoCircuitBreakerStrategy(),
        "timeout": (min(10.0, timeout), timeout),
    }
    if endpoint:
        kwargs["service_endpoint"] = endpoint
    try:
        if auth == "instance_principal":
            signer = _instance_principal(oci)
            config = {"region": signer.region}
            client = oci.object_storage.ObjectStorageClient(config, signer=signer, **kwargs)
        elif auth == "api_key":
            config = oci.config.from_file(str(oci_config.expanduser()), oci_profile)
            client = oci.object_storage.ObjectStorageClient(config, **kwargs)
        else:
            raise ConfigError(f"OCI auth {auth!r}: expected api_key or instance_principal")
    except (
        oci.exceptions.ConfigFileNotFound,
        oci.exceptions.InvalidConfig,
        oci.exceptions.ProfileNotFound,
        oci.exceptions.InvalidPrivateKey,
        oci.exceptions.MissingPrivateKeyPassphrase,
    ) as exc:
        raise ConfigError(f"OCI config {oci_config} profile {oci_profile}: {exc}") from exc
    return OciStore(parts.netloc, bucket, prefix.strip("/"), client)


def _instance_principal(oci: Any) -> Any:
    try:
        return oci.auth.signers.InstancePrincipalsSecurityTokenSigner()
    except Exception as exc:  # the SDK raises assorted errors off an OCI instance
        raise ConfigError(
            f"OCI instance principal: no token ({exc}); is this an OCI instance in a dynamic group?"
        ) from exc


class OciStore(_Store):
    """A bucket (and prefix) read and written with the ``oci`` SDK's ObjectStorageClient."""

    def __init__(self, namespace: str, bucket: str, prefix: str, client: Any) -> None:
        import oci

        self._oci = oci
        self.namespace, self.bucket, self.prefix = namespace, bucket, prefix
        self.url = f"oci://{namespace}/{bucket}/{prefix}".rstrip("/")
        self._client = client

    def _name(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        oci = self._oci
        try:
            return getattr(self._client, method)(self.namespace, self.bucket, *args, **kwargs)
        except oci.exceptions.ServiceError as exc:
            if exc.status == 304:
                raise _NotModified from exc
            if exc.status == 404:
                raise NotFound(f"{what} does not exist ({exc.code})") from exc
            if exc.status == 412 and method == "put_object":
                raise VersionExists(f"{what} already exists") from exc
            if exc.status in (412, 416):
                raise _Stale from exc
            hint = " (check the OCI config, key and policies)" if exc.status in (401, 403) else ""
            raise StoreError(f"{what}: {exc.status} {exc.code}: {exc.message}{hint}") from exc
        except OSError as exc:  # the SDK's RequestException and ConnectTimeout are OSErrors
            raise StoreError(f"{what}: cannot reach Object Storage: {exc}") from exc

    def latest(self, etag: str | None = None) -> Latest | None:
        """GET ``LATEST`` with If-None-Match; None on 304."""
        name = self._name(LATEST)
        kwargs = {"if_none_match": etag} if etag else {}
        try:
            resp = self._call(f"{self.url}/{LATEST}", "get_object", name, **kwargs)
        except _NotModified:
            return None
        data = self._content(resp, f"{self.url}/{LATEST}")
        return Latest(_parse_latest(data, self.url), resp.headers.get("etag", ""))

    def read(self, version: str, name: str) -> bytes:
        """A small file of a version, whole."""
        rel = self._rel(version, name)
        resp = self._call(f"{self.url}/{rel}", "get_object", self._name(rel))
        return self._content(resp, f"{self.url}/{rel}")

    def _content(self, resp: Any, what: str) -> bytes:
        try:
            return bytes(resp.data.content)
        except Exception as exc:  # urllib3 errors while reading the body
            raise StoreError(f"{what}: the answer broke off: {exc}") from exc

    def _open(self, rel: str, start: int, if_match: str | None) -> _Body:
        kwargs: dict[str, Any] = {}
        if start:
            kwargs["range"] = f"bytes={start}-"
        if if_match:
            kwargs["if_match"] = if_match
        what = f"{self.url}/{rel}"
        resp = self._call(what, "get_object", self._name(rel), **kwargs)
        first, total = _span(resp.status, resp.headers)
        raw = resp.data.raw

        def chunks() -> Iterator[bytes]:
            try:
                yield from raw.stream(CHUNK, decode_content=False)
            except Exception as exc:  # urllib3 ProtocolError, ReadTimeoutError, OSError
                raise StoreError(f"{what}: the download broke off: {exc}") from exc

        return _Body(first, resp.headers.get("etag", ""), total, chunks(), resp.data.close)

    def put(self, version: str, name: str, data: bytes | Path, *, overwrite: bool = False) -> None:
        """PutObject with ``If-None-Match: *`` unless ``overwrite``, and Content-MD5."""
        self._put(self._rel(version, name), data, overwrite=overwrite)

    def set_latest(self, version: str) -> None:
        """Overwrite ``LATEST`` with the version."""
        self._put(LATEST, check_name(version).encode() + b"\n", overwrite=True)

    def _put(self, rel: str, data: bytes | Path, *, overwrite: bool) -> None:
        md5, size = _md5(data)
        kwargs: dict[str, Any] = {
            "content_md5": md5,
            "content_length": size,
            "content_type": "application/octet-stream",
        }
        if not overwrite:
            kwargs["if_none_match"] = "*"
        what = f"{self.url}/{rel}"
        if isinstance(data, Path):
            with data.open("rb") as fh:
                self._call(what, "put_object", self._name(rel), fh, **kwargs)
        else:
            self._call(what, "put_object", self._name(rel), data, **kwargs)

    def versions(self) -> list[str]:
        """ListObjects with the prefix and ``/`` as delimiter: one entry per version folder."""
        base = self._name("")
        found: list[str] = []
        start: str | None = None
        while True:
            kwargs: dict[str, Any] = {"prefix": base, "delimiter": "/", "fields": "name"}
            if start:
                kwargs["start"] = start
            resp = self._call(f"{self.url}/", "list_objects", **kwargs)
            found += [p[len(base) :].rstrip("/") for p in resp.data.prefixes or []]
            start = resp.data.next_start_with
            if not start:
                break
        return sorted({v for v in found if v and not v.startswith(".")}, key=version_key)


# -- PAR URLs through plain HTTP ----------------------------------------------------------------


class ParStore(_Store):
    """A pre-authenticated request URL (``https://…/p/<token>/n/<ns>/b/<bucket>/o/<prefix>/``):
    plain GETs, no credentials, read-only. The token never appears in ``url`` or errors."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self._base = url if url.endswith("/") else url + "/"
        m = _PAR_TOKEN.search(urlsplit(self._base).path)
        self._token = m[1] if m else None
        self.url = self._scrub(self._base).rstrip("/")
        self._timeout = timeout

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<redacted>") if self._token else text

    def _get(self, rel: str, headers: dict[str, str], *, query: str = "") -> Any:
        url = (self._list_base() + "?" + query) if query else self._base + quote(rel, safe="/")
        what = f"{self.url}/{rel}"
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only, checked
        try:
            return urllib.request.urlopen(req, timeout=self._timeout)  # noqa: S310
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
            if status == 304:
                raise _NotModified from None
            if status == 404:
                raise NotFound(f"{what} does not exist (or the PAR does not cover it)") from None
            if status in (412, 416):
                raise _Stale from None
            # `from None`: the chained urllib error would carry the URL, token and all.
            raise StoreError(f"{what}: HTTP {status} {self._scrub(str(exc.reason))}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreError(f"{what}: cannot reach the PAR: {self._scrub(str(reason))}") from None

    def _list_base(self) -> str:
        head, sep, _ = self._base.partition("/o/")
        if not sep:
            raise StoreError(f"{self.url} is not a bucket PAR (…/o/…): it cannot list")
        return head + "/o/"

    def latest(self, etag: str | None = None) -> Latest | None:
        """GET ``LATEST`` with If-None-Match; None on 304."""
        try:
            resp = self._get(LATEST, {"If-None-Match": etag} if etag else {})
        except _NotModified:
            return None
        with resp:
            data = self._body(resp, LATEST)
            return Latest(_parse_latest(data, self.url), resp.headers.get("ETag", ""))

    def read(self, version: str, name: str) -> bytes:
        """A small file of a version, whole."""
        rel = self._rel(version, name)
        with self._get(rel, {}) as resp:
            return self._body(resp, rel)

    def _body(self, resp: Any, rel: str) -> bytes:
        try:
            return bytes(resp.read())
        except (OSError, http.client.HTTPException) as exc:
            raise StoreError(f"{self.url}/{rel}: the answer broke off: {exc!r}") from None

    def _open(self, rel: str, start: int, if_match: str | None) -> _Body:
        headers = {}
        if start:
            headers["Range"] = f"bytes={start}-"
        if if_match:
            headers["If-Match"] = if_match
        resp = self._get(rel, headers)
        first, total = _span(resp.status, resp.headers)
        what = f"{self.url}/{rel}"

        def chunks() -> Iterator[bytes]:
            try:
                yield from iter(lambda: resp.read(CHUNK), b"")
            except (OSError, http.client.HTTPException) as exc:
                raise StoreError(f"{what}: the download broke off: {exc!r}") from None

        return _Body(first, resp.headers.get("ETag", ""), total, chunks(), resp.close)

    def put(self, version: str, name: str, data: bytes | Path, *, overwrite: bool = False) -> None:
        """Refused: a PAR source is read-only."""
        raise StoreError(f"{self.url}: a PAR source is read-only")

    def set_latest(self, version: str) -> None:
        """Refused: a PAR source is read-only."""
        raise StoreError(f"{self.url}: a PAR source is read-only")

    def versions(self) -> list[str]:
        """The versions, if the PAR allows listing (StoreError otherwise)."""
        prefix = unquote(urlsplit(self._base).path.partition("/o/")[2])
        found: list[str] = []
        start = ""
        while True:
            query = {"prefix": prefix, "delimiter": "/", "fields": "name"}
            if start:
                query["start"] = start
            try:
                with self._get("", {}, query=urlencode(query)) as resp:
                    doc = orjson.loads(self._body(resp, ""))
            except NotFound:
                raise StoreError(f"{self.url}: this PAR does not allow listing") from None
            except orjson.JSONDecodeError:
                raise StoreError(f"{self.url}: the listing is not JSON") from None
            found += [p[len(prefix) :].rstrip("/") for p in doc.get("prefixes") or []]
            start = doc.get("nextStartWith") or ""
            if not start:
                break
        return sorted({v for v in found if v and not v.startswith(".")}, key=version_key)

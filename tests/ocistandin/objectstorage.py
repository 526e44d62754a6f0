"""OCI Object Storage: namespace, objects (conditional, ranged, MD5-checked), listing, PARs."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .store import ObjectInfo, Store
from .wire import Request, Response, ServiceError, json_response, parse_int

MAX_LIST = 1000
LIST_FIELDS = ("name", "size", "etag", "md5", "timeCreated", "timeModified", "storageTier")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Par:
    """A pre-authenticated request: read any object under `prefix` in a bucket, maybe list it."""

    token: str
    namespace: str
    bucket: str
    prefix: str = ""
    allow_list: bool = True

    @classmethod
    def parse(cls, spec: str) -> Par:
        """`TOKEN:ns/bucket[/prefix][:nolist]`."""
        token, sep, rest = spec.partition(":")
        allow_list = True
        if rest.endswith(":nolist"):
            rest, allow_list = rest[: -len(":nolist")], False
        ns, _, tail = rest.partition("/")
        bucket, _, prefix = tail.partition("/")
        if not (sep and token and ns and bucket):
            raise ValueError(f"PAR must be TOKEN:namespace/bucket[/prefix][:nolist], got {spec!r}")
        return cls(token, ns, bucket, prefix, allow_list)


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class ObjectStorage:
    """One namespace; buckets exist as soon as they are named."""

    def __init__(self, store: Store, namespace: str = "standin") -> None:
        self.store, self.namespace = store, namespace
        self.pars: dict[str, Par] = {}

    def add_par(self, par: Par) -> None:
        self.pars[par.token] = par

    def _check_ns(self, ns: str) -> None:
        if ns != self.namespace:
            raise ServiceError(
                404, "NamespaceNotFound", f"You do not have authorization to use namespace {ns!r}"
            )

    def get_namespace(self) -> Response:
        return json_response(200, self.namespace)

    # -- objects ---------------------------------------------------------------------------

    def _headers(self, obj: ObjectInfo) -> dict[str, str]:
        h = {
            "etag": obj.etag,
            "last-modified": _http_date(obj.modified),
            "content-type": obj.content_type,
            "accept-ranges": "bytes",
            "storage-tier": "Standard",
        }
        h.update({f"opc-meta-{k}": v for k, v in obj.meta.items()})
        return h

    def _existing(self, ns: str, bucket: str, name: str, *, with_data: bool) -> ObjectInfo:
        self._check_ns(ns)
        obj = self.store.get_object(ns, bucket, name, with_data=with_data)
        if obj is None:
            raise ServiceError(
                404, "ObjectNotFound", f"The object '{name}' was not found in the bucket '{bucket}'"
            )
        return obj

    def get_object(self, ns: str, bucket: str, name: str, req: Request) -> Response:
        """GetObject / HeadObject: If-Match, If-None-Match (304), one byte Range (206)."""
        head = req.method == "HEAD"
        obj = self._existing(ns, bucket, name, with_data=not head)
        headers = self._headers(obj)
        if_match = req.headers.get("if-match")
        if if_match is not None and if_match not in ("*", obj.etag):
            raise ServiceError(
                412, "IfMatchFailed", f"The If-Match header ({if_match}) does not match {obj.etag}"
            )
        if_none = req.headers.get("if-none-match")
        if if_none is not None and if_none in ("*", obj.etag):
            return Response(304, b"", {"etag": obj.etag, "last-modified": headers["last-modified"]})
        rng = self._range(req.headers.get("range"), obj.size)
        if rng is None:
            headers["content-md5"] = obj.md5
            if head:
                headers["content-length"] = str(obj.size)
            return Response(200, b"" if head else obj.data, headers)
        start, end = rng
        headers["content-range"] = f"bytes {start}-{end}/{obj.size}"
        if head:
            headers["content-length"] = str(end + 1 - start)
        return Response(206, b"" if head else obj.data[start : end + 1], headers)

    @staticmethod
    def _range(raw: str | None, size: int) -> tuple[int, int] | None:
        if raw is None:
            return None
        m = _RANGE.match(raw.strip())
        if m is None:
            if raw.strip().startswith("bytes=") and "," in raw:
                raise ServiceError(416, "InvalidRange", "only a single byte range is supported")
            return None  # RFC 9110: a malformed Range is ignored
        first, last = m.groups()
        if first == "" and last == "":
            return None
        if first == "":  # suffix: the last N bytes
            start, end = max(0, size - int(last)), size - 1
        else:
            start = int(first)
            end = size - 1 if last == "" else min(int(last), size - 1)
        if start >= size or start > end:
            raise ServiceError(
                416, "InvalidRange", f"range {raw!r} is not satisfiable for {size} bytes"
            )
        return start, end

    def put_object(self, ns: str, bucket: str, name: str, req: Request) -> Response:
        """PutObject with If-Match, If-None-Match: * and Content-MD5."""
        self._check_ns(ns)
        if not name:
            raise ServiceError(400, "InvalidParameter", "object name must not be empty")
        current = self.store.get_object(ns, bucket, name, with_data=False)
        if_none = req.headers.get("if-none-match")
        if if_none is not None and if_none != "*":
            raise ServiceError(400, "InvalidParameter", "the only valid If-None-Match is '*'")
        if if_none == "*" and current is not None:
            raise ServiceError(
                412, "IfNoneMatchFailed", f"The object '{name}' already exists (If-None-Match: *)"
            )
        if_match = req.headers.get("if-match")
        if if_match is not None and (current is None or if_match not in ("*", current.etag)):
            raise ServiceError(
                412, "IfMatchFailed", f"If-Match {if_match} does not match the object's ETag"
            )
        md5 = base64.b64encode(hashlib.md5(req.body, usedforsecurity=False).digest()).decode()
        sent_md5 = req.headers.get("content-md5")
        if sent_md5 is not None and sent_md5 != md5:
            raise ServiceError(
                400,
                "UnmatchedContentMD5",
                f"The computed MD5 of the request body ({md5}) does not match the"
                f" Content-MD5 header ({sent_md5})",
            )
        now = time.time()
        obj = ObjectInfo(
            name=name,
            size=len(req.body),
            md5=md5,
            etag=str(uuid.uuid4()),
            content_type=req.headers.get("content-type", "application/octet-stream"),
            created=now,
            modified=now,
            meta={k[9:]: v for k, v in req.headers.items() if k.startswith("opc-meta-")},
            data=req.body,
        )
        self.store.put_object(ns, bucket, obj)
        return Response(
            200,
            b"",
            {"etag": obj.etag, "opc-content-md5": md5, "last-modified": _http_date(now)},
        )

    def delete_object(self, ns: str, bucket: str, name: str, req: Request) -> Response:
        obj = self._existing(ns, bucket, name, with_data=False)
        if_match = req.headers.get("if-match")
        if if_match is not None and if_match not in ("*", obj.etag):
            raise ServiceError(412, "IfMatchFailed", f"If-Match {if_match} does not match")
        self.store.delete_object(ns, bucket, name)
        return Response(204)

    # -- listing ---------------------------------------------------------------------------

    def list_objects(
        self, ns: str, bucket: str, query: dict[str, str], *, within: str = ""
    ) -> Response:
        """ListObjects: prefix, start, end, startAfter, limit, delimiter ('/'), fields."""
        self._check_ns(ns)
        prefix = query.get("prefix", "")
        if not prefix.startswith(within) and not within.startswith(prefix):
            return json_response(200, {"objects": [], "prefixes": []})
        prefix = max(prefix, within, key=len)
        limit = parse_int(query, "limit", MAX_LIST, 1, MAX_LIST)
        delimiter = query.get("delimiter")
        if delimiter not in (None, "", "/"):
            raise ServiceError(400, "InvalidParameter", "the only supported delimiter is '/'")
        fields = [f for f in query.get("fields", "name").split(",") if f]
        unknown = set(fields) - set(LIST_FIELDS)
        if unknown:
            raise ServiceError(400, "InvalidParameter", f"unknown fields {sorted(unknown)}")
        end = query.get("end")
        objects: list[dict[str, Any]] = []
        prefixes: list[str] = []
        next_start: str | None = None
        listing = self.store.list_objects(
            ns, bucket, prefix=prefix, start=query.get("start", ""), after=query.get("startAfter")
        )
        for obj in listing:
            if end is not None and obj.name >= end:
                break
            rolled = self._rolled_up(obj.name, prefix, delimiter)
            if rolled is not None and prefixes and prefixes[-1] == rolled:
                continue
            if len(objects) + len(prefixes) == limit:
                next_start = obj.name
                break
            if rolled is not None:
                prefixes.append(rolled)
            else:
                objects.append(self._summary(obj, fields))
        body: dict[str, Any] = {"objects": objects, "prefixes": prefixes}
        if next_start is not None:
            body["nextStartWith"] = next_start
        return json_response(200, body)

    @staticmethod
    def _rolled_up(name: str, prefix: str, delimiter: str | None) -> str | None:
        if not delimiter:
            return None
        cut = name.find(delimiter, len(prefix))
        return None if cut < 0 else name[: cut + 1]

    @staticmethod
    def _summary(obj: ObjectInfo, fields: list[str]) -> dict[str, Any]:
        values: dict[str, Any] = {
            "name": obj.name,
            "size": obj.size,
            "etag": obj.etag,
            "md5": obj.md5,
            "timeCreated": _iso(obj.created),
            "timeModified": _iso(obj.modified),
            "storageTier": "Standard",
        }
        return {f: values[f] for f in ["name", *fields] if f in values}

    # -- pre-authenticated requests --------------------------------------------------------

    def par(self, token: str, ns: str, bucket: str, name: str | None, req: Request) -> Response:
        """GET/HEAD through a PAR: no signature; the token scopes bucket, prefix and listing."""
        par = self.pars.get(token)
        if par is None or (par.namespace, par.bucket) != (ns, bucket):
            raise ServiceError(404, "NotAuthorizedOrNotFound", "PAR not found or expired")
        if req.method not in ("GET", "HEAD"):
            raise ServiceError(405, "MethodNotAllowed", f"{req.method} is not allowed on a PAR")
        if name:
            if not name.startswith(par.prefix):
                raise ServiceError(404, "NotAuthorizedOrNotFound", "object not covered by PAR")
            return self.get_object(ns, bucket, name, req)
        if not par.allow_list:
            raise ServiceError(404, "NotAuthorizedOrNotFound", "this PAR does not allow listing")
        return self.list_objects(ns, bucket, req.query, within=par.prefix)

"""The stand-in: routing, signature checks, fault hooks, outages and its lifecycle."""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import unquote

from . import admin
from .faults import Faults, Stats
from .httpd import Server
from .objectstorage import ObjectStorage, Par
from .signing import DEFAULT_MAX_SKEW, KeyRing, SignatureError, SignedRequest
from .store import Store, StoredMessage
from .streaming import Streaming
from .wire import Request, Response, ServiceError, error_response

log = logging.getLogger("ocistandin")

_Call = Callable[[], Response]
_FAULT_CODES = {
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
_STREAM = re.compile(r"^/20180418/streams/([^/]+)/(messages|cursors)$")
_OBJECT = re.compile(r"^/n/([^/]+)/b/([^/]+)/o(?:/(.*))?$")
_PAR = re.compile(r"^/p/([^/]+)/n/([^/]+)/b/([^/]+)/o(?:/(.*))?$")
_LOGGED_HEADERS = ("range", "if-match", "if-none-match")
_LOG_MAX = 10_000


@dataclass(frozen=True)
class LoggedRequest:
    """One answered API request, for tests that check what a client asked and got."""

    operation: str
    method: str
    target: str  # path?query as sent (a PAR token included)
    headers: dict[str, str]  # only Range, If-Match, If-None-Match, when sent
    status: int
    sent: int  # bytes of the answer's body (0 for HEAD, 304)


class StandIn:
    """A local OCI Streaming + Object Storage that the real `oci` SDK talks to.

    `with StandIn(tmp_path, public_keys={creds.key_id: creds.public_key_pem}) as oci_:` then
    `oci.streaming.StreamClient(creds.config, service_endpoint=oci_.endpoint)`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_port: int | None = None,
        public_keys: Mapping[str, str | bytes] | None = None,
        partitions: int = 1,
        streams: Iterable[str] = (),
        auto_create_streams: bool = True,
        namespace: str = "standin",
        pars: Iterable[Par | str] = (),
        max_clock_skew: float = DEFAULT_MAX_SKEW,
    ) -> None:
        self.host, self.port, self.admin_port = host, port, admin_port
        self.keys = KeyRing(max_clock_skew)
        for key_id, pem in (public_keys or {}).items():
            self.keys.add(key_id, pem)
        self.faults = Faults()
        self.stats = Stats()
        self.store = Store(data_dir)
        self.streaming = Streaming(
            self.store,
            self.faults,
            self.stats,
            partitions=partitions,
            auto_create=auto_create_streams,
        )
        for stream in streams:
            self.streaming.create_stream(stream)
        self.objects = ObjectStorage(self.store, namespace)
        for par in pars:
            self.objects.add_par(Par.parse(par) if isinstance(par, str) else par)
        self._lock = threading.Lock()
        self._api: Server | None = None
        self._admin: Server | None = None
        self._recover_timer: threading.Timer | None = None
        self._stopped = False
        self._log: deque[LoggedRequest] = deque(maxlen=_LOG_MAX)
        self._log_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The service_endpoint for both StreamClient and ObjectStorageClient."""
        return f"http://{self.host}:{self.port}"

    @property
    def admin_endpoint(self) -> str:
        """Where `/_standin/...` answers even during an outage (if an admin port was asked for)."""
        return f"http://{self.host}:{self.admin_port or self.port}"

    def start(self) -> Self:
        self._api = self._listen(self.port, admin_only=False)
        self.port = self._api.server_address[1]
        if self.admin_port is not None:
            self._admin = self._listen(self.admin_port, admin_only=True)
            self.admin_port = self._admin.server_address[1]
        log.info("ocistandin listening on %s", self.endpoint)
        return self

    def _listen(self, port: int, *, admin_only: bool) -> Server:
        for attempt in range(50):
            try:
                srv = Server((self.host, port), self, admin_only=admin_only)
                break
            except OSError:
                if port == 0 or attempt == 49:
                    raise
                time.sleep(0.05)  # the old socket of this port is still closing
        name = "ocistandin.admin" if admin_only else "ocistandin.api"
        threading.Thread(target=srv.serve_forever, args=(0.05,), name=name, daemon=True).start()
        return srv

    def stop(self) -> None:
        """Stop serving and close the store; safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self._recover_timer is not None:
                self._recover_timer.cancel()
            servers = [s for s in (self._api, self._admin) if s is not None]
            self._api = self._admin = None
        for srv in servers:
            srv.shutdown()
            srv.drop_connections()
            srv.server_close()
        self.store.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- outages ---------------------------------------------------------------------------

    def outage(self, seconds: float | None = None, *, keep: object = None) -> None:
        """Stop listening and cut open connections (clients get 'connection refused');
        come back after `seconds`, or on recover()."""
        with self._lock:
            srv, self._api = self._api, None
            if self._recover_timer is not None:
                self._recover_timer.cancel()
                self._recover_timer = None
            if seconds is not None and not self._stopped:
                self._recover_timer = threading.Timer(seconds, self.recover)
                self._recover_timer.daemon = True
                self._recover_timer.start()
        if srv is not None:
            self.stats.add("outages")
            log.info("ocistandin outage begins (%s)", f"{seconds} s" if seconds else "open-ended")
            srv.shutdown()
            srv.server_close()
            srv.drop_connections(keep=keep)

    @property
    def down(self) -> bool:
        with self._lock:
            return self._api is None

    def recover(self) -> None:
        """Listen again on the same port (no-op if already up or stopped)."""
        with self._lock:
            if self._api is not None or self._stopped:
                return
            self._recover_timer = None
            try:
                self._api = self._listen(self.port, admin_only=False)
            except OSError:
                log.exception("ocistandin could not listen on port %s again", self.port)
                raise
        log.info("ocistandin recovered on %s", self.endpoint)

    # -- configuration and inspection ------------------------------------------------------

    def add_key(self, key_id: str, pem: str | bytes) -> None:
        """Trust another API key."""
        self.keys.add(key_id, pem)

    def add_par(self, par: Par | str) -> None:
        """Accept a pre-authenticated request token (a Par or `TOKEN:ns/bucket[/prefix]`)."""
        self.objects.add_par(Par.parse(par) if isinstance(par, str) else par)

    def create_stream(self, stream_id: str, partitions: int | None = None) -> int:
        """Create a stream with its partition count fixed from now on; return the count."""
        return self.streaming.create_stream(stream_id, partitions)

    def messages(self, stream_id: str) -> list[StoredMessage]:
        """Every stored message of a stream, partition by partition, in offset order."""
        n = self.store.stream_partitions(stream_id) or 0
        return [m for p in range(n) for m in self.store.read(stream_id, p, 0, 1 << 62)]

    def request_log(self, *operations: str) -> list[LoggedRequest]:
        """The API requests answered so far (the last 10,000), oldest first; only these
        operations if any are named."""
        with self._log_lock:
            log_ = list(self._log)
        return [r for r in log_ if not operations or r.operation in operations]

    def clear_request_log(self) -> None:
        with self._log_lock:
            self._log.clear()

    # -- request handling ------------------------------------------------------------------

    def handle(self, req: Request, *, admin_only: bool = False) -> Response:
        """Answer one request (the HTTP handler's only call)."""
        if req.raw_path.startswith("/_standin/"):
            return admin.handle(self, req)
        if admin_only:
            return error_response(ServiceError(404, "NotFound", "this is the admin port"))
        operation = "Unknown"
        try:
            operation, group, call, sign_body = self._route(req)
            if self.faults.latency:
                time.sleep(self.faults.latency)
            status = self.faults.injected_failure(group)
            if status is not None:
                self.stats.add("injected_failures")
                code = _FAULT_CODES.get(status, "InternalServerError")
                raise ServiceError(status, code, f"injected fault ({status} {code})")
            if group != "par":
                self._authenticate(req, sign_body)
            resp = call()
        except ServiceError as exc:
            resp = error_response(exc)
        except Exception as exc:  # a bug here must show up as a 500, not a dropped connection
            log.exception("ocistandin failed on %s %s", req.method, req.target)
            resp = error_response(ServiceError(500, "InternalServerError", repr(exc)))
        resp.operation = operation
        self.stats.request(operation, resp.status, len(req.body))
        sent = 0 if req.method == "HEAD" or resp.status in (204, 304) else len(resp.body)
        headers = {k: req.headers[k] for k in _LOGGED_HEADERS if k in req.headers}
        entry = LoggedRequest(operation, req.method, req.target, headers, resp.status, sent)
        with self._log_lock:
            self._log.append(entry)
        return resp

    def _authenticate(self, req: Request, sign_body: bool) -> None:
        try:
            self.keys.verify(
                SignedRequest(req.method, req.target, req.headers, req.body), sign_body=sign_body
            )
        except SignatureError as exc:
            self.stats.add("auth_failures")
            raise ServiceError(401, "NotAuthenticated", str(exc)) from exc

    def _route(self, req: Request) -> tuple[str, str, _Call, bool]:
        """(operation, fault group, the call, whether the body must be signed)."""
        path, method = req.raw_path, req.method
        calls: dict[str, tuple[str, _Call]] = {}
        group = "streaming"
        if m := _STREAM.match(path):
            stream = unquote(m[1])
            s = self.streaming
            if m[2] == "messages":
                calls = {
                    "POST": ("PutMessages", lambda: s.put_messages(stream, req)),
                    "GET": ("GetMessages", lambda: s.get_messages(stream, req)),
                }
            else:
                calls = {"POST": ("CreateCursor", lambda: s.create_cursor(stream, req))}
        elif path in ("/n", "/n/"):
            group = "objectstorage"
            calls = {"GET": ("GetNamespace", self.objects.get_namespace)}
        elif m := _OBJECT.match(path):
            group = "objectstorage"
            calls = self._object_calls(unquote(m[1]), unquote(m[2]), unquote(m[3] or ""), req)
        elif m := _PAR.match(path):
            group = "par"
            token, ns, bucket = unquote(m[1]), unquote(m[2]), unquote(m[3])
            name = unquote(m[4] or "")
            op = "ParGetObject" if name else "ParListObjects"
            par: _Call = functools.partial(self.objects.par, token, ns, bucket, name, req)
            calls = {"GET": (op, par), "HEAD": (op, par)}
        else:
            raise ServiceError(404, "NotFound", f"no operation at {path}")
        if method not in calls:
            raise ServiceError(405, "MethodNotAllowed", f"{method} is not supported on {path}")
        operation, call = calls[method]
        return operation, group, call, operation == "CreateCursor"

    def _object_calls(
        self, ns: str, bucket: str, name: str, req: Request
    ) -> dict[str, tuple[str, _Call]]:
        o = self.objects
        if not name:
            return {"GET": ("ListObjects", lambda: o.list_objects(ns, bucket, req.query))}
        return {
            "GET": ("GetObject", lambda: o.get_object(ns, bucket, name, req)),
            "HEAD": ("HeadObject", lambda: o.get_object(ns, bucket, name, req)),
            "PUT": ("PutObject", lambda: o.put_object(ns, bucket, name, req)),
            "DELETE": ("DeleteObject", lambda: o.delete_object(ns, bucket, name, req)),
        }

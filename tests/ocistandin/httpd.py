"""HTTP/1.1 plumbing: a threading server whose connections an outage can cut, and its handler."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from .wire import Request, Response, ServiceError, error_response, request_id

log = logging.getLogger("ocistandin")

MAX_BODY = 256 * 1024 * 1024


class App(Protocol):
    def handle(self, req: Request, *, admin_only: bool = False) -> Response: ...


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], app: App, *, admin_only: bool) -> None:
        self.app, self.admin_only = app, admin_only
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away, or a connection cut by an outage: not worth a traceback.
        log.debug("connection from %s ended: %r", client_address, sys.exc_info()[1])

    def drop_connections(self, keep: object = None) -> None:
        """Cut every open (keep-alive) connection, as a dead host would."""
        with self.conn_lock:
            conns = [c for c in self.connections if c is not keep]
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    server: Server

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.conn_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        try:
            return self._read_raw_body()
        except ValueError as exc:
            raise ServiceError(400, "CannotParseRequest", f"malformed body framing: {exc}") from exc

    def _read_raw_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            raise ServiceError(413, "RequestEntityTooLarge", f"body over {MAX_BODY} bytes")
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ServiceError as exc:
            self.close_connection = True
            self._write(error_response(exc), self.command)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = Request(self.command, self.path, headers, body, connection=self.connection)
        resp = self.server.app.handle(req, admin_only=self.server.admin_only)
        self._write(resp, self.command)

    def _write(self, resp: Response, method: str) -> None:
        self.send_response(resp.status)
        headers = {"opc-request-id": request_id(), **resp.headers}
        if resp.status not in (204, 304) and "content-length" not in headers:
            headers["content-length"] = str(len(resp.body))
        for name, value in headers.items():
            self.send_header(name, value)
        if headers.get("connection") == "close":
            self.close_connection = True
        self.end_headers()
        if method != "HEAD" and resp.status not in (204, 304):
            self.wfile.write(resp.body)

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

"""The request and answer types the handlers share, and OCI's error shape."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MIB = 1024 * 1024


@dataclass(frozen=True)
class Request:
    """An HTTP request as it arrived: the raw target (for signing) and its parsed parts."""

    method: str
    target: str  # path?query exactly as sent
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    connection: object = field(default=None, compare=False, repr=False)

    @property
    def raw_path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    def segments(self) -> list[str]:
        """Percent-decoded path segments (an encoded `/` stays inside its segment)."""
        return [unquote(s) for s in self.raw_path.split("/")[1:]]


@dataclass
class Response:
    """An answer; `operation` names it in the stats."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    operation: str = "Unknown"


class ServiceError(Exception):
    """An OCI error answer: HTTP status and `{"code","message"}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, {"content-type": "application/json", **(headers or {})})


def error_response(err: ServiceError) -> Response:
    return json_response(err.status, {"code": err.code, "message": err.message})


def request_id() -> str:
    return uuid.uuid4().hex.upper()


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServiceError(400, "CannotParseRequest", f"the body is not valid JSON: {exc}") from exc


def parse_int(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        msg = f"{name} must be an integer, got {raw!r}"
        raise ServiceError(400, "InvalidParameter", msg) from exc
    if not low <= value <= high:
        raise ServiceError(400, "InvalidParameter", f"{name} must be in [{low}, {high}]")
    return value

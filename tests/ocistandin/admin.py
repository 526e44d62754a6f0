"""The unsigned control API under `/_standin/`: faults, outages, counters, keys, inspection."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .objectstorage import Par
from .streaming import iso_ms
from .wire import Request, Response, ServiceError, error_response, json_response, parse_json

if TYPE_CHECKING:
    from .server import StandIn

_Route = Callable[["StandIn", Request], Response]


def handle(standin: StandIn, req: Request) -> Response:
    """Dispatch one `/_standin/...` request; errors answer `{"code","message"}` like the API."""
    parts = [p for p in req.raw_path.split("/")[2:] if p]
    try:
        if len(parts) == 3 and parts[0] == "streams" and parts[2] == "messages":
            if req.method != "GET":
                raise ServiceError(405, "MethodNotAllowed", "GET only")
            return _stream_messages(standin, parts[1])
        route = _ROUTES.get((req.method, "/".join(parts)))
        if route is None:
            raise ServiceError(404, "NotFound", f"no admin route {req.method} {req.raw_path}")
        resp = route(standin, req)
    except ServiceError as exc:
        resp = error_response(exc)
    except KeyError as exc:
        resp = error_response(ServiceError(400, "MissingParameter", f"{exc} is required"))
    except (ValueError, TypeError) as exc:
        resp = error_response(ServiceError(400, "InvalidParameter", str(exc)))
    resp.operation = "Admin"
    return resp


def _body(req: Request) -> dict[str, Any]:
    if not req.body:
        return {}
    doc = parse_json(req.body)
    if not isinstance(doc, dict):
        raise ServiceError(400, "InvalidParameter", "the body must be a JSON object")
    return doc


def _health(s: StandIn, req: Request) -> Response:
    return json_response(200, {"status": "down" if s.down else "up", "endpoint": s.endpoint})


def _stats(s: StandIn, req: Request) -> Response:
    snap = s.stats.snapshot()
    snap["streams"] = {
        stream: {"partitions": n, "ends": [s.store.end_offset(stream, p) for p in range(n)]}
        for stream, n in s.store.streams().items()
    }
    return json_response(200, snap)


def _reset_stats(s: StandIn, req: Request) -> Response:
    s.stats.reset()
    return json_response(200, s.stats.snapshot())


def _get_faults(s: StandIn, req: Request) -> Response:
    return json_response(200, s.faults.snapshot())


def _set_faults(s: StandIn, req: Request) -> Response:
    s.faults.update(**_body(req))
    return json_response(200, s.faults.snapshot())


def _clear_faults(s: StandIn, req: Request) -> Response:
    s.faults.clear()
    return json_response(200, s.faults.snapshot())


def _outage(s: StandIn, req: Request) -> Response:
    seconds = _body(req).get("seconds")
    if seconds is None and s.admin_port is None:
        raise ServiceError(
            400,
            "MissingParameter",
            "seconds is required: without an admin port nothing could end the outage",
        )
    if seconds is not None and float(seconds) <= 0:
        raise ServiceError(400, "InvalidParameter", "seconds must be > 0")
    # Keep this request's own connection so the answer still reaches the caller.
    s.outage(None if seconds is None else float(seconds), keep=req.connection)
    resp = json_response(200, {"status": "down", "seconds": seconds})
    resp.headers["connection"] = "close"
    return resp


def _recover(s: StandIn, req: Request) -> Response:
    s.recover()
    return json_response(200, {"status": "up"})


def _add_key(s: StandIn, req: Request) -> Response:
    doc = _body(req)
    s.add_key(str(doc["keyId"]), str(doc["pem"]))
    return json_response(200, {"keys": s.keys.key_ids()})


def _add_par(s: StandIn, req: Request) -> Response:
    par = Par.parse(str(_body(req)["spec"]))
    s.add_par(par)
    return json_response(200, {"token": par.token, "bucket": f"{par.namespace}/{par.bucket}"})


def _add_stream(s: StandIn, req: Request) -> Response:
    doc = _body(req)
    partitions = doc.get("partitions")
    n = s.create_stream(str(doc["id"]), None if partitions is None else int(partitions))
    return json_response(200, {"id": doc["id"], "partitions": n})


def _stream_messages(s: StandIn, stream: str) -> Response:
    if s.store.stream_partitions(stream) is None:
        raise ServiceError(404, "NotAuthorizedOrNotFound", f"Unknown stream {stream}.")
    return json_response(
        200,
        [
            {
                "partition": str(m.partition),
                "offset": m.offset,
                "key": None if m.key is None else base64.b64encode(m.key).decode(),
                "value": base64.b64encode(m.value).decode(),
                "timestamp": iso_ms(m.ts_ms),
            }
            for m in s.messages(stream)
        ],
    )


_ROUTES: dict[tuple[str, str], _Route] = {
    ("GET", "health"): _health,
    ("GET", "stats"): _stats,
    ("POST", "stats/reset"): _reset_stats,
    ("GET", "faults"): _get_faults,
    ("POST", "faults"): _set_faults,
    ("DELETE", "faults"): _clear_faults,
    ("POST", "outage"): _outage,
    ("POST", "recover"): _recover,
    ("POST", "keys"): _add_key,
    ("POST", "pars"): _add_par,
    ("POST", "streams"): _add_stream,
}

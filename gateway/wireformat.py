"""Wire format v1: one uplink message is one batch of records of one kind, column by column.

A MessagePack map in one zstd frame; docs/wire-format.md is the normative spec. Each column gets
the cheapest lossless codec the spec defines, judged by the byte entropy of its data (so a batch
always gives the same bytes, whatever the zstd version); decoders just follow the codec tags."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import msgpack
import numpy as np
import numpy.typing as npt
import zstandard

from .errors import GatewayError

__all__ = ["MAX_MESSAGE_BYTES", "MAX_RAW_BYTES", "MAX_RECORDS", "SCHEMAS", "VERSION", "Coded"]
__all__ += [
    "Column",
    "Message",
    "UnsupportedFormat",
    "WireFormatError",
    "decode",
    "encode",
    "encode_split",
]

VERSION = 1
MAX_MESSAGE_BYTES = 1_000_000  # compressed, the OCI Streaming message limit
MAX_RAW_BYTES = 16 << 20  # decompressed; decoders refuse more (a zstd bomb costs nothing else)
MAX_RECORDS = 1 << 20  # per message; bounds a decoder's memory (constant columns cost no bytes)
_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Coded:
    """A ``str`` column already dictionary-coded (row i is ``names[codes[i]]``), as the spool
    keeps machines: it encodes to the same bytes as the list of strings, without a Python
    step per row. Names no row uses are dropped; codes are renumbered by first appearance."""

    names: list[str]
    codes: npt.NDArray[np.integer[Any]]

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows: slice) -> Coded:
        return Coded(self.names, self.codes[rows])

    def tolist(self) -> list[str]:
        return [self.names[i] for i in self.codes.tolist()]


Column = npt.NDArray[Any] | list[Any] | Coded
U64 = npt.NDArray[np.uint64]

_COMMON = {"seq": "int", "machine": "str", "ts": "ts"}
_WINDOW = {**_COMMON, "ts_end": "ts", "ts_last": "ts", "count": "int"}  # an aggregate row
SCHEMAS: dict[str, dict[str, str]] = {
    "telemetry": _COMMON,  # plus one float or int column per reading field
    "telemetry_agg": _WINDOW,  # plus <field>.min, .mean, .max, .last floats
    "scores": {**_COMMON, "score": "float", "model": "str"},
    "scores_agg": {**_WINDOW, "model": "str", "nonfinite": "int"}
    | {f"score.{stat}": "float" for stat in ("min", "mean", "max", "last")},
    "alerts": {**_COMMON, "state": "str", "score": "float", "threshold": "float"}
    | {"model": "str", "reading": "any"},
}
# codec -> (logical type, items in its column array)
_CODECS = {"f64": ("float", 2), "f32": ("float", 2), "dec": ("float", 3), "int": ("int", 2)}
_CODECS |= {"ts": ("ts", 3), "dict": ("str", 3), "any": ("any", 2)}


class WireFormatError(GatewayError, ValueError):
    """Not a valid v1 message: bytes that are truncated, corrupt or inconsistent (set them aside),
    or records that the format cannot carry."""


class UnsupportedFormat(WireFormatError):
    """Another ``v`` or an unknown codec: keep the message for a newer decoder, do not drop it."""


@dataclass(frozen=True, slots=True)
class Message:
    """One uplink message: the records of spool records ``seq_first..seq_last`` of one kind.

    ``columns`` maps a name to one value per record. Decoded, ``int`` columns are int64 arrays,
    ``float`` and ``ts`` (epoch seconds) columns float64 arrays, ``str`` and ``any`` columns lists.
    ``part``/``parts``/``offset`` describe a slice of one spool record too big for one message."""

    site: str
    gateway: str
    kind: str
    seq_first: int
    seq_last: int
    columns: dict[str, Column]
    part: int = 0
    parts: int = 1
    offset: int = 0

    @property
    def count(self) -> int:
        return len(self.columns["seq"])

    def index(self) -> npt.NDArray[np.int64]:
        """Each record's position in its spool record: with gateway and seq, its identity."""
        seq = np.asarray(self.columns["seq"], dtype=np.int64)
        at = np.arange(len(seq), dtype=np.int64)
        starts = np.maximum.accumulate(np.where(np.diff(seq, prepend=seq[:1] - 1) != 0, at, 0))
        return at - starts + self.offset

    def rows(self) -> list[dict[str, Any]]:
        """The records as dicts of plain Python values, in order."""
        cols = [v if isinstance(v, list) else v.tolist() for v in self.columns.values()]
        return [dict(zip(self.columns, vals, strict=True)) for vals in zip(*cols, strict=True)]


# -- encoding -------------------------------------------------------------------------------
def encode(message: Message, *, level: int = 3) -> bytes:
    """The message as wire bytes (one zstd frame). Raises ValueError for records it can't carry."""
    data, raw_size = _encode(message, level)
    _need(raw_size <= MAX_RAW_BYTES, f"body of {raw_size} B is over {MAX_RAW_BYTES}: encode_split")
    return data


def encode_split(
    message: Message, *, max_bytes: int = MAX_MESSAGE_BYTES, level: int = 3
) -> list[bytes]:
    """Wire messages of at most ``max_bytes`` each, splitting between spool records.

    The pieces' seq ranges partition the message's. A spool record that alone is too big becomes
    ``parts`` messages; a single record that alone is too big raises ValueError."""
    if message.parts != 1:
        raise ValueError("encode_split takes whole spool records, not a part")
    out: list[bytes] = []
    for piece, data in _fit(message, max_bytes, level):
        if piece.parts == 1:
            out.append(data)
            continue
        slack = 64  # room for the part numbers, known only once the parts are
        while True:
            widest = replace(piece, part=(1 << 31) - 1, parts=1 << 31)
            chunks = [c for c, _ in _fit(widest, max_bytes - slack, level)]
            numbered = [replace(c, part=i, parts=len(chunks)) for i, c in enumerate(chunks)]
            done = [_encode(c, level) for c in numbered]
            if all(len(d) <= max_bytes and raw <= MAX_RAW_BYTES for d, raw in done):
                break
            slack *= 4  # pragma: no cover - compressed sizes barely move with the header
        out.extend(d for d, _ in done)
    return out


def _fit(m: Message, max_bytes: int, level: int) -> list[tuple[Message, bytes]]:
    data, raw_size = _encode(m, level) if m.count <= MAX_RECORDS else (b"", MAX_RAW_BYTES + 1)
    if len(data) <= max_bytes and raw_size <= MAX_RAW_BYTES:
        return [(m, data)]
    n, seq = m.count, np.asarray(m.columns["seq"], dtype=np.int64)
    if n <= 1:
        raise ValueError(f"one {m.kind} record of seq {m.seq_first} alone exceeds {max_bytes} B")
    cuts = np.flatnonzero(seq[1:] != seq[:-1]) + 1
    if m.parts == 1 and len(cuts) == 0:
        return [(replace(m, parts=2), b"")]  # one spool record: encode_split makes it parts
    c = int(cuts[np.abs(cuts - n / 2).argmin()]) if m.parts == 1 else n // 2
    lo, hi = _slice(m, 0, c), _slice(m, c, n)
    hi = replace(hi, offset=m.offset + c) if m.parts > 1 else replace(hi, seq_first=int(seq[c]))
    lo = replace(lo, seq_last=int(seq[c]) - 1) if m.parts == 1 else lo
    return _fit(lo, max_bytes, level) + _fit(hi, max_bytes, level)


def _slice(m: Message, lo: int, hi: int) -> Message:
    return replace(m, columns={k: v[lo:hi] for k, v in m.columns.items()})


def _encode(m: Message, level: int) -> tuple[bytes, int]:
    schema = SCHEMAS.get(m.kind, {})
    _need(m.kind in SCHEMAS, f"unknown kind {m.kind!r}, not one of {sorted(SCHEMAS)}")
    _need(all(k in m.columns for k in schema), f"{m.kind} records need columns {list(schema)}")
    _need(len({len(v) for v in m.columns.values()}) == 1, "columns differ in length")
    _need(m.count <= MAX_RECORDS, f"{m.count} records, over {MAX_RECORDS}: use encode_split")
    _check_seq(m, np.asarray(m.columns["seq"], dtype=np.int64))
    groups = _dictionary(m.columns["machine"])[1]
    cols: dict[str, list[Any]] = {}
    for name, values in m.columns.items():
        logical = schema.get(name) or _infer(values)
        numeric = (
            name in schema or not m.kind.startswith("telemetry") or logical in ("int", "float")
        )
        _need(numeric, f"{m.kind} field {name!r} must be numeric, got {logical}")
        cols[name] = _encode_column(values, logical, groups)
    body: dict[str, Any] = {"v": VERSION, "site": m.site, "gateway": m.gateway, "kind": m.kind}
    body |= {"seq_first": m.seq_first, "seq_last": m.seq_last, "count": m.count}
    body |= {"part": m.part, "parts": m.parts, "offset": m.offset} if m.parts > 1 else {}
    raw = msgpack.packb(body | {"cols": cols}, use_bin_type=True)
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return cctx.compress(raw), len(raw)


def _infer(values: Column) -> str:
    if isinstance(values, Coded):
        return "str"
    kinds = {values.dtype.type} if isinstance(values, np.ndarray) else {type(v) for v in values}
    if all(issubclass(k, int | float | np.number | np.bool_) for k in kinds):  # or empty: float
        integral = kinds and all(issubclass(k, int | np.integer | np.bool_) for k in kinds)
        return "int" if integral else "float"
    return "str" if all(issubclass(k, str) for k in kinds) else "any"


def _encode_column(values: Column, logical: str, groups: U64 | None) -> list[Any]:
    if logical == "str":
        uniques, codes = _dictionary(values)
        return ["dict", uniques, _int_block(codes, None)[0]]
    if logical == "any":
        return ["any", values.tolist() if isinstance(values, Coded) else list(values)]
    if logical == "int":
        try:
            x = np.asarray(values, dtype=np.int64)
        except OverflowError as exc:
            raise ValueError(f"int column outside int64: {exc}") from exc
        return ["int", _int_block(x.view(np.uint64), groups)[0]]
    v = np.asarray(values, dtype=np.float64)
    if logical == "ts":
        if not np.isfinite(v).all() or (np.abs(v) >= 9.2e12).any():
            raise ValueError("timestamps must be finite epoch seconds under 9.2e12")
        us = np.rint(v * 1e6).astype(np.int64)
        k = next(k for k in range(7) if not (us % 10 ** (6 - k)).any())  # coarsest exact unit
        return ["ts", k, _int_block((us // 10 ** (6 - k)).view(np.uint64), groups)[0]]
    _need(logical == "float", f"unknown logical type {logical!r}")
    cands = []  # on a tie the first wins: the smaller codec
    top = float(np.abs(v).max(initial=0.0)) if np.isfinite(v).all() else math.inf
    for k in range(10):  # decimals
        if top * 10.0**k > 2.0**53:
            break
        ints = np.rint(v * 10.0**k).astype(np.int64)
        if np.array_equal((ints / 10.0**k).view(np.int64), v.view(np.int64)):
            block, cost = _int_block(ints.view(np.uint64), groups)
            cands.append((["dec", k, block], cost))
            break
    with np.errstate(over="ignore"):  # a float32 overflow just means f32 is not exact
        f32 = v.astype("<f4")
    if np.array_equal(f32.astype(np.float64), v, equal_nan=True):
        cands.append(_ieee("f32", f32))
    cands.append(_ieee("f64", v.astype("<f8")))
    return min(cands, key=lambda c: c[1])[0]


def _ieee(codec: str, v: npt.NDArray[Any]) -> tuple[list[Any], float]:
    planes = v.view(np.uint8).reshape(len(v), v.dtype.itemsize).T
    return [codec, planes.tobytes()], _cost(planes)


def _dictionary(values: Column) -> tuple[list[str], U64]:
    if isinstance(values, Coded):
        used, first = np.unique(values.codes, return_index=True)
        order = used[np.argsort(first)]  # codes in order of first appearance
        renumber = np.zeros(len(values.names), dtype=np.uint64)
        renumber[order] = np.arange(len(order), dtype=np.uint64)
        names = [values.names[i] for i in order.tolist()]
        _need(
            all(isinstance(s, str) for s in names), "a str column holds a value that is not a str"
        )
        return names, renumber[values.codes]
    index: dict[str, int] = {}
    codes = [index.setdefault(s, len(index)) for s in values]
    _need(all(isinstance(s, str) for s in index), "a str column holds a value that is not a str")
    return [str(s) for s in index], np.asarray(codes, dtype=np.uint64)


def _int_block(x: U64, groups: U64 | None) -> tuple[list[Any], float]:
    """The cheapest block: frame of reference, delta, delta or offset within ``machine`` groups.

    ``groups`` are the ``machine`` codes, numbered in order of first appearance."""
    cands = [_block([0], x)]
    if len(x) > 1:
        first, deltas = _deltas(x, np.zeros(len(x), dtype=np.uint64))
        cands.append(_block([1, None, x[first].view(np.int64).tolist()], deltas))
    ng = 1 + int(groups.max(initial=0)) if groups is not None else 0
    if groups is not None and 1 < ng < len(x):
        first, deltas = _deltas(x, groups)
        cands.append(_block([1, "machine", x[first].view(np.int64).tolist()], deltas))
        refs = np.full(ng, np.iinfo(np.int64).max)
        np.minimum.at(refs, groups.astype(np.intp), x.view(np.int64))
        u = x - refs.view(np.uint64)[groups]
        cands.append(_block([2, "machine", refs.tolist()], u, shift=False))
    return min(cands, key=lambda c: c[1])


def _block(head: list[Any], u: U64, *, shift: bool = True) -> tuple[list[Any], float]:
    # head [+ base] + width + data: u less its signed minimum (base), as byte planes
    extra = 8.0 * len(msgpack.packb(head[2:]))
    if shift:
        base = int(u.view(np.int64).min()) if len(u) else 0
        u, head = u - np.uint64(base & _MASK), [*head, base]
    width = (int(u.max()).bit_length() + 7) // 8 if len(u) else 0
    planes = u.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :width].T
    return [*head, width, planes.tobytes()], _cost(planes) + extra


def _deltas(x: U64, g: U64) -> tuple[npt.NDArray[np.bool_], U64]:
    # (first of its group?, for the others: value minus the group's previous value)
    order = np.argsort(g, kind="stable")
    xs, gs = x[order], g[order]
    starts = np.concatenate(([True], gs[1:] != gs[:-1]))
    first = np.empty(len(x), dtype=np.bool_)
    first[order] = starts
    diffs = np.empty(len(x), dtype=np.uint64)
    diffs[order] = xs - np.concatenate((np.zeros(1, np.uint64), xs[:-1]))
    return first, diffs[~first]


def _cost(planes: npt.NDArray[np.uint8]) -> float:
    """Bits an order-0 entropy coder needs for the planes: what zstd's literals come close to."""
    w, n = planes.shape
    if not w:
        return 0.0
    # A histogram per plane (byte values within a plane are one alphabet), plane after plane.
    counts = np.concatenate([np.bincount(plane, minlength=256) for plane in planes])
    c = counts[counts > 0].astype(np.float64)
    return float(w * n * math.log2(max(n, 1)) - (c * np.log2(c)).sum())


# -- decoding -------------------------------------------------------------------------------
def decode(data: bytes) -> Message:
    """The message in ``data``. Raises WireFormatError (UnsupportedFormat for a newer one)."""
    try:
        size = zstandard.frame_content_size(data)
        _need(size <= MAX_RAW_BYTES, f"declares {size} bytes decompressed, over {MAX_RAW_BYTES}")
        raw = zstandard.ZstdDecompressor().decompress(
            data, max_output_size=MAX_RAW_BYTES, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise WireFormatError(f"not one valid zstd frame: {exc}") from exc
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=False, ext_hook=_no_ext)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireFormatError(f"not one MessagePack map: {exc}") from exc
    _need(type(body) is dict and type(v := body.get("v")) is int, "not a map with an integer v")
    if v != VERSION:
        raise UnsupportedFormat(f"wire format v{v}; this decoder reads v{VERSION} only")
    f = {k: body.get(k) for k in ("site", "gateway", "kind", "cols")}
    _need(all(type(f[k]) is str for k in ("site", "gateway", "kind")), "bad site/gateway/kind")
    defaults = {"seq_first": None, "seq_last": None, "count": None, "part": 0, "parts": 1}
    ints = {k: body.get(k, d) for k, d in (defaults | {"offset": 0}).items()}
    _need(all(type(i) is int and i >= 0 for i in ints.values()), f"bad header numbers {ints}")
    cols, n = f["cols"], ints.pop("count")
    _need(n <= MAX_RECORDS, f"count {n} is over {MAX_RECORDS}")
    _need(type(cols) is dict and "seq" in cols, "'cols' must be a map with a 'seq' column")
    specs = {name: _spec(name, spec) for name, spec in cols.items()}
    groups = {k: _read_block(s[2], n, {}) for k, s in specs.items() if s[0] == "dict"}
    columns = {name: _decode_column(name, spec, n, groups) for name, spec in specs.items()}
    schema = SCHEMAS.get(f["kind"], {"seq": "int"})
    for name, logical in schema.items():
        got = _CODECS[specs[name][0]][0] if name in specs else "missing"
        _need(got == logical, f"{f['kind']} column {name!r} must be {logical}, got {got}")
    m = Message(f["site"], f["gateway"], f["kind"], columns=columns, **ints)
    _check_seq(m, np.asarray(columns["seq"]))
    return m


def _no_ext(code: int, data: bytes) -> NoReturn:
    raise WireFormatError(f"MessagePack extension type {code} is not allowed")


def _need(ok: bool, why: str) -> None:
    if not ok:
        raise WireFormatError(why)


def _check_seq(m: Message, seq: npt.NDArray[np.int64]) -> None:
    _need(0 <= m.seq_first <= m.seq_last, f"bad seq range {m.seq_first}..{m.seq_last}")
    ordered = not len(seq) or bool(seq[0] >= m.seq_first and seq[-1] <= m.seq_last)
    _need(ordered and not (np.diff(seq) < 0).any(), "seq must be non-decreasing within the range")
    one = len(seq) == 0 or seq[0] == seq[-1]
    _need(m.parts == 1 or (0 <= m.part < m.parts and one), f"bad part {m.part} of {m.parts}")


def _spec(name: str, spec: Any) -> list[Any]:
    _need(type(name) is str and type(spec) is list and len(spec) > 0, f"bad column {name!r}")
    if type(spec[0]) is not str or spec[0] not in _CODECS:
        raise UnsupportedFormat(f"column {name!r}: unknown codec {spec[0]!r}")
    _need(len(spec) == _CODECS[spec[0]][1], f"column {name!r}: wrong item count for {spec[0]}")
    return list(spec)


def _decode_column(name: str, spec: list[Any], n: int, groups: dict[str, U64]) -> Column:
    codec, *args = spec
    if codec in ("f64", "f32"):
        width = 8 if codec == "f64" else 4
        return _planes_of(args[0], width, n, name).T.copy().view(f"<f{width}").astype(float).ravel()
    if codec == "any":
        _need(type(args[0]) is list and len(args[0]) == n, f"column {name!r}: not {n} values")
        return list[Any](args[0])
    if codec == "dict":
        _need(type(args[0]) is list and all(type(s) is str for s in args[0]), f"bad {name!r}")
        _need(bool((groups[name] < len(args[0])).all()), f"column {name!r}: code out of range")
        return [args[0][i] for i in groups[name].tolist()]
    if codec == "int":
        return _read_block(args[0], n, groups).view(np.int64)
    top = 22 if codec == "dec" else 6
    _need(type(args[0]) is int and 0 <= args[0] <= top, f"column {name!r}: bad exponent")
    x = _read_block(args[1], n, groups).view(np.int64)
    if codec == "ts":  # in units of 10**-k seconds: to microseconds, then seconds
        return (x * int(10 ** (6 - args[0]))) / 1e6
    return x.astype(np.float64) / 10.0 ** int(args[0])


def _read_block(b: Any, n: int, groups: dict[str, U64]) -> U64:
    _need(type(b) is list and len(b) > 0, f"bad integer block {b!r:.60}")
    if type(b[0]) is not int or b[0] not in (0, 1, 2):
        raise UnsupportedFormat(f"unknown integer block mode {b[0]!r:.20}")
    _need(len(b) == (4, 6, 5)[b[0]] and type(b[(1, 3, 0)[b[0]]]) is int, f"bad block {b!r:.60}")
    if b[0] == 0:
        return _unplanes(b[3], b[2], n) + np.uint64(b[1] & _MASK)
    group, refs = b[1], b[2]
    _need(group is None or (type(group) is str and group in groups), f"bad group {group!r:.40}")
    g = np.zeros(n, dtype=np.uint64) if group is None else groups[group]
    _, at, inverse = np.unique(g, return_index=True, return_inverse=True)
    _need(type(refs) is list and len(refs) == len(at), "integer block: one ref per group needed")
    _need(all(type(i) is int for i in refs), "bad refs in integer block")
    ref = np.array([i & _MASK for i in refs], dtype=np.uint64)
    if b[0] == 2:  # offset from the group's reference
        return _unplanes(b[4], b[3], n) + ref[np.argsort(np.argsort(at))][inverse]
    starts = np.isin(np.arange(n), at)
    vals = np.empty(n, dtype=np.uint64)
    vals[starts] = ref
    vals[~starts] = _unplanes(b[5], b[4], n - len(refs)) + np.uint64(b[3] & _MASK)
    order = np.argsort(g, kind="stable")
    sums = np.cumsum(vals[order], dtype=np.uint64)
    begin = np.maximum.accumulate(np.where(starts[order], np.arange(n), 0))
    out = np.empty(n, dtype=np.uint64)
    out[order] = sums - np.where(begin > 0, sums[begin - 1], np.uint64(0))
    return out


def _unplanes(data: Any, width: Any, n: int) -> U64:
    _need(type(width) is int and 0 <= width <= 8, f"bad width {width!r}")
    out = np.zeros((n, 8), dtype=np.uint8)
    out[:, :width] = _planes_of(data, width, n, "block").T
    return out.view("<u8").ravel().astype(np.uint64)


def _planes_of(data: Any, width: int, n: int, name: str) -> npt.NDArray[np.uint8]:
    _need(type(data) is bytes and len(data) == width * n, f"{name}: not {n} values of {width} B")
    return np.frombuffer(data, dtype=np.uint8).reshape(width, n)

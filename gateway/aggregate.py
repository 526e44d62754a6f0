"""Aggregate: what an ``aggregate`` lane sends instead of every reading.

Per machine and tumbling window of reading time (and per model, for scores) one row: count, and
per field min, mean, max and last. Which spool records may be summarised: per partition key the
oldest run whose windows have all closed, so a row holds its whole window and a retry rebuilds
the same rows. docs/wire-format.md, section 6.2, is the normative description; ``combine`` is
the rule a consumer applies to several rows of one window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .spool import Record
from .wireformat import Column, Message

__all__ = ["KINDS", "Columns", "closed", "combine", "message", "ready_at", "summarise"]
__all__ += ["window_of"]

KINDS = {"telemetry": "telemetry_agg", "scores": "scores_agg"}
STATS = ("min", "mean", "max", "last")
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Columns:
    """Readings as arrays in arrival order: one spool record's telemetry or scores."""

    names: list[str]  # machine names; ``machine`` indexes them
    machine: npt.NDArray[np.integer[Any]]
    ts: Floats
    fields: tuple[str, ...]  # the model's features, or ("score",)
    values: Floats  # (readings, fields)
    model: str = ""  # scores: name@version of the model that gave them


def window_of(ts: Floats, window: float) -> npt.NDArray[np.int64]:
    """Each reading's window number ``floor(t / window)`` (binary64), ``t`` being its time as
    the wire format carries it (to the microsecond): [number * window, (number + 1) * window)."""
    return np.floor(_on_the_wire(ts) / window).astype(np.int64)


def _on_the_wire(ts: Floats) -> Floats:
    return np.asarray(np.rint(np.asarray(ts, dtype=np.float64) * 1e6) / 1e6)


def ready_at(ts: Floats, created: float, window: float, grace: float) -> float:
    """When a spool record may be summarised: once the window of its latest reading has ended,
    or a window after it was stored if that is sooner (a clock far ahead holds nothing back
    for long), plus ``grace`` for late readings."""
    if not len(ts):
        return created
    end = (float(window_of(ts.max(), window)) + 1) * window
    return min(end, created + window) + grace


def closed(
    records: Sequence[Record],
    decode: Callable[[Record], Columns],
    window: float,
    grace: float,
    now: float,
) -> tuple[dict[str, list[tuple[Record, Columns]]], float]:
    """Per partition key, the longest run of its oldest records (in seq order) that are ready
    at ``now`` and share one set of fields; and when the first record held back becomes ready
    (infinity if none is).

    A run, not every ready record: a message then accounts for every record of its key in its
    seq range, and a row's first record stays the same on a retry (docs/wire-format.md, 6.2)."""
    runs: dict[str, list[tuple[Record, Columns]]] = {}
    held: set[str] = set()
    wake = math.inf
    for r in records:
        if r.key in held:
            continue
        c = decode(r)
        at = ready_at(c.ts, r.created, window, grace)
        run = runs.setdefault(r.key, [])
        if at > now or (run and c.fields != run[0][1].fields):
            held.add(r.key)
            wake = min(wake, at)
            continue
        run.append((r, c))
    return {k: run for k, run in runs.items() if run}, wake


def summarise(lane: str, parts: Sequence[tuple[int, Columns]], window: float) -> dict[str, Column]:
    """The rows of ``parts`` (spool records ``(seq, columns)`` in seq order, one set of fields),
    as the columns of kind ``KINDS[lane]``: one row per machine and window, and model for
    scores, ordered by seq, machine, window and model."""
    scores = lane == "scores"
    fields = parts[0][1].fields if parts else ("score",) if scores else ()
    if any(c.fields != fields for _, c in parts):
        raise ValueError("spool records with different fields cannot share aggregate rows")
    if not sum(len(c.ts) for _, c in parts):
        return _empty(fields, scores=scores)
    names: dict[str, int] = {}
    models: dict[str, int] = {}
    seq_of, machine_of, model_of = [], [], []  # per reading, a part at a time
    for s, c in parts:  # per spool record, never per reading
        local = np.array([names.setdefault(n, len(names)) for n in c.names], dtype=np.int64)
        machine_of.append(local[np.asarray(c.machine, dtype=np.intp)])
        seq_of.append(np.full(len(c.ts), s, dtype=np.int64))
        model_of.append(np.full(len(c.ts), models.setdefault(c.model, len(models)), np.int64))
    ts = np.concatenate([c.ts for _, c in parts])
    values = np.concatenate([c.values for _, c in parts])
    seq = np.concatenate(seq_of)
    mcode = _ranks(names)[np.concatenate(machine_of)]  # codes in name order: rows sort by name
    kcode = _ranks(models)[np.concatenate(model_of)]
    win = window_of(ts, window)
    _, inverse = np.unique(np.stack([mcode, win, kcode], 1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    by_row = np.argsort(inverse, kind="stable")  # stable: arrival order within a row
    grouped = inverse[by_row]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    count = np.diff(np.r_[starts, len(ts)]).astype(np.int64)
    first = by_row[starts]
    # The last reading: the greatest ts (to the microsecond), a tie going to the later arrival.
    last = np.lexsort((np.arange(len(ts)), _on_the_wire(ts), inverse))[starts + count - 1]
    (lo, mean, hi), nonfinite = _reduce(values[by_row], starts, count, finite_only=scores)
    order = np.lexsort((kcode[first], win[first], mcode[first], seq[first]))
    first, last, start = first[order], last[order], win[first][order].astype(np.float64)
    name_list, model_list = sorted(names), sorted(models)
    cols: dict[str, Column] = {
        "seq": seq[first],
        "machine": [name_list[i] for i in mcode[first].tolist()],
        "ts": start * window,
        "ts_end": (start + 1) * window,
        "ts_last": ts[last],
        "count": count[order],
    }
    if scores:
        cols["model"] = [model_list[i] for i in kcode[first].tolist()]
        cols["nonfinite"] = nonfinite[order]
    for j, name in enumerate(fields):
        cols |= {f"{name}.min": lo[order, j], f"{name}.mean": mean[order, j]}
        cols |= {f"{name}.max": hi[order, j], f"{name}.last": values[last, j]}
    return cols


def _empty(fields: tuple[str, ...], *, scores: bool) -> dict[str, Column]:
    ints, floats = np.zeros(0, np.int64), np.zeros(0)
    cols: dict[str, Column] = {"seq": ints, "machine": [], "ts": floats, "ts_end": floats}
    cols |= {"ts_last": floats, "count": ints}
    if scores:
        cols |= {"model": [], "nonfinite": ints}
    return cols | {f"{name}.{stat}": floats for name in fields for stat in STATS}


def _ranks(codes: dict[str, int]) -> npt.NDArray[np.int64]:
    """For each code (numbered in order of first appearance), the rank of its name."""
    out = np.empty(len(codes), dtype=np.int64)
    out[[codes[name] for name in sorted(codes)]] = np.arange(len(codes))
    return out


def _reduce(
    v: Floats, starts: npt.NDArray[np.intp], count: npt.NDArray[np.int64], *, finite_only: bool
) -> tuple[tuple[Floats, Floats, Floats], npt.NDArray[np.int64]]:
    """Per row (``v`` sorted by row, rows starting at ``starts``): min, mean and max of each
    column; with ``finite_only``, of the finite values only, with how many were not (of the
    first column), a row with none giving NaN."""
    if not finite_only:  # telemetry: ingest lets no NaN or infinity in
        lo, hi = np.minimum.reduceat(v, starts, axis=0), np.maximum.reduceat(v, starts, axis=0)
        mean = np.add.reduceat(v, starts, axis=0) / count[:, None]
        return (lo, mean, hi), np.zeros(len(starts), np.int64)
    ok = np.isfinite(v)
    finite = np.add.reduceat(ok.astype(np.int64), starts, axis=0)
    lo = np.minimum.reduceat(np.where(ok, v, np.inf), starts, axis=0)
    hi = np.maximum.reduceat(np.where(ok, v, -np.inf), starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.add.reduceat(np.where(ok, v, 0.0), starts, axis=0) / finite
    for stat in (lo, mean, hi):
        stat[finite == 0] = np.nan
    return (lo, mean, hi), count - finite[:, 0]


def message(
    site: str, gateway: str, lane: str, run: Sequence[tuple[Record, Columns]], window: float
) -> Message:
    """One key's run of spool records (from ``closed``) as one aggregate message."""
    cols = summarise(lane, [(r.seq, c) for r, c in run], window)
    return Message(site, gateway, KINDS[lane], run[0][0].seq, run[-1][0].seq, cols)


def combine(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows of one gateway, kind, machine and window (and model) as one: the rule a consumer
    applies to rows a retry repeated and to rows that late readings added (wire format 6.2).

    Rows with the same ``seq`` are one row sent again: the one with the greater count holds
    more. The others add up by count; ``last`` is that of the row with the latest ``ts_last``,
    on a tie the greater seq."""
    unique: dict[int, Mapping[str, Any]] = {}
    for r in rows:
        if r["seq"] not in unique or r["count"] > unique[r["seq"]]["count"]:
            unique[r["seq"]] = r
    parts = sorted(unique.values(), key=lambda r: int(r["seq"]))
    out = dict(parts[0])
    out["count"] = sum(int(r["count"]) for r in parts)
    if "nonfinite" in out:
        out["nonfinite"] = sum(int(r["nonfinite"]) for r in parts)
    latest = max(parts, key=lambda r: (r["ts_last"], r["seq"]))
    out["ts_last"] = latest["ts_last"]
    weighed = [(int(r["count"]) - int(r.get("nonfinite", 0)), r) for r in parts]
    weighed = [(w, r) for w, r in weighed if w > 0]  # rows with values to weigh
    for name in [k.removesuffix(".mean") for k in out if k.endswith(".mean")]:
        total = sum(w for w, _ in weighed)
        out[f"{name}.min"] = min((r[f"{name}.min"] for _, r in weighed), default=math.nan)
        out[f"{name}.max"] = max((r[f"{name}.max"] for _, r in weighed), default=math.nan)
        mean = sum(w * r[f"{name}.mean"] for w, r in weighed) / total if total else math.nan
        out[f"{name}.mean"] = mean
        out[f"{name}.last"] = latest[f"{name}.last"]
    return out

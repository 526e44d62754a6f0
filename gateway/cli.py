"""``edge-gateway``: run the gateway, simulate a plant, show the demo, or publish models."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from . import modelcli, simulate
from .errors import ConfigError

__all__ = ["main"]

_SWITCH_INTERVAL = 0.0005  # seconds; see _run


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: " + (
            record.getMessage()
            + (("\n" + self.formatException(record.exc_info)) if record.exc_info else "")
        )


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body).decode()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    from .app import Gateway
    from .config import load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log.level, settings.log.format)

    # The spool, the uplink and the model poller run in threads; when one of them holds the GIL
    # the event loop waits up to the switch interval for it (5 ms by default, many times per
    # score under load). Half a millisecond cut the p99 publish-to-score latency at 1,000
    # readings/s from 17 to 3.6 ms (bench/compare.py, uplink on).
    sys.setswitchinterval(_SWITCH_INTERVAL)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        logging.getLogger("gateway").info(
            "starting gateway=%s site=%s broker=%s:%d",
            settings.gateway.id,
            settings.gateway.site,
            settings.mqtt.host,
            settings.mqtt.port,
        )
        await Gateway(settings).serve(stop)

    try:
        asyncio.run(main())
    except ConfigError as exc:  # found at start-up (a key file, a source): stop, name the key
        logging.getLogger("gateway").error("%s", exc)
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return 2
    return 0


def _simulate(args: argparse.Namespace) -> int:
    setup_logging("INFO")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        sent = simulate.run(args, stop)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(
            f"edge-gateway simulate: cannot reach broker {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    logging.getLogger("gateway.simulate").info("published messages=%d", sent)
    return 0


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _spool(args: argparse.Namespace) -> int:
    from .config import load_settings
    from .spooler import decode_body, open_spool

    try:
        spool = open_spool(load_settings(args.config))
    except ConfigError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "stats":
            st = spool.stats()
            print(
                orjson.dumps(
                    {"path": st.path, "lanes": st.lanes, "counters": st.counters},
                    option=orjson.OPT_INDENT_2,
                ).decode()
            )
            return 0
        lanes = [args.lane] if args.lane else spool.lanes_by_priority()
        shown = 0
        for lane in lanes:
            after = 0
            while shown < args.limit:
                records = spool.oldest(lane, max_bytes=8 << 20, after=after)
                if not records:
                    break
                for r in records[: args.limit - shown]:
                    if args.action == "inspect":
                        print(
                            f"{r.seq:>10} {r.lane:<9} {r.key:<24} {r.count:>6} readings "
                            f"{len(r.body):>8} bytes  {_utc(r.created)}"
                        )
                    else:
                        row = {
                            "seq": r.seq,
                            "lane": r.lane,
                            "key": r.key,
                            "created": r.created,
                            "count": r.count,
                            "records": decode_body(r.lane, r.body),
                        }
                        sys.stdout.write(orjson.dumps(row).decode() + "\n")
                    shown += 1
                after = records[-1].seq
        return 0
    finally:
        spool.close()


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(duration=args.duration)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the gateway")
    p_run.add_argument("-c", "--config", type=Path, default=None, help="TOML settings file")
    p_run.set_defaults(func=_run)
    p_sim = sub.add_parser("simulate", help="publish simulated telemetry")
    simulate.add_arguments(p_sim)
    p_sim.set_defaults(func=_simulate)
    p_spool = sub.add_parser("spool", help="look into the spool (works while the gateway runs)")
    p_spool.add_argument("action", choices=("stats", "inspect", "export"))
    p_spool.add_argument("-c", "--config", type=Path, default=None, help="TOML settings file")
    p_spool.add_argument("--lane", choices=("alerts", "scores", "telemetry"), default=None)
    p_spool.add_argument("--limit", type=int, default=50, help="records at most (inspect, export)")
    p_spool.set_defaults(func=_spool)
    p_demo = sub.add_parser("demo", help="broker + gateway + simulator with a live view")
    p_demo.add_argument("--duration", type=float, default=60.0)
    p_demo.set_defaults(func=_demo)
    modelcli.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

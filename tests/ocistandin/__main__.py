"""`python -m tests.ocistandin --data DIR ...`: run the stand-in as a process.

On start it prints one JSON line to stdout, e.g.
`{"event": "listening", "port": 40123, "endpoint": "http://127.0.0.1:40123", ...}`,
then serves until SIGTERM or SIGINT (exit 0)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .credentials import load_credentials, make_credentials
from .server import StandIn


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.ocistandin", description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="state directory (kept across runs)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed on start)")
    p.add_argument("--admin-port", type=int, default=None, help="extra port for /_standin/ only")
    p.add_argument("--port-file", type=Path, help="also write the port number to this file")
    p.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="KEYID=PEMFILE",
        help="trust a public key for keyId <tenancy>/<user>/<fingerprint> (repeatable)",
    )
    p.add_argument(
        "--credentials",
        type=Path,
        metavar="DIR",
        help="make (or reuse) an API key and DIR/config for it, and trust it",
    )
    p.add_argument("--partitions", type=int, default=1, help="partitions of new streams")
    p.add_argument("--stream", action="append", default=[], help="create this stream OCID")
    p.add_argument(
        "--no-auto-create",
        action="store_true",
        help="unknown streams answer 404 instead of being created on first use",
    )
    p.add_argument("--namespace", default="standin", help="the Object Storage namespace")
    p.add_argument(
        "--par",
        action="append",
        default=[],
        metavar="TOKEN:NS/BUCKET[/PREFIX][:nolist]",
        help="accept a pre-authenticated request token (repeatable)",
    )
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    keys: dict[str, bytes] = {}
    for spec in args.public_key:
        key_id, sep, pem_file = spec.partition("=")
        if not sep:
            raise SystemExit(f"--public-key must be KEYID=PEMFILE, got {spec!r}")
        keys[key_id] = Path(pem_file).read_bytes()
    creds = None
    if args.credentials is not None:
        config_file = args.credentials / "config"
        reuse = config_file.exists()
        creds = load_credentials(config_file) if reuse else make_credentials(args.credentials)
        keys[creds.key_id] = creds.public_key_pem
    standin = StandIn(
        args.data,
        host=args.host,
        port=args.port,
        admin_port=args.admin_port,
        public_keys=keys,
        partitions=args.partitions,
        streams=args.stream,
        auto_create_streams=not args.no_auto_create,
        namespace=args.namespace,
        pars=args.par,
    ).start()
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.port_file is not None:
        args.port_file.write_text(f"{standin.port}\n")
    info = {
        "event": "listening",
        "port": standin.port,
        "endpoint": standin.endpoint,
        "admin_port": standin.admin_port,
        "namespace": args.namespace,
        "config_file": str(creds.config_file) if creds else None,
        "key_id": creds.key_id if creds else None,
    }
    print(json.dumps(info), flush=True)
    done.wait()
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

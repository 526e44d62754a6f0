"""``edge-gateway demo``: a private broker, the gateway and a simulated plant, with a live view of
what the broker carries (as an HMI sees it). ``DemoState`` and ``render_*`` are plain code;
``run_demo`` starts the processes and always stops them again."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from . import simulate
from .localbroker import LocalBroker, free_port
from .manifest import default_bundle_dir, load_bundle
from .modelstore import open_store
from .signing import generate_keypair, load_private_key, sign_manifest

__all__ = [
    "DemoResult",
    "DemoState",
    "Event",
    "render_event",
    "render_line",
    "render_screen",
    "render_summary",
    "run_demo",
    "score_bar",
]

GATEWAY_ID = "demo"
MACHINES = 12
SIMULATOR = (
    "--machines",
    str(MACHINES),
    "--rate",
    "5",
    "--fault-every",
    "15",
    "--fault-length",
    "20",
    "--malformed",
    "0.01",
)
_ONLINE_TIMEOUT = 20.0
_LINE_EVERY = 5.0  # seconds between summary lines when stdout is not a terminal
Proc = subprocess.Popen[bytes]


@dataclass(frozen=True, slots=True)
class Event:
    """An alert state change, as the demo saw it."""

    at: float  # seconds since the simulator started
    ts: float  # epoch seconds of the reading
    state: str  # "raised" | "cleared"
    machine: str
    score: float
    threshold: float


@dataclass
class Machine:
    score: float | None = None
    alert: bool = False
    raised: int = 0


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


class DemoState:
    """All the demo saw on the broker. The MQTT thread feeds ``handle``; readers hold ``lock``."""

    def __init__(
        self,
        machines: Iterable[str],
        threshold: float,
        gateway_id: str = GATEWAY_ID,
        start: float = 0.0,
    ) -> None:
        self.lock = threading.Lock()
        self.machines = {name: Machine() for name in machines}
        self.threshold, self.start = threshold, start
        self.status: dict[str, Any] = {}
        self.model: dict[str, Any] = {}
        self.raised = self.cleared = 0
        self.deadletters: Counter[str] = Counter()
        self.last_deadletter = ""
        self.events: deque[Event] = deque(maxlen=8)
        self.swaps: list[str] = []  # one line per model change seen on the model topic
        self._new_swaps: list[str] = []
        self._last_model_event: Any = None
        self.rate = 0.0
        self._new: list[Event] = []
        self._prefix = f"gateway/{gateway_id}/"

    @property
    def online(self) -> bool:
        return self.status.get("state") == "online"

    @property
    def model_label(self) -> str:
        return str(self.model.get("model") or self.status.get("model") or "?")

    def counter(self, name: str) -> int:
        return int(self.status.get(name, 0))

    def handle(self, topic: str, payload: bytes, now: float) -> None:
        """Take one message from the broker; anything unexpected is ignored."""
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        with self.lock:
            if topic.startswith("scores/"):
                for item in body if isinstance(body, list) else [body]:
                    if isinstance(item, dict) and isinstance(item.get("score"), int | float):
                        name = str(item.get("machine", topic.removeprefix("scores/")))
                        self.machines.setdefault(name, Machine()).score = float(item["score"])
            elif not isinstance(body, dict):
                return
            elif topic.startswith("alerts/") and body.get("state") in ("raised", "cleared"):
                self._alert(body, now)
            elif topic == self._prefix + "status":
                old_ts, old_scored = _num(self.status.get("ts")), self.counter("readings_scored")
                self.status = {**self.status, **body}  # "offline" has no counters: keep them
                if _num(body.get("ts")) > old_ts and "readings_scored" in body:
                    self.rate = (self.counter("readings_scored") - old_scored) / (
                        self.status["ts"] - old_ts
                    )
            elif topic == self._prefix + "model":
                self._model(body, now)
            elif topic == self._prefix + "deadletter":
                self.deadletters[str(body.get("kind", "unknown"))] += 1
                self.last_deadletter = str(body.get("reason", ""))

    def drain(self) -> list[Event]:
        """The events since the last call (to print each once)."""
        new, self._new = self._new, []
        return new

    def drain_swaps(self) -> list[str]:
        new, self._new_swaps = self._new_swaps, []
        return new

    def _model(self, body: dict[str, Any], now: float) -> None:
        before, before_threshold = self.model_label, self.threshold
        self.model = body
        if isinstance(body.get("threshold"), int | float):
            self.threshold = float(body["threshold"])
        event = body.get("last_event") or {}
        repeated = event.get("ts") == self._last_model_event  # republished on reconnect
        self._last_model_event = event.get("ts")
        if before != "?" and self.model_label != before:
            line = (
                f"+{now - self.start:5.1f}s  model {before} -> {self.model_label}"
                f" (signed by {body.get('signed_by')}, verified, golden samples passed;"
                f" threshold {before_threshold:.3f} -> {self.threshold:.3f})"
            )
        elif not repeated and event.get("event") in ("rejected", "shadow_rejected", "rolled_back"):
            line = f"+{now - self.start:5.1f}s  model {event['event']}: {event.get('reason')}"
        else:
            return
        self.swaps.append(line)
        self._new_swaps.append(line)

    def _alert(self, body: dict[str, Any], now: float) -> None:
        name = str(body.get("machine", "?"))
        machine = self.machines.setdefault(name, Machine())
        machine.alert = body["state"] == "raised"
        machine.raised += machine.alert
        self.raised += machine.alert
        self.cleared += not machine.alert
        ts = _num(body.get("ts"))
        event = Event(
            now - self.start,
            time.time() if math.isnan(ts) else ts,
            body["state"],
            name,
            _num(body.get("score")),
            _num(body.get("threshold")),
        )
        self.events.append(event)
        self._new.append(event)


# -- rendering ---------------------------------------------------------------------------------
def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def score_bar(score: float | None, threshold: float, width: int = 24) -> str:
    """``[###.........|............]``: the score on a scale to twice the threshold, ``|`` at
    the threshold, ``>`` past the scale."""
    if score is None or not math.isfinite(score):
        return " " * (width + 3)
    full, half = 2 * threshold, width // 2
    n = round(max(0.0, min(score, full)) / full * width)
    left, right = min(n, half), max(0, n - half)
    end = ">" if score > full else "]"
    return f"[{'#' * left}{'.' * (half - left)}|{'#' * right}{'.' * (width - half - right)}{end}"


def render_event(e: Event, color: bool = False) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(e.ts))
    up = e.state == "raised"
    what = _paint("alert raised ", "1;31", color) if up else _paint("alert cleared", "32", color)
    return (
        f"{clock} +{e.at:5.1f}s  {what}  {e.machine:<16} "
        f"score {e.score:.3f} {'>' if up else '<'} {e.threshold:.3f}"
    )


def _counters(s: DemoState) -> str:
    return (
        f"received {s.counter('readings_received'):,}  scored "
        f"{s.counter('readings_scored'):,} ({s.rate:.0f}/s)  pending "
        f"{s.counter('readings_pending'):,}  dead-lettered {s.deadletters.total():,}  "
        f"alerts active {s.counter('alerts_active')}{_cloud(s)}"
    )


def _cloud(s: DemoState) -> str:
    """Spool backlog and what the (local) OCI stream stored, from the gateway's status."""
    spool = s.status.get("spool")
    uplink = s.status.get("uplink")
    if not isinstance(spool, dict):
        return ""
    waiting = sum(int(v.get("readings", 0)) for v in spool.values() if isinstance(v, dict))
    text = f"  spool {waiting:,} waiting"
    if isinstance(uplink, dict):
        text += f"  stream {int(uplink.get('messages', 0)):,} messages"
        text += f" {int(uplink.get('bytes', 0)):,} B"
    return text


def _curl(http_port: int) -> str:
    return f"while it runs: curl http://127.0.0.1:{http_port}/metrics  (and /healthz)"


def render_line(s: DemoState, now: float) -> str:
    """One compact line for logs (stdout is not a terminal)."""
    return f"+{now - s.start:5.1f}s  {_counters(s)}  raised {s.raised} cleared {s.cleared}"


def render_screen(
    s: DemoState, now: float, *, duration: float, http_port: int, color: bool
) -> list[str]:
    """The live view: header, one row per machine, recent events, dead letters."""
    gw = _paint(str(s.status.get("state", "starting")), "32" if s.online else "1;31", color)
    lines = [
        _paint("Edge ML gateway demo", "1", color)
        + f"  +{now - s.start:.0f}s of {duration:.0f}s  model {s.model_label}  (Ctrl-C stops)",
        f"gateway {GATEWAY_ID}: {gw}  {_counters(s)}",
        _curl(http_port),
        "",
        f"{'machine':<16} {'score':>7}  {'0':<13}{'threshold':<14}{'2x':<3} state  alerts",
    ]
    for name, m in s.machines.items():
        score = "      -" if m.score is None else f"{m.score:7.3f}"
        state = _paint("ALERT", "1;31", color) if m.alert else _paint("OK   ", "32", color)
        lines.append(f"{name:<16} {score}  {score_bar(m.score, s.threshold)} {state}  {m.raised}")
    lines += ["", f"recent events (threshold {s.threshold:.3f})"]
    lines += [f"  {render_event(e, color)}" for e in s.events] or ["  (none yet)"]
    if s.swaps:
        lines += ["", "model delivery"] + [f"  {line}" for line in s.swaps[-3:]]
    lines += ["", f"dead letters: {_deadletter_summary(s)}"]
    if s.last_deadletter:
        lines.append(f"  latest: {s.last_deadletter[:90]}")
    return lines


def _deadletter_summary(s: DemoState) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in s.deadletters.most_common())
    return f"{s.deadletters.total():,}" + (f" ({kinds})" if kinds else "")


def render_summary(s: DemoState, elapsed: float, note: str = "") -> list[str]:
    return [
        f"demo finished after {elapsed:.1f}s{note}",
        f"  readings scored  {s.counter('readings_scored'):,} "
        f"(received {s.counter('readings_received'):,})",
        f"  alerts           {s.raised} raised, {s.cleared} cleared",
        f"  dead-lettered    {_deadletter_summary(s)}",
        *(f"  model           {line.split('  model ', 1)[-1]}" for line in s.swaps),
    ] + ([f"  cloud           {_cloud(s).strip()}"] if _cloud(s) else [])


# -- processes ---------------------------------------------------------------------------------
@dataclass
class DemoResult:
    """What a run did, for callers that look closer than the exit code (tests)."""

    pids: dict[str, int] = field(default_factory=dict)
    failure: str | None = None
    interrupted: bool = False
    state: DemoState | None = None


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    # Own session: Ctrl-C reaches the demo only, which then stops everything in order.
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _stop(proc: Proc, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _set_signals(handler: Callable[[int, FrameType | None], Any] | int) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _wait(until: Callable[[], bool], timeout: float, proc: Proc | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            return False
        time.sleep(0.05)
    return True


def _subscribe(broker: LocalBroker, state: DemoState) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"edgegw-demo-view-{os.getpid()}")
    client.on_connect = lambda c, *_: c.subscribe(
        [("scores/#", 0), ("alerts/#", 1), (f"gateway/{GATEWAY_ID}/#", 1)]
    )
    client.on_message = lambda _c, _u, msg: state.handle(
        msg.topic, bytes(msg.payload), time.monotonic()
    )
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    return client


def _local_cloud(work: Path, stack: contextlib.ExitStack) -> dict[str, str]:
    """The local OCI stand-in (in a checkout) as the gateway's stream; {} where it isn't."""
    try:
        from tests.ocistandin import StandIn, make_credentials
    except ImportError:  # an installed package has no tests/: the data stays in the spool
        return {}
    creds = make_credentials(work / "oci")
    cloud = StandIn(work / "cloud", public_keys={creds.key_id: creds.public_key_pem})
    cloud.start()
    stack.callback(cloud.stop)
    return {
        "EDGEGW_UPLINK__ENDPOINT": cloud.endpoint,
        "EDGEGW_UPLINK__STREAM_ID": "ocid1.stream.oc1.iad.amaaaaaademostream",
        "EDGEGW_UPLINK__OCI_CONFIG": str(creds.config_file),
        "EDGEGW_UPLINK__OCI_PROFILE": creds.profile,
    }


def _model_bucket(work: Path) -> tuple[dict[str, str], Callable[[], str]]:
    """A site's model folder and its signing key; ``publish`` does what a data scientist does
    with ``edge-gateway model sign`` and ``model publish``: here, a recalibrated alert policy."""
    keys = work / "keys"
    keys.mkdir()
    generate_keypair(keys / "signing.key", keys / "signing.pub")
    bucket = work / "bucket" / "plant-demo"
    bucket.mkdir(parents=True)
    store = open_store(bucket.as_uri())

    def publish() -> str:
        base = load_bundle(default_bundle_dir())
        policy = base.manifest.alert
        recalibrated = base.manifest.model_copy(
            update={
                "version": "1.1.0",
                "created": datetime.now(UTC),
                "alert": policy.model_copy(update={"threshold": round(policy.threshold * 0.85, 4)}),
            }
        )
        signed = sign_manifest(recalibrated, load_private_key(keys / "signing.key"))
        store.put("1.1.0", "model.onnx", base.model_path)
        store.put("1.1.0", "manifest.json", signed.to_json())
        store.set_latest("1.1.0")  # last: a half-uploaded version is never picked up
        return signed.label

    env = {
        "EDGEGW_MODEL__SOURCE": bucket.as_uri(),
        "EDGEGW_MODEL__PUBLIC_KEY": str(keys / "signing.pub"),
        "EDGEGW_MODEL__POLL_INTERVAL": "2",
    }
    return env, publish


def _session(work: Path, duration: float, state: DemoState, out: TextIO, res: DemoResult) -> None:
    http_port = free_port()
    with contextlib.ExitStack() as stack:  # stops, in reverse: simulator, gateway, view, broker
        try:
            broker = LocalBroker(work / "broker")
            stack.callback(broker.stop)
            broker.start()
            client = _subscribe(broker, state)
            stack.callback(client.loop_stop)
            stack.callback(client.disconnect)
            env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEGW_")}
            env.update(
                EDGEGW_MQTT__PORT=str(broker.port),
                EDGEGW_GATEWAY__ID=GATEWAY_ID,
                EDGEGW_HTTP__PORT=str(http_port),
                EDGEGW_GATEWAY__STATUS_INTERVAL="1",
                EDGEGW_GATEWAY__DATA_DIR=str(work / "data"),
            )
            env.update(_local_cloud(work, stack))
            bucket, publish = _model_bucket(work)
            env.update(bucket)
            gateway = _spawn(["run"], work / "gateway.log", env)
            stack.callback(_stop, gateway)
            res.pids["gateway"] = gateway.pid
            if not _wait(lambda: state.online, _ONLINE_TIMEOUT, gateway):
                code = gateway.poll()
                res.failure = (
                    f"the gateway was not online within {_ONLINE_TIMEOUT:.0f}s"
                    if code is None
                    else f"the gateway exited with code {code}"
                )
                return
            sim = _spawn(
                ["simulate", "--port", str(broker.port), *SIMULATOR], work / "simulator.log"
            )
            stack.callback(_stop, sim)
            res.pids["simulator"] = sim.pid
            state.start = time.monotonic()
            if not out.isatty():
                print(
                    f"edge-gateway demo: broker 127.0.0.1:{broker.port}, gateway {GATEWAY_ID!r}"
                    f" online, model {state.model_label}, for {duration:g}s (Ctrl-C stops)\n"
                    f"simulator: {' '.join(SIMULATOR)}\n{_curl(http_port)}",
                    file=out,
                    flush=True,
                )
            procs = {"gateway": gateway, "simulator": sim}
            _watch(state, duration, http_port, out, procs, res, publish)
            if res.failure is None:  # let the gateway drain and report its final counters
                _stop(sim)
                stopped = time.time()
                _wait(
                    lambda: (
                        _num(state.status.get("ts")) > stopped + 0.2
                        and state.counter("readings_pending") == 0
                    ),
                    3.0,
                )
        finally:
            _set_signals(signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short


def _watch(
    state: DemoState,
    duration: float,
    http_port: int,
    out: TextIO,
    procs: dict[str, Proc],
    res: DemoResult,
    publish: Callable[[], str] | None = None,
) -> None:
    tty = out.isatty()
    end, next_line = state.start + duration, state.start + _LINE_EVERY
    publish_at = state.start + duration / 2 if publish is not None else math.inf
    if tty:
        out.write("\x1b[2J")
    while (now := time.monotonic()) < end:
        if now >= publish_at and publish is not None:
            label = publish()
            publish_at = math.inf
            if not tty:
                out.write(f"+{now - state.start:5.1f}s  data scientist published {label}\n")
        with state.lock:
            events = state.drain()
            swaps = state.drain_swaps()
            frame = (
                render_screen(state, now, duration=duration, http_port=http_port, color=True)
                if tty
                else []
            )
            line = render_line(state, now) if not tty and now >= next_line else None
        if tty:  # home, each line cleared to its end, then the rest of the screen
            out.write("\x1b[H" + "".join(f"{ln}\x1b[K\n" for ln in frame) + "\x1b[J")
        else:
            out.writelines(f"{render_event(e)}\n" for e in events)
            out.writelines(f"{line}\n" for line in swaps)
            if line is not None:
                out.write(line + "\n")
                next_line += _LINE_EVERY
        out.flush()
        for name, proc in procs.items():
            if proc.poll() is not None:
                res.failure = f"the {name} exited with code {proc.returncode}"
                return
        time.sleep(min(0.5, max(0.0, end - now)))


def run_demo(
    duration: float = 60.0, *, out: TextIO | None = None, result: DemoResult | None = None
) -> int:
    """Run broker, gateway and simulator with a live view for ``duration`` seconds or until
    Ctrl-C, then stop them all; 0 unless something failed (``result`` gets the details)."""
    out = out or sys.stdout
    res = result if result is not None else DemoResult()
    threshold = load_bundle(default_bundle_dir()).manifest.alert.threshold
    state = res.state = DemoState(
        simulate.machine_names(MACHINES), threshold, start=time.monotonic()
    )
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with tempfile.TemporaryDirectory(prefix="edge-gateway-demo-") as tmp:
        work = Path(tmp)
        try:
            _set_signals(_interrupt)  # SIGTERM (a container stop) cleans up like Ctrl-C
            _session(work, duration, state, out, res)
        except KeyboardInterrupt:
            res.interrupted = True
        except (OSError, RuntimeError) as exc:  # mosquitto missing, a port taken, …
            res.failure = str(exc)
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig, handler in saved.items():
                    signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        with state.lock:
            events, lines = (
                state.drain(),
                render_summary(
                    state,
                    time.monotonic() - state.start,
                    " (interrupted)" if res.interrupted else "",
                ),
            )
        if not out.isatty():
            out.writelines(f"{render_event(e)}\n" for e in events)
        if "simulator" in res.pids:  # else there is nothing to sum up
            print("", *lines, sep="\n", file=out)
        if res.failure:
            print(f"demo failed: {res.failure}", file=out)
            log = work / "gateway.log"
            if log.exists():  # keep a copy: the work folder goes away
                fd, kept = tempfile.mkstemp(prefix="edge-gateway-demo-", suffix=".log")
                os.close(fd)
                shutil.copyfile(log, kept)
                tail = log.read_text(errors="replace").splitlines()[-20:]
                print("gateway log (last lines):", *tail, f"full log: {kept}", sep="\n", file=out)
    out.flush()
    return 1 if res.failure else 0

"""A thin asyncio adapter over paho-mqtt: the event loop drives paho's socket, no extra thread.

paho is used for what it does well (MQTT v5 packets, sessions, manual QoS 1 acknowledgement);
this module adds what an asyncio service needs: readers and writers on the loop, a supervisor
that reconnects with jittered backoff, and awaitable publishes. Callbacks (``on_message``) run on
the loop thread. An acknowledgement token carries the connection it came from, so a PUBACK is
never sent on a later connection, where the same packet id may name another message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .config import Settings
from .errors import BrokerUnavailable, retrying
from .mqttwire import BufferedClient

__all__ = ["Ack", "Message", "MqttClient"]

log = logging.getLogger(__name__)

_CONNACK_TIMEOUT = 10.0
_READS_PER_WAKE = 256  # packets read per readable event before yielding to other tasks
_HELD_MAX = 10_000  # QoS 1 publishes kept while disconnected (alerts, dead letters); then oldest go


# Named tuples, not frozen dataclasses: made for every message, and a frozen dataclass costs
# 0.8-1.5 µs to make here against 0.4-0.6.
class Ack(NamedTuple):
    """What to acknowledge once a QoS 1 message is safely handled."""

    generation: int
    mid: int


class Message(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    ack: Ack | None
    arrived: float  # loop time


class MqttClient:
    """An MQTT v5 session with the broker, kept alive until the context exits."""

    def __init__(
        self,
        settings: Settings,
        on_message: Callable[[Message], None],
        *,
        will: tuple[str, bytes] | None = None,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings.mqtt
        self._on_message_cb = on_message
        self._on_connect_cb = on_connect
        self._client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        c = self._client
        if self._settings.username is not None:
            c.username_pw_set(self._settings.username, self._settings.password)
        if self._settings.tls_ca is not None:
            c.tls_set(ca_certs=str(self._settings.tls_ca))
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.max_queued_messages_set(0)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_plain_publish = self._handle_plain
        c.on_confirmed = self._handle_confirmed
        c.on_socket_open = self._socket_open
        c.on_socket_close = self._socket_close
        c.on_socket_register_write = self._register_write
        c.on_socket_unregister_write = self._unregister_write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._generation = 0
        self._connected = asyncio.Event()
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._confirm: dict[int, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._writer: Any = None  # the socket while a writer waits for it to drain
        self._flush_scheduled = False
        self._paused = False  # reading stopped: the consumer has enough to do
        # QoS 1 publishes made while disconnected, sent after the next CONNACK. paho itself
        # must not be touched then: its connect runs in a thread and resets the same queues.
        self._held: deque[tuple[str, bytes, bool]] = deque()
        self.held_dropped = 0
        self.delivered = 0
        self.reconnects = 0
        self.will_on_close = False
        self.on_state: Callable[[bool], None] = lambda connected: None

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> MqttClient:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self._supervise(), name="gateway.mqtt")
        return self

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        await self.close(will=exc_type is not None or self.will_on_close)

    async def close(self, will: bool = False) -> None:
        """Disconnect and stop reconnecting; the broker publishes the will only if ``will``
        (a gateway that failed, or whose offline status was not confirmed). Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.connected:
            code = 4 if will else 0  # 0x04: Disconnect with Will Message
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=code))
            self._client.loop_write()
        self._client._sock_close()
        for fut in self._confirm.values():
            if not fut.done():
                fut.set_exception(BrokerUnavailable("client closed before the broker confirmed"))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    # -- publishing and acknowledging ------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        """Queue a publish; returns the paho result code. While disconnected a QoS 0 publish
        is lost (``MQTT_ERR_NO_CONN``) and a QoS 1 one waits for the next connection, up to
        ``_HELD_MAX`` of them (then the oldest goes, counted in ``held_dropped``)."""
        if not self._connected.is_set():
            if qos == 0:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if len(self._held) >= _HELD_MAX:
                self._held.popleft()
                self.held_dropped += 1
                if self.held_dropped == 1 or not self.held_dropped % 1000:
                    log.warning(
                        "broker away: dropped oldest held publishes count=%d", self.held_dropped
                    )
            self._held.append((topic, payload, retain))
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if qos == 0 and not retain and self._client.publish_fast(topic, payload):
            self._flush_soon()
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._client.publish(topic, payload, qos=qos, retain=retain).rc

    async def publish_confirmed(
        self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 5.0
    ) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        assert self._loop is not None
        if not self._connected.is_set():
            raise BrokerUnavailable("not connected to the broker")
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        fut = self._loop.create_future()
        self._confirm[info.mid] = fut
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._confirm.pop(info.mid, None)

    def ack(self, ack: Ack) -> None:
        """Acknowledge a QoS 1 message, unless its connection is gone (the broker resends it)."""
        if ack.generation == self._generation and self.connected:
            if self._client.puback_fast(ack.mid):
                self._flush_soon()
            else:
                self._client.ack(ack.mid, 1)

    def subscribe(self, topic: str, qos: int) -> None:
        self._client.subscribe(topic, qos=qos)

    # -- supervisor ------------------------------------------------------------------------
    async def _supervise(self) -> None:
        s = self._settings
        assert self._loop is not None
        flaps = 0  # connections lost soon after they were made, in a row
        while True:
            backoff = retrying(
                BrokerUnavailable, s.reconnect_min, s.reconnect_max, log, "broker unavailable"
            )
            async for attempt in backoff:
                with attempt:
                    await self._connect_once()
            assert self._lost is not None
            connected_at = self._loop.time()
            await self._lost
            if self._closing:
                return
            # A connection the broker drops at once (a taken-over client id, a packet it
            # refuses) must not become a tight reconnect loop: back off as for a refusal.
            if self._loop.time() - connected_at < s.reconnect_max:
                flaps += 1
                delay = min(s.reconnect_max, s.reconnect_min * 2**flaps) * random.uniform(0.5, 1)
                log.warning(
                    "broker dropped a fresh connection, waiting flaps=%d in=%.2fs", flaps, delay
                )
                await asyncio.sleep(delay)
            else:
                flaps = 0

    async def _connect_once(self) -> None:
        assert self._loop is not None
        s = self._settings
        self._connack = self._loop.create_future()
        self._lost = self._loop.create_future()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry
        props.ReceiveMaximum = s.receive_maximum
        try:
            # Name resolution and the TCP handshake block: keep them off the loop.
            await asyncio.to_thread(
                self._client.connect,
                s.host,
                s.port,
                s.keepalive,
                clean_start=False,
                properties=props,
            )
        except (OSError, socket.gaierror) as exc:
            raise BrokerUnavailable(f"cannot reach broker {s.host}:{s.port}: {exc}") from exc
        misc = asyncio.create_task(self._misc(), name="gateway.mqtt.keepalive")
        try:
            rc = await asyncio.wait_for(self._connack, _CONNACK_TIMEOUT)
        except TimeoutError as exc:
            misc.cancel()
            self._client._sock_close()
            raise BrokerUnavailable(f"broker {s.host}:{s.port} sent no CONNACK") from exc
        except BrokerUnavailable:
            misc.cancel()
            raise
        if rc.is_failure:
            misc.cancel()
            self._client._sock_close()
            raise BrokerUnavailable(f"broker {s.host}:{s.port} refused the connection: {rc}")
        self._lost.add_done_callback(lambda _: misc.cancel())

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._client.loop_misc()

    # -- paho callbacks (loop thread, except socket callbacks during connect) --------------
    def _handle_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(rc)
        if rc.is_failure:
            return
        self._generation += 1
        self._connected.set()
        log.info(
            "broker connected host=%s port=%d session_present=%s",
            self._settings.host,
            self._settings.port,
            flags.session_present,
        )
        self.on_state(True)
        if self._on_connect_cb is not None:
            self._on_connect_cb()
        held, self._held = self._held, deque()
        for topic, payload, retain in held:
            self._client.publish(topic, payload, qos=1, retain=retain)

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        was = self.connected
        self._connected.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(BrokerUnavailable(f"disconnected before CONNACK: {rc}"))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if was:
            self.reconnects += 1
            self.on_state(False)
            if not self._closing:
                log.warning("broker connection lost reason=%s", rc)

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._handle_plain(msg.topic, bytes(msg.payload), msg.qos, msg.mid)

    def _handle_plain(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        self.delivered += 1
        assert self._loop is not None
        ack = Ack(self._generation, mid) if qos else None
        try:
            self._on_message_cb(Message(topic, payload, qos, ack, self._loop.time()))
        except Exception:
            # Raised through paho, it would leave paho's half-read packet state behind and
            # garble the next packet. Unacknowledged, the broker sends it again on reconnect.
            log.exception("message handler failed topic=%s", topic)

    def _handle_confirmed(self, mid: int) -> None:
        fut = self._confirm.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _readable(self) -> None:
        client = self._client
        for _ in range(_READS_PER_WAKE):
            if self._paused or client.read_packet() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if not client.buffered():  # the kernel's bytes are all read: the selector wakes us
                return
        assert self._loop is not None
        self._loop.call_soon(self._readable)  # more is buffered: after the other tasks' turn

    def pause_reading(self) -> None:
        """Stop reading from the broker (QoS 1 messages wait there) until ``resume_reading``.
        A pause longer than the keep-alive makes paho drop and re-open the connection."""
        if not self._paused:
            self._paused = True
            sock = self._client.socket()
            if sock is not None and self._loop is not None:
                self._loop.remove_reader(sock)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            sock = self._client.socket()
            if sock is not None and self._loop is not None:
                self._loop.add_reader(sock, self._readable)
                self._loop.call_soon(self._readable)  # bytes may wait in the buffer

    @property
    def reading_paused(self) -> bool:
        return self._paused

    def flush(self) -> None:
        """Write what paho has queued now (scores, acks), not on a later turn of the loop.
        Only when the socket is full does a writer wait for it to drain."""
        client = self._client
        if client.want_write():
            client.loop_write()
        sock = client.socket()
        if client.want_write() and sock is not None and self._writer is None:
            assert self._loop is not None
            self._loop.add_writer(sock, self._writable)
            self._writer = sock

    def _flush_soon(self) -> None:
        # Publishes made in one turn of the loop go out together at its end.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def _writable(self) -> None:
        self._client.loop_write()
        if not self._client.want_write():
            self._drop_writer()

    def _drop_writer(self) -> None:
        if self._writer is not None:
            assert self._loop is not None
            self._loop.remove_writer(self._writer)
            self._writer = None

    def _in_loop(self, fn: Callable[..., object], *args: Any) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        # paho leaves Nagle on: a score would wait for the broker's next packet (up to 40 ms).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._paused:
            self._in_loop(self._loop.add_reader, sock, self._readable)

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._in_loop(self._loop.remove_reader, sock)
        self._in_loop(self._drop_writer)

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._flush_soon)

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._drop_writer)

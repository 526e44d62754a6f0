"""paho's client with its socket work batched and its per-message objects skipped.

paho-mqtt does the protocol well (v5 packets, sessions, manual acknowledgement) but spends most
of a small message's cost on its own bookkeeping: three or four ``recv`` calls and a
``send`` per packet, and for each message an MQTTMessage, a Properties object, a message id, an
MQTTMessageInfo with its lock. ``BufferedClient`` keeps paho for the protocol and replaces that
bookkeeping where it is safe, by overriding paho-mqtt 2.x private methods; tests/test_mqtt.py
pins the behaviour on a real broker. ``gateway.mqtt`` drives it from the event loop, and
``bench/raw.py`` (the raw ceiling) from a ``select`` loop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["BufferedClient"]

log = logging.getLogger(__name__)

_RECV_SIZE = 256 * 1024  # bytes asked of the kernel per read
_SEND_BUFFER_MAX = 1 << 20  # bytes of packets held for one send before paho is told to wait
_TOPICS_MAX = 10_000  # encoded topic headers kept for the fast QoS 0 path


class BufferedClient(paho.Client):
    """paho.Client with its socket reads and writes batched.

    paho reads a packet in three or four ``recv`` calls (the command byte, each length byte, the
    rest) and writes each packet with its own ``send``: with many small messages those system
    calls were most of the gateway's CPU. Here one ``recv`` takes what the kernel holds and paho's
    small reads are served from memory, and the packets of one ``loop_write`` leave in one
    ``send`` (paho's private ``_sock_recv``, ``_sock_send``, ``_packet_write``, ``_sock_close``).
    Whoever drives the socket must call ``loop_read`` again while ``buffered()`` is non-zero: the
    selector cannot see those bytes.

    A PUBLISH without properties goes to ``on_plain_publish`` as (topic, payload, qos, packet
    id), without the MQTTMessage, Properties and debug line paho makes for each (its private
    ``_handle_publish``).

    QoS 0 publishes (scores) and PUBACKs are written straight into the send buffer
    (``publish_fast``, ``puback_fast``) while paho has no packet of its own waiting: paho's
    path made a message id, an MQTTMessageInfo with its lock, a queue entry and, with
    ``on_publish`` set, a ReasonCode and a Properties for each, a third of the event loop's
    time at 5,000 single-reading messages/s.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._wbuf = bytearray()
        # (topic, payload, qos, packet id) for a QoS 0/1 PUBLISH without properties: paho's own
        # path builds an MQTTMessage, a Properties object and a debug line for each.
        self.on_plain_publish: Callable[[str, bytes, int, int], None] | None = None
        # (packet id) when the broker confirms a QoS 1 publish of ours. paho's ``on_publish``
        # is not used: set, it makes a ReasonCode and a Properties for every QoS 0 publish.
        self.on_confirmed: Callable[[int], None] | None = None
        self._topic_headers: dict[str, bytes] = {}

    def publish_fast(self, topic: str, payload: bytes) -> bool:
        """Write a QoS 0 PUBLISH (MQTT v5, no properties) straight into the send buffer,
        without paho's bookkeeping for it (a message id, an MQTTMessageInfo with its lock, a
        queue entry). False when paho must take it instead: packets of its own wait to be
        written (order), the buffer is full, or the topic is not one to publish to."""
        if self._out_packet or self._sock is None or len(self._wbuf) >= _SEND_BUFFER_MAX:
            return False
        header = self._topic_headers.get(topic)
        if header is None:
            data = topic.encode()
            if not data or len(data) > 0xFFFF or "+" in topic or "#" in topic:
                return False  # paho says what is wrong with it
            if len(self._topic_headers) >= _TOPICS_MAX:
                self._topic_headers.clear()
            header = len(data).to_bytes(2, "big") + data
            if self._protocol == paho.MQTTv5:
                header += b"\x00"  # no properties
            self._topic_headers[topic] = header
        wbuf = self._wbuf
        wbuf.append(0x30)  # PUBLISH, QoS 0, not retained
        n = len(header) + len(payload)
        while True:  # the remaining length, 7 bits a byte
            byte, n = n & 0x7F, n >> 7
            wbuf.append(byte | 0x80 if n else byte)
            if not n:
                break
        wbuf += header
        wbuf += payload
        return True

    def puback_fast(self, mid: int) -> bool:
        """Write a PUBACK (success, no properties) straight into the send buffer; False when
        paho must queue it (packets of its own wait to be written)."""
        if self._out_packet or self._sock is None:
            return False
        self._wbuf += b"\x40\x02" + mid.to_bytes(2, "big")
        return True

    def _do_on_publish(self, mid: int, reason_code: ReasonCode, properties: Properties) -> Any:
        rc = super()._do_on_publish(mid, reason_code, properties)
        if self.on_confirmed is not None:
            self.on_confirmed(mid)
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        handle = self.on_plain_publish
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        if handle is None or qos == 2:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            end = 2 + int.from_bytes(packet[0:2], "big")
            topic = packet[2:end].decode("utf-8")
            mid = 0
            if qos:
                mid = int.from_bytes(packet[end : end + 2], "big")
                end += 2
            if self._protocol == paho.MQTTv5:
                if packet[end]:  # properties (a topic alias, user properties): paho's path
                    return super()._handle_publish()
                end += 1
        except (IndexError, UnicodeDecodeError):
            return super()._handle_publish()  # paho reports what is wrong with it
        if not topic:
            return super()._handle_publish()
        handle(topic, bytes(packet[end:]), qos, mid)
        if qos and not self._manual_ack and not self.puback_fast(mid):
            self._send_puback(mid)  # what paho's own path would have done
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def read_packet(self) -> MQTTErrorCode:
        """Read and handle at most one packet. paho's ``loop_read`` reads as many as there are
        QoS 1 messages of ours in flight, which could hand ingest thousands of readings in one
        call, past a pause and past the per-wake limit."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        rc = self._packet_read()
        if rc > 0:
            return self._loop_rc_handle(rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS  # a packet, or nothing more to read (AGAIN)

    def buffered(self) -> int:
        """Bytes received and not yet handed to paho (TLS: decrypted bytes pending too)."""
        pending = len(self._rbuf) - self._rpos
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket):
            pending += sock.pending()
        return pending

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(_RECV_SIZE)
            if len(data) <= bufsize:  # end of stream (b""), or no more than was asked for
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = end = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start:end]

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if len(self._wbuf) >= _SEND_BUFFER_MAX:
            self.send_buffered()
            if len(self._wbuf) >= _SEND_BUFFER_MAX:
                raise BlockingIOError  # paho keeps the packet and tries again when writable
        self._wbuf += buf
        return len(buf)

    def send_buffered(self) -> None:
        """Hand the kernel what paho wrote; what it cannot take now waits for ``want_write``."""
        if not self._wbuf or self._sock is None:
            return
        try:
            sent = self._sock.send(self._wbuf)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError as exc:
            # Bytes of packets paho counts as written are lost: the session cannot go on. Shut
            # the socket so the read side sees the end at once and paho reconnects (a QoS 1
            # message unacknowledged is sent again by the broker, ours by paho).
            log.warning("send to broker failed, closing the connection error=%s", exc)
            self._wbuf.clear()
            if isinstance(self._sock, socket.socket):  # SSLSocket too
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
            return
        del self._wbuf[:sent]

    def _packet_write(self) -> MQTTErrorCode:
        # Inside loop_write, so that its bookkeeping (want_write, the write registration)
        # sees what the kernel took.
        rc = super()._packet_write()
        self.send_buffered()
        return rc

    def want_write(self) -> bool:
        return bool(self._wbuf) or super().want_write()

    def _sock_close(self) -> None:
        self.send_buffered()  # paho closes right after writing DISCONNECT: let it leave first
        self._rbuf, self._rpos = b"", 0  # never feed one connection's bytes to the next
        self._wbuf.clear()
        super()._sock_close()

"""Client-side helpers for the interop suite.

`Client` wraps a paho-mqtt 2.x client with a background network thread, no automatic
reconnection and event-based waits, so that a test reads like the protocol flow it checks.
`RawClient` speaks just enough MQTT over a plain socket for the cases paho will not produce
(a CONNECT that paho refuses to send, a client that stops sending PINGREQ, exact CONNACK bytes).
"""

from __future__ import annotations

import itertools
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = "127.0.0.1"

# How long a test waits for something that must happen, and for something that must not.
WAIT = 5.0
QUIET = 0.2

V311 = 4
V5 = 5
VERSIONS = [V311, V5]
VERSION_IDS = ["v311", "v5"]

_ids = itertools.count(1)


def unique_id(prefix: str) -> str:
    """A client id unique within the test run."""
    return f"{prefix}-{next(_ids)}"


def props(packet_type: int, **values: Any) -> Properties:
    """Builds a paho Properties object, e.g. props(PacketTypes.PUBLISH, ContentType="x")."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def props_dict(p: Properties | None) -> dict[str, Any]:
    """The properties present in `p`, keyed by paho's compressed names ("MessageExpiryInterval")."""
    out: dict[str, Any] = {}
    if p is None:
        return out
    for name in p.names:
        attr = name.replace(" ", "")
        if hasattr(p, attr):
            out[attr] = getattr(p, attr)
    return out


@dataclass
class Msg:
    """A received PUBLISH, copied out of paho's MQTTMessage."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    props: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0

    def __repr__(self) -> str:
        return (
            f"Msg(topic={self.topic!r}, payload={self.payload!r}, qos={self.qos}, "
            f"retain={self.retain}, dup={self.dup}, props={self.props})"
        )


@dataclass
class Disconnect:
    """How a connection ended, as paho saw it."""

    from_server: bool  # a DISCONNECT packet came from the broker (MQTT 5.0 only)
    reason: int  # the reason code value (paho invents one when the socket just closed)
    reason_name: str
    props: dict[str, Any]
    at: float


class Client:
    """A paho-mqtt client driven from the test thread.

    The network loop runs in paho's thread (loop_start) with reconnect_on_failure=False, so a
    connection that the broker closes stays closed and `disconnected` records how it ended.
    """

    def __init__(
        self,
        port: int,
        client_id: str | None = None,
        version: int = V5,
        *,
        clean_session: bool = True,
        keepalive: int = 30,
        manual_ack: bool = False,
        transport: str = "tcp",
        ws_path: str = "/mqtt",
        tls: dict[str, Any] | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.port = port
        self.version = version
        self.client_id = unique_id(f"c{version}") if client_id is None else client_id
        self.keepalive = keepalive
        kwargs: dict[str, Any] = {
            "client_id": self.client_id,
            "protocol": mqtt.MQTTv5 if version == V5 else mqtt.MQTTv311,
            "reconnect_on_failure": False,
            "manual_ack": manual_ack,
            "transport": transport,
        }
        if version != V5:
            kwargs["clean_session"] = clean_session
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        if transport == "websockets":
            self.paho.ws_set_options(path=ws_path)
        if tls is not None:
            # ca_certs, certfile, keyfile: a real TLS handshake checked against our test CA.
            self.paho.tls_set(**tls)
        if username is not None:
            self.paho.username_pw_set(username, password)
        self.messages: queue.Queue[Msg] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack_reason: int | None = None
        self.session_present: bool | None = None
        self.connack_props: dict[str, Any] = {}
        self.disconnect_info: Disconnect | None = None
        self._cond = threading.Condition()
        self._subacks: dict[int, tuple[list[int], dict[str, Any]]] = {}
        self._unsubacks: dict[int, list[int]] = {}
        self._pubacks: dict[int, int] = {}
        self._started = False

        p = self.paho
        p.on_connect = self._on_connect
        p.on_disconnect = self._on_disconnect
        p.on_message = self._on_message
        p.on_subscribe = self._on_subscribe
        p.on_unsubscribe = self._on_unsubscribe
        p.on_publish = self._on_publish

    # -- paho callbacks (network thread) --------------------------------------------------

    def _on_connect(self, _c, _u, flags, reason_code, properties) -> None:
        self.connack_reason = _rc_value(reason_code)
        self.session_present = bool(flags.session_present)
        self.connack_props = props_dict(properties)
        self.connected.set()

    def _on_disconnect(self, _c, _u, flags, reason_code, properties) -> None:
        self.disconnect_info = Disconnect(
            from_server=bool(flags.is_disconnect_packet_from_server),
            reason=_rc_value(reason_code),
            reason_name=str(reason_code),
            props=props_dict(properties),
            at=time.monotonic(),
        )
        self.disconnected.set()

    def _on_message(self, _c, _u, m) -> None:
        self.messages.put(
            Msg(
                topic=m.topic,
                payload=m.payload,
                qos=m.qos,
                retain=bool(m.retain),
                dup=bool(m.dup),
                mid=m.mid,
                props=props_dict(getattr(m, "properties", None)),
                at=time.monotonic(),
            )
        )

    def _on_subscribe(self, _c, _u, mid, reason_codes, properties) -> None:
        with self._cond:
            self._subacks[mid] = ([_rc_value(rc) for rc in reason_codes], props_dict(properties))
            self._cond.notify_all()

    def _on_unsubscribe(self, _c, _u, mid, reason_codes, properties) -> None:
        with self._cond:
            self._unsubacks[mid] = [_rc_value(rc) for rc in reason_codes]
            self._cond.notify_all()

    def _on_publish(self, _c, _u, mid, reason_code, properties) -> None:
        with self._cond:
            self._pubacks[mid] = _rc_value(reason_code)
            self._cond.notify_all()

    # -- connection -----------------------------------------------------------------------

    def will_set(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Client:
        self.paho.will_set(topic, payload, qos=qos, retain=retain, properties=properties)
        return self

    def connect(
        self,
        *,
        clean_start: bool = True,
        session_expiry: int | None = None,
        properties: Properties | None = None,
        expect_reason: int | None = 0,
        timeout: float = WAIT,
    ) -> Client:
        """Connects and waits for the CONNACK. clean_start/session_expiry apply to MQTT 5.0
        (3.1.1 takes clean_session in the constructor)."""
        if self.version == V5:
            if properties is None:
                properties = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                properties.SessionExpiryInterval = session_expiry
            self.paho.connect(
                HOST,
                self.port,
                keepalive=self.keepalive,
                clean_start=clean_start,
                properties=properties,
            )
        else:
            self.paho.connect(HOST, self.port, keepalive=self.keepalive)
        self.paho.loop_start()
        self._started = True
        if not self.connected.wait(timeout):
            raise AssertionError(f"{self.client_id}: no CONNACK within {timeout}s")
        if expect_reason is not None:
            assert self.connack_reason == expect_reason, (
                f"{self.client_id}: CONNACK reason {self.connack_reason}, expected {expect_reason}"
            )
        return self

    def disconnect(
        self, reason: int = 0, properties: Properties | None = None, timeout: float = WAIT
    ) -> None:
        """A normal DISCONNECT (MQTT 5.0: with this reason code), then waits for the close."""
        if self.version == V5:
            rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason)
            self.paho.disconnect(reasoncode=rc, properties=properties)
        else:
            self.paho.disconnect()
        assert self.disconnected.wait(timeout), f"{self.client_id}: disconnect did not finish"
        self.paho.loop_stop()

    def drop(self) -> None:
        """Closes the TCP connection without a DISCONNECT packet (an abnormal close)."""
        sock = self.paho.socket()
        assert sock is not None, f"{self.client_id}: not connected"
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.wait_disconnected()
        self.paho.loop_stop()

    def wait_disconnected(self, timeout: float = WAIT) -> Disconnect:
        if not self.disconnected.wait(timeout):
            raise AssertionError(f"{self.client_id}: still connected after {timeout}s")
        assert self.disconnect_info is not None
        return self.disconnect_info

    def close(self) -> None:
        """Test teardown: leave quietly whatever the state."""
        if not self._started:
            return
        try:
            if not self.disconnected.is_set() and self.paho.is_connected():
                self.paho.disconnect()
                self.disconnected.wait(2)
        finally:
            self.paho.loop_stop()
            self._started = False

    # -- operations -----------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        sub_id: int | None = None,
        timeout: float = WAIT,
    ) -> list[int]:
        """Subscribes and returns the SUBACK reason codes (granted QoS for 3.1.1)."""
        if self.version == V5:
            options = SubscribeOptions(
                qos=qos,
                noLocal=no_local,
                retainAsPublished=retain_as_published,
                retainHandling=retain_handling,
            )
            properties = None
            if sub_id is not None:
                properties = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=sub_id)
            rc, mid = self.paho.subscribe(topic, options=options, properties=properties)
        else:
            rc, mid = self.paho.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe({topic}) not sent: {rc}"
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, timeout):
                raise AssertionError(f"{self.client_id}: no SUBACK for {topic} within {timeout}s")
            return self._subacks.pop(mid)[0]

    def unsubscribe(self, topic: str, timeout: float = WAIT) -> list[int]:
        rc, mid = self.paho.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._unsubacks, timeout):
                raise AssertionError(f"{self.client_id}: no UNSUBACK for {topic}")
            return self._unsubacks.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes | str | None = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = WAIT,
    ) -> int | None:
        """Publishes and waits until it is sent (QoS 0) or acknowledged (PUBACK/PUBCOMP).
        Returns the reason code of the acknowledgement (None for QoS 0)."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish({topic}) not queued: {info.rc}"
        info.wait_for_publish(timeout)
        assert info.is_published(), f"{self.client_id}: publish to {topic!r} not completed"
        if qos == 0:
            return None
        with self._cond:
            self._cond.wait_for(lambda: info.mid in self._pubacks, timeout)
            return self._pubacks.pop(info.mid, None)

    def ack(self, mid: int, qos: int) -> None:
        """With manual_ack=True: acknowledge a received message."""
        self.paho.ack(mid, qos)

    # -- expectations ---------------------------------------------------------------------

    def expect(self, timeout: float = WAIT) -> Msg:
        """The next message; fails if none arrives within `timeout`."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s") from None

    def expect_n(self, n: int, timeout: float = WAIT) -> list[Msg]:
        deadline = time.monotonic() + timeout
        got: list[Msg] = []
        while len(got) < n:
            left = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: got {len(got)} of {n} messages: {got}"
                ) from None
        return got

    def expect_none(self, timeout: float = QUIET) -> None:
        """Fails if a message arrives within `timeout`."""
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message {m}")

    def drain(self, timeout: float = QUIET) -> list[Msg]:
        """Everything that arrives until `timeout` passes with nothing new."""
        got = []
        while True:
            try:
                got.append(self.messages.get(timeout=timeout))
            except queue.Empty:
                return got


def _rc_value(rc: Any) -> int:
    if isinstance(rc, ReasonCode):
        return rc.value
    return int(rc)


# -- raw MQTT over a socket -----------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect_packet(
    client_id: str,
    *,
    version: int = V311,
    clean: bool = True,
    keepalive: int = 60,
    will: tuple[str, bytes, int, bool] | None = None,
    properties: bytes = b"",
    will_properties: bytes = b"",
) -> bytes:
    """A CONNECT packet. `properties`/`will_properties` are encoded property bytes (5.0)."""
    flags = 0x02 if clean else 0
    if will is not None:
        _topic, _payload, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
    body = mqtt_str("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == V5:
        body += varint(len(properties)) + properties
    body += mqtt_str(client_id)
    if will is not None:
        if version == V5:
            body += varint(len(will_properties)) + will_properties
        body += mqtt_str(will[0]) + mqtt_str(will[1])
    return bytes([0x10]) + varint(len(body)) + body


# Property identifier -> value type, for decoding what the broker sends.
_PROP_TYPES = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x0B: "varint",
    0x11: "u32", 0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "byte",
    0x19: "byte", 0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16", 0x22: "u16",
    0x23: "u16", 0x24: "byte", 0x25: "byte", 0x26: "pair", 0x27: "u32", 0x28: "byte",
    0x29: "byte", 0x2A: "byte",
}  # fmt: skip


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def decode_properties(buf: bytes, pos: int) -> tuple[list[tuple[int, Any]], int]:
    """Decodes a 5.0 property block at `pos`: ([(identifier, value)], position after it)."""
    length, pos = read_varint(buf, pos)
    end = pos + length
    out: list[tuple[int, Any]] = []
    while pos < end:
        ident = buf[pos]
        pos += 1
        kind = _PROP_TYPES[ident]
        if kind == "byte":
            value: Any = buf[pos]
            pos += 1
        elif kind == "u16":
            (value,) = struct.unpack_from("!H", buf, pos)
            pos += 2
        elif kind == "u32":
            (value,) = struct.unpack_from("!I", buf, pos)
            pos += 4
        elif kind == "varint":
            value, pos = read_varint(buf, pos)
        elif kind in ("str", "bin"):
            (n,) = struct.unpack_from("!H", buf, pos)
            raw = buf[pos + 2 : pos + 2 + n]
            value = raw.decode() if kind == "str" else raw
            pos += 2 + n
        else:  # pair
            (n,) = struct.unpack_from("!H", buf, pos)
            k = buf[pos + 2 : pos + 2 + n].decode()
            pos += 2 + n
            (n,) = struct.unpack_from("!H", buf, pos)
            v = buf[pos + 2 : pos + 2 + n].decode()
            pos += 2 + n
            value = (k, v)
        out.append((ident, value))
    return out, end


@dataclass
class RawPublish:
    topic: str
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    props: list[tuple[int, Any]]
    payload: bytes


def decode_publish(flags: int, body: bytes, version: int = V5) -> RawPublish:
    (n,) = struct.unpack_from("!H", body, 0)
    topic = body[2 : 2 + n].decode()
    pos = 2 + n
    qos = (flags >> 1) & 3
    pid = None
    if qos:
        (pid,) = struct.unpack_from("!H", body, pos)
        pos += 2
    properties: list[tuple[int, Any]] = []
    if version == V5:
        properties, pos = decode_properties(body, pos)
    return RawPublish(topic, qos, bool(flags & 1), bool(flags & 8), pid, properties, body[pos:])


class RawClient:
    """A TCP connection that sends and reads MQTT packets byte for byte."""

    def __init__(self, port: int, timeout: float = WAIT) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def read_packet(self, timeout: float = WAIT) -> tuple[int, int, bytes] | None:
        """(packet type, flags, body), or None when the broker closed the connection.
        Raises socket.timeout when nothing arrives in time."""
        self.sock.settimeout(timeout)
        try:
            head = self._read_exact(1)
        except ConnectionResetError:
            return None
        if head is None:
            return None
        length, shift = 0, 0
        while True:
            b = self._read_exact(1)
            if b is None:
                return None
            length |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                break
        body = self._read_exact(length) if length else b""
        if body is None:
            return None
        return head[0] >> 4, head[0] & 0x0F, body

    def subscribe(self, topic: str, qos: int = 0, packet_id: int = 1, version: int = V5) -> bytes:
        """Sends SUBSCRIBE and returns the SUBACK reason codes."""
        body = struct.pack("!H", packet_id) + (b"\x00" if version == V5 else b"")
        body += mqtt_str(topic) + bytes([qos])
        self.send(bytes([0x82]) + varint(len(body)) + body)
        pkt = self.read_packet()
        assert pkt is not None and pkt[0] == 9, f"expected SUBACK, got {pkt}"
        body = pkt[2]
        assert body[:2] == struct.pack("!H", packet_id)
        if version == V5:
            _, pos = decode_properties(body, 2)
            return body[pos:]
        return body[2:]

    def puback(self, packet_id: int) -> None:
        self.send(b"\x40\x02" + struct.pack("!H", packet_id))

    def wait_closed(self, timeout: float = WAIT) -> float:
        """Reads until the broker closes the connection; returns when (monotonic time)."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except ConnectionResetError:
                return time.monotonic()
            except TimeoutError:
                raise AssertionError(f"connection still open after {timeout}s") from None
            if not data:
                return time.monotonic()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

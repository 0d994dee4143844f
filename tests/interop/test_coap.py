"""The CoAP gateway (docs/coap.md) against a real broker process.

How these tests work:

- Each test starts its own broker with `--coap-listen 127.0.0.1:0`. conftest reads the UDP port
  from the first log line (`... 127.0.0.1:PORT (coap)`) into `broker.ports["coap"]`.
- The CoAP side is aiocoap where a real client library is the point: requests, Observe,
  block-wise transfers and retransmission, and a device-side server that takes commands. Where
  the test has to see or shape the bytes (message types, Observe deregistration, RST, garbage,
  the rate limit), it sends hand-encoded datagrams from a plain UDP socket (`RawCoap`).
- The MQTT side is paho through `mqtt_util.Client`, on the same broker.
- aiocoap is asyncio. A test's CoAP part is a coroutine run with `asyncio.run`. Blocking MQTT
  calls inside such a coroutine go through `asyncio.to_thread` (`off`), so aiocoap keeps
  answering and acknowledging in the meantime.
- The subscriptions the gateway makes for devices (Observe, commands) are not visible to a
  client. The tests read them from the broker's `rookery_subscriptions` metric
  (`--metrics-listen`).
- Waits are event based, with the suite's bounds: WAIT for what must happen, QUIET for what must
  not. Loss is simulated deterministically, never at random. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import select
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap import resource
from aiocoap.numbers.constants import TransportTuning

from conftest import BROKER_BIN, Broker
from mqtt_util import HOST, QUIET, WAIT

# aiocoap's plain UDP transport only: no TCP, WebSocket or DTLS sockets on the side.
UDP_TRANSPORTS = ["udp6"]

# -- raw CoAP (RFC 7252) -------------------------------------------------------------------------

CON, NON, ACK, RST = 0, 1, 2, 3
EMPTY, GET, POST, PUT, DELETE = 0, 1, 2, 3, 4
OBSERVE, URI_PATH, CONTENT_FORMAT, URI_QUERY, BLOCK2 = 6, 11, 12, 15, 23
MTYPES = {CON: "CON", NON: "NON", ACK: "ACK", RST: "RST"}


def dotted(code: int) -> str:
    """A code byte as CoAP writes it: 0x44 -> "2.04"."""
    return f"{code >> 5}.{code & 0x1F:02d}"


def uint_opt(value: int) -> bytes:
    """An unsigned option value in its shortest form (0 is empty)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _nibble(n: int) -> tuple[int, bytes]:
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes([n - 13])
    return 14, struct.pack("!H", n - 269)


def encode(
    mtype: int,
    code: int,
    mid: int,
    token: bytes = b"",
    options: Iterable[tuple[int, bytes]] = (),
    payload: bytes = b"",
) -> bytes:
    out = bytearray([0x40 | mtype << 4 | len(token), code]) + struct.pack("!H", mid) + token
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):  # stable: repeats keep order
        delta, delta_ext = _nibble(number - last)
        length, length_ext = _nibble(len(value))
        out += bytes([delta << 4 | length]) + delta_ext + length_ext + value
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


@dataclass
class Coap:
    """A decoded datagram."""

    mtype: int
    code: int
    mid: int
    token: bytes
    options: list[tuple[int, bytes]]
    payload: bytes

    def opt(self, number: int) -> bytes | None:
        return next((v for n, v in self.options if n == number), None)

    def opt_uint(self, number: int) -> int | None:
        v = self.opt(number)
        return None if v is None else int.from_bytes(v, "big")

    def path(self) -> list[str]:
        return [v.decode() for n, v in self.options if n == URI_PATH]

    def __repr__(self) -> str:
        return (
            f"Coap({MTYPES[self.mtype]} {dotted(self.code)} mid={self.mid:#06x} "
            f"token={self.token.hex()} options={self.options} payload={self.payload[:40]!r})"
        )


def decode(data: bytes) -> Coap:
    """Decodes a datagram; ValueError for a malformed one."""
    if len(data) < 4 or data[0] >> 6 != 1 or data[0] & 0x0F > 8:
        raise ValueError(f"bad CoAP header: {data[:8].hex()}")
    mtype, tkl, code = (data[0] >> 4) & 3, data[0] & 0x0F, data[1]
    (mid,) = struct.unpack_from("!H", data, 2)
    pos = 4 + tkl
    if pos > len(data):
        raise ValueError("token runs past the end")
    token = data[4:pos]
    options: list[tuple[int, bytes]] = []
    number = 0

    def ext(n: int) -> int:
        nonlocal pos
        if n == 13:
            pos += 1
            return data[pos - 1] + 13
        if n == 14:
            pos += 2
            return struct.unpack_from("!H", data, pos - 2)[0] + 269
        if n == 15:
            raise ValueError("reserved option nibble 15")
        return n

    while pos < len(data) and data[pos] != 0xFF:
        head = data[pos]
        pos += 1
        number += ext(head >> 4)
        length = ext(head & 0x0F)
        if pos + length > len(data):
            raise ValueError("option runs past the end")
        options.append((number, data[pos : pos + length]))
        pos += length
    payload = b""
    if pos < len(data):  # the payload marker
        payload = data[pos + 1 :]
        if not payload:
            raise ValueError("payload marker without payload")
    return Coap(mtype, code, mid, token, options, payload)


def request_options(
    path: str, query: Iterable[str] = (), extra: Iterable[tuple[int, bytes]] = ()
) -> list[tuple[int, bytes]]:
    opts = [(URI_PATH, segment.encode()) for segment in path.split("/")]
    opts += [(URI_QUERY, q.encode()) for q in query]
    return opts + list(extra)


class RawCoap:
    """A plain UDP socket that speaks hand-encoded CoAP to the gateway."""

    _tokens = itertools.count(1)

    def __init__(self, gateway_port: int, bind_host: str = HOST) -> None:
        self.gateway = (HOST, gateway_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind_host, 0))
        self._mid = random.Random(gateway_port).randrange(0x10000)

    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def new_token(self) -> bytes:
        return struct.pack("!I", next(self._tokens))

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.gateway)

    def recv(self, timeout: float = WAIT) -> Coap | None:
        """The next datagram from the gateway, or None when nothing comes within `timeout`."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, _ = self.sock.recvfrom(65536)
        except TimeoutError:
            return None
        return decode(data)

    def ack(self, msg: Coap) -> None:
        self.send(encode(ACK, EMPTY, msg.mid))

    def reset(self, msg: Coap) -> None:
        self.send(encode(RST, EMPTY, msg.mid))

    def wait_for_token(self, token: bytes, timeout: float = WAIT) -> Coap:
        """The next message carrying `token` and a code (not an empty ACK); others are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(deadline - time.monotonic())
            if msg is None:
                raise AssertionError(f"nothing with token {token.hex()} within {timeout}s")
            if msg.token == token and msg.code != EMPTY:
                return msg

    def request(
        self,
        code: int,
        path: str,
        query: Iterable[str] = (),
        payload: bytes = b"",
        options: Iterable[tuple[int, bytes]] = (),
        token: bytes | None = None,
    ) -> Coap:
        """Sends a CON request and returns its response: piggybacked on the ACK, or separate after
        an empty ACK (a separate CON response is acknowledged)."""
        token = self.new_token() if token is None else token
        opts = request_options(path, query, options)
        self.send(encode(CON, code, self.next_mid(), token, opts, payload))
        msg = self.wait_for_token(token)
        if msg.mtype == CON:
            self.ack(msg)
        return msg

    def expect_silence(self, timeout: float = QUIET) -> None:
        msg = self.recv(timeout)
        assert msg is None, f"unexpected datagram from the gateway: {msg}"

    def close(self) -> None:
        self.sock.close()


# -- helpers -------------------------------------------------------------------------------------


def coap_broker(broker_factory: Callable[..., Broker], *extra: str) -> Broker:
    b = broker_factory("--coap-listen", f"{HOST}:0", *extra)
    assert "coap" in b.ports, f"no `ADDR (coap)` in the first log line:\n{b.log()[:3000]}"
    return b


def coap_url(b: Broker, path: str) -> str:
    return f"coap://{HOST}:{b.ports['coap']}/{path}"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def metrics_flags() -> tuple[int, list[str]]:
    port = free_port()
    return port, ["--metrics-listen", f"{HOST}:{port}"]


def metric(port: int, name: str) -> float | None:
    """An unlabelled sample from /metrics; None when absent or the endpoint does not answer."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=WAIT) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    m = re.search(rf"^{re.escape(name)} (\S+)", text, re.M)
    return float(m.group(1)) if m else None


def wait_metric(port: int, name: str, ok: Callable[[float], bool], what: str) -> float:
    """Polls /metrics until `ok(value)`; fails with `what` after WAIT."""
    deadline = time.monotonic() + WAIT
    while True:
        v = metric(port, name)
        if v is not None and ok(v):
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} ({name} = {v} after {WAIT}s)")
        time.sleep(0.02)


def observe_newer(v1: int, v2: int) -> bool:
    """RFC 7641 section 3.4: is Observe number v2 fresher than v1 (24-bit serial numbers)?"""
    return v1 != v2 and (v2 - v1) % (1 << 24) < (1 << 23)


def arun(coro: Any) -> Any:
    return asyncio.run(coro)


async def off(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking call (paho, HTTP, broker start) off the event loop, so aiocoap keeps working."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def within(aw: Any, timeout: float = WAIT) -> Any:
    return await asyncio.wait_for(aw, timeout)


@contextlib.asynccontextmanager
async def coap_client() -> AsyncIterator[aiocoap.Context]:
    ctx = await aiocoap.Context.create_client_context(transports=UDP_TRANSPORTS)
    try:
        yield ctx
    finally:
        await ctx.shutdown()


async def coap_request(
    ctx: aiocoap.Context,
    code: aiocoap.Code,
    url: str,
    payload: bytes = b"",
    *,
    uri_path: tuple[str, ...] | None = None,
    **options: Any,
) -> aiocoap.Message:
    """One request, block-wise transfers and retransmissions handled by aiocoap; its response."""
    msg = aiocoap.Message(code=code, uri=url, payload=payload, **options)
    if uri_path is not None:
        msg.opt.uri_path = uri_path
    return await within(ctx.request(msg).response)


async def coap_once(
    code: aiocoap.Code, url: str, payload: bytes = b"", **kw: Any
) -> aiocoap.Message:
    async with coap_client() as ctx:
        return await coap_request(ctx, code, url, payload, **kw)


class Led(resource.Resource):
    """A device's resource: keeps every request and answers 2.04 Changed."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[aiocoap.Message] = []

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        self.requests.append(request)
        return aiocoap.Message(code=aiocoap.CHANGED)


@contextlib.asynccontextmanager
async def device_server(led: Led) -> AsyncIterator[tuple[aiocoap.Context, int]]:
    """A CoAP device on 127.0.0.1 with `led` at /led: (its context, its UDP port). Requests the
    test sends through this context leave from the same socket, as a real device's would."""
    site = resource.Site()
    site.add_resource(["led"], led)
    for _ in range(5):
        port = free_port(socket.SOCK_DGRAM)
        try:
            ctx = await aiocoap.Context.create_server_context(
                site, bind=(HOST, port), transports=UDP_TRANSPORTS
            )
            break
        except OSError:  # the port was taken between the probe and the bind
            continue
    else:
        raise AssertionError("no free UDP port for the device")
    try:
        yield ctx, port
    finally:
        await ctx.shutdown()


class SilentDevice(threading.Thread):
    """A UDP socket that keeps every datagram it gets and never answers."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            if select.select([self.sock], [], [], 0.05)[0]:
                self.datagrams.append(self.sock.recv(65536))

    def __enter__(self) -> SilentDevice:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join(2)
        self.sock.close()


class LossyProxy(threading.Thread):
    """A UDP relay between one CoAP client and the gateway that loses, deterministically:

    - the first transmission of every datagram the client sends (by message type and id), and
    - the first ACK the gateway sends for each message id.

    So every confirmable request needs two retransmissions: one because the request was lost,
    one because its acknowledgement was. The gateway has to answer the second from its
    duplicate cache, without publishing again."""

    def __init__(self, gateway_port: int) -> None:
        super().__init__(daemon=True)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind((HOST, 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind((HOST, 0))
        self.back.connect((HOST, gateway_port))
        self.port = self.front.getsockname()[1]
        self.client: tuple[str, int] | None = None
        self.seen_up: set[tuple[int, int]] = set()
        self.seen_acks: set[int] = set()
        self.dropped_up = 0
        self.dropped_down = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for s in select.select([self.front, self.back], [], [], 0.05)[0]:
                try:
                    data, src = s.recvfrom(65536)
                except OSError:  # e.g. ICMP port unreachable reported on the socket
                    continue
                mtype = (data[0] >> 4) & 3 if data else -1
                mid = struct.unpack_from("!H", data, 2)[0] if len(data) >= 4 else -1
                if s is self.front:
                    self.client = src
                    if (mtype, mid) not in self.seen_up:
                        self.seen_up.add((mtype, mid))
                        self.dropped_up += 1
                        continue
                    self.back.send(data)
                else:
                    if mtype == ACK and mid not in self.seen_acks:
                        self.seen_acks.add(mid)
                        self.dropped_down += 1
                        continue
                    if self.client is not None:
                        self.front.sendto(data, self.client)

    def __enter__(self) -> LossyProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join(2)
        self.front.close()
        self.back.close()


class FastRetransmit(TransportTuning):
    """aiocoap retransmits confirmable messages after 0.15 to 0.225 s instead of 2 to 3 s, so the
    loss test takes seconds. Six retransmissions leave room for a slow debug build."""

    ACK_TIMEOUT = 0.15
    MAX_RETRANSMIT = 6


# -- publish, retain, read ------------------------------------------------------------------------


def test_post_publishes_to_the_device_topic_at_qos_1(broker_factory, clients):
    b = coap_broker(broker_factory)
    sub = clients(b.port).connect()
    sub.subscribe("devices/#", 2)
    r = arun(coap_once(aiocoap.POST, coap_url(b, "dev1/sensor/temp"), b"21.5"))
    assert r.code == aiocoap.CHANGED, r
    m = sub.expect()
    assert (m.topic, m.payload, m.qos, m.retain) == ("devices/dev1/sensor/temp", b"21.5", 1, False)
    sub.expect_none()


def test_qos_query_and_content_format(broker_factory, clients):
    b = coap_broker(broker_factory)
    sub = clients(b.port).connect()
    sub.subscribe("devices/#", 2)
    cbor = b"\xa1\x61t\x15"  # {"t": 21}

    async def scenario():
        async with coap_client() as ctx:

            async def req(method, path, payload=b"", **kw):
                return await coap_request(ctx, method, coap_url(b, path), payload, **kw)

            codes = [
                (await req(aiocoap.POST, "dev1/q0?qos=0", b"zero")).code,
                (await req(aiocoap.POST, "dev1/q2?qos=2", b"two")).code,
                (await req(aiocoap.POST, "dev1/json", b'{"t":21}', content_format=50)).code,
                (await req(aiocoap.PUT, "dev1/cbor", cbor, content_format=60)).code,
            ]
            return codes, await req(aiocoap.GET, "dev1/cbor")

    codes, got = arun(scenario())
    assert codes == [aiocoap.CHANGED] * 4
    msgs = {m.topic: m for m in sub.expect_n(4)}
    assert (msgs["devices/dev1/q0"].payload, msgs["devices/dev1/q0"].qos) == (b"zero", 0)
    assert (msgs["devices/dev1/q2"].payload, msgs["devices/dev1/q2"].qos) == (b"two", 2)
    assert msgs["devices/dev1/json"].props.get("ContentType") == "application/json"
    assert msgs["devices/dev1/cbor"].props.get("ContentType") == "application/cbor"
    # The Content-Format comes back with the value.
    assert (got.code, got.payload) == (aiocoap.CONTENT, cbor)
    assert got.opt.content_format == 60


def test_bad_requests_are_refused(broker_factory, clients):
    b = coap_broker(broker_factory)
    sub = clients(b.port).connect()
    sub.subscribe("devices/#", 1)

    async def scenario():
        async with coap_client() as ctx:

            async def code(method, path, **kw):
                return (await coap_request(ctx, method, coap_url(b, path), b"x", **kw)).code

            return [
                await code(aiocoap.POST, "dev1/sensor/+"),
                await code(aiocoap.POST, "", uri_path=("dev1", "sensor", "#")),
                await code(aiocoap.POST, "dev1"),  # a device but no resource
                await code(aiocoap.POST, "dev1/t?qos=3"),
                await code(aiocoap.POST, "dev1/t?qos=one"),
                await code(aiocoap.PATCH, "dev1/t"),
            ]

    codes = arun(scenario())
    assert codes == [aiocoap.BAD_REQUEST] * 5 + [aiocoap.METHOD_NOT_ALLOWED]
    sub.expect_none()


def test_put_retains_get_reads_delete_clears(broker_factory, clients):
    b = coap_broker(broker_factory)
    url = coap_url(b, "dev2/state")
    r = arun(coap_once(aiocoap.PUT, url, b"on"))
    assert r.code == aiocoap.CHANGED, r

    sub = clients(b.port).connect()
    sub.subscribe("devices/dev2/state", 1)
    m = sub.expect()
    assert (m.topic, m.payload, m.retain) == ("devices/dev2/state", b"on", True)

    r = arun(coap_once(aiocoap.GET, url))
    assert (r.code, r.payload) == (aiocoap.CONTENT, b"on")

    r = arun(coap_once(aiocoap.DELETE, url))
    assert r.code == aiocoap.DELETED, r
    # The empty retained message still reaches current subscribers.
    m = sub.expect()
    assert (m.topic, m.payload) == ("devices/dev2/state", b"")

    # A new subscriber gets no retained value: the first thing it sees is a later marker.
    late = clients(b.port).connect()
    late.subscribe("devices/dev2/#", 1)
    clients(b.port).connect().publish("devices/dev2/marker", b"after", qos=1)
    m = late.expect()
    assert (m.topic, m.payload, m.retain) == ("devices/dev2/marker", b"after", False)

    r = arun(coap_once(aiocoap.GET, url))
    assert r.code == aiocoap.NOT_FOUND, r


def test_get_of_a_value_never_written_is_not_found(broker_factory):
    b = coap_broker(broker_factory)
    r = arun(coap_once(aiocoap.GET, coap_url(b, "dev3/never/written")))
    assert r.code == aiocoap.NOT_FOUND, r


# -- Observe --------------------------------------------------------------------------------------


def test_observe_follows_mqtt_and_cancel_unsubscribes(broker_factory, clients):
    mport, flags = metrics_flags()
    b = coap_broker(broker_factory, *flags)
    pub = clients(b.port).connect()
    topic = "devices/dev1/sensor/temp"
    subs = "rookery_subscriptions"
    notifications = "rookery_coap_notifications_total"

    async def scenario():
        async with coap_client() as ctx:
            msg = aiocoap.Message(
                code=aiocoap.GET, uri=coap_url(b, "dev1/sensor/temp"), observe=0
            )
            req = ctx.request(msg)
            first = await within(req.response)
            assert first.code == aiocoap.CONTENT, first
            assert first.opt.observe is not None, f"not observing: {first}"
            assert first.payload == b""  # nothing published yet

            got: list[aiocoap.Message] = []

            async def collect() -> None:
                async for n in req.observation:
                    got.append(n)
                    if len(got) == 3:
                        return

            collector = asyncio.create_task(collect())
            for i in range(3):
                await off(pub.publish, topic, f"t{i}".encode(), 1)
            await within(collector)
            assert [(n.code, n.payload) for n in got] == [
                (aiocoap.CONTENT, b"t0"),
                (aiocoap.CONTENT, b"t1"),
                (aiocoap.CONTENT, b"t2"),
            ]
            numbers = [first.opt.observe] + [n.opt.observe for n in got]
            assert all(observe_newer(a, c) for a, c in itertools.pairwise(numbers)), numbers

            observing = await off(metric, mport, subs)
            assert observing is not None and observing >= 1
            req.observation.cancel()
            # aiocoap cancels lazily: it acknowledges the next notification and forgets the
            # token, and answers the one after that with RST, which ends the subscription.
            for i in range(2):
                await off(pub.publish, topic, f"after-cancel-{i}".encode(), 1)
            await off(
                wait_metric, mport, subs, lambda v: v == observing - 1,
                "the gateway kept the Observe subscription after the RST",
            )
            # No more notifications: the counter does not move for a new message.
            sent = await off(metric, mport, notifications)
            assert sent is not None and sent >= 3, f"{notifications} = {sent}"
            await off(pub.publish, topic, b"unheard", 1)
            await asyncio.sleep(QUIET)
            assert await off(metric, mport, notifications) == sent

    arun(scenario())


def test_observe_ends_on_deregistration_rst_and_unacknowledged_notification(
    broker_factory, clients
):
    """Raw datagrams, so that the test sees message types and that nothing more is sent."""
    mport, flags = metrics_flags()
    b = coap_broker(
        broker_factory, "--coap-ack-timeout-ms", "100", "--coap-max-retransmit", "2", *flags
    )
    pub = clients(b.port).connect()
    raw = RawCoap(b.ports["coap"])
    subs = "rookery_subscriptions"

    def observe(resource_path: str, token: bytes) -> Coap:
        r = raw.request(GET, f"dev1/{resource_path}", options=[(OBSERVE, b"")], token=token)
        assert dotted(r.code) == "2.05" and r.opt(OBSERVE) is not None, r
        return r

    # 1. Deregistration with a GET carrying Observe: 1.
    first = observe("a", b"tok-a")
    pub.publish("devices/dev1/a", b"a1", qos=1)
    n1 = raw.wait_for_token(b"tok-a")
    assert (n1.mtype, dotted(n1.code), n1.payload) == (CON, "2.05", b"a1"), n1
    assert observe_newer(first.opt_uint(OBSERVE), n1.opt_uint(OBSERVE))
    raw.ack(n1)
    pub.publish("devices/dev1/a", b"a2", qos=0)
    n2 = raw.wait_for_token(b"tok-a")
    assert (n2.mtype, n2.payload) == (NON, b"a2"), "a QoS 0 message is a NON notification"
    assert observe_newer(n1.opt_uint(OBSERVE), n2.opt_uint(OBSERVE))
    observing = metric(mport, subs)
    assert observing is not None and observing >= 1
    r = raw.request(GET, "dev1/a", options=[(OBSERVE, uint_opt(1))], token=b"tok-a")
    assert r.code >> 5 in (2, 4) and r.opt(OBSERVE) is None, r
    wait_metric(mport, subs, lambda v: v == observing - 1, "Observe: 1 did not unsubscribe")
    pub.publish("devices/dev1/a", b"a3", qos=1)
    raw.expect_silence()

    # 2. RST in reply to a notification.
    observe("b", b"tok-b")
    wait_metric(mport, subs, lambda v: v == observing, "no subscription for the 2nd Observe")
    pub.publish("devices/dev1/b", b"b1", qos=1)
    n = raw.wait_for_token(b"tok-b")
    assert (n.mtype, n.payload) == (CON, b"b1"), n
    raw.reset(n)
    wait_metric(mport, subs, lambda v: v == observing - 1, "an RST did not unsubscribe")
    pub.publish("devices/dev1/b", b"b2", qos=1)
    raw.expect_silence()

    # 3. A CON notification never acknowledged: 1 transmission + 2 retransmissions, then the
    #    gateway gives up and unsubscribes.
    observe("c", b"tok-c")
    wait_metric(mport, subs, lambda v: v == observing, "no subscription for the 3rd Observe")
    pub.publish("devices/dev1/c", b"c1", qos=1)
    copies = [raw.wait_for_token(b"tok-c")]
    wait_metric(mport, subs, lambda v: v == observing - 1, "an unacknowledged CON kept it")
    while (m := raw.recv(QUIET)) is not None:
        copies.append(m)
    assert len(copies) == 3, copies
    assert {(m.mtype, m.mid, m.payload) for m in copies} == {(CON, copies[0].mid, b"c1")}
    pub.publish("devices/dev1/c", b"c2", qos=1)
    raw.expect_silence()

    # 4. RST in reply to a NON notification (a QoS 0 message).
    observe("d", b"tok-d")
    wait_metric(mport, subs, lambda v: v == observing, "no subscription for the 4th Observe")
    pub.publish("devices/dev1/d", b"d1", qos=0)
    n = raw.wait_for_token(b"tok-d")
    assert (n.mtype, n.payload) == (NON, b"d1"), n
    raw.reset(n)
    wait_metric(mport, subs, lambda v: v == observing - 1, "an RST to a NON did not unsubscribe")
    pub.publish("devices/dev1/d", b"d2", qos=0)
    raw.expect_silence()
    raw.close()


# -- block-wise -----------------------------------------------------------------------------------


def test_blockwise_post_and_get(broker_factory, clients):
    rng = random.Random(5000)
    upload = bytes(rng.randrange(256) for _ in range(5000))
    blob = bytes(rng.randrange(256) for _ in range(5000))
    b = coap_broker(broker_factory)
    sub = clients(b.port).connect()
    sub.subscribe("devices/dev5/upload", 1)

    # aiocoap sends 5000 bytes as five Block1 requests; the gateway publishes them once, whole.
    r = arun(coap_once(aiocoap.POST, coap_url(b, "dev5/upload"), upload))
    assert r.code == aiocoap.CHANGED, r
    m = sub.expect()
    assert (m.topic, len(m.payload), m.payload == upload) == ("devices/dev5/upload", 5000, True)
    sub.expect_none()

    # A 5000-byte retained value set over MQTT; aiocoap fetches the Block2 blocks and joins them.
    clients(b.port).connect().publish("devices/dev5/blob", blob, qos=1, retain=True)
    r = arun(coap_once(aiocoap.GET, coap_url(b, "dev5/blob")))
    assert r.code == aiocoap.CONTENT, r
    assert len(r.payload) == 5000 and r.payload == blob

    # On the wire the first response is block 0 of at most 1024 bytes, with the More flag.
    raw = RawCoap(b.ports["coap"])
    first = raw.request(GET, "dev5/blob")
    block2 = first.opt_uint(BLOCK2)
    assert dotted(first.code) == "2.05" and block2 is not None, first
    num, more, szx = block2 >> 4, bool(block2 & 0x08), block2 & 0x07
    assert (num, more) == (0, True) and szx <= 6
    assert first.payload == blob[: 2 ** (szx + 4)]
    raw.close()


# -- authentication and ACL -----------------------------------------------------------------------


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    for user, password in users.items():
        r = subprocess.run(
            [str(BROKER_BIN), "passwd", "--hash", "pbkdf2", str(path), user],
            input=password + "\n", capture_output=True, text=True, timeout=30,
        )
        assert r.returncode == 0, r.stderr
    return path


def test_credentials_in_the_query_and_acl(broker_factory, clients, tmp_path):
    pw = make_password_file(tmp_path / "passwd", {"dev1": "secret", "watcher": "w4tch"})
    acl = tmp_path / "acl"
    acl.write_text(
        "user dev1\n"
        "topic readwrite devices/dev1/#\n"
        "topic deny devices/dev1/secret\n"
        "topic read commands/dev1/#\n"
        "\n"
        "user watcher\n"
        "topic read devices/#\n"
    )
    b = coap_broker(broker_factory, "--password-file", str(pw), "--acl-file", str(acl))
    watch = clients(b.port, username="watcher", password="w4tch").connect()
    assert watch.subscribe("devices/#", 1) == [1]

    async def scenario():
        async with coap_client() as ctx:
            async def post(path: str, payload: bytes) -> aiocoap.Code:
                return (await coap_request(ctx, aiocoap.POST, coap_url(b, path), payload)).code

            return [
                await post("dev1/sensor/temp", b"anonymous"),  # anonymous access is off
                await post("sensor/temp?u=dev1&p=wrong", b"wrong password"),
                await post("sensor/temp?u=dev1&p=secret", b"ok"),
                await post("secret?u=dev1&p=secret", b"denied by the ACL"),
            ]

    assert arun(scenario()) == [
        aiocoap.UNAUTHORIZED,
        aiocoap.UNAUTHORIZED,
        aiocoap.CHANGED,
        aiocoap.FORBIDDEN,
    ]
    m = watch.expect()
    assert (m.topic, m.payload) == ("devices/dev1/sensor/temp", b"ok")
    watch.expect_none()
    log = b.log()
    assert "p=secret" not in log and "p=wrong" not in log, "a password reached the log"


# -- commands -------------------------------------------------------------------------------------


def test_forged_failures_ban_no_address_and_anonymous_requests_take_no_device(
    broker_factory, clients, tmp_path
):
    """A UDP source can be forged: wrong passwords sent over CoAP count against the device,
    never against the address they claim, so the address's MQTT clients still get in. And
    with anonymous access on, a request without credentials cannot take over a device that
    authenticated."""
    pw = make_password_file(tmp_path / "passwd", {"dev1": "secret", "app": "app-pw"})
    b = coap_broker(
        broker_factory, "--password-file", str(pw), "--allow-anonymous",
        "--auth-fail-max", "3",
    )

    async def scenario():
        async with coap_client() as ctx:
            async def post(path: str) -> aiocoap.Code:
                return (await coap_request(ctx, aiocoap.POST, coap_url(b, path), b"x")).code

            wrong = [await post(f"t?u=dev{i}&p=wrong") for i in range(2, 8)]
            ok = await post("t?u=dev1&p=secret")
            anonymous = await post("dev1/t")
            return wrong, ok, anonymous

    wrong, ok, anonymous = arun(scenario())
    assert wrong == [aiocoap.UNAUTHORIZED] * 6
    assert ok == aiocoap.CHANGED
    assert anonymous == aiocoap.UNAUTHORIZED
    # Six failures from 127.0.0.1 over CoAP, past --auth-fail-max: the address is not banned.
    app = clients(b.port, username="app", password="app-pw").connect()
    app.disconnect()


def test_a_block_past_the_end_is_a_bad_option(broker_factory, clients):
    b = coap_broker(broker_factory)
    clients(b.port).connect().publish("devices/d/big", b"y" * 3000, qos=1, retain=True)
    raw = RawCoap(b.ports["coap"])
    # Block2 option (23): num 5, SZX 6 (1024 bytes): 5 * 1024 is past 3000 bytes.
    block = bytes([(5 << 4) | 6])
    mid = raw.next_mid()
    raw.send(encode(CON, 0x01, mid, raw.new_token(), request_options("d/big", extra=[(23, block)])))
    reply = raw.recv(WAIT)
    assert reply is not None and reply.mid == mid and reply.code == 0x82, reply  # 4.02
    # Block 2 is the last one: 3000 - 2048 bytes, More not set.
    block = bytes([(2 << 4) | 6])
    mid = raw.next_mid()
    raw.send(encode(CON, 0x01, mid, raw.new_token(), request_options("d/big", extra=[(23, block)])))
    reply = raw.recv(WAIT)
    assert reply is not None and reply.code == 0x45 and reply.payload == b"y" * 952, reply


def test_commands_reach_static_and_learned_devices(broker_factory, clients):
    mport, flags = metrics_flags()
    subs = "rookery_subscriptions"

    async def scenario():
        led7, led8 = Led(), Led()
        async with device_server(led7) as (_, port7), device_server(led8) as (dev8, _):
            b = await off(
                coap_broker, broker_factory, "--coap-device", f"dev7={HOST}:{port7}", *flags
            )
            # A device in the static map has its command subscription without a request.
            await off(
                wait_metric, mport, subs, lambda v: v >= 1,
                "no command subscription for the static device dev7",
            )
            watch = await off(lambda: clients(b.port).connect())
            await off(watch.subscribe, "commands/#", 1)

            await off(watch.publish, "commands/dev7/led", b"on", 1)
            got = await off(watch.expect_n, 2)
            assert [(m.topic, m.payload) for m in got] == [
                ("commands/dev7/led", b"on"),
                ("commands/dev7/led/result", b"2.04"),
            ]
            assert (got[1].qos, got[1].retain) == (1, False)
            assert [(r.code, r.mtype, r.payload) for r in led7.requests] == [
                (aiocoap.PUT, aiocoap.CON, b"on")
            ]

            # A learned address: dev8 is not in the map; its first request (sent from the
            # socket it listens on) tells the gateway where it is.
            before = await off(metric, mport, subs)
            assert before is not None
            r = await coap_request(dev8, aiocoap.POST, coap_url(b, "dev8/hello"), b"hi")
            assert r.code == aiocoap.CHANGED, r
            await off(
                wait_metric, mport, subs, lambda v: v >= before + 1,
                "no command subscription for dev8 after its first request",
            )
            await off(watch.publish, "commands/dev8/led", b"off", 1)
            got = await off(watch.expect_n, 2)
            assert [(m.topic, m.payload) for m in got] == [
                ("commands/dev8/led", b"off"),
                ("commands/dev8/led/result", b"2.04"),
            ]
            assert [(r.code, r.payload) for r in led8.requests] == [(aiocoap.PUT, b"off")]
            # Results are not sent on to the device as commands of their own.
            await off(watch.expect_none)
            assert len(led7.requests) == 1 and len(led8.requests) == 1

    arun(scenario())


def test_command_timeout_is_reported(broker_factory, clients):
    mport, flags = metrics_flags()
    with SilentDevice() as device:
        b = coap_broker(
            broker_factory,
            "--coap-device", f"devX={HOST}:{device.port}",
            "--coap-ack-timeout-ms", "100",
            "--coap-max-retransmit", "2",
            *flags,
        )
        wait_metric(
            mport, "rookery_subscriptions", lambda v: v >= 1,
            "no command subscription for the static device devX",
        )
        watch = clients(b.port).connect()
        watch.subscribe("commands/devX/#", 1)
        watch.publish("commands/devX/led", b"on", qos=1)
        got = watch.expect_n(2)
        assert [(m.topic, m.payload) for m in got] == [
            ("commands/devX/led", b"on"),
            ("commands/devX/led/result", b"timeout"),
        ]
        watch.expect_none()
    puts = [decode(d) for d in device.datagrams]
    assert len(puts) == 3, f"1 transmission + 2 retransmissions expected: {puts}"
    assert {(p.mtype, p.code, p.mid, p.token, p.payload) for p in puts} == {
        (CON, PUT, puts[0].mid, puts[0].token, b"on")
    }
    assert puts[0].path() == ["led"]


# -- reliability ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_lost_datagrams_are_retransmitted_without_duplicates(broker_factory, clients):
    # The gateway's own retransmissions (a separate response, if it makes one) are quick too.
    b = coap_broker(broker_factory, "--coap-ack-timeout-ms", "200")
    sub = clients(b.port).connect()
    sub.subscribe("devices/devL/#", 1)
    payloads = [f"m{i}".encode() for i in range(10)]

    with LossyProxy(b.ports["coap"]) as proxy:

        async def scenario():
            async with coap_client() as ctx:
                codes = []
                for p in payloads:
                    msg = aiocoap.Message(
                        code=aiocoap.POST,
                        uri=f"coap://{HOST}:{proxy.port}/devL/seq?qos=1",
                        payload=p,
                        transport_tuning=FastRetransmit(),
                    )
                    codes.append((await within(ctx.request(msg).response)).code)
                return codes

        codes = arun(scenario())

    assert codes == [aiocoap.CHANGED] * 10
    got = sub.expect_n(10)
    assert [(m.topic, m.payload) for m in got] == [("devices/devL/seq", p) for p in payloads]
    sub.expect_none(QUIET * 2)
    assert proxy.dropped_up >= 10 and proxy.dropped_down >= 10, (
        proxy.dropped_up, proxy.dropped_down,
    )


def test_malformed_datagrams_do_not_hurt_the_gateway(broker_factory, clients):
    b = coap_broker(broker_factory)
    raw = RawCoap(b.ports["coap"])
    rng = random.Random(7252)
    garbage = [
        b"",
        b"\x00",
        b"\x40",
        b"\x40\x02\x12",  # a truncated header
        b"\x80\x02\x00\x01",  # version 2
        b"\x49\x02\x00\x02" + b"t" * 9,  # token length 9 (reserved)
        b"\x48\x01\x00\x03ab",  # an 8-byte token with 2 bytes
        *(bytes(rng.randrange(256) for _ in range(n)) for n in (5, 64, 1400, 60000)),
    ]
    # Confirmable POSTs whose header parses but whose options do not: message format errors
    # (RFC 7252 section 3), each rejected with an RST.
    bad_cons = {
        0xBAD1: ("option delta nibble 15 (reserved)", b"\x40\x02\xba\xd1\xf1x"),
        0xBAD2: ("option length nibble 15 (reserved)", b"\x40\x02\xba\xd2\xbfx"),
        0xBAD3: ("Uri-Path of 8 bytes with 2 present", b"\x40\x02\xba\xd3\xb8ab"),
        0xBAD4: ("payload marker with no payload", b"\x40\x02\xba\xd4\xb1a\xff"),
    }
    for d in [*garbage, *(d for _, d in bad_cons.values())]:
        raw.send(d)

    resets: dict[int, Coap] = {}
    deadline = time.monotonic() + WAIT
    while set(resets) != set(bad_cons) and time.monotonic() < deadline:
        msg = raw.recv(deadline - time.monotonic())
        if msg is None:
            break
        if msg.mtype == RST and msg.mid in bad_cons:
            resets[msg.mid] = msg
    missing = [what for mid, (what, _) in bad_cons.items() if mid not in resets]
    assert not missing, f"no RST for: {missing}"
    assert all(m.code == EMPTY and m.token == b"" and not m.options for m in resets.values())

    # The gateway still serves, the same source included, and MQTT is unaffected.
    assert b.proc is not None and b.proc.poll() is None, "the broker died"
    sub = clients(b.port).connect()
    sub.subscribe("devices/devM/#", 1)
    r = raw.request(POST, "devM/ok", payload=b"still here")
    assert dotted(r.code) == "2.04", r
    r = arun(coap_once(aiocoap.POST, coap_url(b, "devM/ok"), b"aiocoap too"))
    assert r.code == aiocoap.CHANGED, r
    assert [m.payload for m in sub.expect_n(2)] == [b"still here", b"aiocoap too"]
    raw.close()


def test_rate_limit_per_source_address(broker_factory, clients):
    b = coap_broker(broker_factory, "--coap-rate-limit", "5")
    flood = RawCoap(b.ports["coap"])
    tokens = [flood.new_token() for _ in range(50)]
    for token in tokens:
        opts = request_options("devR/flood", ["qos=0"])
        flood.send(encode(CON, POST, flood.next_mid(), token, opts, b"x"))

    codes: dict[bytes, str] = {}
    deadline = time.monotonic() + WAIT
    while len(codes) < len(tokens) and time.monotonic() < deadline:
        msg = flood.recv(deadline - time.monotonic())
        if msg is None:
            break
        if msg.mtype == CON:
            flood.ack(msg)
        if msg.code != EMPTY and msg.token in tokens:
            codes[msg.token] = dotted(msg.code)
    assert len(codes) == 50, f"{50 - len(codes)} confirmable requests got no answer"
    assert set(codes.values()) == {"2.04", "4.29"}, sorted(codes.values())

    # Another source address has its own budget (127.0.0.2 is loopback too on Linux).
    other = RawCoap(b.ports["coap"], bind_host="127.0.0.2")
    r = other.request(POST, "devR/other", ["qos=0"], b"y")
    assert dotted(r.code) == "2.04", r
    flood.close()
    other.close()


# -- in a cluster ---------------------------------------------------------------------------------


def test_in_a_cluster_readings_and_commands_cross_nodes(broker_factory, clients):
    """Two clustered brokers, each with its gateway. A device talks to node 0's gateway; an
    application on node 1 gets its readings and sends it a command, whose result comes back
    on node 1: the device's session is an ordinary session of the cluster."""
    ports = [free_port(), free_port()]
    peers = ",".join(f"{HOST}:{p}" for p in ports)
    nodes = [
        coap_broker(
            broker_factory, "--node-id", f"node-{i}", "--cluster-name", "coap",
            "--cluster-listen", f"{HOST}:{port}", "--peers", peers,
        )
        for i, port in enumerate(ports)
    ]  # fmt: skip
    deadline = time.monotonic() + 15
    while not all("cluster link up" in n.log() for n in nodes):
        assert time.monotonic() < deadline, "the nodes did not link"
        time.sleep(0.05)

    async def scenario():
        led = Led()
        async with device_server(led) as (dev, _):
            app = await off(lambda: clients(nodes[1].port).connect())
            await off(app.subscribe, "devices/#", 1)
            await off(app.subscribe, "commands/+/led/result", 1)
            # Routes reach node 0 shortly after the subscription: retry until one arrives.
            got = None
            for attempt in range(50):
                r = await coap_request(
                    dev, aiocoap.POST, coap_url(nodes[0], "dev9/temp"), f"{attempt}".encode()
                )
                assert r.code == aiocoap.CHANGED, r
                got = await off(app.drain, 0.1)
                if got:
                    break
            assert got and got[0].topic == "devices/dev9/temp", got
            # The device's command subscription lives in its session on node 0.
            for _ in range(50):
                await off(app.publish, "commands/dev9/led", b"blink", 1)
                results = await off(app.drain, 0.3)
                if results:
                    break
            assert [(m.topic, m.payload) for m in results][:1] == [
                ("commands/dev9/led/result", b"2.04")
            ], results
            assert led.requests and led.requests[0].payload == b"blink"

    arun(scenario())


# -- DTLS with pre-shared keys (coaps://) ---------------------------------------------------------
#
# libcoap's command-line client, built on GnuTLS and on OpenSSL (Debian's libcoap3-bin): two DTLS
# stacks we did not write. Its `-k` takes the key as text; the PSK file holds its hex.

DTLS_CLIENTS = ["coap-client-gnutls", "coap-client-openssl"]
PSK_KEYS = {"dev1": b"device-one-secret", "dev2": b"device-two-secret"}


def write_psk(path: Path, keys: dict[str, bytes]) -> Path:
    path.write_text("".join(f"{ident}:{key.hex()}\n" for ident, key in keys.items()))
    return path


def coaps_broker(broker_factory: Callable[..., Broker], tmp_path: Path, *extra: str) -> Broker:
    psk = write_psk(tmp_path / "psk", PSK_KEYS)
    b = broker_factory(
        "--coaps-listen", f"{HOST}:0", "--psk-file", str(psk), "--allow-anonymous", "false", *extra
    )
    assert "coaps" in b.ports, f"no `ADDR (coaps)` in the first log line:\n{b.log()[:3000]}"
    return b


def libcoap(
    client: str, b: Broker, ident: str, key: bytes, method: str, path: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [client, "-m", method, "-u", ident, "-k", key.decode(), "-B", "5", *extra,
         f"coaps://{HOST}:{b.ports['coaps']}/{path}"],
        capture_output=True, text=True, timeout=WAIT + 10,
    )


def app_client(clients, b: Broker):
    """An MQTT application: anonymous access is off, so it logs in with the password file."""
    return clients(b.port, username="app", password="app-password").connect()


def app_password_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), "app", "app-password"],
                   check=True, capture_output=True)
    return path


@pytest.mark.parametrize("client", DTLS_CLIENTS)
def test_a_psk_device_posts_puts_and_gets_over_dtls(broker_factory, clients, tmp_path, client):
    b = coaps_broker(broker_factory, tmp_path, "--password-file", str(app_password_file(tmp_path)))
    app = app_client(clients, b)
    app.subscribe("devices/#", 1)
    r = libcoap(client, b, "dev1", PSK_KEYS["dev1"], "post", "sensor/temp", "-e", "21.5")
    assert r.returncode == 0, r
    # The PSK identity is the device id: the whole path is the resource.
    m = app.expect()
    assert (m.topic, m.payload, m.retain) == ("devices/dev1/sensor/temp", b"21.5", False)
    r = libcoap(client, b, "dev1", PSK_KEYS["dev1"], "put", "config/mode", "-e", "eco")
    m = app.expect()
    assert (m.topic, m.payload) == ("devices/dev1/config/mode", b"eco")
    late = app_client(clients, b)
    late.subscribe("devices/dev1/config/mode", 1)
    m = late.expect()
    assert (m.payload, m.retain) == (b"eco", True), "PUT retains"
    r = libcoap(client, b, "dev1", PSK_KEYS["dev1"], "get", "config/mode")
    assert r.stdout.strip() == "eco", r
    # Another device reads its own resources, not dev1's.
    r = libcoap(client, b, "dev2", PSK_KEYS["dev2"], "get", "config/mode")
    assert "eco" not in r.stdout and "4.04" in r.stderr + r.stdout, r


@pytest.mark.parametrize("client", DTLS_CLIENTS)
def test_observe_over_dtls_gets_each_message(broker_factory, clients, tmp_path, client):
    port, flags = metrics_flags()
    b = coaps_broker(
        broker_factory, tmp_path, "--password-file", str(app_password_file(tmp_path)), *flags
    )
    app = app_client(clients, b)
    before = wait_metric(port, "rookery_subscriptions", lambda v: True, "metrics up")
    observer = subprocess.Popen(
        [client, "-m", "get", "-s", "4", "-u", "dev1", "-k", PSK_KEYS["dev1"].decode(),
         f"coaps://{HOST}:{b.ports['coaps']}/sensor/temp"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_metric(port, "rookery_subscriptions", lambda v: v > before, "the observation's subscription")
        app.publish("devices/dev1/sensor/temp", b"one", 1)  # a CON notification
        app.publish("devices/dev1/sensor/temp", b"two", 0)  # a NON notification
        out, err = observer.communicate(timeout=WAIT + 10)
    finally:
        observer.kill()
    assert out.strip() == "onetwo", (out, err)
    assert metric(port, "rookery_coap_notifications_total") == 2


@pytest.mark.parametrize("client", DTLS_CLIENTS)
def test_a_wrong_key_or_unknown_identity_gets_no_session(broker_factory, clients, tmp_path, client):
    port, flags = metrics_flags()
    b = coaps_broker(
        broker_factory, tmp_path, "--password-file", str(app_password_file(tmp_path)), *flags
    )
    app = app_client(clients, b)
    app.subscribe("devices/#", 1)
    libcoap(client, b, "dev1", b"not-the-key", "post", "t", "-e", "x")
    libcoap(client, b, "intruder", PSK_KEYS["dev1"], "post", "t", "-e", "x")
    app.expect_none()
    failed = 'rookery_coap_handshakes_total{result="failed"}'
    assert (metric(port, failed) or 0) >= 2, b.log()[-3000:]
    assert metric(port, 'rookery_coap_handshakes_total{result="established"}') == 0


def test_plain_and_secure_listeners_side_by_side(broker_factory, clients, tmp_path):
    """A device on coaps:// keeps its session from anonymous requests on coap://, and the
    plain listener still serves devices with query credentials."""
    passwords = app_password_file(tmp_path)
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "dev3", "pw3"],
                   check=True, capture_output=True)
    b = coaps_broker(broker_factory, tmp_path, "--coap-listen", f"{HOST}:0",
                     "--password-file", str(passwords))
    app = app_client(clients, b)
    app.subscribe("devices/#", 1)
    r = libcoap("coap-client-gnutls", b, "dev1", PSK_KEYS["dev1"], "post", "t", "-e", "secure")
    assert app.expect().payload == b"secure", r
    r = arun(coap_once(aiocoap.POST, coap_url(b, "dev1/t"), b"forged"))
    assert r.code == aiocoap.UNAUTHORIZED, r
    # Not with credentials either: a device with a key speaks only over DTLS.
    r = arun(coap_once(aiocoap.POST, coap_url(b, "t?u=dev1&p=pw3"), b"forged"))
    assert r.code == aiocoap.UNAUTHORIZED, r
    r = arun(coap_once(aiocoap.POST, coap_url(b, "t?u=dev3&p=pw3"), b"plain"))
    assert r.code == aiocoap.CHANGED, r
    m = app.expect()
    assert (m.topic, m.payload) == ("devices/dev3/t", b"plain")
    app.expect_none()

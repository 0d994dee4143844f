"""Security with clients we did not write: mosquitto_pub/mosquitto_sub over TLS and mutual TLS
(RSA certificates made here with `cryptography`), paho over WebSocket and secure WebSocket,
password files made by Debian's `mosquitto_passwd`, `rookery-broker passwd` files read by the
real Mosquitto broker, the ACL example from the field, and SIGHUP reloads."""

from __future__ import annotations

import datetime
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from conftest import BROKER_BIN
from mqtt_util import HOST, QUIET, WAIT, Client

pytestmark = pytest.mark.usefixtures("mosquitto_clients")


# -- a test PKI (RSA, so that the Rust tests' ECDSA and Ed25519 are not the only key types) -----


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1, as openssl makes it
            serialization.NoEncryption(),
        )
    )
    return path


class Pki:
    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.ca_key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(_name("Rookery Test CA"))
            .issuer_name(_name("Rookery Test CA"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = dir / "ca.crt"
        self.ca_file.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def leaf(self, name: str, cn: str, *, server: bool, expired: bool = False) -> tuple[Path, Path]:
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
        if expired:
            start, end = now - datetime.timedelta(days=60), now - datetime.timedelta(days=30)
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
        )
        if server:
            import ipaddress

            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
                ),
                critical=False,
            )
        cert = b.sign(self.ca_key, hashes.SHA256())
        cert_file = self.dir / f"{name}.crt"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_file, _write_key(self.dir / f"{name}.key", key)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def mqtts_broker(broker_factory, pki: Pki, *extra: str):
    cert, key = pki.leaf("server", "localhost", server=True)
    return broker_factory(
        "--tls-listen", "127.0.0.1:0", "--cert", str(cert), "--key", str(key), *extra
    )


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, **kw)


# -- TLS -------------------------------------------------------------------------------------


def test_mosquitto_clients_over_mutual_tls_with_identity(broker_factory, pki: Pki) -> None:
    b = mqtts_broker(
        broker_factory, pki,
        "--ca", str(pki.ca_file), "--require-client-cert", "--cert-identity", "cn",
    )
    port = str(b.ports["mqtts"])
    dev_cert, dev_key = pki.leaf("dev", "device-42", server=False)
    tls = ["--cafile", str(pki.ca_file), "--cert", str(dev_cert), "--key", str(dev_key)]
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", HOST, "-p", port, *tls, "-t", "t/#", "-C", "1", "-v", "-i", "sub"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(0.5)
    for version in ("tlsv1.2", "tlsv1.3"):
        r = run(["mosquitto_pub", "-h", HOST, "-p", port, *tls, "--tls-version", version,
                 "-t", "t/x", "-m", f"over {version}", "-q", "1"])
        assert r.returncode == 0, r.stderr
    out, err = sub.communicate(timeout=WAIT)
    assert out.strip() == "t/x over tlsv1.2", err

    # No certificate, or an expired one: refused in the handshake.
    old_cert, old_key = pki.leaf("old", "device-43", server=False, expired=True)
    for bad in (
        ["--cafile", str(pki.ca_file)],
        ["--cafile", str(pki.ca_file), "--cert", str(old_cert), "--key", str(old_key)],
    ):
        r = run(["mosquitto_pub", "-h", HOST, "-p", port, *bad, "-t", "t/x", "-m", "no", "-q", "1"])
        assert r.returncode != 0, "publish without a valid client certificate must fail"
    log = b.log()
    assert "device-42" in log  # the certificate identity became the username


def test_server_certificate_is_verified_by_the_client(broker_factory, pki: Pki) -> None:
    b = mqtts_broker(broker_factory, pki)
    (pki.dir / "other").mkdir()
    other = Pki(pki.dir / "other")
    r = run(["mosquitto_pub", "-h", HOST, "-p", str(b.ports["mqtts"]),
             "--cafile", str(other.ca_file), "-t", "t", "-m", "x"])
    assert r.returncode != 0
    r = run(["mosquitto_pub", "-h", HOST, "-p", str(b.ports["mqtts"]),
             "--cafile", str(pki.ca_file), "-t", "t", "-m", "x"])
    assert r.returncode == 0, r.stderr


# -- WebSocket ---------------------------------------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_paho_over_websocket(broker_factory, clients, pki: Pki, secure: bool) -> None:
    cert, key = pki.leaf("server", "localhost", server=True)
    if secure:
        b = broker_factory("--wss-listen", "127.0.0.1:0", "--cert", str(cert), "--key", str(key))
        port, tls = b.ports["wss"], {"ca_certs": str(pki.ca_file)}
    else:
        b = broker_factory("--ws-listen", "127.0.0.1:0")
        port, tls = b.ports["ws"], None
    sub = clients(port, transport="websockets", tls=tls).connect()
    assert sub.subscribe("ws/#", qos=1) == [1]
    # Paho over WebSocket to paho over WebSocket, and plain TCP in.
    pub = clients(port, transport="websockets", tls=tls, version=4).connect()
    pub.publish("ws/a", b"from ws", qos=1)
    tcp = clients(b.port).connect()
    tcp.publish("ws/b", b"x" * 100_000, qos=2)
    got = sorted((m.topic, len(m.payload)) for m in (sub.expect(), sub.expect()))
    assert got == [("ws/a", 7), ("ws/b", 100_000)]


# -- passwords ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hash_kind", ["sha512", "sha512-pbkdf2"])
def test_password_files_from_mosquitto_passwd(broker_factory, clients, tmp_path, hash_kind) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd missing: install the mosquitto package (scripts/test does)")
    pw = tmp_path / "passwd"
    r = run(["mosquitto_passwd", "-H", hash_kind, "-c", "-b", str(pw), "sensor", "pä ss:wörd"])
    assert r.returncode == 0, r.stderr
    r = run(["mosquitto_passwd", "-H", hash_kind, "-b", str(pw), "other", "x"])
    assert r.returncode == 0, r.stderr
    prefix = "$6$" if hash_kind == "sha512" else "$7$"
    assert pw.read_text().startswith(f"sensor:{prefix}")
    b = broker_factory("--password-file", str(pw))
    clients(b.port, username="sensor", password="pä ss:wörd").connect()
    clients(b.port, username="sensor", password="wrong").connect(expect_reason=134)
    clients(b.port).connect(expect_reason=135)  # anonymous: refused once passwords exist
    r = run(["mosquitto_pub", "-h", HOST, "-p", str(b.port), "-u", "other", "-P", "x",
             "-t", "t", "-m", "m"])
    assert r.returncode == 0, r.stderr
    assert "pä ss:wörd" not in b.log()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def test_passwd_command_writes_files_mosquitto_reads(broker_factory, clients, tmp_path) -> None:
    pw = tmp_path / "passwd"
    for user, password, scheme in (("alice", "s3cret", "pbkdf2"), ("bob", "builder", "argon2id")):
        r = run([str(BROKER_BIN), "passwd", "--hash", scheme, str(pw), user], input=password + "\n")
        assert r.returncode == 0, r.stderr
    text = pw.read_text()
    assert text.startswith("alice:$7$") and "bob:$argon2id$" in text
    assert "s3cret" not in text
    # Our broker reads both entries.
    b = broker_factory("--password-file", str(pw))
    clients(b.port, username="alice", password="s3cret").connect()
    clients(b.port, username="bob", password="builder").connect()
    # The real Mosquitto reads our $7$ entry (it cannot read argon2id: drop that line for it).
    mosq_pw = tmp_path / "mosquitto_passwd"
    mosq_pw.write_text("".join(l for l in text.splitlines(True) if l.startswith("alice:")))
    mosq_pw.chmod(0o644)
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {HOST}\nallow_anonymous false\npassword_file {mosq_pw}\nuser root\n"
    )
    mosq = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)
        ok = run(["mosquitto_pub", "-h", HOST, "-p", str(port), "-u", "alice", "-P", "s3cret",
                  "-t", "t", "-m", "m"])
        assert ok.returncode == 0, ok.stderr
        bad = run(["mosquitto_pub", "-h", HOST, "-p", str(port), "-u", "alice", "-P", "nope",
                   "-t", "t", "-m", "m"])
        assert bad.returncode != 0
    finally:
        mosq.terminate()
        mosq.wait(5)
    # -D deletes.
    r = run([str(BROKER_BIN), "passwd", "-D", str(pw), "bob"])
    assert r.returncode == 0, r.stderr
    assert "bob:" not in pw.read_text()
    # The password never comes from argv: a third positional argument is refused.
    r = run([str(BROKER_BIN), "passwd", str(pw), "carol", "inline-password"])
    assert r.returncode != 0


# -- ACL -----------------------------------------------------------------------------------------

FIELD_ACL = "user sensor_device\ntopic readwrite sensors/#\ntopic read commands/device_123\n"


def test_the_field_acl_example(broker_factory, clients, tmp_path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(FIELD_ACL)
    b = broker_factory("--acl-file", str(acl))
    dev = clients(b.port, username="sensor_device").connect()
    assert dev.subscribe("sensors/#", qos=1) == [1]
    assert dev.subscribe("commands/device_123", qos=1) == [1]
    assert dev.subscribe("#", qos=1) == [135]
    assert dev.subscribe("commands/#", qos=1) == [135]
    assert dev.publish("sensors/t", b"21", qos=1) == 0
    assert dev.expect().topic == "sensors/t"
    assert dev.publish("commands/device_123", b"x", qos=1) == 135
    v3 = clients(b.port, username="sensor_device", version=4).connect()
    assert v3.subscribe("#", qos=1) == [0x80]
    other = clients(b.port, username="intruder").connect()
    assert other.subscribe("sensors/#", qos=1) == [135]
    # mosquitto_sub as sensor_device receives its command.
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", HOST, "-p", str(b.port), "-u", "sensor_device",
         "-t", "commands/device_123", "-C", "1"],
        stdout=subprocess.PIPE, text=True,
    )
    time.sleep(0.5)
    acl.write_text(FIELD_ACL + "user ops\ntopic write commands/#\n")
    b.signal(signal.SIGHUP)
    ops = clients(b.port, username="ops")
    ops.connect()
    deadline = time.monotonic() + WAIT
    while ops.publish("commands/device_123", b"reboot", qos=1) != 0:
        assert time.monotonic() < deadline, "SIGHUP did not load the new ACL"
        time.sleep(0.1)
    out, _ = sub.communicate(timeout=WAIT)
    assert out.strip() == "reboot"


def test_sighup_reload_revokes_a_live_subscription(broker_factory, clients, tmp_path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite public/#\ntopic readwrite news/#\n")
    b = broker_factory("--acl-file", str(acl))
    sub = clients(b.port).connect()
    assert sub.subscribe("news/#", qos=0) == [0]
    pub = clients(b.port).connect()
    pub.publish("news/1", b"before", qos=1)
    assert sub.expect().payload == b"before"
    acl.write_text("topic readwrite public/#\ntopic write news/#\n")
    b.signal(signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while "ACL file reloaded" not in b.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pub.publish("news/2", b"after", qos=1)
    sub.expect_none(QUIET * 5)
    assert sub.connected.is_set() and not sub.disconnected.is_set()

"""Test certificates, made at test time with `cryptography` (never committed).

`certs(tmp_path_factory)` makes one set per test session (a module-level cache, so every test
module shares it): a CA, server certificates for 127.0.0.1, ::1 and localhost (RSA and ECDSA
P-256), an SNI certificate for *.example.com and api.example.org, a client certificate with a
subject that exercises RFC 4514 escaping, an expired one, one expiring in 5 days, one not yet
valid, an encrypted key with its password file, a key that matches no certificate, a client
certificate from another CA, and a few broken files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PASSWORD = b"correct horse battery staple"
CLIENT_SERIAL = 0x1234ABCD5678
_NOW = datetime.datetime.now(datetime.UTC)
_DAY = datetime.timedelta(days=1)

PrivateKey = Any  # rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path

    @property
    def pem(self) -> bytes:
        return self.cert.read_bytes()


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path  # the CA certificate (PEM) that signs everything below but `foreign_client`
    ca_key: Path
    server: Pair  # RSA 2048: 127.0.0.1, ::1, localhost
    ecdsa: Pair  # P-256: same names
    sni: Pair  # *.example.com, api.example.org
    exact: Pair  # www.example.com: an exact SNI name beside the *.example.com wildcard
    client: Pair  # client auth, subject with O, OU, CN, emailAddress and characters to escape
    foreign_client: Pair  # a client certificate from another CA
    foreign_ca: Path
    expired: Pair
    soon: Pair  # expires in 5 days
    future: Pair  # not valid for another 10 days
    encrypted: Pair  # key encrypted with PASSWORD
    password_file: Path
    wrong_password_file: Path
    mismatched: Pair  # the server certificate with another key
    combined: Path  # server certificate and key in one file
    cn_only: Pair  # no SAN: the CN is its only name
    weak: Pair  # RSA 1024: below OpenSSL's security level 2
    garbage: Path  # text, not PEM
    der: Path  # the server certificate in DER
    empty: Path

    @property
    def client_subject(self) -> x509.Name:
        return _CLIENT_SUBJECT


_CLIENT_SUBJECT = x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "R+D <lab>"),
    x509.NameAttribute(NameOID.COMMON_NAME, "Jürgen \"jj\" Müller"),
    x509.NameAttribute(NameOID.EMAIL_ADDRESS, "jj@example.com"),
])


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def _key(kind: str = "ec") -> PrivateKey:
    if kind in ("rsa", "rsa1024"):
        return rsa.generate_private_key(public_exponent=65537, key_size=1024 if kind == "rsa1024" else 2048)
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: x509.Name, key: PrivateKey, issuer: x509.Name, issuer_key: PrivateKey, *,
           dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), emails: tuple[str, ...] = (),
           ca: bool = False, client: bool = False, serial: int | None = None,
           not_before: datetime.datetime | None = None,
           not_after: datetime.datetime | None = None) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key())
         .serial_number(serial if serial is not None else x509.random_serial_number())
         .not_valid_before(not_before or _NOW - _DAY)
         .not_valid_after(not_after or _NOW + 365 * _DAY)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.RFC822Name(e) for e in emails]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                                          encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make(d: Path) -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("greenfork test CA")
    ca = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    ca_path = _write(d / "ca.pem", _pem(ca), 0o644)
    ca_key_path = _write(d / "ca.key", _key_pem(ca_key))

    def pair(stem: str, subject: x509.Name, kind: str = "ec", password: bytes | None = None,
             **kw: Any) -> Pair:
        key = _key(kind)
        cert = _issue(subject, key, ca_name, ca_key, **kw)
        return Pair(_write(d / f"{stem}.pem", _pem(cert), 0o644),
                    _write(d / f"{stem}.key", _key_pem(key, password)))

    local: dict[str, Any] = {"dns": ("localhost",), "ips": ("127.0.0.1", "::1")}
    server = pair("server", _name("localhost"), "rsa", **local)
    foreign_key = _key()
    foreign_name = _name("some other CA")
    foreign = _issue(foreign_name, foreign_key, foreign_name, foreign_key, ca=True)
    fc_key = _key()
    fc = _issue(_name("mallory"), fc_key, foreign_name, foreign_key, client=True)
    other_key = _key()
    certs = Certs(
        dir=d, ca=ca_path, ca_key=ca_key_path, server=server,
        ecdsa=pair("ecdsa", _name("localhost"), **local),
        sni=pair("sni", _name("*.example.com"), dns=("*.example.com", "api.example.org")),
        exact=pair("exact", _name("www.example.com"), dns=("www.example.com",)),
        client=pair("client", _CLIENT_SUBJECT, client=True, serial=CLIENT_SERIAL,
                    emails=("jj@example.com",), not_after=datetime.datetime(2031, 3, 4, 5, 6, 7,
                                                                            tzinfo=datetime.UTC)),
        foreign_client=Pair(_write(d / "foreign-client.pem", _pem(fc), 0o644),
                            _write(d / "foreign-client.key", _key_pem(fc_key))),
        foreign_ca=_write(d / "foreign-ca.pem", _pem(foreign), 0o644),
        expired=pair("expired", _name("localhost"), **local, not_before=_NOW - 30 * _DAY,
                     not_after=_NOW - 2 * _DAY),
        soon=pair("soon", _name("localhost"), **local, not_after=_NOW + 5 * _DAY),
        future=pair("future", _name("localhost"), **local, not_before=_NOW + 10 * _DAY),
        encrypted=pair("encrypted", _name("localhost"), password=PASSWORD, **local),
        password_file=_write(d / "password.txt", PASSWORD + b"\n"),
        wrong_password_file=_write(d / "wrong-password.txt", b"hunter2\n"),
        mismatched=Pair(server.cert, _write(d / "other.key", _key_pem(other_key))),
        combined=_write(d / "combined.pem", server.cert.read_bytes() + server.key.read_bytes()),
        cn_only=pair("cn-only", _name("legacy.example.net")),
        weak=pair("weak", _name("localhost"), "rsa1024", **local),
        garbage=_write(d / "garbage.pem", b"this is not a certificate\n", 0o644),
        der=_write(d / "server.der", x509.load_pem_x509_certificate(server.cert.read_bytes())
                   .public_bytes(serialization.Encoding.DER), 0o644),
        empty=_write(d / "empty.pem", b"", 0o644),
    )
    return certs


_CACHE: dict[str, Certs] = {}


def certs(factory: pytest.TempPathFactory) -> Certs:
    """One set per test session, shared by every module that asks."""
    if "certs" not in _CACHE:
        _CACHE["certs"] = make(factory.mktemp("tlscerts"))
    return _CACHE["certs"]


# ------------------------------------------------------------------ in-memory handshakes


class HandshakeFailed(Exception):
    def __init__(self, side: str, error: Exception) -> None:
        super().__init__(f"{side}: {error}")
        self.side = side
        self.error = error


def client_context(c: Certs, *, cert: Pair | None = None, alpn: list[str] | None = None,
                   max_version: ssl.TLSVersion | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    """A client that trusts the test CA; hostname checks are left to each test."""
    ctx = ssl.create_default_context(cafile=str(c.ca))
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    if max_version is not None:
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is what the test shows
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.maximum_version = max_version
        if max_version < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 refuses TLS 1.1 on its own side at the default security level: lower it, so
            # that it is the server that refuses
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str | None = None,
              session: ssl.SSLSession | None = None) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A client and a server SSLObject over MemoryBIOs, pumped until both finish (bounded)."""
    sin, sout, cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server_ctx.wrap_bio(sin, sout, server_side=True)
    cli = client_ctx.wrap_bio(cin, cout, server_hostname=server_hostname, session=session)
    done = {"server": False, "client": False}
    for _ in range(50):
        for side, obj in (("client", cli), ("server", srv)):
            if done[side]:
                continue
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLError, OSError) as e:
                raise HandshakeFailed(side, e) from e
        moved = False
        for src, dst in ((cout, sin), (sout, cin)):
            data = src.read()
            if data:
                dst.write(data)
                moved = True
        if all(done.values()):
            # TLS 1.3: the server's verdict on a client certificate (and its tickets) come after
            # the client has finished; let the client read them
            if moved:
                try:
                    cli.read(1)
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLError, OSError) as e:
                    raise HandshakeFailed("client", e) from e
            return srv, cli
        if not moved and not all(done.values()):
            raise AssertionError("handshake stalled")
    raise AssertionError("handshake did not finish in 50 rounds")


def der(pair_or_path: Pair | Path) -> bytes:
    path = pair_or_path.cert if isinstance(pair_or_path, Pair) else pair_or_path
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)

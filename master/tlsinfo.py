"""The WSGI environ entries of a TLS connection, with mod_ssl's names.

Pure: from a server-side ssl.SSLObject after its handshake, the strings a WSGI application (or
middleware written for Apache's mod_ssl) reads. Computed once per connection; the worker keeps
the dict and copies it into each request's environ.

Distinguished names are written as mod_ssl 2.4 writes them (OpenSSL's RFC 2253 form without
escaping UTF-8: `CN=alice,OU=R\\+D,O=Example\\, Inc.,C=DE`, most specific first), from the
certificate the stdlib already decoded in the handshake, so no second parser runs per
connection.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterable
from typing import Any

from greenfork.master.tls import SNI_ATTR

__all__ = ["environ", "format_dn", "server_name"]

_ESCAPED = frozenset(',+"\\<>;')


def server_name(sslobj: Any) -> str | None:
    """The host name the client asked for in SNI, or None if it sent none."""
    name = getattr(sslobj, SNI_ATTR, None)
    return name if isinstance(name, str) and name else None


def environ(sslobj: ssl.SSLObject | ssl.SSLSocket, client_cert_user: str = "none") -> dict[str, str]:
    """`wsgi.url_scheme`, `HTTPS`, `SSL_*` and, per `client_cert_user` ("none", "cn" or "dn"),
    `REMOTE_USER` from the verified client certificate. An SSLSocket works as well."""
    env = {"wsgi.url_scheme": "https", "HTTPS": "on"}
    version = sslobj.version()
    if version:
        env["SSL_PROTOCOL"] = version
    cipher = sslobj.cipher()
    if cipher is not None:
        env["SSL_CIPHER"] = cipher[0]
        env["SSL_CIPHER_USEKEYSIZE"] = str(cipher[2])
    env["SSL_SESSION_RESUMED"] = "Resumed" if sslobj.session_reused else "Initial"
    name = server_name(sslobj)
    if name:
        env["SSL_SERVER_NAME"] = name
        env["SSL_TLS_SNI"] = name  # mod_ssl's own name for it
    # With verification on, a certificate that fails it fails the handshake, so a dict here is
    # a verified certificate; with cert_reqs none the server asks for none and this is empty.
    cert = sslobj.getpeercert()
    if not cert or "subject" not in cert:
        env["SSL_CLIENT_VERIFY"] = "NONE"
        return env
    env["SSL_CLIENT_VERIFY"] = "SUCCESS"
    subject: Any = cert["subject"]
    issuer: Any = cert.get("issuer", ())
    env["SSL_CLIENT_S_DN"] = format_dn(subject)
    env["SSL_CLIENT_I_DN"] = format_dn(issuer)
    for key, rdns in (("SSL_CLIENT_S_DN_CN", subject), ("SSL_CLIENT_I_DN_CN", issuer)):
        cn = _first(rdns, "commonName")
        if cn is not None:
            env[key] = cn
    email = _first(subject, "emailAddress")
    if email is not None:
        env["SSL_CLIENT_S_DN_Email"] = email
    for field in ("serialNumber", "version", "notBefore", "notAfter"):
        if field in cert:
            env[_CERT_KEYS[field]] = str(cert[field])
    sans: Iterable[tuple[str, str]] = cert.get("subjectAltName", ())  # type: ignore[assignment]
    counts: dict[str, int] = {}
    for kind, value in sans:
        label = _SAN_KEYS.get(kind)
        if label is not None:
            n = counts.get(label, 0)
            counts[label] = n + 1
            env[f"SSL_CLIENT_SAN_{label}_{n}"] = value
    der = sslobj.getpeercert(binary_form=True)
    if der:
        env["SSL_CLIENT_CERT"] = ssl.DER_cert_to_PEM_cert(der)
    if client_cert_user == "cn" and "SSL_CLIENT_S_DN_CN" in env:
        env["REMOTE_USER"] = env["SSL_CLIENT_S_DN_CN"]
    elif client_cert_user == "dn":
        env["REMOTE_USER"] = env["SSL_CLIENT_S_DN"]
    return env


_CERT_KEYS = {"serialNumber": "SSL_CLIENT_M_SERIAL", "version": "SSL_CLIENT_M_VERSION",
              "notBefore": "SSL_CLIENT_V_START", "notAfter": "SSL_CLIENT_V_END"}
_SAN_KEYS = {"email": "Email", "DNS": "DNS"}


def format_dn(rdns: Iterable[Iterable[tuple[str, str]]]) -> str:
    """A name from getpeercert() as OpenSSL prints it with -nameopt RFC2253,-esc_msb."""
    # OpenSSL reverses the flat list of attributes, so the members of a multi-valued RDN too
    return ",".join("+".join(f"{_short(k)}={_escape(v)}" for k, v in reversed(list(rdn)))
                    for rdn in reversed(list(rdns)))


def _first(rdns: Iterable[Iterable[tuple[str, str]]], key: str) -> str | None:
    for rdn in rdns:
        for k, v in rdn:
            if k == key:
                return v
    return None


@functools.lru_cache(maxsize=256)
def _short(long_name: str) -> str:
    # getpeercert() names attributes with OpenSSL's long names ("organizationalUnitName");
    # mod_ssl prints the short ones ("OU"); OpenSSL's own table maps one to the other
    try:
        return ssl._ASN1Object.fromname(long_name).shortname or long_name
    except ValueError:
        return long_name  # an OID OpenSSL does not know: kept in dotted form


def _escape(value: str) -> str:
    out = []
    last = len(value) - 1
    for i, ch in enumerate(value):
        if ch in _ESCAPED or (i == 0 and ch in "# ") or (i == last and ch == " "):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)

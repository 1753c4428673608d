"""master/tlsinfo.py: every environ key from real handshakes, distinguished names checked against
`openssl x509 -nameopt RFC2253,-esc_msb` (how mod_ssl 2.4 prints them) and fuzzed against
cryptography's independent RFC 4514 writer."""

from __future__ import annotations

import datetime
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from greenfork.master import tls, tlsinfo
from greenfork.master.settings import defaults
from tests import tlscerts
from tests.tlscerts import Certs, client_context, handshake


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tlscerts.certs(tmp_path_factory)


def server(certs: Certs, **kw: object) -> ssl.SSLContext:
    base: dict[str, object] = {"bind": ("https://127.0.0.1:0",), "certfile": str(certs.server.cert),
                               "keyfile": str(certs.server.key), "cert_reqs": "optional",
                               "ca_certs": str(certs.ca)}
    base.update(kw)
    ctx = tls.load(defaults(**base)).default
    assert ctx is not None
    return ctx


def openssl_x509(path: Path, *opts: str) -> str:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail("the openssl command is required")
    out = subprocess.run([exe, "x509", "-in", str(path), "-noout", "-nameopt", "RFC2253,-esc_msb", *opts],
                         capture_output=True, timeout=30, check=True).stdout.decode()
    return out.rstrip("\n").split("=", 1)[1]  # a DN may end in an escaped space


def test_every_key_with_a_client_certificate(certs: Certs) -> None:
    srv, _ = handshake(server(certs), client_context(certs, cert=certs.client), server_hostname="localhost")
    env = tlsinfo.environ(srv, "cn")
    assert env == {
        "wsgi.url_scheme": "https",
        "HTTPS": "on",
        "SSL_PROTOCOL": "TLSv1.3",
        "SSL_CIPHER": "TLS_AES_256_GCM_SHA384",
        "SSL_CIPHER_USEKEYSIZE": "256",
        "SSL_SESSION_RESUMED": "Initial",
        "SSL_SERVER_NAME": "localhost",
        "SSL_TLS_SNI": "localhost",
        "SSL_CLIENT_VERIFY": "SUCCESS",
        "SSL_CLIENT_S_DN": openssl_x509(certs.client.cert, "-subject"),
        "SSL_CLIENT_I_DN": openssl_x509(certs.client.cert, "-issuer"),
        "SSL_CLIENT_S_DN_CN": 'Jürgen "jj" Müller',
        "SSL_CLIENT_I_DN_CN": "greenfork test CA",
        "SSL_CLIENT_S_DN_Email": "jj@example.com",
        "SSL_CLIENT_M_SERIAL": openssl_x509(certs.client.cert, "-serial"),
        "SSL_CLIENT_M_VERSION": "3",
        "SSL_CLIENT_V_START": openssl_x509(certs.client.cert, "-startdate"),
        "SSL_CLIENT_V_END": "Mar  4 05:06:07 2031 GMT",
        "SSL_CLIENT_SAN_Email_0": "jj@example.com",
        "SSL_CLIENT_CERT": certs.client.cert.read_text(),
        "REMOTE_USER": 'Jürgen "jj" Müller',
    }
    # the values openssl printed are what this test's certificate holds
    assert env["SSL_CLIENT_S_DN"] == ('emailAddress=jj@example.com,CN=Jürgen \\"jj\\" Müller,'
                                      'OU=R\\+D \\<lab\\>,O=Example\\, Inc.,C=DE')
    assert env["SSL_CLIENT_M_SERIAL"] == f"{tlscerts.CLIENT_SERIAL:X}"


@pytest.mark.parametrize(("mode", "user"), [
    ("none", None),
    ("cn", 'Jürgen "jj" Müller'),
    ("dn", 'emailAddress=jj@example.com,CN=Jürgen \\"jj\\" Müller,OU=R\\+D \\<lab\\>,O=Example\\, Inc.,C=DE'),
])
def test_remote_user(certs: Certs, mode: str, user: str | None) -> None:
    srv, _ = handshake(server(certs), client_context(certs, cert=certs.client))
    assert tlsinfo.environ(srv, mode).get("REMOTE_USER") == user


def test_without_a_client_certificate(certs: Certs) -> None:
    srv, _ = handshake(server(certs), client_context(certs, max_version=ssl.TLSVersion.TLSv1_2))
    assert tlsinfo.environ(srv, "cn") == {
        "wsgi.url_scheme": "https", "HTTPS": "on", "SSL_PROTOCOL": "TLSv1.2",
        "SSL_CIPHER": "ECDHE-RSA-AES128-GCM-SHA256", "SSL_CIPHER_USEKEYSIZE": "128",
        "SSL_SESSION_RESUMED": "Initial", "SSL_CLIENT_VERIFY": "NONE",
    }


def test_cert_reqs_none_reports_none_even_if_the_client_has_one(certs: Certs) -> None:
    srv, _ = handshake(server(certs, cert_reqs="none", ca_certs=None),
                       client_context(certs, cert=certs.client))
    env = tlsinfo.environ(srv)
    assert env["SSL_CLIENT_VERIFY"] == "NONE" and "SSL_CLIENT_S_DN" not in env


def test_sni_name_is_the_one_the_client_sent(certs: Certs) -> None:
    srv, _ = handshake(server(certs), client_context(certs), server_hostname="shop.example.net")
    assert (tlsinfo.environ(srv)["SSL_SERVER_NAME"], tlsinfo.server_name(srv)) == ("shop.example.net",) * 2
    srv, _ = handshake(server(certs), client_context(certs))
    assert "SSL_SERVER_NAME" not in tlsinfo.environ(srv) and tlsinfo.server_name(srv) is None


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_session_resumed(certs: Certs, version: ssl.TLSVersion) -> None:
    ctx = server(certs)
    cctx = client_context(certs, max_version=version)
    _, cli = handshake(ctx, cctx)
    srv, cli2 = handshake(ctx, cctx, session=cli.session)
    assert cli2.session_reused
    assert tlsinfo.environ(srv)["SSL_SESSION_RESUMED"] == "Resumed"


# ------------------------------------------------------------------ distinguished names


def _escaping_cert(certs: Certs, tmp_path: Path) -> tlscerts.Pair:
    """A client certificate whose subject needs every kind of RFC 2253 escape."""
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, " padded ")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                           "#hash;semi=eq")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.LOCALITY_NAME, "tab\there")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "multi"),
                                        x509.NameAttribute(NameOID.USER_ID, "u1")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example")]),
    ])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=9))
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    pair = tlscerts.Pair(tmp_path / "esc.pem", tmp_path / "esc.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pair


def test_dn_escaping_matches_openssl(certs: Certs, tmp_path: Path) -> None:
    pair = _escaping_cert(certs, tmp_path)
    srv, _ = handshake(server(certs), client_context(certs, cert=pair))
    env = tlsinfo.environ(srv, "dn")
    assert env["SSL_CLIENT_S_DN"] == openssl_x509(pair.cert, "-subject")
    assert env["REMOTE_USER"] == env["SSL_CLIENT_S_DN"]
    assert "SSL_CLIENT_S_DN_CN" in env  # from the multi-valued RDN
    # OpenSSL reverses the members of a multi-valued RDN too
    assert env["SSL_CLIENT_S_DN"] == ("DC=example,UID=u1+CN=multi,L=tab\\09here,OU=\\#hash\\;semi=eq,"
                                      "O=\\ padded\\ ")


_ATTRS = [("commonName", NameOID.COMMON_NAME), ("organizationName", NameOID.ORGANIZATION_NAME),
          ("organizationalUnitName", NameOID.ORGANIZATIONAL_UNIT_NAME),
          ("localityName", NameOID.LOCALITY_NAME),
          ("stateOrProvinceName", NameOID.STATE_OR_PROVINCE_NAME)]
# values without control characters (cryptography leaves those unescaped) and of two or more
# characters (cryptography escapes a lone space twice)
_VALUE = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=2, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_ATTRS), _VALUE), min_size=1, max_size=5))
def test_format_dn_agrees_with_cryptography(attrs: list[tuple[tuple[str, x509.ObjectIdentifier], str]]
                                            ) -> None:
    rdns = [((long_name, value),) for (long_name, _oid), value in attrs]
    name = x509.Name([x509.NameAttribute(oid, value) for (_long, oid), value in attrs])
    assert tlsinfo.format_dn(rdns) == name.rfc4514_string()


def test_format_dn_units() -> None:
    assert tlsinfo.format_dn([]) == ""
    two = [(("countryName", "DE"),), (("commonName", "a"), ("userId", "b"))]
    assert tlsinfo.format_dn(two) == "UID=b+CN=a,C=DE"
    # an OID OpenSSL has no name for stays dotted
    assert tlsinfo.format_dn([(("1.2.3.4.5", "x,y"),)]) == "1.2.3.4.5=x\\,y"
    assert tlsinfo.format_dn([(("commonName", " #a "),)]) == "CN=\\ #a\\ "
    assert tlsinfo.format_dn([(("commonName", "#"),)]) == "CN=\\#"
    assert tlsinfo.format_dn([(("commonName", "a\x00\x7fb"),)]) == "CN=a\\00\\7Fb"

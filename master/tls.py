"""Server SSLContexts built from Settings, in the master, before it forks.

The master reads every certificate and key while it still has its privileges (a key may be
mode 600 and owned by root), checks them so that a bad file is one clear line naming it, and
builds the SSLContexts the workers inherit through fork. Because every worker inherits the same
contexts, they share the session ticket keys OpenSSL made for them: a client resumes its session
on whichever worker accepts its next connection. A HUP calls load() again; the caller keeps the
old TlsConfig when the new one raises.

`cryptography` reads the certificates (names, expiry, a key that does not match): it is imported
only when TLS is configured, so a cleartext master never loads it.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from greenfork.master.addresses import BindSpec, parse_bind
from greenfork.master.settings import Settings

if TYPE_CHECKING:
    import ssl

    from cryptography import x509

__all__ = ["ALPN_H2", "ALPN_HTTP1", "EXPIRY_WARNING_DAYS", "SNI_ATTR", "Certificate", "TlsConfig", "TlsError",
           "alpn_protocols", "configured", "load"]

ALPN_HTTP1: tuple[str, ...] = ("http/1.1",)
# HTTP/2 first: a client that offers both gets HTTP/2 (OpenSSL picks by the server's order)
ALPN_H2: tuple[str, ...] = ("h2", "http/1.1")


def alpn_protocols(settings: Settings) -> tuple[str, ...]:
    """The ALPN names TLS listeners offer, from --http-protocols. A front that delegates
    (--delegate) offers no h2: it hands over whole connections by their first HTTP/1.1 head,
    which an HTTP/2 connection does not have, so its clients must speak HTTP/1.1."""
    h2 = "h2" in settings.http_protocols and not settings.delegate
    return (("h2",) if h2 else ()) + (("http/1.1",) if "h1" in settings.http_protocols or not h2 else ())
EXPIRY_WARNING_DAYS = 14

# The SNI callback stores the name the client asked for on its SSLObject under this attribute:
# the stdlib gives a server no other way to read it after the handshake (tlsinfo reads it).
SNI_ATTR = "greenfork_server_name"

_DAY = 86400.0
_KEY_RE = re.compile(rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----.*?-----END \1-----",
                     re.DOTALL)
_CERT_MARK = b"-----BEGIN CERTIFICATE-----"


class TlsError(Exception):
    """A TLS configuration that cannot be served; str() is the operator's line, naming the file."""


@dataclass(frozen=True, slots=True)
class Certificate:
    """What the master knows of one served certificate: for logs and the expiry metric."""

    path: str  # the certificate file, absolute
    server_names: tuple[str, ...]  # its SAN DNS names and IP addresses, or its CN without SANs
    not_before: float  # Unix time
    not_after: float  # Unix time
    subject: str  # RFC 4514
    sni: str | None = None  # the --sni name that selects it; None for --certfile

    def covers(self, name: str) -> bool:
        """Whether a client asking for `name` (maybe a `*.` pattern itself) would accept it."""
        for pattern in self.server_names:
            if pattern == name:
                return True
            if pattern.startswith("*.") and not name.startswith("*."):
                label, dot, rest = name.partition(".")
                if dot and label and "." + rest == pattern[1:]:
                    return True
        return False


@dataclass(frozen=True, eq=False)
class TlsConfig:
    """The contexts of one generation. Empty (default is None) when no TLS is configured."""

    default: ssl.SSLContext | None = None
    certificates: tuple[Certificate, ...] = ()
    warnings: tuple[str, ...] = ()  # operator lines to log once, at start or reload
    alpn: tuple[str, ...] = ALPN_HTTP1
    handshake_timeout: float = 10.0
    client_cert_user: str = "none"
    exact: Mapping[str, ssl.SSLContext] = field(default_factory=dict)
    wildcard: Mapping[str, ssl.SSLContext] = field(default_factory=dict)  # ".example.com" -> ctx

    @property
    def enabled(self) -> bool:
        return self.default is not None

    def context_for(self, spec: BindSpec) -> ssl.SSLContext | None:
        """The context an https:// listener wraps its connections in; None for cleartext ones."""
        if not spec.tls:
            return None
        if self.default is None:  # load() refuses this; a caller mixing configs gets a clear error
            raise TlsError(f"{spec.raw.strip()} is an https:// address but no certificate is loaded")
        return self.default

    def context_for_name(self, server_name: str | None) -> ssl.SSLContext | None:
        """The SNI choice: an exact name, else the one-label wildcard, else the default."""
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = self.exact.get(name)
            if ctx is not None:
                return ctx
            # a one-label wildcard can only be "*" + the name minus its first label, so the
            # longest matching wildcard is also the only one
            _label, dot, rest = name.partition(".")
            if dot and _label:
                ctx = self.wildcard.get("." + rest)
                if ctx is not None:
                    return ctx
        return self.default

    def expiry_by_server_name(self) -> dict[str, float]:
        """For greenfork_tls_certificate_expiry_timestamp_seconds{server_name}: the earliest
        not-after among the certificates naming each server name."""
        out: dict[str, float] = {}
        for cert in self.certificates:
            for name in cert.server_names:
                out[name] = min(out.get(name, cert.not_after), cert.not_after)
        return out

    def expiry_report(self, now: float) -> list[tuple[int, str]]:
        """(logging level, line) for each certificate expired, expiring within 14 days, or not
        yet valid. An expired certificate is still served (see docs/tls.md)."""
        out: list[tuple[int, str]] = []
        for cert in self.certificates:
            names = ", ".join(cert.server_names) or cert.subject
            if cert.not_after <= now:
                out.append((logging.ERROR, f"TLS certificate {cert.path} ({names}) expired on "
                            f"{_date(cert.not_after)}: clients refuse it; renew it and reload (HUP)"))
            elif cert.not_after - now < EXPIRY_WARNING_DAYS * _DAY:
                days = (cert.not_after - now) / _DAY
                out.append((logging.WARNING, f"TLS certificate {cert.path} ({names}) expires on "
                            f"{_date(cert.not_after)}, in {days:.1f} days: renew it and reload (HUP)"))
            if cert.not_before > now:
                out.append((logging.ERROR, f"TLS certificate {cert.path} ({names}) is not valid "
                            f"until {_date(cert.not_before)}: clients refuse it until then "
                            "(is the clock right?)"))
        return out


def configured(settings: Settings) -> bool:
    """Whether load() has anything to check: an https:// address or any TLS file or option."""
    return bool(settings.certfile or settings.keyfile or settings.sni or settings.keyfile_password_file
                or settings.ca_certs or settings.cert_reqs != "none" or settings.client_cert_user != "none"
                or _https_binds(settings))


def load(settings: Settings, alpn: Sequence[str] = ALPN_HTTP1, *, base_dir: str | None = None) -> TlsConfig:
    """Read, check and build every TLS context the settings ask for.

    Relative paths are taken from `base_dir` (the directory greenfork was started in, as for
    its configuration file), default the current directory. Raises TlsError.
    """
    warnings: list[str] = []
    https = _https_binds(settings)
    _check_combinations(settings, https, warnings)
    if not (settings.certfile or settings.sni):
        return TlsConfig(alpn=tuple(alpn), handshake_timeout=settings.tls_handshake_timeout,
                         client_cert_user=settings.client_cert_user, warnings=tuple(warnings))
    assert settings.certfile is not None  # _check_combinations refuses --sni without it
    base = base_dir if base_dir is not None else os.getcwd()

    def path_of(p: str) -> str:
        return os.path.normpath(os.path.join(base, os.path.expanduser(p)))

    password, password_file = None, ""
    if settings.keyfile_password_file:
        password_file = path_of(settings.keyfile_password_file)
        password = _read_password(password_file, warnings)
    cafile = path_of(settings.ca_certs) if settings.ca_certs and settings.cert_reqs != "none" else None
    if cafile is not None:
        _check_ca_file(cafile)

    def build(certfile: str, keyfile: str | None, sni: str | None) -> tuple[ssl.SSLContext, Certificate]:
        cert_path = path_of(certfile)
        key_path = path_of(keyfile) if keyfile else None
        info = _check_pair(cert_path, key_path, password, password_file, sni, warnings)
        ctx = _context(settings, cert_path, key_path, password, cafile, alpn)
        return ctx, info

    default, default_info = build(settings.certfile, settings.keyfile, None)
    certificates = [default_info]
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for entry in settings.sni:
        ctx, info = build(entry.certfile, entry.keyfile, entry.server_name)
        certificates.append(info)
        if not info.covers(entry.server_name):
            warnings.append(f"the certificate {info.path} for --sni {entry.server_name} does not name "
                            f"{entry.server_name} (it names {', '.join(info.server_names) or 'nothing'}): "
                            "clients will refuse it")
        if entry.server_name.startswith("*."):
            wildcard[entry.server_name[1:]] = ctx
        else:
            exact[entry.server_name] = ctx
    config = TlsConfig(default=default, certificates=tuple(certificates), warnings=tuple(warnings),
                       alpn=tuple(alpn), handshake_timeout=settings.tls_handshake_timeout,
                       client_cert_user=settings.client_cert_user, exact=exact, wildcard=wildcard)
    default.sni_callback = _sni_callback(config)
    return config


# ------------------------------------------------------------------ checks


def _https_binds(settings: Settings) -> list[BindSpec]:
    return [spec for spec in (parse_bind(b) for b in settings.bind) if spec.tls]


def _check_combinations(settings: Settings, https: list[BindSpec], warnings: list[str]) -> None:
    if https and not settings.certfile:
        raise TlsError(f"the address {https[0].raw.strip()} serves TLS but no certificate is set: "
                       "give --certfile (and --keyfile)")
    if settings.keyfile and not settings.certfile:
        raise TlsError("--keyfile is set without --certfile: give the certificate too")
    if settings.sni and not settings.certfile:
        raise TlsError("--sni needs --certfile: the certificate for clients that send no server "
                       "name, or one no --sni entry matches")
    if settings.cert_reqs != "none" and not settings.ca_certs:
        raise TlsError(f"--cert-reqs {settings.cert_reqs} needs --ca-certs: the CA certificates "
                       "client certificates must chain to")
    if settings.client_cert_user != "none" and settings.cert_reqs == "none":
        raise TlsError(f"--client-cert-user {settings.client_cert_user} needs --cert-reqs optional "
                       "or required: without a client certificate there is no user")
    if settings.certfile and not https:
        warnings.append("--certfile is set but no https:// address is bound: the certificate is "
                        "checked but not served")
    if settings.ca_certs and settings.cert_reqs == "none":
        warnings.append("--ca-certs is ignored while --cert-reqs is none (client certificates "
                        "are not asked for)")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TlsError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise TlsError(f"{what} {path} is a directory") from None
    except OSError as e:
        raise TlsError(f"cannot read {what} {path}: {(e.strerror or str(e)).lower()}") from None


def _check_private(path: str, what: str, warnings: list[str]) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # it was just read; a race here is caught by the next read
    if mode & 0o044:
        warnings.append(f"{what} {path} is readable by group or others (mode {mode:03o}): "
                        "chmod 600 it")


def _read_password(path: str, warnings: list[str]) -> bytes:
    data = _read(path, "key password file")
    _check_private(path, "key password file", warnings)
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise TlsError(f"key password file {path} is empty: its first line is the password")
    return line


def _load_certs(path: str, data: bytes, what: str) -> list[x509.Certificate]:
    from cryptography import x509

    if _CERT_MARK not in data:
        if data[:1] == b"\x30":
            raise TlsError(f"{what} {path} is in DER form; greenfork reads PEM: "
                           f"openssl x509 -inform der -in {path} -out {path}.pem")
        raise TlsError(f"{what} {path} is not a PEM certificate file (no BEGIN CERTIFICATE block)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TlsError(f"{what} {path} holds a malformed certificate: {e}") from None


def _check_ca_file(path: str) -> None:
    data = _read(path, "CA file")
    if _CERT_MARK not in data:
        raise TlsError(f"CA file {path} holds no certificates (expected PEM BEGIN CERTIFICATE blocks)")
    _load_certs(path, data, "CA file")


def _check_pair(cert_path: str, key_path: str | None, password: bytes | None, password_file: str,
                sni: str | None, warnings: list[str]) -> Certificate:
    from cryptography.hazmat.primitives import serialization

    cert_data = _read(cert_path, "certificate file")
    leaf = _load_certs(cert_path, cert_data, "certificate file")[0]
    key_source = key_path or cert_path
    key_data = _read(key_path, "key file") if key_path else cert_data
    m = _KEY_RE.search(key_data)
    if m is None:
        where = (f"key file {key_path}" if key_path
                 else f"certificate file {cert_path} (and no --keyfile is given)")
        raise TlsError(f"no PEM private key in {where}")
    _check_private(key_source, "private key file", warnings)
    block = m.group(0)
    encrypted = b"ENCRYPTED" in block  # PKCS#8 "ENCRYPTED PRIVATE KEY" or a legacy Proc-Type header
    if encrypted and password is None:
        raise TlsError(f"the private key in {key_source} is encrypted: give its password "
                       "with --keyfile-password-file")
    try:
        # a password given for other keys is not needed for an unencrypted one
        key = serialization.load_pem_private_key(block, password if encrypted else None)
    except ValueError:
        if encrypted:
            raise TlsError(f"cannot decrypt the private key in {key_source} with the password in "
                           f"{password_file}: wrong password") from None
        raise TlsError(f"the private key in {key_source} is malformed or of an unsupported type") from None
    except Exception as e:  # cryptography raises UnsupportedAlgorithm for exotic keys
        raise TlsError(f"cannot use the private key in {key_source}: {e}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise TlsError(f"the private key in {key_source} does not match the certificate in {cert_path}")
    return _facts(cert_path, leaf, sni)


def _facts(path: str, cert: x509.Certificate, sni: str | None) -> Certificate:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names += [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    if not names:  # clients ignore the CN when SANs exist (RFC 6125), so it is only a fallback
        names += [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return Certificate(path=path, server_names=tuple(dict.fromkeys(names)),
                       not_before=cert.not_valid_before_utc.timestamp(),
                       not_after=cert.not_valid_after_utc.timestamp(),
                       subject=cert.subject.rfc4514_string(), sni=sni)


# ---------------------------------------------------------------- contexts


def _context(settings: Settings, cert_path: str, key_path: str | None, password: bytes | None,
             cafile: str | None, alpn: Sequence[str]) -> ssl.SSLContext:
    # ssl is imported here, not at the top: a cleartext master never loads it
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[
        settings.tls_min_version]
    # OP_NO_RENEGOTIATION: a client-initiated renegotiation costs the server a full handshake for
    # the price of a few bytes (a CPU DoS), and nothing greenfork serves needs one.
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
                    | ssl.OP_SINGLE_ECDH_USE)
    # Session tickets stay on (OpenSSL's default): the ticket keys are made with this context,
    # in the master, so every forked worker can decrypt the tickets any other worker issued.
    ctx.options &= ~ssl.OP_NO_TICKET
    # Python's own default string starts with @SECLEVEL=2 (RSA keys of 2048 bits or more, no
    # SHA-1 signatures); replacing the string would drop that, so it is kept unless set explicitly
    ciphers = settings.ciphers
    if "@SECLEVEL" not in ciphers.upper():
        ciphers += ":@SECLEVEL=2"
    ctx.set_ciphers(ciphers)  # validated with the setting
    try:
        # a callable, never None: with None OpenSSL would prompt for a password on the terminal
        ctx.load_cert_chain(cert_path, key_path, password=_password_callback(password))
    except ssl.SSLError as e:
        raise TlsError(f"OpenSSL refuses the certificate {cert_path}: {_ssl_reason(e)}") from None
    except OSError as e:
        raise TlsError(f"cannot read {key_path or cert_path}: {(e.strerror or str(e)).lower()}") from None
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if cafile is not None:
        try:
            ctx.load_verify_locations(cafile=cafile)
        except (ssl.SSLError, OSError) as e:
            raise TlsError(f"cannot use the CA file {cafile}: {_ssl_reason(e)}") from None
        ctx.verify_mode = {"optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}[settings.cert_reqs]
    return ctx


def _password_callback(password: bytes | None) -> Callable[[], bytes]:
    def give() -> bytes:
        if password is None:
            raise TlsError("the private key is encrypted: give its password with --keyfile-password-file")
        return password

    return give


def _ssl_reason(e: OSError) -> str:
    reason = getattr(e, "reason", None)
    if reason == "EE_KEY_TOO_SMALL":
        return "the key is too small for OpenSSL's security level (use RSA 2048 or more, or ECDSA)"
    if reason == "CA_MD_TOO_WEAK":
        return "the certificate is signed with a hash OpenSSL no longer accepts (such as SHA-1)"
    text = str(reason or e.strerror or e)
    return text.replace("_", " ").lower()


def _sni_callback(config: TlsConfig) -> Callable[[Any, str | None, ssl.SSLContext], None]:
    def pick(sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        setattr(sslobj, SNI_ATTR, server_name)
        chosen = config.context_for_name(server_name)
        if chosen is not None and chosen is not ctx:
            sslobj.context = chosen

    return pick


def _date(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

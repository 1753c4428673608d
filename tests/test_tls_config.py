"""TLS settings and certificate checks: parsing units, and every configuration error as a real
`greenfork --check-config` process that exits 2 with one line naming the file."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenfork.master import config, tls
from greenfork.master.settings import BY_NAME, DEFAULT_CIPHERS, SettingError, SniCertificate, defaults
from tests import tlscerts
from tests.tlscerts import Certs

GREENFORK = str(Path(sys.executable).with_name("greenfork"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tlscerts.certs(tmp_path_factory)


def parse(name: str, raw: object) -> object:
    return config.parse_value(BY_NAME[name], raw, "test")


# ------------------------------------------------------------------ settings parsing


@pytest.mark.parametrize(("raw", "want"), [
    ("none", "none"), ("optional", "optional"), ("required", "required"), ("REQUIRED", "required"),
    ("0", "none"), ("1", "optional"), ("2", "required"), (0, "none"), (2, "required"),
    ("cert_required", "required"),
])
def test_cert_reqs_accepts_names_and_gunicorns_numbers(raw: object, want: str) -> None:
    assert parse("cert_reqs", raw) == want


@pytest.mark.parametrize(("raw", "want"), [
    ("1.2", "1.2"), ("1.3", "1.3"), ("TLSv1.3", "1.3"), ("tls1.2", "1.2"), (1.2, "1.2"), (1.3, "1.3"),
])
def test_tls_min_version(raw: object, want: str) -> None:
    assert parse("tls_min_version", raw) == want


def test_sni_forms() -> None:
    got = parse("sni", ["API.Example.com.=/a.pem,/a.key", "*.example.org=/b.pem"])
    assert got == (SniCertificate("api.example.com", "/a.pem", "/a.key"),
                   SniCertificate("*.example.org", "/b.pem", None))
    # the environment separates entries with spaces: the comma belongs to CERTFILE,KEYFILE
    assert parse("sni", "a.example=/a.pem,/a.key  b.example=/b.pem") == (
        SniCertificate("a.example", "/a.pem", "/a.key"), SniCertificate("b.example", "/b.pem"))
    assert str(SniCertificate("a.example", "/a.pem", "/a.key")) == "a.example=/a.pem,/a.key"


def test_defaults_are_safe() -> None:
    s = defaults()
    assert (s.certfile, s.cert_reqs, s.tls_min_version, s.tls_handshake_timeout, s.client_cert_user,
            s.sni, s.ciphers) == (None, "none", "1.2", 10.0, "none", (), DEFAULT_CIPHERS)
    assert all(BY_NAME[n].reloadable for n in ("certfile", "keyfile", "keyfile_password_file", "ca_certs",
                                                "cert_reqs", "ciphers", "tls_min_version", "sni",
                                                "client_cert_user", "tls_handshake_timeout"))


@pytest.mark.parametrize(("name", "raw", "reason"), [
    ("cert_reqs", "sometimes", "expected none, optional or required (or gunicorn's 0, 1, 2)"),
    ("cert_reqs", 3, "expected none, optional or required (or gunicorn's 0, 1, 2)"),
    ("tls_min_version", "1.1", "TLS 1.0 and 1.1 are refused: RFC 8996"),
    ("tls_min_version", "1.0", "TLS 1.0 and 1.1 are refused: RFC 8996"),
    ("tls_min_version", "TLSv1.1", "TLS 1.0 and 1.1 are refused: RFC 8996"),
    ("tls_min_version", 1.1, "TLS 1.0 and 1.1 are refused: RFC 8996"),
    ("tls_min_version", "ssl3", "TLS 1.0 and 1.1 are refused: RFC 8996"),
    ("tls_min_version", "2", "expected 1.2 or 1.3"),
    ("ciphers", "NOT-A-CIPHER", "OpenSSL selects no cipher from this string"),
    ("ciphers", " ", "must not be empty"),
    ("sni", ["example.com"], "'example.com': expected HOSTNAME=CERTFILE,KEYFILE"),
    ("sni", ["=/a.pem"], "the server name is missing before '='"),
    ("sni", ["a.example="], "'a.example=': the certificate file is missing after '='"),
    ("sni", ["a.example=/a,/b,/c"], "expected one certificate file and one key file"),
    ("sni", ["a*.example.com=/a"], "a wildcard must be the whole leftmost label"),
    ("sni", ["www.*.example.com=/a"], "a wildcard must be the whole leftmost label"),
    ("sni", ["*=/a"], "a wildcard must be the whole leftmost label"),
    ("sni", ["127.0.0.1=/a"], "is an IP address: clients send only host names in SNI"),
    ("sni", ["bad_name!.com=/a"], "is not a valid host name"),
    ("sni", ["bücher.example=/a"], "write an internationalized name in its xn-- (IDNA) form"),
    ("sni", ["a.example=/a", "A.example.=/b"], "a.example is given twice"),
    ("sni", 5, "expected a list of HOSTNAME=CERTFILE,KEYFILE strings"),
    ("tls_handshake_timeout", "0", "must be at least 0.1"),
    ("client_cert_user", "email", "expected one of none, cn, dn"),
    ("metrics_bind", "https://127.0.0.1:9110", "expected an http:// or unix: address"),
])
def test_setting_errors(name: str, raw: object, reason: str) -> None:
    with pytest.raises(SettingError) as info:
        parse(name, raw)
    assert f"for {name} (from test): " in str(info.value)
    assert reason in str(info.value)


# ------------------------------------------------------------------ greenfork --check-config


def check_config(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GREENFORK_")}
    full_env.update(env or {})
    return subprocess.run([GREENFORK, "--check-config", *args], capture_output=True, text=True,
                          timeout=30, cwd=cwd, env=full_env)


def https(*args: str) -> tuple[str, ...]:
    return ("-b", "https://127.0.0.1:0", *args)


def test_check_config_loads_a_good_configuration(certs: Certs) -> None:
    r = check_config(*https("--certfile", str(certs.server.cert), "--keyfile", str(certs.server.key),
                            "--sni", f"*.example.com={certs.sni.cert},{certs.sni.key}",
                            "--ca-certs", str(certs.ca), "--cert-reqs", "2", "--client-cert-user", "cn"))
    assert (r.returncode, r.stderr) == (0, "")
    assert "cert_reqs = 'required'  (command line --cert-reqs)" in r.stdout


def _cases(c: Certs) -> list[tuple[tuple[str, ...], str]]:
    d = c.dir
    srv = ("--certfile", str(c.server.cert), "--keyfile", str(c.server.key))
    return [
        (("-b", "https://127.0.0.1:8443"), "the address https://127.0.0.1:8443 serves TLS but no certificate "
                                           "is set: give --certfile (and --keyfile)"),
        (("-b", "https://unix:/tmp/x.sock"), "the address https://unix:/tmp/x.sock serves TLS but no "
                                             "certificate is set"),
        (https("--certfile", str(d / "missing.pem")), f"certificate file {d / 'missing.pem'} does not exist"),
        (https("--certfile", str(d)), f"certificate file {d} is a directory"),
        (https("--certfile", str(c.garbage)), f"certificate file {c.garbage} is not a PEM certificate file "
                                              "(no BEGIN CERTIFICATE block)"),
        (https("--certfile", str(c.empty)), f"certificate file {c.empty} is not a PEM certificate file"),
        (https("--certfile", str(c.der)), f"certificate file {c.der} is in DER form; greenfork reads PEM"),
        (https("--certfile", str(c.server.cert)), f"no PEM private key in certificate file {c.server.cert} "
                                                   "(and no --keyfile is given)"),
        (https("--certfile", str(c.server.cert), "--keyfile", str(c.ca)), f"no PEM private key in key file "
                                                                           f"{c.ca}"),
        (https("--certfile", str(c.server.cert), "--keyfile", str(d / "nokey")),
         f"key file {d / 'nokey'} does not exist"),
        (https("--certfile", str(c.mismatched.cert), "--keyfile", str(c.mismatched.key)),
         f"the private key in {c.mismatched.key} does not match the certificate in {c.mismatched.cert}"),
        (https("--certfile", str(c.encrypted.cert), "--keyfile", str(c.encrypted.key)),
         f"the private key in {c.encrypted.key} is encrypted: give its password with "
         "--keyfile-password-file"),
        (https("--certfile", str(c.encrypted.cert), "--keyfile", str(c.encrypted.key),
               "--keyfile-password-file", str(c.wrong_password_file)),
         f"cannot decrypt the private key in {c.encrypted.key} with the password in "
         f"{c.wrong_password_file}: wrong password"),
        (https(*srv, "--keyfile-password-file", str(d / "nopass")),
         f"key password file {d / 'nopass'} does not exist"),
        (https(*srv, "--keyfile-password-file", str(c.empty)),
         f"key password file {c.empty} is empty: its first line is the password"),
        (https(*srv, "--ciphers", "NOPE"), "invalid value 'NOPE' for ciphers (from command line --ciphers): "
                                           "OpenSSL selects no cipher from this string"),
        (https(*srv, "--tls-min-version", "1.1"), "invalid value '1.1' for tls_min_version (from command "
                                                   "line --tls-min-version): TLS 1.0 and 1.1 are refused"),
        (https(*srv, "--cert-reqs", "required", "--ca-certs", str(c.garbage)),
         f"CA file {c.garbage} holds no certificates (expected PEM BEGIN CERTIFICATE blocks)"),
        (https(*srv, "--cert-reqs", "optional", "--ca-certs", str(d / "noca.pem")),
         f"CA file {d / 'noca.pem'} does not exist"),
        (https(*srv, "--cert-reqs", "required"), "--cert-reqs required needs --ca-certs"),
        (https(*srv, "--client-cert-user", "cn"), "--client-cert-user cn needs --cert-reqs optional or "
                                                  "required"),
        (https("--keyfile", str(c.server.key)), "the address https://127.0.0.1:0 serves TLS but no "
                                                "certificate is set"),
        (("--keyfile", str(c.server.key)), "--keyfile is set without --certfile"),
        (("--sni", f"a.example={c.sni.cert},{c.sni.key}"), "--sni needs --certfile"),
        (https(*srv, "--sni", f"*.example.com={c.sni.cert},{c.server.key}"),
         f"the private key in {c.server.key} does not match the certificate in {c.sni.cert}"),
        (https(*srv, "--sni", f"*.example.com={d / 'nosni.pem'}"), f"certificate file {d / 'nosni.pem'} "
                                                                   "does not exist"),
        (https(*srv, "--sni", "a.*.example=/x.pem"), "a wildcard must be the whole leftmost label"),
        (https(*srv, "--cert-reqs", "maybe"), "invalid value 'maybe' for cert_reqs"),
        (https("--certfile", str(c.weak.cert), "--keyfile", str(c.weak.key)),
         f"OpenSSL refuses the certificate {c.weak.cert}: the key is too small for OpenSSL's security level"),
    ]


def test_every_tls_error_is_exit_2_naming_the_file(certs: Certs) -> None:
    failures = []
    for args, message in _cases(certs):
        r = check_config(*args)
        lines = r.stderr.splitlines()
        ok = r.returncode == 2 and len(lines) == 1 and lines[0].startswith("greenfork: error: ") \
            and message in lines[0] and "Traceback" not in r.stderr and r.stdout == ""
        if not ok:
            failures.append(f"{args}: exit {r.returncode}, stderr {r.stderr!r}, wanted {message!r}")
    assert not failures, "\n".join(failures)


def test_unreadable_key_is_named(certs: Certs, sock_dir: Path) -> None:
    if os.getuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop root")
    os.chmod(sock_dir, 0o755)
    cert = Path(shutil.copy(certs.server.cert, sock_dir / "server.pem"))
    key = Path(shutil.copy(certs.server.key, sock_dir / "root-only.key"))
    os.chmod(cert, 0o644)
    os.chmod(key, 0o600)
    cmd = [GREENFORK, "--check-config", *https("--certfile", str(cert), "--keyfile", str(key))]
    if os.getuid() == 0:  # root reads anything: check as nobody, as a worker would be
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd="/")
    if "No such file" in r.stderr or ("Permission denied" in r.stderr and "greenfork:" not in r.stderr):
        pytest.skip(f"this venv is not usable as nobody: {r.stderr.strip()}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"greenfork: error: cannot read key file {key}: permission denied"


def test_relative_paths_are_taken_from_the_start_directory(certs: Certs) -> None:
    r = check_config(*https("--certfile", certs.server.cert.name, "--keyfile", certs.server.key.name),
                     cwd=certs.dir)
    assert (r.returncode, r.stderr) == (0, "")


def test_warnings_do_not_stop_it(certs: Certs, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    shutil.copy(certs.server.key, loose)
    os.chmod(loose, 0o644)
    r = check_config("--certfile", str(certs.server.cert), "--keyfile", str(loose),
                     "--ca-certs", str(certs.ca))
    assert r.returncode == 0
    assert r.stderr.splitlines() == [
        "greenfork: warning: --certfile is set but no https:// address is bound: the certificate is "
        "checked but not served",
        "greenfork: warning: --ca-certs is ignored while --cert-reqs is none (client certificates are "
        "not asked for)",
        f"greenfork: warning: private key file {loose} is readable by group or others (mode 644): "
        "chmod 600 it",
    ]


def test_expired_certificate_is_an_error_line_but_served(certs: Certs) -> None:
    r = check_config(*https("--certfile", str(certs.expired.cert), "--keyfile", str(certs.expired.key)))
    assert r.returncode == 0
    [line] = r.stderr.splitlines()
    assert line.startswith(f"greenfork: error: TLS certificate {certs.expired.cert} (localhost, 127.0.0.1, "
                           "::1) expired on ")
    assert line.endswith(": clients refuse it; renew it and reload (HUP)")


def test_soon_expiring_certificate_is_a_warning(certs: Certs) -> None:
    r = check_config(*https("--certfile", str(certs.soon.cert), "--keyfile", str(certs.soon.key)))
    assert r.returncode == 0
    [line] = r.stderr.splitlines()
    assert line.startswith(f"greenfork: warning: TLS certificate {certs.soon.cert} (localhost, 127.0.0.1, "
                           "::1) expires on ")
    assert "in 4.9 days" in line or "in 5.0 days" in line


def test_environment_and_toml_forms(certs: Certs, tmp_path: Path) -> None:
    toml = tmp_path / "greenfork.toml"
    toml.write_text(f'bind = ["https://127.0.0.1:0"]\ncertfile = "{certs.server.cert}"\n'
                    f'keyfile = "{certs.server.key}"\ncert_reqs = 2\ntls_min_version = 1.3\n'
                    f'ca_certs = "{certs.ca}"\nsni = ["*.example.com={certs.sni.cert},{certs.sni.key}"]\n')
    r = check_config(cwd=tmp_path, env={"GREENFORK_CLIENT_CERT_USER": "dn",
                                        "GREENFORK_SNI": f"api.example.org={certs.sni.cert},{certs.sni.key} "
                                                         f"www.example.com={certs.exact.cert},{certs.exact.key}"})
    assert (r.returncode, r.stderr) == (0, "")
    assert "tls_min_version = '1.3'  (greenfork.toml)" in r.stdout
    assert "client_cert_user = 'dn'  (env GREENFORK_CLIENT_CERT_USER)" in r.stdout
    assert "server_name='www.example.com'" in r.stdout


def test_cleartext_master_imports_neither_ssl_nor_cryptography() -> None:
    code = ("import sys, contextlib, io\n"
            "from greenfork.master import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert cli.main(['--check-config', '-b', 'http://127.0.0.1:0']) == 0\n"
            "print(sorted(m for m in ('ssl', 'cryptography') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout.strip()) == (0, "[]"), r.stderr


# ------------------------------------------------------------------ tls.load in-process


def load(certs: Certs, **kw: object) -> tls.TlsConfig:
    base: dict[str, object] = {"bind": ("https://127.0.0.1:0",), "certfile": str(certs.server.cert),
                               "keyfile": str(certs.server.key)}
    base.update(kw)
    return tls.load(defaults(**base))


def test_nothing_configured_is_an_empty_config() -> None:
    s = defaults()
    assert not tls.configured(s)
    cfg = tls.load(s)
    assert (cfg.enabled, cfg.certificates, cfg.warnings, cfg.context_for_name("x")) == (False, (), (), None)


def test_certificate_facts(certs: Certs) -> None:
    cfg = load(certs, sni=(SniCertificate("*.example.com", str(certs.sni.cert), str(certs.sni.key)),
                           SniCertificate("legacy.example.net", str(certs.cn_only.cert),
                                          str(certs.cn_only.key))))
    default, sni, legacy = cfg.certificates
    assert (default.path, default.server_names, default.sni, default.subject) == (
        str(certs.server.cert), ("localhost", "127.0.0.1", "::1"), None, "CN=localhost")
    assert (sni.server_names, sni.sni) == (("*.example.com", "api.example.org"), "*.example.com")
    assert legacy.server_names == ("legacy.example.net",)  # no SAN: the CN
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(certs.server.pem)
    assert default.not_after == leaf.not_valid_after_utc.timestamp()
    assert default.not_before == leaf.not_valid_before_utc.timestamp()
    assert cfg.expiry_by_server_name() == {"localhost": default.not_after, "127.0.0.1": default.not_after,
                                           "::1": default.not_after, "*.example.com": sni.not_after,
                                           "api.example.org": sni.not_after,
                                           "legacy.example.net": legacy.not_after}
    assert cfg.warnings == ()


def test_expiry_by_server_name_takes_the_earliest(certs: Certs) -> None:
    cfg = load(certs, certfile=str(certs.soon.cert), keyfile=str(certs.soon.key),
               sni=(SniCertificate("localhost", str(certs.server.cert), str(certs.server.key)),))
    soon, server = cfg.certificates
    assert soon.not_after < server.not_after
    assert cfg.expiry_by_server_name()["localhost"] == soon.not_after


def test_expiry_report_levels(certs: Certs) -> None:
    now = time.time()
    for pair, level, words in ((certs.expired, logging.ERROR, "expired on"),
                               (certs.soon, logging.WARNING, "expires on"),
                               (certs.future, logging.ERROR, "is not valid until")):
        cfg = load(certs, certfile=str(pair.cert), keyfile=str(pair.key))
        [(got_level, line)] = cfg.expiry_report(now)
        assert got_level == level and words in line and str(pair.cert) in line
    assert load(certs).expiry_report(now) == []
    # 14 days ahead is the threshold
    server = load(certs).certificates[0]
    assert load(certs).expiry_report(server.not_after - 13.9 * 86400)[0][0] == logging.WARNING
    assert load(certs).expiry_report(server.not_after - 14.1 * 86400) == []


def test_sni_certificate_that_does_not_name_its_host_is_a_warning(certs: Certs) -> None:
    cfg = load(certs, sni=(SniCertificate("shop.example.net", str(certs.sni.cert), str(certs.sni.key)),
                           SniCertificate("a.example.com", str(certs.sni.cert), str(certs.sni.key)),
                           SniCertificate("*.example.com", str(certs.sni.cert), str(certs.sni.key))))
    assert cfg.warnings == (f"the certificate {certs.sni.cert} for --sni shop.example.net does not name "
                            "shop.example.net (it names *.example.com, api.example.org): clients will "
                            "refuse it",)


def test_combined_file_and_encrypted_key(certs: Certs) -> None:
    assert load(certs, certfile=str(certs.combined), keyfile=None).enabled
    cfg = load(certs, certfile=str(certs.encrypted.cert), keyfile=str(certs.encrypted.key),
               keyfile_password_file=str(certs.password_file))
    assert cfg.enabled
    # the password is for encrypted keys; an unencrypted one beside it still loads
    assert load(certs, keyfile_password_file=str(certs.password_file)).enabled


def test_context_options(certs: Certs) -> None:
    import ssl

    ctx = load(certs).default
    assert ctx is not None
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_CIPHER_SERVER_PREFERENCE, ssl.OP_NO_RENEGOTIATION):
        assert ctx.options & flag
    assert not ctx.options & ssl.OP_NO_TICKET
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert load(certs, tls_min_version="1.3").default.minimum_version == ssl.TLSVersion.TLSv1_3  # type: ignore[union-attr]
    assert ctx.verify_mode == ssl.CERT_NONE
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == set(DEFAULT_CIPHERS.split(":"))
    required = load(certs, cert_reqs="required", ca_certs=str(certs.ca)).default
    assert required is not None and required.verify_mode == ssl.CERT_REQUIRED


def test_context_for_listeners(certs: Certs) -> None:
    from greenfork.master.addresses import parse_bind

    cfg = load(certs)
    assert cfg.context_for(parse_bind("https://127.0.0.1:1")) is cfg.default
    assert cfg.context_for(parse_bind("https://unix:/x.sock")) is cfg.default
    assert cfg.context_for(parse_bind("http://127.0.0.1:1")) is None
    assert cfg.context_for(parse_bind("unix:/x.sock")) is None
    with pytest.raises(tls.TlsError, match="no certificate is loaded"):
        tls.load(defaults()).context_for(parse_bind("https://127.0.0.1:1"))


def test_a_failed_reload_leaves_the_old_config_usable(certs: Certs) -> None:
    old = load(certs)
    with pytest.raises(tls.TlsError):
        load(certs, keyfile=str(certs.mismatched.key))
    assert old.enabled and old.certificates[0].path == str(certs.server.cert)


def test_security_level_2_unless_the_cipher_string_sets_one(certs: Certs) -> None:
    with pytest.raises(tls.TlsError, match="the key is too small"):
        load(certs, certfile=str(certs.weak.cert), keyfile=str(certs.weak.key))
    legacy = load(certs, certfile=str(certs.weak.cert), keyfile=str(certs.weak.key),
                  ciphers=DEFAULT_CIPHERS + ":@SECLEVEL=1")
    assert legacy.enabled

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenfork.master import listeners
from greenfork.master.addresses import parse_bind
from greenfork.master.listeners import BindError, Listener, adopt_fd, bind_all, close_all, systemd_fds


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_V6 = _ipv6_loopback()
needs_v6 = pytest.mark.skipif(not HAS_V6, reason="no IPv6 loopback on this host")


@pytest.fixture
def bound() -> Iterator[list[Listener]]:
    """Collects listeners a test binds so they are closed even when it fails."""
    out: list[Listener] = []
    yield out
    close_all(out)


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    # sun_path holds 107 bytes; pytest's tmp_path can be longer than that
    if len(str(tmp_path)) < 60:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(dir="/tmp", prefix="gf-"))
    yield short
    shutil.rmtree(short, ignore_errors=True)


def bind(out: list[Listener], *texts: str, **kwargs: Any) -> list[Listener]:
    result = bind_all([parse_bind(t) for t in texts], **kwargs)
    out.extend(result)
    return result


def assert_accepts(listener: Listener, family: int, addr: tuple[Any, ...] | str) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(1.0)
        client.connect(addr)
        listener.sock.settimeout(1.0)
        conn, _ = listener.sock.accept()
        conn.close()
    listener.sock.settimeout(None)


def closed_fd() -> int:
    # a high number: anything the code under test opens gets the lowest free fd instead
    fd = 900
    while True:
        try:
            os.fstat(fd)
        except OSError:
            return fd
        fd += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def port_is_free(host: str, port: int, family: int = socket.AF_INET) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    except OSError:
        return False
    return True


# --- TCP ---------------------------------------------------------------------------------


def test_ipv4_port_zero_gets_real_port_and_accepts(bound: list[Listener]) -> None:
    [lst] = bind(bound, "127.0.0.1:0")
    port = lst.sock.getsockname()[1]
    assert port != 0
    assert lst.url == f"http://127.0.0.1:{port}"
    assert parse_bind(lst.url).port == port
    assert (lst.transport, lst.unix_path, lst.unix_ino) == ("tcp", "", 0)
    assert lst.sock.getblocking()
    assert lst.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    assert lst.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    assert_accepts(lst, socket.AF_INET, ("127.0.0.1", port))


def test_defer_accept_on_tcp_listeners_only(bound: list[Listener], sock_dir: Path) -> None:
    opt = (socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
    tcp, unix = bind(bound, "127.0.0.1:0", f"unix:{sock_dir}/d.sock", defer_accept=5)
    assert tcp.sock.getsockopt(*opt) == 7  # 5 s, rounded up to the SYN-ACK schedule: 1 + 2 + 4
    assert unix.transport == "unix"  # (a unix socket has no such option: none was set)
    (off,) = bind(bound, "127.0.0.1:0")
    assert off.sock.getsockopt(*opt) == 0  # bind_all's own default: off
    listeners.defer_accept_on([off, unix], 1)  # a binary upgrade's inherited listeners
    assert off.sock.getsockopt(*opt) == 1
    listeners.defer_accept_on([off], 0)  # 0: left as it is
    assert off.sock.getsockopt(*opt) == 1


def test_backlog_is_passed(bound: list[Listener], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = listeners._tcp_socket

    def spy(family: int, sockaddr: tuple[Any, ...], backlog: int, *, v6only: bool) -> socket.socket:
        seen.append(backlog)
        return real(family, sockaddr, backlog, v6only=v6only)

    monkeypatch.setattr(listeners, "_tcp_socket", spy)
    bind(bound, "127.0.0.1:0", backlog=7)
    assert seen == [7]


def test_localhost_binds_both_families_on_one_port(bound: list[Listener]) -> None:
    result = bind(bound, "localhost:0")
    port = result[0].sock.getsockname()[1]
    assert result[0].url == f"http://127.0.0.1:{port}"
    assert_accepts(result[0], socket.AF_INET, ("127.0.0.1", port))
    if not HAS_V6:
        assert len(result) == 1
        return
    assert [lst.url for lst in result] == [f"http://127.0.0.1:{port}", f"http://[::1]:{port}"]
    assert result[1].sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert_accepts(result[1], socket.AF_INET6, ("::1", port))


@needs_v6
def test_localhost_port_zero_retries_when_v6_port_is_taken(
    bound: list[Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = listeners._tcp_socket
    v4_first: list[socket.socket] = []

    def flaky(family: int, sockaddr: tuple[Any, ...], backlog: int, *, v6only: bool,
              defer_accept: int = 0) -> socket.socket:
        if family == socket.AF_INET6 and v4_first and len(v4_first) == 1:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        sock = real(family, sockaddr, backlog, v6only=v6only)
        if family == socket.AF_INET:
            v4_first.append(sock)
        return sock

    monkeypatch.setattr(listeners, "_tcp_socket", flaky)
    result = bind(bound, "localhost:0")
    assert len(v4_first) == 2
    assert v4_first[0].fileno() == -1  # the first attempt's v4 socket was closed
    assert len(result) == 2
    assert result[0].sock.getsockname()[1] == result[1].sock.getsockname()[1]


def test_localhost_port_zero_gives_up_after_ten_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    real = listeners._tcp_socket
    made: list[socket.socket] = []

    def always_taken(family: int, sockaddr: tuple[Any, ...], backlog: int, *, v6only: bool,
                     defer_accept: int = 0) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        made.append(real(family, sockaddr, backlog, v6only=v6only))
        return made[-1]

    monkeypatch.setattr(listeners, "_tcp_socket", always_taken)
    with pytest.raises(BindError) as info:
        bind_all([parse_bind("localhost:0")])
    assert str(info.value) == (
        "Failed to bind to address http://localhost:0: "
        "address already in use (no free port common to all addresses)"
    )
    assert len(made) == 10
    assert all(s.fileno() == -1 for s in made)


@pytest.mark.parametrize("code", [errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT])
def test_localhost_keeps_v4_when_host_has_no_ipv6(
    bound: list[Listener], monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    real = listeners._tcp_socket

    def no_v6(family: int, sockaddr: tuple[Any, ...], backlog: int, *, v6only: bool,
              defer_accept: int = 0) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(code, os.strerror(code))
        return real(family, sockaddr, backlog, v6only=v6only)

    monkeypatch.setattr(listeners, "_tcp_socket", no_v6)
    result = bind(bound, "localhost:0")
    assert [lst.url for lst in result] == [f"http://127.0.0.1:{result[0].sock.getsockname()[1]}"]


def test_localhost_fails_when_both_families_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    def nothing(family: int, sockaddr: tuple[Any, ...], backlog: int, *, v6only: bool,
                defer_accept: int = 0) -> socket.socket:
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    monkeypatch.setattr(listeners, "_tcp_socket", nothing)
    with pytest.raises(BindError) as info:
        bind_all([parse_bind("localhost:8123")])
    assert str(info.value) == (
        "Failed to bind to address http://localhost:8123: cannot assign requested address"
    )


def test_localhost_fixed_port_in_use_fails_and_releases_v6() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(BindError) as info:
            bind_all([parse_bind(f"localhost:{port}")])
    assert str(info.value) == f"Failed to bind to address http://localhost:{port}: address already in use"
    if HAS_V6:
        assert port_is_free("::1", port, socket.AF_INET6)


def test_address_in_use_closes_everything_bound_so_far(sock_dir: Path) -> None:
    first_port = free_port()
    path = sock_dir / "first.sock"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        texts = [f"127.0.0.1:{first_port}", f"unix:{path}", f"127.0.0.1:{busy}"]
        with pytest.raises(BindError) as info:
            bind_all([parse_bind(t) for t in texts])
    assert str(info.value) == f"Failed to bind to address http://127.0.0.1:{busy}: address already in use"
    assert port_is_free("127.0.0.1", first_port)
    assert not path.exists()


def test_same_address_twice_is_in_use() -> None:
    port = free_port()
    with pytest.raises(BindError, match=r"address already in use$"):
        bind_all([parse_bind(f"127.0.0.1:{port}"), parse_bind(f"http://127.0.0.1:{port}/")])
    assert port_is_free("127.0.0.1", port)


def test_permission_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(family: int, sockaddr: tuple[Any, ...], backlog: int, *, v6only: bool,
               defer_accept: int = 0) -> socket.socket:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(listeners, "_tcp_socket", denied)
    with pytest.raises(BindError) as info:
        bind_all([parse_bind("127.0.0.1:8080")])
    assert str(info.value) == "Failed to bind to address http://127.0.0.1:8080: permission denied"
    # below the first unprivileged port, the message says how to get there
    for bind in ("127.0.0.1:80", "http://*:443", "http://localhost:80"):
        with pytest.raises(BindError) as info:
            bind_all([parse_bind(bind)])
        text = str(info.value)
        assert "permission denied (ports below 1024 need privileges: start greenfork as root" in text
        assert "with --user" in text
        assert "CAP_NET_BIND_SERVICE" in text and "socket activation" in text


def test_other_errors_use_lowercased_strerror() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never configured on a real interface
    with pytest.raises(BindError) as info:
        bind_all([parse_bind("192.0.2.1:0")])
    assert str(info.value) == "Failed to bind to address http://192.0.2.1:0: cannot assign requested address"


def test_any_is_dual_stack(bound: list[Listener]) -> None:
    [lst] = bind(bound, "*:0")
    port = lst.sock.getsockname()[1]
    if not HAS_V6:
        assert lst.url == f"http://0.0.0.0:{port}"
        assert_accepts(lst, socket.AF_INET, ("127.0.0.1", port))
        return
    assert lst.url == f"http://[::]:{port}"
    assert parse_bind(lst.url).host == "*"
    assert lst.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    assert_accepts(lst, socket.AF_INET, ("127.0.0.1", port))
    assert_accepts(lst, socket.AF_INET6, ("::1", port))


def test_any_falls_back_to_ipv4(bound: list[Listener], monkeypatch: pytest.MonkeyPatch) -> None:
    real = listeners._tcp_socket

    def no_v6(family: int, sockaddr: tuple[Any, ...], backlog: int, *, v6only: bool,
              defer_accept: int = 0) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, sockaddr, backlog, v6only=v6only)

    monkeypatch.setattr(listeners, "_tcp_socket", no_v6)
    [lst] = bind(bound, "0.0.0.0:0")
    port = lst.sock.getsockname()[1]
    assert lst.url == f"http://0.0.0.0:{port}"
    assert_accepts(lst, socket.AF_INET, ("127.0.0.1", port))


@needs_v6
def test_ipv6_literal_is_v6_only(bound: list[Listener]) -> None:
    [lst] = bind(bound, "[::1]:0")
    port = lst.sock.getsockname()[1]
    assert lst.url == f"http://[::1]:{port}"
    assert lst.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert_accepts(lst, socket.AF_INET6, ("::1", port))


def test_hostname_binds_each_distinct_address(bound: list[Listener], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        calls.append((host, port, kwargs))
        entry = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))
        return [entry, entry]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    result = bind(bound, "app.internal:0")
    assert calls == [("app.internal", 0, {"type": socket.SOCK_STREAM, "flags": socket.AI_PASSIVE})]
    assert [lst.url for lst in result] == [f"http://127.0.0.1:{result[0].sock.getsockname()[1]}"]
    assert result[0].spec.host == "app.internal"


def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(BindError) as info:
        bind_all([parse_bind("http://nope.invalid")])
    assert str(info.value) == "Failed to bind to address http://nope.invalid:80: cannot resolve host"


# --- unix --------------------------------------------------------------------------------


def test_unix_create_accept_and_close(sock_dir: Path) -> None:
    path = sock_dir / "app.sock"
    [lst] = bind_all([parse_bind(f"unix:{path}")])
    try:
        assert lst.url == f"unix:{path}"
        assert (lst.transport, lst.unix_path) == ("unix", str(path))
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert lst.unix_ino == st.st_ino
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert_accepts(lst, socket.AF_UNIX, str(path))
    finally:
        close_all([lst])
    assert lst.sock.fileno() == -1
    assert not path.exists()


def test_unix_relative_path_made_absolute(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(sock_dir)
    [lst] = bind_all([parse_bind("unix:rel.sock")])
    try:
        assert lst.unix_path == str(sock_dir / "rel.sock")
        assert lst.url == f"unix:{sock_dir / 'rel.sock'}"
    finally:
        close_all([lst])


def test_unix_mode_applied_and_umask_restored(sock_dir: Path, bound: list[Listener]) -> None:
    before = os.umask(0o022)
    try:
        [lst] = bind(bound, f"unix:{sock_dir / 'a.sock'}", unix_mode=0o600)
        assert stat.S_IMODE(os.lstat(lst.unix_path).st_mode) == 0o600
        assert os.umask(0o022) == 0o022
        [lst2] = bind(bound, f"unix:{sock_dir / 'b.sock'}", unix_mode=None)
        assert stat.S_IMODE(os.lstat(lst2.unix_path).st_mode) == 0o755
    finally:
        os.umask(before)


def test_unix_stale_socket_is_replaced(sock_dir: Path, bound: list[Listener]) -> None:
    path = sock_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays behind, like after a crash
    [lst] = bind(bound, f"unix:{path}")
    assert lst.unix_ino == os.lstat(path).st_ino
    assert_accepts(lst, socket.AF_UNIX, str(path))


def test_unix_live_socket_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(BindError) as info:
            bind_all([parse_bind(f"unix:{path}")])
        assert str(info.value) == (
            f"Failed to bind to address unix:{path}: address already in use (another server is listening)"
        )
        assert path.exists()


def test_unix_regular_file_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "data.txt"
    path.write_text("keep me")
    with pytest.raises(BindError) as info:
        bind_all([parse_bind(f"unix:{path}")])
    assert str(info.value) == f"Failed to bind to address unix:{path}: file exists and is not a socket"
    assert path.read_text() == "keep me"


def test_unix_missing_directory(sock_dir: Path) -> None:
    path = sock_dir / "nope" / "x.sock"
    with pytest.raises(BindError) as info:
        bind_all([parse_bind(f"unix:{path}")])
    assert str(info.value) == f"Failed to bind to address unix:{path}: no such file or directory"


def test_unix_path_too_long(sock_dir: Path) -> None:
    path = sock_dir / ("x" * 120)
    with pytest.raises(BindError) as info:
        bind_all([parse_bind(f"unix:{path}")])
    reason = f"path too long ({len(str(path))} bytes, the limit is 107)"
    assert str(info.value) == f"Failed to bind to address unix:{path}: {reason}"


def test_close_all_leaves_a_replaced_file_alone(sock_dir: Path) -> None:
    path = sock_dir / "app.sock"
    [lst] = bind_all([parse_bind(f"unix:{path}")])
    os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as newer:
        newer.bind(str(path))  # a newer server took the path over
        assert os.lstat(path).st_ino != lst.unix_ino
        close_all([lst])
        assert path.exists()


def test_close_all_leaves_a_regular_file_alone(sock_dir: Path) -> None:
    path = sock_dir / "app.sock"
    [lst] = bind_all([parse_bind(f"unix:{path}")])
    os.unlink(path)
    path.write_text("not ours")
    close_all([lst])
    assert path.read_text() == "not ours"


def test_close_all_without_unlink_keeps_file(sock_dir: Path) -> None:
    path = sock_dir / "app.sock"
    [lst] = bind_all([parse_bind(f"unix:{path}")])
    close_all([lst], unlink=False)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    close_all([lst])  # closing twice is harmless and now removes the file
    assert not path.exists()


# --- inherited sockets -------------------------------------------------------------------


def test_adopt_tcp_socket() -> None:
    with socket.socket() as orig:
        orig.bind(("127.0.0.1", 0))
        orig.listen()
        port = orig.getsockname()[1]
        orig.setblocking(False)
        fd = os.dup(orig.fileno())
    lst = adopt_fd(fd)
    try:
        assert lst.sock.fileno() == fd
        assert lst.url == f"http://127.0.0.1:{port}"
        assert (lst.transport, lst.unix_path, lst.spec.kind, lst.spec.fd, lst.spec.raw) == (
            "tcp",
            "",
            "fd",
            fd,
            f"fd://{fd}",
        )
        # left non-blocking: the mode belongs to the open file, shared with the workers of
        # whoever passed it (an old master's, after USR2), which accept relying on it
        assert not os.get_blocking(lst.sock.fileno())
        assert_accepts(lst, socket.AF_INET, ("127.0.0.1", port))
    finally:
        close_all([lst])


@needs_v6
def test_adopt_dual_stack_any() -> None:
    with socket.socket(socket.AF_INET6) as orig:
        orig.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        orig.bind(("::", 0))
        orig.listen()
        port = orig.getsockname()[1]
        lst = adopt_fd(os.dup(orig.fileno()))
    try:
        assert lst.url == f"http://[::]:{port}"
    finally:
        close_all([lst])


def test_adopt_ipv4_any_and_bind_all_fd_spec(bound: list[Listener]) -> None:
    with socket.socket() as orig:
        orig.bind(("0.0.0.0", 0))
        orig.listen()
        port = orig.getsockname()[1]
        fd = os.dup(orig.fileno())
    spec = parse_bind(f"fd://{fd}")
    [lst] = bind_all([spec])
    bound.append(lst)
    assert lst.spec is spec
    assert lst.url == f"http://0.0.0.0:{port}"


def test_adopt_unix_socket_never_unlinks(sock_dir: Path) -> None:
    path = sock_dir / "inherited.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as orig:
        orig.bind(str(path))
        orig.listen()
        lst = adopt_fd(os.dup(orig.fileno()))
    assert (lst.url, lst.transport, lst.unix_path) == (f"unix:{path}", "unix", "")
    close_all([lst])
    assert path.exists()


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_adopt_rejects_non_listening_socket_and_keeps_fd(kind: int) -> None:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(BindError) as info:
            adopt_fd(s.fileno())
        assert str(info.value) == f"Failed to use fd://{s.fileno()}: not a listening stream socket"
        os.fstat(s.fileno())  # still open: the caller owns it


def test_adopt_bad_fd() -> None:
    fd = closed_fd()
    with pytest.raises(BindError) as info:
        adopt_fd(fd)
    assert str(info.value) == f"Failed to use fd://{fd}: bad file descriptor"


def test_adopt_non_socket(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(BindError) as info:
            adopt_fd(fd)
        assert str(info.value) == f"Failed to use fd://{fd}: socket operation on non-socket"
    finally:
        os.close(fd)


def test_bind_all_fd_failure_closes_earlier_listeners() -> None:
    port = free_port()
    fd = closed_fd()
    with pytest.raises(BindError, match=f"^Failed to use fd://{fd}: bad file descriptor$"):
        bind_all([parse_bind(f"127.0.0.1:{port}"), parse_bind(f"fd://{fd}")])
    assert port_is_free("127.0.0.1", port)


# --- systemd socket activation -----------------------------------------------------------


def test_systemd_fds_for_this_pid() -> None:
    assert systemd_fds({"LISTEN_PID": "42", "LISTEN_FDS": "2"}, 42) == [3, 4]
    assert systemd_fds({"LISTEN_PID": "42", "LISTEN_FDS": "0"}, 42) == []


def test_systemd_fds_for_another_pid_or_unset() -> None:
    assert systemd_fds({"LISTEN_PID": "41", "LISTEN_FDS": "2"}, 42) == []
    assert systemd_fds({"LISTEN_FDS": "2"}, 42) == []
    assert systemd_fds({}, 42) == []
    # not ours, so a broken LISTEN_FDS is not our problem either
    assert systemd_fds({"LISTEN_PID": "41", "LISTEN_FDS": "x"}, 42) == []


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "42", "LISTEN_FDS": "x"}, "Invalid LISTEN_FDS='x': expected a number of sockets"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, "Invalid LISTEN_FDS='-1': expected a number of sockets"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": ""}, "Invalid LISTEN_FDS='': expected a number of sockets"),
        ({"LISTEN_PID": "42"}, "LISTEN_PID is set for this process but LISTEN_FDS is missing"),
        ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "Invalid LISTEN_PID='abc': expected a process id"),
    ],
)
def test_systemd_fds_bad_values(environ: dict[str, str], message: str) -> None:
    with pytest.raises(BindError) as info:
        systemd_fds(environ, 42)
    assert str(info.value) == message


def test_systemd_fds_absurd_count() -> None:
    with pytest.raises(BindError, match=r"^Invalid LISTEN_FDS='999999999999': more than the open-file limit"):
        systemd_fds({"LISTEN_PID": "42", "LISTEN_FDS": "999999999999"}, 42)

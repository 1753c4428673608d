"""https:// listeners are bound like http:// ones and published as https:// URLs."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from greenfork.master import listeners
from greenfork.master.addresses import parse_bind


def test_https_tcp_is_published_as_https() -> None:
    bound = listeners.bind_all([parse_bind("https://127.0.0.1:0"), parse_bind("http://127.0.0.1:0")])
    try:
        tls_port, plain_port = (lst.sock.getsockname()[1] for lst in bound)
        assert [lst.url for lst in bound] == [f"https://127.0.0.1:{tls_port}", f"http://127.0.0.1:{plain_port}"]
        assert [lst.spec.tls for lst in bound] == [True, False]
    finally:
        listeners.close_all(bound)


def test_https_localhost_publishes_both_loopbacks() -> None:
    bound = listeners.bind_all([parse_bind("https://localhost:0")])
    try:
        port = bound[0].sock.getsockname()[1]
        urls = [lst.url for lst in bound]
        assert urls[0] == f"https://127.0.0.1:{port}"
        assert set(urls) <= {f"https://127.0.0.1:{port}", f"https://[::1]:{port}"}
    finally:
        listeners.close_all(bound)


def test_https_unix_is_published_in_the_form_bind_accepts(sock_dir: Path) -> None:
    path = sock_dir / "tls.sock"
    plain = sock_dir / "plain.sock"
    bound = listeners.bind_all([parse_bind(f"https://unix:{path}"), parse_bind(f"unix:{plain}")])
    try:
        assert [lst.url for lst in bound] == [f"https://unix:{path}", f"unix:{plain}"]
        # the published URL parses back to the same TLS listener
        again = parse_bind(bound[0].url)
        assert (again.kind, again.path, again.tls) == ("unix", str(path), True)
    finally:
        listeners.close_all(bound)


def test_adopted_https_unix_socket_keeps_its_scheme(sock_dir: Path) -> None:
    path = sock_dir / "inherited.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    try:
        lst = listeners.adopt_fd(sock.fileno(), parse_bind(f"https://unix:{path}"))
        assert lst.url == f"https://unix:{path}"
        lst.sock.detach()
    finally:
        sock.close()


def test_bind_failure_names_the_https_address(sock_dir: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        want = rf"^Failed to bind to address https://127.0.0.1:{port}: address already in use$"
        with pytest.raises(listeners.BindError, match=want):
            listeners.bind_all([parse_bind(f"https://127.0.0.1:{port}")])
    finally:
        taken.close()
    blocker = sock_dir / "file"
    blocker.write_text("x")
    with pytest.raises(listeners.BindError, match=rf"^Failed to bind to address https://unix:{blocker}: "
                                                  "file exists and is not a socket$"):
        listeners.bind_all([parse_bind(f"https://unix:{blocker}")])

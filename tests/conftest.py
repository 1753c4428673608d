from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.procs import Launcher

if TYPE_CHECKING:
    from tests.test_behind_proxies import Proxy


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    ln = Launcher(tmp_path)
    try:
        yield ln
    finally:
        ln.cleanup()


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    """Proxies a test starts (tests/test_behind_proxies.py's Proxy): each stopped by pid after it."""
    started: list[Proxy] = []
    try:
        yield started
    finally:
        for p in started:
            p.stop()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (paths are limited to 107 bytes)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="gf-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.fail("curl is required (scripts/test installs it)")
    return path


@pytest.fixture(scope="session")
def world_python() -> str:
    """A Python whose every file any user can read, with greenfork installed.

    Workers started with --user nobody import modules after dropping root; the
    project's interpreter may live under /root (mode 700), so those tests use a
    venv built from Debian's python3 in /tmp instead. Built once per machine.
    """
    import hashlib
    import subprocess
    import sys

    base = "/usr/bin/python3"
    root = Path(__file__).resolve().parent.parent
    # one per checkout: worktrees of the same machine would otherwise reinstall each other's code
    target = Path("/tmp/greenfork-world-venv-" + hashlib.sha256(str(root).encode()).hexdigest()[:8])
    stamp = target / ".ok"
    if not Path(base).exists():
        pytest.fail("Debian's python3 is needed for the --user tests (apt-get install python3)")

    digest = hashlib.sha256()
    for path in sorted([root / "pyproject.toml", *root.glob("master/*.py"), *root.glob("workers/*.py"),
                        *root.glob("metrics/*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    want = digest.hexdigest()  # the installed copy is a snapshot: refresh it when the code changes
    python = str(target / "bin" / "python")
    if not stamp.exists() or stamp.read_text() != want:
        if not (target / "bin" / "python").exists():
            subprocess.run([base, "-m", "venv", "--without-pip", str(target)], check=True, timeout=120)
        subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                        "--disable-pip-version-check", "--force-reinstall", "--no-deps", str(root)],
                       check=True, timeout=600)
        subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                        "--disable-pip-version-check", str(root)], check=True, timeout=600)
        stamp.write_text(want)
    return python

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Launcher


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    ln = Launcher(tmp_path)
    try:
        yield ln
    finally:
        ln.cleanup()


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

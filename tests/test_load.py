"""Load tests with wrk: reloads and upgrades under 64 keep-alive connections lose nothing.

Loopback only, bounded durations. wrk's own summary counts socket errors; the Lua
script (wrk_count.lua) counts every response that is not 2xx."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.procs import Launcher, alive, children, pid_in, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SCRIPT = Path(__file__).parent / "wrk_count.lua"


def wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        pytest.fail("wrk is required (scripts/test installs it)")
    return path


def start_wrk(url: str, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as f:
        return subprocess.Popen([wrk(), "-t", "2", "-c", "64", "-d", f"{seconds}s", "-s", str(SCRIPT),
                                 f"{url}/"], stdout=f, stderr=subprocess.STDOUT)


def results(proc: subprocess.Popen[bytes], out: Path, seconds: int) -> dict[str, int]:
    proc.wait(seconds + 30)
    text = out.read_text()
    m = re.search(r"^GF (.*)$", text, re.M)
    assert m, text
    counts = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    assert counts["requests"] > 1000, text
    return counts


def no_errors(counts: dict[str, int]) -> bool:
    return all(counts[k] == 0 for k in ("non2xx", "connect", "read", "write", "status", "timeout"))


def test_ten_hups_under_load_fail_no_request(launcher: Launcher, tmp_path: Path) -> None:
    g = launcher.start(["-b", "127.0.0.1:0", "-w", "2"])
    out = tmp_path / "wrk.txt"
    proc = start_wrk(g.url(), 20, out)
    try:
        time.sleep(1.0)  # a paced schedule, not a condition: HUPs spread over the run
        for n in range(2, 12):
            g.signal(signal.SIGHUP)
            wait_for(lambda n=n: g.reload_info()["generation"] == n, 15, f"generation {n}")
            time.sleep(0.8)
        counts = results(proc, out, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert no_errors(counts), counts
    assert len(g.workers()) == 2
    assert g.log().count("Reload complete") == 10


def test_usr2_then_term_of_the_old_master_under_load_fails_no_request(launcher: Launcher,
                                                                       tmp_path: Path) -> None:
    pidfile = tmp_path / "gf.pid"
    g = launcher.start(["-b", "127.0.0.1:0", "-w", "2", "--pidfile", str(pidfile)])
    out = tmp_path / "wrk.txt"
    proc = start_wrk(g.url(), 12, out)
    new = 0
    try:
        time.sleep(2.0)  # load first, then the upgrade in the middle of the run
        g.signal(signal.SIGUSR2)
        new = wait_for(lambda: (p := pid_in(pidfile)) != g.pid and p, 20, "the new master")
        time.sleep(1.0)  # both masters serve for a moment
        g.signal(signal.SIGTERM)
        assert g.wait(30) == 0
        counts = results(proc, out, 12)
        assert alive(new) and len(children(new)) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if new:
            os.kill(new, signal.SIGTERM)
            wait_for(lambda: not alive(new), 15, "the new master to exit")
    assert no_errors(counts), counts

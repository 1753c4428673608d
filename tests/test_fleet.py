"""A fleet of greenfork hosts behind HAProxy, watched by Prometheus (issue 20, docs/fleet.md).

scripts/fleet makes three network namespaces on a bridge (plus HAProxy's outgoing side and
Prometheus in a fourth), one greenfork host in each, HAProxy on loopback sending PROXY v2, and
Prometheus scraping the hosts through file-based discovery. The tests drive it as an operator
does (`python -m fleetlib up|roll|kill|start|down`), load it with wrk through HAProxy, and read
the figures from HAProxy's runtime API and Prometheus's HTTP API.

Everything the fleet starts is a daemon (greenfork -D, HAProxy, Prometheus): the fixture stops
them with `down` and then, whatever happened, kills every process left in the fleet's namespaces
by pid, HAProxy by its pidfile, and deletes the namespaces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Launcher, alive, wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HOSTS = (1, 2, 3)
# examples/fleet/haproxy.cfg: `inter 1s fastinter 250ms ... fall 2`, `slowstart 10s`
CHECK_INTER = 1.0
SLOWSTART = 10.0
# the fleet panels of examples/grafana/greenfork.json
PANEL_UP = "Fleet: hosts up and ready"
PANEL_RATE = "Fleet: request rate by host"
PANEL_ERRORS = "Fleet: error ratio (5xx), all hosts and by host"
PANEL_VERSIONS = "Fleet: versions, reloads and upgrades"

pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fleet:
    env: dict[str, str]
    dir: Path
    id: int
    port: int
    prom_port: int
    started: list[int] = field(default_factory=list)

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fleetlib", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    @property
    def namespaces(self) -> list[str]:
        return [f"gff{self.id}-{n}" for n in ("br", "lb", "h1", "h2", "h3")]

    # ------------------------------------------------------------ HAProxy's runtime API
    def haproxy(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.dir / "haproxy.sock"))
            s.sendall(command.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def servers(self) -> dict[str, dict[str, str]]:
        lines = self.haproxy("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r for r in rows if r["pxname"] == "greenfork" and r["svname"].startswith("h")}

    def all_up(self) -> bool:
        return all(r["status"] == "UP" for r in self.servers().values())

    # ------------------------------------------------------------ Prometheus's HTTP API
    def prometheus(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
        assert doc["status"] == "success", doc
        return doc["data"]

    def up(self) -> dict[str, str]:
        result = self.prometheus("query", query='up{job="greenfork"}')["result"]
        return {r["metric"]["host"]: r["value"][1] for r in result}

    def alerts(self, name: str) -> dict[str, str]:
        """{host: state} of the active alerts called name (pending or firing)."""
        return {a["labels"].get("host", "?"): a["state"] for a in self.prometheus("alerts")["alerts"]
                if a["labels"]["alertname"] == name}

    def panel(self, title: str, ref: str, window: str = "1m") -> dict[str, float]:
        """A dashboard panel's query (examples/grafana/greenfork.json) as Grafana would send it,
        answered by the fleet's Prometheus: {the series' labels, joined: value}."""
        dash = json.loads((EXAMPLES / "grafana" / "greenfork.json").read_text())
        target = next(t for p in dash["panels"] if p["title"] == title
                      for t in p["targets"] if t["refId"] == ref)
        expr = target["expr"].replace("$__rate_interval", window).replace('"$instance"', '".*"')
        result = self.prometheus("query", query=expr)["result"]
        return {",".join(f"{v}" for v in r["metric"].values()): float(r["value"][1]) for r in result}

    def hosts_panel(self, title: str, ref: str, window: str = "1m") -> dict[str, float]:
        """panel() of a query by instance, keyed by host name (h1, h2, h3)."""
        ips = {f"10.251.{self.id}.{10 + n}:9110": f"h{n}" for n in HOSTS}
        return {ips.get(k, k): v for k, v in self.panel(title, ref, window).items()}

    # ------------------------------------------------------------ the hosts
    def addresses(self, n: int) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / f"h{n}" / "addresses.json").read_text())
        return data

    def master(self, n: int) -> int:
        return int((self.dir / f"h{n}" / "greenfork.pid").read_text())


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)


def _netns_pids(ns: str) -> list[int]:
    return [int(p) for p in _run("ip", "netns", "pids", ns).stdout.split() if p.isdigit()]


def _sweep(f: Fleet) -> list[str]:
    """What `down` should have removed, killed by pid and deleted here; returns what was left."""
    left = []
    hap = f.dir / "haproxy.pid"
    if hap.exists():
        pid = int(hap.read_text())
        if alive(pid) and "haproxy" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
            os.kill(pid, signal.SIGKILL)
            left.append(f"haproxy {pid}")
    for ns in f.namespaces:
        if not Path(f"/run/netns/{ns}").exists():
            continue
        for pid in _netns_pids(ns):
            try:
                os.kill(pid, signal.SIGKILL)
                left.append(f"pid {pid} in {ns}")
            except ProcessLookupError:
                pass
        _run("ip", "netns", "del", ns)
        left.append(ns)
    return left


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "haproxy", "prometheus", "promtool", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is required (scripts/test installs Debian's iproute2, haproxy, "
                        "prometheus, wrk)")
    probe = f"gff-probe{os.getpid()}"
    made = _run("ip", "netns", "add", probe)
    if made.returncode != 0:
        pytest.skip(f"the kernel refuses network namespaces here: {made.stderr.strip()}")
    _run("ip", "netns", "del", probe)
    fid = 40 + os.getpid() % 50  # not the default fleet (0) an operator may be running
    d = tmp_path_factory.mktemp("fleet") / "state"
    port, prom_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "FLEET_ID": str(fid), "FLEET_DIR": str(d),
           "FLEET_PORT": str(port), "FLEET_PROM_PORT": str(prom_port), "FLEET_APP": "testapp:app",
           "FLEET_ARGS": f"--chdir {ROOT / 'tests' / 'apps'}", "FLEET_PROXY": "v2"}
    f = Fleet(env, d, fid, port, prom_port)
    stale: subprocess.Popen[bytes] | None = None
    try:
        # what a crashed run leaves: one of the fleet's namespaces with a process in it, and
        # the fleet's directory; `up` must clear both first
        assert _run("ip", "netns", "add", f"gff{fid}-h2").returncode == 0
        stale = subprocess.Popen(["ip", "netns", "exec", f"gff{fid}-h2", "sleep", "300"],
                                 start_new_session=True)
        wait_for(lambda: _netns_pids(f"gff{fid}-h2"), 5, "the stale process in its namespace")
        d.mkdir()
        (d / ".greenfork-fleet").write_text("left by a crashed run\n")
        out = f.run("up", timeout=150)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"fleet {fid} is up" in out.stdout
        assert f"removed what an earlier run left: gff{fid}-h2" in out.stdout
        assert stale.wait(10) == -signal.SIGKILL
        yield f
        down = f.run("down", timeout=150)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not d.exists(), "down leaves the fleet's directory"
    finally:
        left = _sweep(f)
        if stale is not None and stale.poll() is None:
            stale.kill()
            stale.wait(5)
    assert not left, f"`down` left these behind: {left}"


# ---------------------------------------------------------------- load through HAProxy
class Wrk:
    """wrk through HAProxy until stopped (SIGINT: it prints its summary), bounded by -d."""

    def __init__(self, f: Fleet, tmp: Path, path: str = "/", connections: int = 12) -> None:
        self.out = tmp / f"wrk-{time.monotonic_ns()}.log"
        with open(self.out, "wb") as log:
            self.proc = subprocess.Popen(
                ["wrk", "-t2", f"-c{connections}", "-d120s", "--timeout", "10s", "-s",
                 str(ROOT / "tests" / "wrk_count.lua"), f"http://127.0.0.1:{f.port}{path}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> dict[str, int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        text = self.out.read_text()
        m = re.search(r"^GF (.*)$", text, re.M)
        assert m, text
        counts = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
        counts["failed"] = sum(counts[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
        return counts


@pytest.fixture
def load(fleet: Fleet, tmp_path: Path) -> Iterator[list[Wrk]]:
    started: list[Wrk] = []
    try:
        yield started
    finally:
        for w in started:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(5)


def _roll_line(out: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"roll: (\d+) requests, (\d+) failed", last)
    assert m, f"the last line of roll is {last!r}:\n{out.stdout}{out.stderr}"
    return int(m.group(1)), int(m.group(2))


# ---------------------------------------------------------------- the rolling operations
def test_rolling_hup_under_load_loses_no_request(fleet: Fleet) -> None:
    wait_for(fleet.all_up, 20, "every host up in haproxy")
    gens = {n: fleet.addresses(n)["generation"] for n in HOSTS}
    before = fleet.servers()
    out = fleet.run("roll", "hup")
    requests, failed = _roll_line(out)
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert failed == 0 and requests > 1000, out.stdout
    after = fleet.servers()
    for n in HOSTS:
        assert fleet.addresses(n)["generation"] == gens[n] + 1, f"host {n} was not reloaded"
        row, was = after[f"h{n}"], before[f"h{n}"]
        assert row["status"] == "UP" and row["chkdown"] == was["chkdown"], f"haproxy took host {n} out: {row}"
        assert int(row["stot"]) > int(was["stot"]), f"host {n} served nothing during the roll"
    assert "haproxy marked hosts down" not in out.stdout
    # the dashboard's fleet panel shows one reload on each host
    wait_for(lambda: all(v > 0.5 for v in fleet.hosts_panel(PANEL_VERSIONS, "C", "5m").values())
             and len(fleet.hosts_panel(PANEL_VERSIONS, "C", "5m")) == 3, 10, "a reload on each host's panel")


def test_rolling_usr2_under_load_loses_no_request(fleet: Fleet) -> None:
    wait_for(fleet.all_up, 20, "every host up in haproxy")
    masters = {n: fleet.master(n) for n in HOSTS}
    before = fleet.servers()
    out = fleet.run("roll", "usr2")
    requests, failed = _roll_line(out)
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert failed == 0 and requests > 1000, out.stdout
    after = fleet.servers()
    for n in HOSTS:
        new = fleet.master(n)
        assert new != masters[n] and alive(new) and not alive(masters[n]), f"host {n}: {masters[n]} -> {new}"
        assert f"host {n}: master {masters[n]} -> {new} (USR2" in out.stdout
        assert not (fleet.dir / f"h{n}" / "greenfork.pid.oldbin").exists()
        assert fleet.addresses(n)["pid"] == new
        row, was = after[f"h{n}"], before[f"h{n}"]
        # the new master answered HAProxy's checks before the old one went: never DOWN
        assert row["status"] == "UP" and row["chkdown"] == was["chkdown"], f"haproxy took host {n} out: {row}"
    # Prometheus scrapes the new masters: same targets, up
    wait_for(lambda: fleet.up() == {"h1": "1", "h2": "1", "h3": "1"}, 10, "up == 1 on every host")
    # the dashboard's fleet panel shows a new master on each host, and one version everywhere
    wait_for(lambda: fleet.hosts_panel(PANEL_VERSIONS, "B", "5m").keys() == {"h1", "h2", "h3"}
             and min(fleet.hosts_panel(PANEL_VERSIONS, "B", "5m").values()) >= 1, 10,
             "a new master on each host's panel")
    assert list(fleet.panel(PANEL_VERSIONS, "A").values()) == [3.0]


def test_a_failed_request_fails_the_roll(fleet: Fleet) -> None:
    """`roll` counts every answer that is not 2xx and exits 1 when there is one: here the load's
    request line is longer than the hosts take (414 from greenfork)."""
    wait_for(fleet.all_up, 20, "every host up in haproxy")
    before = {h: int(r["hrsp_4xx"]) for h, r in fleet.servers().items()}
    env = {**fleet.env, "FLEET_LOAD_PATH": "/" + "x" * 9000}
    out = subprocess.run([sys.executable, "-m", "fleetlib", "roll", "hup", "--connections", "2"], env=env,
                         capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    requests, failed = _roll_line(out)
    assert out.returncode == 1, out.stdout + out.stderr
    assert failed == requests > 100, out.stdout
    # the hosts answered them (not HAProxy): every host's 4xx count grew
    after = {h: int(r["hrsp_4xx"]) for h, r in fleet.servers().items()}
    assert all(after[h] > before[h] + 10 for h in before), (before, after)


def test_the_dashboard_fleet_panels_read_the_fleet(fleet: Fleet) -> None:
    """The fleet panels' queries, against the fleet's own Prometheus: three hosts up and ready,
    traffic on each, and the error ratio of some 500s, fleet-wide and by host."""
    import http.client

    def get(paths: list[str]) -> None:
        for path in paths:
            conn = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=10)
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == (500 if path == "/boom" else 200)
            resp.read()
            conn.close()

    def series() -> set[tuple[str, str]]:
        query = 'http_server_request_duration_seconds_count{http_request_method="GET"}'
        return {(r["metric"]["host"], r["metric"]["http_response_status_code"])
                for r in fleet.prometheus("query", query=query)["result"]}

    wait_for(fleet.all_up, 20, "every host up in haproxy")
    # rate() counts a counter's increase between two samples: a host's first 500 (and first 200)
    # makes its series, which Prometheus must have scraped before the requests the ratio shows
    get(["/boom", "/"] * 3)
    wait_for(lambda: series() >= {(f"h{n}", s) for n in HOSTS for s in ("200", "500")}, 10,
             "a 200 and a 500 series for each host")
    get(["/boom"] * 30 + ["/"] * 60)

    def panels() -> dict[str, Any]:
        return {ref: fleet.panel(PANEL_UP, ref) for ref in "ABC"} | {
            "rate": fleet.hosts_panel(PANEL_RATE, "A"), "fleet": fleet.panel(PANEL_ERRORS, "A"),
            "by host": fleet.hosts_panel(PANEL_ERRORS, "B")}

    def complete() -> dict[str, Any] | None:
        p = panels()
        every = all(len(p[k]) == 3 and min(p[k].values()) > 0 for k in ("rate", "by host"))
        return p if every and p["fleet"].get("", 0) > 0 else None

    seen = wait_for(complete, 15, "the 500s in the error ratio panels")
    assert seen["A"] == seen["B"] == seen["C"] == {"": 3.0}, seen
    assert seen["rate"].keys() == {"h1", "h2", "h3"} and min(seen["rate"].values()) > 0, seen
    assert 0 < seen["fleet"][""] < 1, seen
    assert seen["by host"].keys() == {"h1", "h2", "h3"} and max(seen["by host"].values()) < 1, seen


def test_the_client_address_reaches_the_app_by_proxy_v2(fleet: Fleet) -> None:
    """REMOTE_ADDR is the client's (loopback, through HAProxy), not HAProxy's lb address: the
    PROXY v2 header carried it, from the one peer --proxy-allow-from trusts."""
    import http.client

    seen = set()
    for _ in range(6):
        conn = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=10)
        conn.request("GET", "/env")
        resp = conn.getresponse()
        env = json.loads(resp.read())
        local_port = conn.sock.getsockname()[1]
        conn.close()
        assert resp.status == 200
        assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"] == str(local_port), env
        seen.add(env["greenfork.server_addresses"][0])
    assert len(seen) == 3, f"round robin reaches every host: {seen}"
    # nothing of the fleet's traffic is in the machine's own namespace but on loopback
    leaks = _run("ss", "-Htn", "state", "all", "dst", f"10.251.{fleet.id}.0/24").stdout.strip()
    assert leaks == "", leaks


def test_a_killed_host_is_marked_down_alerted_and_comes_back(fleet: Fleet, load: list[Wrk],
                                                             tmp_path: Path) -> None:
    wait_for(fleet.all_up, 20, "every host up in haproxy")
    wait_for(lambda: fleet.up() == {"h1": "1", "h2": "1", "h3": "1"}, 20, "up == 1 on every host")
    victim = fleet.master(2)
    w = Wrk(fleet, tmp_path)
    load.append(w)
    wait_for(lambda: int(fleet.servers()["h2"]["stot"]) > 100, 10, "traffic on host 2")
    # the requests in flight on host 2 at the moment it dies: at most what HAProxy holds there
    in_flight = max(int(fleet.servers()["h2"]["scur"]) for _ in range(10))
    killer = subprocess.Popen([sys.executable, "-m", "fleetlib", "kill", "2"], env=fleet.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: not alive(victim), 10, "the master to die")
        t0 = time.monotonic()  # from the death itself, not from the start of the command
        wait_for(lambda: fleet.servers()["h2"]["status"] == "DOWN", 10, "haproxy to mark host 2 down")
        to_down = time.monotonic() - t0
        assert killer.wait(30) == 0, killer.communicate()[0]
    finally:
        if killer.poll() is None:
            killer.kill()
            killer.wait(5)
    time.sleep(1)  # traffic keeps flowing to the two others
    counts = w.stop()
    print(f"kill: marked down in {to_down:.2f} s; {counts['failed']} of {counts['requests']} requests "
          f"failed, {in_flight} were in flight on the host")
    assert to_down <= CHECK_INTER, f"haproxy took {to_down:.2f} s to mark the dead host down"
    assert counts["requests"] > 1000
    assert counts["failed"] <= in_flight, f"lost {counts['failed']}, {in_flight} were in flight: {counts}"

    # Prometheus: up == 0 for host 2 only, then the host-down alert fires (`for: 1m`)
    wait_for(lambda: fleet.up() == {"h1": "1", "h2": "0", "h3": "1"}, 10, "up == 0 for host 2")
    assert [fleet.panel(PANEL_UP, ref)[""] for ref in "ABC"] == [2, 3, 2], "the hosts up and ready panel"
    wait_for(lambda: fleet.alerts("GreenforkDown") == {"h2": "pending"}, 10, "GreenforkDown pending for h2")
    t_pending = time.monotonic()
    wait_for(lambda: fleet.alerts("GreenforkDown") == {"h2": "firing"}, 90, "GreenforkDown firing for h2")
    assert time.monotonic() - t_pending >= 55, "the alert fired before its `for: 1m`"
    assert fleet.alerts("GreenforkFleetHostsDown") == {}, "one host of three is not a fleet outage"

    # Restarting it is the only step: HAProxy's checks and Prometheus's scrapes pick it up
    started = fleet.run("start", "2", timeout=90)
    assert started.returncode == 0, started.stderr
    w2 = Wrk(fleet, tmp_path)
    load.append(w2)
    wait_for(lambda: fleet.servers()["h2"]["status"] == "UP", 10, "haproxy to see host 2 up again")
    t_up = time.monotonic()
    # slowstart: HAProxy throttles the host it just brought back (`throttle`, a percentage) and
    # sends it a small share of the requests at first
    first = fleet.servers()
    time.sleep(1)  # a second of traffic to count
    second = fleet.servers()
    throttle = first["h2"]["throttle"]
    assert throttle.isdigit() and int(throttle) < 50, f"host 2 is not in slowstart: {first['h2']}"
    share = {h: int(second[h]["stot"]) - int(first[h]["stot"]) for h in ("h1", "h2", "h3")}
    assert 0 < share["h2"] < min(share["h1"], share["h3"]) / 2, f"slowstart's first second: {share}"
    wait_for(lambda: fleet.up() == {"h1": "1", "h2": "1", "h3": "1"}, 10, "up == 1 on host 2 again")
    wait_for(lambda: fleet.alerts("GreenforkDown") == {}, 10, "the alert to resolve")
    # and then its full share, without a further step
    wait_for(lambda: fleet.servers()["h2"]["throttle"] == "", SLOWSTART + 3, "slowstart to end")
    assert time.monotonic() - t_up > SLOWSTART * 0.8
    served = {h: int(r["stot"]) for h, r in fleet.servers().items()}
    time.sleep(1)  # a second at full weight to count
    share = {h: int(r["stot"]) - served[h] for h, r in fleet.servers().items()}
    counts = w2.stop()
    assert counts["failed"] == 0, counts
    assert min(share.values()) > max(share.values()) * 0.6, f"requests after slowstart: {share}"


# ---------------------------------------------------------------- without namespaces
def test_readyz_stays_200_through_a_hup_and_a_binary_upgrade(launcher: Launcher, tmp_path: Path) -> None:
    """What HAProxy's checks rely on: a HUP's new generation boots while the old one serves, and
    during a USR2 both masters hold the metrics listener but only the serving one answers."""
    import http.client
    import threading

    pidfile = tmp_path / "gf.pid"
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "--metrics-bind", "http://127.0.0.1:0",
                        "-p", str(pidfile)], workers=2)
    host, port = g.info["metrics"].split("://")[1].rsplit(":", 1)
    statuses: list[int | str] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set() and len(statuses) < 100_000:
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
                conn.request("GET", "/readyz")
                statuses.append(conn.getresponse().status)
                conn.close()
            except OSError as e:
                statuses.append(type(e).__name__)
            time.sleep(0.002)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        g.signal(signal.SIGHUP)
        wait_for(lambda: g.reload_info()["generation"] == 2, 20, "the reload")
        old = g.pid
        g.signal(signal.SIGUSR2)
        new = wait_for(lambda: pidfile.exists() and int(pidfile.read_text() or 0) not in (0, old)
                       and int(pidfile.read_text()), 30, "the new master")
        os.kill(old, signal.SIGTERM)
        g.wait(30)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(10)
        try:
            os.kill(new, signal.SIGTERM)
        except (NameError, ProcessLookupError, UnboundLocalError):
            pass
    assert len(statuses) > 200
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    wait_for(lambda: not alive(new), 30, "the new master to stop")


def _fenced(doc: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", doc, re.S)


def test_docs_show_the_very_configs_the_fleet_runs() -> None:
    doc = (ROOT / "docs" / "fleet.md").read_text()
    haproxy = (EXAMPLES / "fleet" / "haproxy.cfg").read_text()
    prometheus = (EXAMPLES / "fleet" / "prometheus.yml").read_text()
    assert haproxy in _fenced(doc, "haproxy"), "docs/fleet.md must show haproxy.cfg as it is"
    assert prometheus in _fenced(doc, "yaml"), "docs/fleet.md must show prometheus.yml as it is"
    # every alert of the rules file is explained
    rules = (EXAMPLES / "prometheus" / "alerts.yml").read_text()
    for name in re.findall(r"alert: (\w+)", rules):
        assert f"`{name}`" in doc, f"docs/fleet.md does not say what {name} means"
    assert "docs/fleet.md" in (ROOT / "README.md").read_text()


def test_haproxy_config_is_valid_and_cannot_leave_its_namespace(tmp_path: Path) -> None:
    """haproxy -c accepts the file with the fleet's environment, and every connection to a host
    carries a namespace and the lb-only source address (HAProxy 2.6 drops `namespace` from
    default-server lines silently: a connection without it would leave by the default route)."""
    text = (EXAMPLES / "fleet" / "haproxy.cfg").read_text()
    backend = text.split("backend greenfork", 1)[1].split("\nfrontend", 1)[0]
    servers = [line for line in backend.splitlines() if line.strip().startswith("server ")]
    assert len(servers) == 3
    assert all('namespace "${FLEET_LB_NS}"' in line for line in servers), servers
    assert re.search(r'^\s+source "\$\{FLEET_NET\}\.2"$', backend, re.M)
    assert "shutdown-sessions" not in backend.replace("`on-marked-down shutdown-sessions`", "")
    ns = f"gff-cfg{os.getpid() % 10000}"
    if os.geteuid() != 0 or _run("ip", "netns", "add", ns).returncode != 0:
        pytest.skip("haproxy -c resolves the namespace: needs one (root)")
    try:
        env = {**os.environ, "FLEET_DIR": str(tmp_path), "FLEET_LB_NS": ns, "FLEET_NET": "10.251.99",
               "FLEET_PORT": "1", "FLEET_PROM_PORT": "2"}
        for proxy in ("v2", "off"):
            out = subprocess.run(["haproxy", "-c", "-f", str(EXAMPLES / "fleet" / "haproxy.cfg")],
                                 env={**env, "FLEET_PROXY": proxy}, capture_output=True, text=True,
                                 timeout=30)
            assert out.returncode == 0, out.stdout + out.stderr
    finally:
        _run("ip", "netns", "del", ns)


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    shutil.copyfile(EXAMPLES / "fleet" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copyfile(EXAMPLES / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    out = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


FLEET_ALERT_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{{job="greenfork",instance="h1:9110"}}'
        values: '1x30'
      - series: 'up{{job="greenfork",instance="h2:9110"}}'
        values: '1 1 0x28'
      - series: 'up{{job="greenfork",instance="h3:9110"}}'
        values: '1x10 0x20'
      - series: 'greenfork_build_info{{job="greenfork",instance="h1:9110",version="0.1.0"}}'
        values: '1x60'
      - series: 'greenfork_build_info{{job="greenfork",instance="h2:9110",version="0.2.0"}}'
        values: '1x60'
      - series: 'http_server_request_duration_seconds_count{{job="greenfork",instance="h1:9110",http_response_status_code="200"}}'
        values: '0+600x30'
      - series: 'http_server_request_duration_seconds_count{{job="greenfork",instance="h1:9110",http_response_status_code="503"}}'
        values: '0+18x30'
    alert_rule_test:
      - eval_time: 2m
        alertname: GreenforkDown
        exp_alerts: []
      - eval_time: 4m
        alertname: GreenforkDown
        exp_alerts:
          - exp_labels: {{severity: warning, job: greenfork, instance: "h2:9110"}}
            exp_annotations:
              summary: "greenfork host h2:9110 is not answering /metrics: down, or its metrics listener unreachable"
      - eval_time: 9m
        alertname: GreenforkFleetHostsDown
        exp_alerts: []
      - eval_time: 12m
        alertname: GreenforkFleetHostsDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: greenfork}}
            exp_annotations:
              summary: "66.67% of the hosts of greenfork are down: the others carry all the traffic, or nothing serves at all"
      - eval_time: 4m
        alertname: GreenforkFleetHighErrorRatio
        exp_alerts: []
      - eval_time: 10m
        alertname: GreenforkFleetHighErrorRatio
        exp_alerts:
          - exp_labels: {{severity: critical, job: greenfork}}
            exp_annotations:
              summary: "2.913% of all requests to greenfork answer 5xx, across every host"
      - eval_time: 20m
        alertname: GreenforkFleetVersionSkew
        exp_alerts: []
      - eval_time: 40m
        alertname: GreenforkFleetVersionSkew
        exp_alerts:
          - exp_labels: {{severity: warning, job: greenfork}}
            exp_annotations:
              summary: "The hosts of greenfork run 2 greenfork versions: a rollout stopped half way?"
"""  # noqa: E501 - promtool's series and messages, verbatim


def test_fleet_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool's rule unit tests: one host down is a warning, two of three a fleet outage; the
    fleet-wide error ratio and a version skew that outlasts a rollout."""
    (tmp_path / "test.yml").write_text(FLEET_ALERT_TESTS.format(rules=EXAMPLES / "prometheus" / "alerts.yml"))
    out = subprocess.run(["promtool", "test", "rules", str(tmp_path / "test.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout

"""scripts/fleet up | roll [usr2|hup|both] | kill N | start N | status | down (docs/fleet.md)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from . import haproxy, hosts, load, netns, proc, prom, roll
from .config import HOSTS, Fleet, FleetError

MARKER = ".greenfork-fleet"


def say(line: str) -> None:
    print(line, flush=True)


def cleanup(fleet: Fleet) -> list[str]:
    """Everything a fleet of this id left behind (a crashed run included): our HAProxy, wrk and
    Prometheus by their pidfiles, every process in our namespaces, the namespaces, our directory."""
    gone = []
    if haproxy.stop(fleet):
        gone.append("haproxy")
    wrk = proc.read_pid(fleet.dir / "wrk.pid")
    if wrk is not None and "wrk" in proc.cmdline(wrk) and str(fleet.port) in proc.cmdline(wrk):
        proc.kill_tree(wrk)
        gone.append("wrk")
    prom.stop(fleet)
    for n in HOSTS:  # gracefully first: the hosts finish what they serve
        if hosts.master(fleet, n) is not None:
            hosts.stop(fleet, n)
            gone.append(f"host {n}")
    gone += netns.destroy(fleet)
    if fleet.dir.exists():
        if not (fleet.dir / MARKER).exists():
            raise FleetError(f"{fleet.dir} exists and is not a fleet's directory: set FLEET_DIR elsewhere")
        shutil.rmtree(fleet.dir)
    return gone


def up(fleet: Fleet) -> None:
    left = cleanup(fleet)
    if left:
        say(f"removed what an earlier run left: {', '.join(left)}")
    fleet.dir.mkdir(parents=True)
    (fleet.dir / MARKER).write_text("made by scripts/fleet; `scripts/fleet down` removes it\n")
    netns.create(fleet)
    for n in HOSTS:
        pid = hosts.start(fleet, n)
        say(f"host {n}: greenfork master {pid} on {fleet.host_ip(n)} (namespace {fleet.host_ns(n)})")
    haproxy.start(fleet)  # first: Prometheus's API is reached through it
    prom.start(fleet)
    for n in HOSTS:
        haproxy.wait_status(fleet, n, "UP", 15)
    leaks = netns.root_connections_to(fleet)
    if leaks:
        raise FleetError(f"connections to the fleet's addresses in the machine's own namespace: {leaks}")
    proc.wait_for(lambda: prom.up(fleet) == {f"h{n}": 1.0 for n in HOSTS}, 30,
                  "prometheus to scrape every host", every=0.25)
    say(f"fleet {fleet.id} is up: {fleet.url} (HAProxy), {fleet.prom_url} (Prometheus), "
        f"runtime API {fleet.haproxy_socket}")


def do_roll(fleet: Fleet, what: str, connections: int) -> int:
    roll.require_all_up(fleet)
    before = roll.transitions(fleet)
    traffic = load.Load(fleet.url, fleet.dir / "wrk.log", connections=connections,
                        path=_arg("FLEET_LOAD_PATH", "/"))
    (fleet.dir / "wrk.pid").write_text(f"{traffic.proc.pid}\n")
    try:
        time.sleep(1)  # the load is flowing before the first signal
        if what in ("usr2", "both"):
            roll.upgrade_all(fleet, say)
        if what in ("hup", "both"):
            roll.reload_all(fleet, say)
        time.sleep(1)  # and still flowing after the last host is back
        result = traffic.stop()
    except BaseException:
        traffic.kill()
        raise
    finally:
        (fleet.dir / "wrk.pid").unlink(missing_ok=True)
    after = roll.transitions(fleet)
    flaps = {h: after[h] - before.get(h, 0) for h in after if after[h] != before.get(h, 0)}
    if flaps:
        say(f"haproxy marked hosts down during the roll: {flaps}")
    say(f"roll: {result.requests} requests, {result.failed} failed")
    return 1 if result.failed or flaps else 0


def status(fleet: Fleet) -> None:
    rows = haproxy.servers(fleet)
    ups = prom.up(fleet)
    for n in HOSTS:
        row = rows.get(f"h{n}", {})
        say(f"host {n}: master {hosts.master(fleet, n)}, haproxy {row.get('status')} "
            f"({row.get('check_status')}, weight {row.get('weight')}), prometheus up={ups.get(f'h{n}')}")


def _arg(name: str, default: str) -> str:
    import os

    return os.environ.get(name) or default


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scripts/fleet", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="make the namespaces, start the hosts, Prometheus and HAProxy")
    r = sub.add_parser("roll", help="upgrade (USR2) and/or reload (HUP) each host in turn, under load")
    r.add_argument("what", nargs="?", choices=("usr2", "hup", "both"), default="both")
    r.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    for name, text in (("kill", "SIGKILL host N's whole process tree"), ("start", "start host N again")):
        k = sub.add_parser(name, help=text)
        k.add_argument("n", type=int, choices=HOSTS)
    sub.add_parser("status", help="each host's master, HAProxy state and Prometheus `up`")
    sub.add_parser("down", help="stop everything and remove the namespaces and files")
    args = p.parse_args(argv)
    try:
        fleet = Fleet.from_env()
        if args.cmd == "up":
            up(fleet)
        elif args.cmd == "roll":
            return do_roll(fleet, args.what, args.connections)
        elif args.cmd == "kill":
            killed = hosts.kill(fleet, args.n)
            say(f"host {args.n}: killed {len(killed)} processes ({' '.join(map(str, killed))})")
        elif args.cmd == "start":
            say(f"host {args.n}: greenfork master {hosts.start(fleet, args.n)}")
        elif args.cmd == "status":
            status(fleet)
        else:
            gone = cleanup(fleet)
            say(f"fleet {fleet.id} is down" + (f": stopped {', '.join(gone)}" if gone else " (nothing ran)"))
    except FleetError as e:
        print(f"scripts/fleet {args.cmd}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"scripts/fleet {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

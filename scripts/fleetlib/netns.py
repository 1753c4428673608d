"""The fleet's network: a bridge in a namespace of its own, and a veth pair from it to each of
the lb namespace (HAProxy's outgoing side, Prometheus) and the three host namespaces.

    gffN-br:  br0 ── vlb ──────── eth0  gffN-lb  10.251.N.2
                 ├── vh1 ──────── eth0  gffN-h1  10.251.N.11
                 ├── vh2 ──────── eth0  gffN-h2  10.251.N.12
                 └── vh3 ──────── eth0  gffN-h3  10.251.N.13

Both ends of each pair are created inside their namespaces (`ip -n NS link add ... netns`), so
not even a temporary name appears in the machine's own namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import proc
from .config import HOSTS, Fleet, FleetError

NETNS_DIR = Path("/run/netns")


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def pids(ns: str) -> list[int]:
    """Processes in namespace ns (only ever ours: the namespace is the fleet's)."""
    out = proc.run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.stdout.split() if p.isdigit() and int(p) != os.getpid()]


def create(fleet: Fleet) -> None:
    made = proc.run(["ip", "netns", "add", fleet.bridge_ns], check=False)
    if made.returncode != 0:
        raise FleetError(f"cannot make a network namespace here: {made.stderr.strip()}")
    br = ["ip", "-n", fleet.bridge_ns]
    proc.run([*br, "link", "set", "lo", "up"])
    proc.run([*br, "link", "add", "br0", "type", "bridge"])
    proc.run([*br, "link", "set", "br0", "up"])
    members = [("lb", fleet.lb_ns, fleet.lb_ip)] + [(f"h{n}", fleet.host_ns(n), fleet.host_ip(n))
                                                    for n in HOSTS]
    for short, ns, ip in members:
        proc.run(["ip", "netns", "add", ns])
        inside = ["ip", "-n", ns]
        proc.run([*br, "link", "add", f"v{short}", "type", "veth", "peer", "name", "eth0", "netns", ns])
        proc.run([*br, "link", "set", f"v{short}", "master", "br0"])
        proc.run([*br, "link", "set", f"v{short}", "up"])
        proc.run([*inside, "addr", "add", f"{ip}/24", "dev", "eth0"])
        proc.run([*inside, "link", "set", "eth0", "up"])
        proc.run([*inside, "link", "set", "lo", "up"])


def destroy(fleet: Fleet) -> list[str]:
    """Kill whatever runs in the fleet's namespaces, then delete them (their links and the bridge
    go with them). Returns what was removed."""
    removed = []
    for ns in fleet.namespaces:
        if not exists(ns):
            continue
        inside = pids(ns)
        for p in inside:
            proc.kill_tree(p)
        proc.wait_gone(inside, 10)
        proc.run(["ip", "netns", "del", ns])
        removed.append(ns)
    return removed


def root_connections_to(fleet: Fleet) -> list[str]:
    """TCP sockets of the machine's own namespace that reach for the fleet's addresses: there
    must be none (HAProxy makes its connections from the lb namespace)."""
    out = proc.run(["ss", "-Htn", "state", "all", "dst", f"{fleet.net}.0/24"], check=False)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]

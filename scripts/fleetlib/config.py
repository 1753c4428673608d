"""What a fleet is called and where it lives: every name and address derives from FLEET_ID.

All names start with `gff<ID>-` and all addresses are in 10.251.<ID>.0/24 inside the fleet's own
namespaces, so cleaning up leftovers never touches anything else on the machine.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
HOSTS = (1, 2, 3)
APP_PORT = 8000       # inside each host's namespace: no other process can hold it
METRICS_PORT = 9110
PROM_PORT = 9090      # Prometheus inside the lb namespace


class FleetError(Exception):
    """A step failed: the message says which and why (printed without a traceback)."""


def _int_env(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise FleetError(f"{name}={raw!r}: not an integer") from None
    if not low <= value <= high:
        raise FleetError(f"{name}={value}: must be between {low} and {high}")
    return value


@dataclass(frozen=True)
class Fleet:
    id: int
    dir: Path
    port: int           # HAProxy's front door on 127.0.0.1
    prom_port: int      # Prometheus, through HAProxy, on 127.0.0.1
    app: str
    workers: int
    proxy: str          # the hosts' PROXY protocol mode: "v2", or "off" (and HAProxy sends none)
    python: str

    @classmethod
    def from_env(cls) -> Fleet:
        fid = _int_env("FLEET_ID", 0, 0, 99)
        proxy = os.environ.get("FLEET_PROXY", "v2")
        if proxy not in ("v2", "off"):
            raise FleetError(f"FLEET_PROXY={proxy!r}: must be v2 or off")
        workers = _int_env("FLEET_WORKERS", 2, 1, 16)
        directory = Path(os.environ.get("FLEET_DIR") or f"/tmp/greenfork-fleet-{fid}")
        return cls(id=fid, dir=directory.resolve(), port=_int_env("FLEET_PORT", 18080 + fid, 1, 65535),
                   prom_port=_int_env("FLEET_PROM_PORT", 19090 + fid, 1, 65535),
                   app=os.environ.get("FLEET_APP", ""), workers=workers, proxy=proxy,
                   python=os.environ.get("FLEET_PYTHON", sys.executable))

    # ------------------------------------------------------------ names
    @property
    def prefix(self) -> str:
        return f"gff{self.id}"

    @property
    def net(self) -> str:
        """The first three octets of the fleet's /24."""
        return f"10.251.{self.id}"

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    @property
    def lb_ns(self) -> str:
        return f"{self.prefix}-lb"

    def host_ns(self, n: int) -> str:
        return f"{self.prefix}-h{n}"

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_ns, self.lb_ns, *(self.host_ns(n) for n in HOSTS)]

    @property
    def lb_ip(self) -> str:
        return f"{self.net}.2"

    def host_ip(self, n: int) -> str:
        return f"{self.net}.{10 + n}"

    # ------------------------------------------------------------ files
    def host_dir(self, n: int) -> Path:
        return self.dir / f"h{n}"

    def pidfile(self, n: int) -> Path:
        return self.host_dir(n) / "greenfork.pid"

    @property
    def haproxy_socket(self) -> Path:
        return self.dir / "haproxy.sock"

    @property
    def haproxy_pidfile(self) -> Path:
        return self.dir / "haproxy.pid"

    @property
    def prom_dir(self) -> Path:
        return self.dir / "prometheus"

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables examples/fleet/haproxy.cfg reads."""
        return {"FLEET_DIR": str(self.dir), "FLEET_LB_NS": self.lb_ns, "FLEET_NET": self.net,
                "FLEET_PORT": str(self.port), "FLEET_PROM_PORT": str(self.prom_port),
                "FLEET_PROXY": self.proxy}

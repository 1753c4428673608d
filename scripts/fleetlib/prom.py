"""Prometheus in the lb namespace: examples/fleet/prometheus.yml and the example alerting rules
as they are, the hosts as file-based service discovery targets, the HTTP API through HAProxy."""

from __future__ import annotations

import json
import shutil
import signal
import urllib.parse
import urllib.request
from typing import Any

from . import proc
from .config import EXAMPLES, HOSTS, METRICS_PORT, PROM_PORT, Fleet, FleetError

CONFIG = EXAMPLES / "fleet" / "prometheus.yml"
RULES = EXAMPLES / "prometheus" / "alerts.yml"


def binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise FleetError("prometheus is not installed (scripts/fleet installs Debian's prometheus)")
    return path


def targets(fleet: Fleet) -> list[dict[str, Any]]:
    """The file_sd document: one target per host, labelled with its name."""
    return [{"targets": [f"{fleet.host_ip(n)}:{METRICS_PORT}"], "labels": {"host": f"h{n}"}} for n in HOSTS]


def start(fleet: Fleet) -> int:
    d = fleet.prom_dir
    (d / "targets").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONFIG, d / "prometheus.yml")
    shutil.copyfile(RULES, d / "alerts.yml")
    tmp = d / "targets" / ".greenfork.json.tmp"  # file_sd reads a file whole: write it by rename
    tmp.write_text(json.dumps(targets(fleet), indent=2) + "\n")
    tmp.rename(d / "targets" / "greenfork.json")
    proc.run(["promtool", "check", "config", str(d / "prometheus.yml")])
    log = d / "prometheus.log"
    pid = proc.spawn(["ip", "netns", "exec", fleet.lb_ns, binary(), f"--config.file={d / 'prometheus.yml'}",
                      f"--web.listen-address=127.0.0.1:{PROM_PORT}", f"--storage.tsdb.path={d / 'data'}",
                      "--storage.tsdb.retention.time=1d"], log)
    (d / "prometheus.pid").write_text(f"{pid}\n")

    def ready() -> bool:
        if not proc.alive(pid):
            raise FleetError(f"prometheus exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{fleet.prom_url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    proc.wait_for(ready, 30, "prometheus to be ready", every=0.2)
    return pid


def stop(fleet: Fleet) -> None:
    pid = proc.read_pid(fleet.prom_dir / "prometheus.pid")
    if pid is not None and "prometheus" in proc.cmdline(pid):
        proc.stop(pid, signal.SIGTERM, grace=10)
    (fleet.prom_dir / "prometheus.pid").unlink(missing_ok=True)


def api(fleet: Fleet, path: str, **params: str) -> Any:
    url = f"{fleet.prom_url}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
    except OSError as e:
        raise FleetError(f"prometheus API {path}: {e}") from None
    if doc.get("status") != "success":
        raise FleetError(f"prometheus API {path}: {doc}")
    return doc["data"]


def up(fleet: Fleet) -> dict[str, float]:
    """`up` of each host as Prometheus has it now: {"h1": 1.0, ...}."""
    result = api(fleet, "query", query='up{job="greenfork"}')["result"]
    return {r["metric"].get("host", r["metric"]["instance"]): float(r["value"][1]) for r in result}


def alerts(fleet: Fleet) -> list[dict[str, Any]]:
    return list(api(fleet, "alerts")["alerts"])

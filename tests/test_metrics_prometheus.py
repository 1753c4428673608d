"""A real Prometheus server scrapes greenfork; the example alerting rules pass promtool."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Launcher, http_get, wait_for

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required (scripts/test installs Debian's prometheus package)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: greenfork\n    static_configs:\n"
            f"      - targets: ['{target}']\n")
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
        log.close()
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait(10)


def query(api: str, promql: str) -> list[dict[str, Any]]:
    url = f"{api}/api/v1/query?query={urllib.parse.quote(promql)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = json.load(resp)
    except OSError:
        return []  # not up yet
    assert data["status"] == "success", data
    return list(data["data"]["result"])


def test_a_real_prometheus_scrapes_it(launcher: Launcher, prometheus: Any, tmp_path: Path) -> None:
    g = launcher.start(["metricsapp:app", "-b", "http://127.0.0.1:0", "--metrics-bind", "http://127.0.0.1:0"],
                       workers=2)
    for _ in range(7):
        assert http_get(g.url(), "/")[0] == 200
    api = prometheus(g.info["metrics"].split("://", 1)[1])

    def up() -> bool:
        result = query(api, 'up{job="greenfork"}')
        return bool(result) and result[0]["value"][1] == "1"

    wait_for(up, 45, "Prometheus to scrape greenfork with up == 1")
    result = query(api, 'sum(http_server_request_duration_seconds_count{http_response_status_code="200"})')
    assert result and float(result[0]["value"][1]) == 7
    workers = query(api, 'greenfork_workers{state="ready"}')
    assert workers and workers[0]["value"][1] == "2"


def test_alerting_rules_pass_promtool() -> None:
    rules = ROOT / "examples" / "prometheus" / "alerts.yml"
    out = subprocess.run([tool("promtool"), "check", "rules", str(rules)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


FRONT_DOOR_ALERT_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'greenfork_tls_certificate_expiry_timestamp_seconds{{instance="a",server_name="soon.example.com"}}'
        values: '864000x150'
      - series: 'greenfork_tls_certificate_expiry_timestamp_seconds{{instance="a",server_name="later.example.com"}}'
        values: '5184000x150'
      - series: 'greenfork_tls_handshake_duration_seconds_count{{instance="a",error_type="tls_handshake_failed"}}'
        values: '0+30x40'
      - series: 'greenfork_tls_handshake_duration_seconds_count{{instance="a",tls_protocol_version="1.3"}}'
        values: '0+60x40'
      - series: 'http_server_request_duration_seconds_count{{instance="a",error_type="request_queue_full"}}'
        values: '0+6x40'
      - series: 'http_server_request_duration_seconds_count{{instance="a",http_response_status_code="200"}}'
        values: '0+60x40'
      - series: 'greenfork_delegated_connections_total{{instance="a",target="/api",result="unavailable"}}'
        values: '0+6x40'
      - series: 'greenfork_delegated_connections_total{{instance="a",target="/api",result="success"}}'
        values: '0x40'
      - series: 'greenfork_delegated_connections_total{{instance="a",target="/ok",result="success"}}'
        values: '0+60x40'
      - series: 'greenfork_delegated_connections_total{{instance="a",target="/ok",result="busy"}}'
        values: '0+1x40'
    alert_rule_test:
      - eval_time: 30m
        alertname: GreenforkCertificateExpiringSoon
        exp_alerts: []
      - eval_time: 90m
        alertname: GreenforkCertificateExpiringSoon
        exp_alerts:
          - exp_labels: {{severity: warning, instance: a, server_name: soon.example.com}}
            exp_annotations:
              summary: "The certificate for soon.example.com on a expires in 9d 22h 30m 0s: replace it and reload (HUP)"
      - eval_time: 10m
        alertname: GreenforkTLSHandshakeFailures
        exp_alerts: []
      - eval_time: 30m
        alertname: GreenforkTLSHandshakeFailures
        exp_alerts:
          - exp_labels: {{severity: warning, instance: a}}
            exp_annotations:
              summary: "33.33% of TLS handshakes on a fail (their error_type says why)"
      - eval_time: 15m
        alertname: GreenforkRequestQueueFull
        exp_alerts:
          - exp_labels: {{severity: warning, instance: a}}
            exp_annotations:
              summary: "9.091% of requests on a are shed with 503 because the request queues are full: add workers or capacity"
      - eval_time: 15m
        alertname: GreenforkDelegationFailing
        exp_alerts:
          - exp_labels: {{severity: critical, instance: a, target: /api}}
            exp_annotations:
              summary: "Delegation target /api on a takes no connections: its clients get 503"
"""  # noqa: E501 - promtool's series and messages, verbatim


def test_front_door_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool's rule unit tests: each new alert fires on a series that should trip it (after
    its `for`), and not on its neighbours (a later certificate, a target that still works)."""
    rules = ROOT / "examples" / "prometheus" / "alerts.yml"
    (tmp_path / "test.yml").write_text(FRONT_DOOR_ALERT_TESTS.format(rules=rules))
    out = subprocess.run([tool("promtool"), "test", "rules", str(tmp_path / "test.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_dashboard_queries_are_valid_and_documented(tmp_path: Path) -> None:
    dash = json.loads((ROOT / "examples" / "grafana" / "greenfork.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = [(x, y) for p in dash["panels"] for g in [p["gridPos"]]
             for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])]
    assert len(cells) == len(set(cells)), "panels overlap"
    for p in dash["panels"]:
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"{p['title']}: refIds repeat"
    # promtool parses PromQL in rule files: one recording rule per panel query
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        promql = expr.replace("$__rate_interval", "5m").replace('"$instance"', '".*"')
        rules += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(promql)}"]
    (tmp_path / "dashboard.yml").write_text("\n".join(rules) + "\n")
    out = subprocess.run([tool("promtool"), "check", "rules", str(tmp_path / "dashboard.yml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = (ROOT / "docs" / "metrics.md").read_text()
    import re

    for expr in exprs:
        for name in re.findall(r"\b((?:http_server|greenfork)_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert f"`{base}" in doc or f"`{name}" in doc, f"{name}: in the dashboard, not in docs/metrics.md"

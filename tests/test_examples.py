"""The deployment examples, exercised by the real tools they are written for."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.procs import APPS, Launcher, http_get, wait_for

pytestmark = pytest.mark.timeout(60)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def writes_to(pid: int, new: Path, old: Path) -> bool:
    """Whether process pid has `new` open and no longer `old` (a renamed file keeps its fd)."""
    targets = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass  # closed meanwhile
    except OSError:
        return False
    return str(new) in targets and str(old) not in targets


def test_logrotate_recipe_rotates_a_live_server(launcher: Launcher, tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    logs = tmp_path / "logs"
    logs.mkdir()
    pidfile = tmp_path / "gf.pid"
    access, error = logs / "access.log", logs / "error.log"
    g = launcher.start(["testapp:app", "-b", "127.0.0.1:0", "-p", str(pidfile), "--access-logfile",
                        str(access), "--error-logfile", str(error)], workers=2, boot_log=error)
    http_get(g.url(), "/pid")
    wait_for(lambda: access.stat().st_size > 0, 5, "an access log line")
    conf = tmp_path / "logrotate.conf"
    conf.write_text((EXAMPLES / "logrotate" / "greenfork").read_text()
                    .replace("/var/log/greenfork", str(logs)).replace("/run/greenfork.pid", str(pidfile)))
    out = subprocess.run([logrotate, "-f", "-s", str(tmp_path / "state"), str(conf)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert (logs / "access.log.1").exists() and (logs / "error.log.1").exists()
    # after USR1 every worker writes to new files
    wait_for(lambda: error.exists() and "Reopened log files" in error.read_text(), 10, "the reopen")
    # (that line is the master's; each worker reopens when the master's word reaches it, a moment
    # later: its descriptors tell, as `ls -l /proc/PID/fd` would show an operator)
    wait_for(lambda: all(writes_to(pid, access, logs / "access.log.1") for pid in g.workers()), 10,
             "every worker's reopen")
    for _ in range(6):
        http_get(g.url(), "/pid")
    wait_for(lambda: access.exists() and len(access.read_text().splitlines()) == 6, 5, "new access lines")


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is required (scripts/test installs Debian's systemd)")
    version = int(subprocess.run([analyze, "--version"], capture_output=True, text=True).stdout.split()[1])
    greenfork = str(Path(sys.executable).parent / "greenfork")
    for name in ("greenfork.service", "greenfork.socket"):
        text = (EXAMPLES / "systemd" / name).read_text()
        text = text.replace("/srv/myapp/.venv/bin/greenfork", greenfork).replace("/srv/myapp", str(tmp_path))
        if version < 253:  # as the unit's own comment says for older systemd
            text = text.replace("Type=notify-reload", "Type=notify").replace("ReloadSignal=SIGHUP\n", "")
            text = text.replace("#ExecReload=", "ExecReload=")
        (tmp_path / name).write_text(text)
    out = subprocess.run([analyze, "verify", str(tmp_path / "greenfork.service")], capture_output=True,
                         text=True, timeout=30)
    problems = [line for line in out.stderr.splitlines() if "greenfork" in line]
    assert out.returncode == 0 and not problems, out.stderr


def test_kubernetes_manifests_are_valid_against_the_api_schemas() -> None:
    import kubernetes_validate
    import yaml

    docs = list(yaml.safe_load_all((EXAMPLES / "kubernetes" / "deployment.yaml").read_text()))
    kinds = []
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        kinds.append(doc["kind"])
    assert kinds == ["Deployment", "Service", "PodDisruptionBudget"]
    scaling = list(yaml.safe_load_all((EXAMPLES / "kubernetes" / "autoscaling.yaml").read_text()))
    for doc in scaling:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    assert [d["kind"] for d in scaling] == ["ConfigMap", "HorizontalPodAutoscaler"]
    # a broken manifest is caught: the check above can fail
    bad = dict(docs[0], spec=dict(docs[0]["spec"], replicas="three"))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_probes_and_grace_period_fit_the_server() -> None:
    import yaml

    deployment = next(yaml.safe_load_all((EXAMPLES / "kubernetes" / "deployment.yaml").read_text()))
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if a.startswith("--"))
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert args["metrics-bind"].endswith(":9110")
    # the pod is not SIGKILLed while greenfork still waits, then drains
    waits = float(args["shutdown-delay"]) + float(args["graceful-timeout"])
    assert pod["terminationGracePeriodSeconds"] > waits


def test_kubernetes_and_docker_command_lines_are_valid_greenfork_settings() -> None:
    import yaml

    deployment = next(yaml.safe_load_all((EXAMPLES / "kubernetes" / "deployment.yaml").read_text()))
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "greenfork"
    out = subprocess.run([sys.executable, "-m", "greenfork.master", *args[1:], "--check-config"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "shutdown_delay = 5.0" in out.stdout and "metrics_bind = 'http://0.0.0.0:9110'" in out.stdout


# issue 17: a front and two app servers (docs/port-sharing.md)
PORT_SHARING_UNITS = ("greenfork-front.service", "greenfork-api.service", "greenfork-shop.service")


def _unit_text(name: str, tmp_path: Path, version: int) -> str:
    text = (EXAMPLES / "systemd" / name).read_text()
    text = re.sub(r"/srv/(\w+)/\.venv/bin/greenfork", str(Path(sys.executable).parent / "greenfork"), text)
    text = re.sub(r"/srv/\w+", str(tmp_path), text)
    if version < 253:  # as the units' own comments say for older systemd
        text = text.replace("Type=notify-reload", "Type=notify").replace("ReloadSignal=SIGHUP\n", "")
        text = text.replace("#ExecReload=", "ExecReload=")
    return text


def _exec_start(text: str) -> list[str]:
    """The ExecStart command line, its continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text.split("\nExecStart=", 1)[1]).split("\n", 1)[0]
    return shlex.split(joined)


def test_port_sharing_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is required (scripts/test installs Debian's systemd)")
    version = int(subprocess.run([analyze, "--version"], capture_output=True, text=True).stdout.split()[1])
    paths = []
    for name in PORT_SHARING_UNITS:
        (tmp_path / name).write_text(_unit_text(name, tmp_path, version))
        paths.append(str(tmp_path / name))
    out = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True, timeout=60)
    problems = [line for line in out.stderr.splitlines() if "greenfork" in line]
    assert out.returncode == 0 and not problems, out.stderr
    # the command lines are valid settings, and say what the page says
    front, api, shop = (_exec_start(_unit_text(n, tmp_path, version)) for n in PORT_SHARING_UNITS)
    for args in (front, api, shop):
        out = subprocess.run([sys.executable, "-m", "greenfork.master", *args[1:], "--check-config"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    assert "--delegate" in front and "handoff:/run/greenfork/api/handoff.sock" in api


def test_port_sharing_units_serve_as_written(launcher: Launcher, sock_dir: Path, tmp_path: Path) -> None:
    """The three ExecStart lines, run as written but for what this machine lacks: the apps are
    tests/apps/shareapps.py's, /run/greenfork a temporary directory, port 80 a free one, and the
    users and groups of the units (test_delegation.py runs receivers as another user)."""
    units = [_exec_start(_unit_text(n, tmp_path, 999)) for n in PORT_SHARING_UNITS]
    apps = {"site.wsgi:application": "shareapps:main", "api.wsgi:application": "shareapps:api",
            "shop.wsgi:application": "shareapps:shop"}

    def adapt(args: list[str]) -> list[str]:
        out: list[str] = []
        skip = False
        for a in args[1:]:
            if skip:
                skip = False
                continue
            if a in ("--user", "--handoff-socket-group"):
                skip = True
                continue
            a = apps.get(a, a).replace("/run/greenfork", str(sock_dir)).replace("http://0.0.0.0:80",
                                                                                "http://127.0.0.1:0")
            out.append(a)
        return out

    (sock_dir / "api").mkdir()
    (sock_dir / "shop").mkdir()
    front_args, api_args, shop_args = (adapt(u) for u in units)
    launcher.start(api_args, cwd=APPS)
    launcher.start(shop_args, cwd=APPS)
    front = launcher.start(front_args, cwd=APPS)

    def app_of(path: str, host: str | None = None) -> str:
        status, _, body = http_get(front.url(), path, {"Host": host} if host else None)
        assert status == 200, body
        return str(json.loads(body)["app"])

    assert app_of("/api/users") == "api"
    assert app_of("/cart", "shop.example.com") == "shop"
    assert app_of("/") == "main"
def _kube(name: str) -> dict[str, dict[str, Any]]:
    import yaml

    return {d["kind"]: d for d in yaml.safe_load_all((EXAMPLES / "kubernetes" / name).read_text())}


def test_kubernetes_rolling_update_and_disruptions_keep_ready_pods() -> None:
    """No request lost on a rollout: a new pod is Ready (by /readyz) before an old one goes, and
    the old one serves on, reporting not ready, until its endpoints are gone everywhere."""
    kube = _kube("deployment.yaml")
    deployment, pdb = kube["Deployment"], kube["PodDisruptionBudget"]
    spec = deployment["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    container = spec["template"]["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if a.startswith("--"))
    probe = container["readinessProbe"]
    # the readiness probe sees the 503 of the delay before it ends, with time left for the
    # endpoint removal to reach every node's proxy
    assert float(args["shutdown-delay"]) >= probe["periodSeconds"] * probe["failureThreshold"] + 2
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    hpa = _kube("autoscaling.yaml")["HorizontalPodAutoscaler"]["spec"]
    # a drain can always proceed, and never leaves fewer than two pods
    assert hpa["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 2


def test_kubernetes_scrape_annotations_name_the_metrics_listener() -> None:
    """A Prometheus that discovers pods by their prometheus.io/* annotations scrapes the port
    greenfork's --metrics-bind listens on, at /metrics."""
    template = _kube("deployment.yaml")["Deployment"]["spec"]["template"]
    notes = template["metadata"]["annotations"]
    container = template["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if a.startswith("--"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
    assert int(notes["prometheus.io/port"]) == ports["metrics"] == int(args["metrics-bind"].rsplit(":", 1)[1])
    assert container["readinessProbe"]["httpGet"]["port"] == "metrics"


# A Service's rolling update, modelled with real processes: kube-proxy is an L4 balancer that
# never retries (HAProxy in TCP mode, `retries 0`), whose endpoints follow the readiness probe
# (HAProxy's check on /readyz at the probe's period and failure threshold); the pods are greenfork
# with the manifest's arguments. A new pod gets its endpoint once Ready (maxSurge 1), and only then
# is the old one sent TERM (maxUnavailable 0).
KUBE_PROXY = """
global
    stats socket {stats} mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 35s
    retries 0
frontend service
    bind 127.0.0.1:{port}
    default_backend endpoints
backend endpoints
    balance roundrobin
    option httpchk GET /readyz
    default-server inter {period}s fall {failures} rise 1
    server old 127.0.0.1:{old} check port {old_metrics}
    server new 127.0.0.1:{new} check port {new_metrics} disabled
"""


@pytest.mark.parametrize("shutdown_delay", ["manifest", "0"], ids=["manifest", "no-delay"])
def test_kubernetes_rolling_update_loses_no_request(launcher: Launcher, tmp_path: Path,
                                                    shutdown_delay: str) -> None:
    """Under wrk through the model of a Service, the old pod's TERM loses no request with the
    manifest's --shutdown-delay; without the delay, connections sent to it before its endpoint
    goes fail (the model can tell the two apart)."""
    from tests.test_behind_proxies import Proxy, listening, start, tool

    pod = _kube("deployment.yaml")["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # the manifest's arguments but its application and addresses (and the access log, not needed)
    args = [a for a in container["args"][2:] if not a.startswith(("--bind=", "--metrics-bind=", "--access"))]
    if shutdown_delay != "manifest":
        args = [a for a in args if not a.startswith("--shutdown-delay=")]
        args.append(f"--shutdown-delay={shutdown_delay}")
    listeners = ["-b", "127.0.0.1:0", "--metrics-bind", "http://127.0.0.1:0"]
    pods = [launcher.start(["testapp:app", *listeners, *args]) for _ in range(2)]
    old, new = pods
    probe = container["readinessProbe"]
    port = free_port()
    stats = tmp_path / "stats.sock"
    metrics = [int(g.info["metrics"].rsplit(":", 1)[1]) for g in pods]
    (tmp_path / "kube-proxy.cfg").write_text(KUBE_PROXY.format(
        stats=stats, port=port, period=probe["periodSeconds"], failures=probe["failureThreshold"],
        old=old.port(), old_metrics=metrics[0], new=new.port(), new_metrics=metrics[1]))
    proxies: list[Proxy] = []
    wrk: subprocess.Popen[bytes] | None = None
    try:
        start(proxies, "haproxy", [tool("haproxy", "haproxy"), "-db", "-f", str(tmp_path / "kube-proxy.cfg")],
              tmp_path / "haproxy.log", port)
        assert listening(port)

        def runtime(command: str) -> str:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(stats))
                s.sendall(command.encode() + b"\n")
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
            return out.decode()

        def endpoint(server: str) -> dict[str, str]:
            """HAProxy's `show stat` row of a server: `status` UP/DOWN/MAINT, `scur` the
            connections open to it now (in TCP mode HAProxy sees no requests)."""
            header, *rows = runtime("show stat").splitlines()
            named = (dict(zip(header.lstrip("# ").split(","), row.split(","), strict=False)) for row in rows)
            return next(r for r in named if r["pxname"] == "endpoints" and r["svname"] == server)

        wait_for(lambda: endpoint("old")["status"] == "UP", 10, "the old pod's endpoint")
        with open(tmp_path / "wrk.log", "wb") as out:
            wrk = subprocess.Popen(["wrk", "-t2", "-c12", "-d60s", "--timeout", "10s", "-s",
                                    str(Path(__file__).with_name("wrk_count.lua")), f"http://127.0.0.1:{port}/"],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        wait_for(lambda: endpoint("old")["scur"] == "12", 10, "wrk's connections on the old pod")
        # maxSurge 1: the new pod is Ready, its endpoint is added; maxUnavailable 0: only then TERM
        assert http_get(new.info["metrics"], "/readyz")[0] == 200
        runtime("enable server endpoints/new")
        wait_for(lambda: endpoint("new")["status"] == "UP", 10, "the new pod's endpoint")
        old.signal(signal.SIGTERM)
        assert old.wait(pod["terminationGracePeriodSeconds"]) == 0
        wait_for(lambda: endpoint("new")["scur"] == "12", 10, "wrk's connections on the new pod")
        wrk.send_signal(signal.SIGINT)
        wrk.wait(20)
    finally:
        if wrk is not None and wrk.poll() is None:
            wrk.kill()
            wrk.wait(5)
        for p in proxies:
            p.stop()
    text = (tmp_path / "wrk.log").read_text()
    m = re.search(r"^GF (.*)$", text, re.M)
    assert m, text
    counts = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    failed = sum(counts[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    assert counts["requests"] > 1000, counts
    if shutdown_delay == "manifest":
        assert failed == 0, counts
    else:
        assert failed > 0, f"the model should lose requests without a shutdown delay: {counts}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_kubernetes_hpa_scales_on_a_greenfork_metric_the_adapter_serves(tmp_path: Path) -> None:
    import yaml

    kube = _kube("autoscaling.yaml")
    hpa = kube["HorizontalPodAutoscaler"]["spec"]
    deployment = _kube("deployment.yaml")["Deployment"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    rules = yaml.safe_load(kube["ConfigMap"]["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"]: r for r in rules}
    metric = hpa["metrics"][0]["pods"]["metric"]["name"]
    assert metric in served, f"the HPA asks for {metric}; the adapter serves {list(served)}"
    rule = served[metric]
    series = rule["seriesQuery"].split("{", 1)[0]
    assert f"`{series}`" in (EXAMPLES.parent / "docs" / "metrics.md").read_text(), f"{series} is not a metric"
    # the adapter's queries, with its template filled in as it does, are valid PromQL
    query = (rule["metricsQuery"].replace("<<.GroupBy>>", "namespace, pod").replace("<<.Series>>", series)
             .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"myapp-.*"'))
    recording = [{"record": "adapter:series", "expr": rule["seriesQuery"]},
                 {"record": "adapter:metric", "expr": query}]
    rules_file = {"groups": [{"name": "adapter", "rules": recording}]}
    (tmp_path / "adapter.yml").write_text(yaml.safe_dump(rules_file))
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is required (scripts/test installs Debian's prometheus package)")
    out = subprocess.run([promtool, "check", "rules", str(tmp_path / "adapter.yml")], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr

"""scripts/fleet: a fleet of greenfork hosts behind HAProxy, watched by Prometheus (docs/fleet.md).

One module per job: config (names, addresses, ports), netns (namespaces and links), proc (processes
by pid, with deadlines), hosts (greenfork in each namespace), haproxy (the front door and its
runtime API), prom (Prometheus), load (wrk), roll (the rolling procedures), __main__ (the CLI).
"""

"""Raise the open-files limit before forking, so each worker can hold its
--worker-connections sockets (as nginx's worker_rlimit_nofile does)."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("greenfork.master")


def raise_nofile() -> int:
    """Set the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:  # e.g. above fs.nr_open: keep what we have
            log.debug("could not raise RLIMIT_NOFILE to %s: %s", target, e)
    shown = "unlimited" if hard == resource.RLIM_INFINITY else hard
    log.debug("RLIMIT_NOFILE: soft %d, hard %s", soft, shown)
    return soft

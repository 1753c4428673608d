"""Pieces shared by the collectors: listener labels and histogram samples."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from greenfork.metrics import layout as L

LISTENER_LABELS = ("server_address", "server_port", "network_transport")
_OTHER_LISTENER = dict.fromkeys(LISTENER_LABELS, L.OTHER)


@dataclass
class ListenerView:
    url: str
    sock: socket.socket | None  # for TCP_INFO; None when not a TCP listener
    address: str
    port: str
    transport: str
    prefixes: tuple[str, ...] = ()  # issue 17: the --mount prefix URLs served on it (greenfork_listener_info)

    @property
    def labels(self) -> dict[str, str]:
        return {"server_address": self.address, "server_port": self.port,
                "network_transport": self.transport}

    @property
    def tls(self) -> bool:
        return self.url.startswith("https:")


class Listeners:
    """Label values of listener indexes: a slot's last listener block, and the listener
    field of a cell key that was out of range (LISTENER_OTHER), are all _OTHER."""

    def __init__(self, views: list[ListenerView]) -> None:
        self.views = views

    def labels(self, index: int) -> dict[str, str]:
        return dict(self.views[index].labels) if index < len(self.views) else dict(_OTHER_LISTENER)

    def rows(self, blocks: list[list[float]], show: Callable[[int, list[float]], bool]
             ) -> Iterator[tuple[list[str], list[float]]]:
        """(label values, fields) of each listener for which `show(index, fields)` holds, then
        of the unknown-listener block if anything was counted there."""
        for i, fields in enumerate(blocks):
            known = i < len(self.views)
            if show(i, fields) if known else any(fields):
                yield [self.labels(i)[k] for k in LISTENER_LABELS], fields


def _le(bounds: tuple[float, ...]) -> list[str]:
    return [floatToGoString(b) for b in (*bounds, float("inf"))]  # type: ignore[no-untyped-call]


_LE: dict[tuple[float, ...], list[str]] = {
    b: _le(b) for b in (L.REQUEST_BUCKETS, L.CONNECTION_BUCKETS, L.TLS_BUCKETS)}


def histogram(h: Metric, labels: dict[str, str], bounds: tuple[float, ...], values: list[float]) -> None:
    acc = 0.0
    for i, le in enumerate(_LE[bounds]):
        acc += values[i]
        h.add_sample(h.name + "_bucket", {**labels, "le": le}, acc)
    h.add_sample(h.name + "_count", labels, acc)
    h.add_sample(h.name + "_sum", labels, values[L.NBUCKETS])


def group(h: Metric, groups: dict[tuple[tuple[str, str], ...], list[float]],
          bounds: tuple[float, ...]) -> Metric:
    for labels_t, values in sorted(groups.items()):
        histogram(h, dict(labels_t), bounds, values)
    return h

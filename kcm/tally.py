"""A count kept by the parts that count (an attribute update each), read by the metrics when
scraped (:mod:`kcm.metrics`). Apart from :mod:`kcm.metrics` so that layers below the planes
(the L4 engine) may count without importing Twisted or prometheus_client."""

from __future__ import annotations

__all__ = ["Tally"]


class Tally:
    """One labelled child of a :class:`kcm.metrics.ReactorCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

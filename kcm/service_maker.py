"""The ``twistd`` plugins' service maker: a :class:`ServiceMaker` whose process ignores
SIGHUP from the import of the plane's module on, until a service of the plane handles it
(kcm-core's policy reload, the gateway supervisor's rolling restart of its workers, a
worker's or single gateway's :class:`kcm.gateway.supervisor.SighupIgnored`).

A reload sent while the plane starts (``systemctl reload`` right after ``start``, or during
a long schema upgrade) killed it, SIGHUP's default action; kcm-core's policy service, the
first to handle it, starts after the store, L1 and the audit checkpoints, and puts back
what it found when it stops (this, so a SIGHUP while it drains does not end it either).
Before the import (the interpreter's own start, twistd's) nothing of the plane runs yet.
"""

from __future__ import annotations

import signal
import threading

from twisted.application.service import ServiceMaker


class PlaneServiceMaker(ServiceMaker):
    """A :class:`ServiceMaker` that ignores SIGHUP before it imports its module."""

    @property
    def options(self) -> type:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return super().options

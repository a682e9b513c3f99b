"""Periodic checkpoints of the audit chain's head, written to the log.

Whoever can write the database but not read L1 cannot forge a record, yet can still cut the
chain back to a head they saw before, or roll the whole database back to a backup. A
checkpoint, the head's sequence number and digest MACed under the audit key
(:class:`kcm.core.audit.Checkpoint`), leaves the database in the log (``kcm.audit.checkpoint``
events); kept elsewhere, it is what ``kcm audit verify --checkpoint`` holds the chain to.

The newest checkpoint made, and when (``wall_clock`` seconds), stay in memory
(:attr:`AuditCheckpoints.newest`, :attr:`AuditCheckpoints.newest_at`): kcm.core.metrics
reports them, and the head the checkpoint read, when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from kcm.core.audit import (
    AuditChainError,
    Checkpoint,
    checkpoint_log,
    log_checkpoint,
    make_checkpoint,
)
from kcm.core.keyring import Keyring
from kcm.core.store.engine import Store
from kcm.core.store.unavailable import store_unavailable

#: Seconds between checkpoints: at most this much of the tail can be cut off unseen.
DEFAULT_INTERVAL = 300.0


class AuditCheckpoints(TimerService):
    """Logs a checkpoint of the audit chain's head when it starts and every ``interval``
    seconds of ``clock``. Starts after the L1 key is loaded (it needs the audit key); each
    checkpoint is one read transaction, off the reactor. A head that is not genuine is
    logged as an error instead, as is a store that is unavailable (one line naming the
    cause, no traceback), and the next tick tries again."""

    name = "kcm-audit-checkpoints"

    def __init__(self, store: Store, keyring: Keyring, clock: Any,
                 interval: float = DEFAULT_INTERVAL, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if interval <= 0:
            raise ValueError("the audit checkpoint interval must be positive")
        super().__init__(interval, self.checkpoint)
        self.clock = clock
        self._store = store
        self._keyring = keyring
        self._wall_clock = wall_clock
        #: The newest checkpoint made (None: none yet), and when (``wall_clock``).
        self.newest: Checkpoint | None = None
        self.newest_at = 0.0

    def checkpoint(self) -> Deferred[Checkpoint | None]:
        """Read the head, MAC it, log it; fires with the checkpoint (None if there was
        none to make), never fails."""
        audit_key = self._keyring.audit_key
        d = self._store.run(lambda session: make_checkpoint(session, audit_key=audit_key),
                            write=False)
        d.addCallbacks(self._made, _not_made)
        return d

    def _made(self, checkpoint: Checkpoint) -> Checkpoint:
        self.newest, self.newest_at = checkpoint, self._wall_clock()
        return log_checkpoint(checkpoint)


def _not_made(failure: Failure) -> None:
    if failure.check(AuditChainError):
        checkpoint_log.error("no audit checkpoint: {reason}; run `kcm audit verify`",
                             reason=str(failure.value))
        return
    unavailable = store_unavailable(failure.value)
    if unavailable is not None:  # (the operator's to fix; it recurs each interval until)
        checkpoint_log.error("no audit checkpoint: the key store is unavailable ({why})",
                             why=unavailable)
    else:
        checkpoint_log.failure("no audit checkpoint: reading the audit head failed", failure)

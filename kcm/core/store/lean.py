"""A write transaction without an ORM session, for group commits of audit records alone.

Most requests kcm-core answers change nothing: Discover Versions, Query, and the reads
beside the writer. Their group commits (:mod:`kcm.core.group_commit`) write audit records
and nothing else, with a handful of plain statements
(:class:`kcm.core.store.raw_statements.RawStatement`). The ORM session such a group ran in
did no work of its own, yet its setting up, its events and its closing cost more CPU than
the statements and the commit together: an audited Discover Versions's group took 243 µs
of CPU in a session and 100 µs on the connection alone, in process.

A :class:`LeanTransaction` is the store writer's kept connection
(:meth:`kcm.core.store.engine.Store.write_lean`) in one write transaction: what to run just
before the commit and just after it are registered on it, where a session has events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["LeanTransaction"]


class LeanTransaction:
    """One write transaction on :attr:`connection` (a SQLAlchemy Connection), the writers'
    lock held. :attr:`info` is what a session's ``info`` is to a session's transaction
    (the store puts the audit key there, as for sessions)."""

    __slots__ = ("_after_commit", "_before_commit", "connection", "info")

    def __init__(self, connection: Any, info: dict[str, Any]) -> None:
        self.connection = connection
        self.info = info
        self._before_commit: list[Callable[[LeanTransaction], None]] = []
        self._after_commit: list[Callable[[LeanTransaction], None]] = []

    def before_commit(self, hook: Callable[[LeanTransaction], None]) -> None:
        """Call ``hook(self)`` in the transaction, once its work is done, before the commit
        (an error there rolls the transaction back)."""
        self._before_commit.append(hook)

    def after_commit(self, hook: Callable[[LeanTransaction], None]) -> None:
        """Call ``hook(self)`` once the transaction has committed (not if it rolls back)."""
        self._after_commit.append(hook)

    def run_before_commit(self) -> None:
        for hook in self._before_commit:
            hook(self)

    def run_after_commit(self) -> None:
        for hook in self._after_commit:
            hook(self)

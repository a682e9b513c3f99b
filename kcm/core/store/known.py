"""Facts of a store's committed data that the hot path reads from memory.

Shared by :mod:`kcm.core.store.engine` (which gives every session its store's
:class:`KnownFacts` and applies what a write transaction learnt once it commits) and
:mod:`kcm.core.store.repository` (which consults and feeds them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from sqlalchemy.orm import Session

#: Whether a session's transaction may write (``Session.info``; set by the store).
WRITE_INFO = "kcm.store.write"
#: Set (True) in a session that reads in a lean group's transaction
#: (:meth:`kcm.core.store.engine.Store.read_in`): work that would write there must not, and
#: says so (:func:`kcm.core.context.about_to_write`) before anything is written.
LEAN_READ_INFO = "kcm.store.lean_read"
#: Where a session of a :class:`Store` finds the store's :class:`KnownFacts`.
KNOWN_FACTS_INFO = "kcm.store.known"
#: Facts a write transaction learnt, for its store's :class:`KnownFacts` once it commits.
LEARNT_INFO = "kcm.store.learnt"


class KnownFacts:
    """What a store's committed data is known to hold, so that the hot path need not ask
    the database again: the (tenant, service) pairs that are provisioned. A service key is
    deleted only with its whole tenant (``kcm core tenant remove``, perhaps run by another
    process), so the facts hold until a tenant is removed: each write transaction that
    trusts one first compares the store's count of tenant removals with :attr:`removals`
    (:func:`kcm.core.store.repository.service_exists`), and the removal's ``tenant.removed``
    event, where this process reads the outbox, forgets the tenant at once
    (:meth:`forget_tenant`). A fact seen in a write transaction counts only once that
    transaction has committed (:func:`learn`). Thread-safe."""

    def __init__(self) -> None:
        self.services: set[tuple[str, str]] = set()
        #: The count of tenant removals these facts are known to hold under (None: not
        #: compared yet).
        self.removals: int | None = None
        #: Bumped by every forgetting: a read that began before one learns nothing from it.
        self.epoch = 0
        self._lock = threading.Lock()

    def forget_tenant(self, tenant: str) -> None:
        """``tenant`` was removed: nothing learnt of it holds any more."""
        with self._lock:
            self.epoch += 1
            self.services = {fact for fact in self.services if fact[0] != tenant}

    def hold_under(self, removals: int) -> None:
        """The store has counted ``removals`` tenant removals (read in a write transaction,
        under the writers' lock): if that is not the count the facts hold under, a tenant
        they name may be gone, so every fact is forgotten."""
        if removals == self.removals:
            return
        with self._lock:
            self.epoch += 1
            self.services = set()
            self.removals = removals

    def add(self, service: tuple[str, str], epoch: int) -> None:
        """``service`` is provisioned, as a read that began at ``epoch`` saw: known from now
        on, unless a forgetting came since (it may have been about that very tenant)."""
        self.add_all([(service, epoch)])

    def add_all(self, learnt: Iterable[tuple[tuple[str, str], int]]) -> None:
        """:meth:`add` of each (service, epoch) a committed write transaction learnt: every
        change of :attr:`services` is made under the lock, so :meth:`forget_tenant`'s pass
        over it never meets a set changing size, and nothing learnt before a forgetting
        comes back after it."""
        with self._lock:
            for service, epoch in learnt:
                if epoch == self.epoch:
                    self.services.add(service)


def known_facts(session: Session) -> KnownFacts | None:
    """The :class:`KnownFacts` of the store whose session this is (None: not a store's)."""
    return session.info.get(KNOWN_FACTS_INFO)


def learn(session: Session, service: tuple[str, str], epoch: int) -> None:
    """``service`` is provisioned, as ``session`` has just read (its read began at the
    facts' ``epoch``): known from now on if what it read is committed (a read-only
    transaction), else once this transaction commits."""
    facts = known_facts(session)
    if facts is None:
        return
    if session.info.get(WRITE_INFO, True):
        session.info.setdefault(LEARNT_INFO, set()).add((service, epoch))
    else:
        facts.add(service, epoch)

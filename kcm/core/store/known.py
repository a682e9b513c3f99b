"""Facts of a store's committed data that the hot path reads from memory.

Shared by :mod:`kcm.core.store.engine` (which gives every session its store's
:class:`KnownFacts` and applies what a write transaction learnt once it commits) and
:mod:`kcm.core.store.repository` (which consults and feeds them).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

#: Whether a session's transaction may write (``Session.info``; set by the store).
WRITE_INFO = "kcm.store.write"
#: Where a session of a :class:`Store` finds the store's :class:`KnownFacts`.
KNOWN_FACTS_INFO = "kcm.store.known"
#: Facts a write transaction learnt, for its store's :class:`KnownFacts` once it commits.
LEARNT_INFO = "kcm.store.learnt"


class KnownFacts:
    """What a store's committed data is known to hold that never stops holding, so that
    the hot path need not ask the database again: the (tenant, service) pairs that are
    provisioned (a service key is never deleted). A fact seen in a write transaction counts
    only once that transaction has committed (:func:`learn`). Thread-safe (set operations
    under the GIL)."""

    def __init__(self) -> None:
        self.services: set[tuple[str, str]] = set()


def known_facts(session: Session) -> KnownFacts | None:
    """The :class:`KnownFacts` of the store whose session this is (None: not a store's)."""
    return session.info.get(KNOWN_FACTS_INFO)


def learn(session: Session, service: tuple[str, str]) -> None:
    """``service`` is provisioned, as ``session`` has just read: known from now on if what
    it read is committed (a read-only transaction), else once this transaction commits."""
    facts = known_facts(session)
    if facts is None:
        return
    if session.info.get(WRITE_INFO, True):
        session.info.setdefault(LEARNT_INFO, set()).add(service)
    else:
        facts.services.add(service)

"""How long the event outbox keeps an event: a step of the state sweeper
(:mod:`kcm.core.sweep_steps`; kcm-core's ``makeService`` lists it) that deletes the events
older than ``outbox_retention`` (docs/operations.md, "Configuration").

An event is in the outbox for the gateways: a linked one has it at once, a gateway that
starts anew begins at the head, and only a gateway that relinks asks for events it has not
applied, those after the last it did (docs/link-protocol.md §2). So an event is kept
``outbox_retention`` seconds (7 days by default), for the gateways that are away that long,
and then deleted. A gateway that relinks after its events were deleted gets the oldest kept
as its first event, beyond the one it expects, and resynchronises
(:class:`kcm.gateway.link_client.LinkClient`): it drops its caches and goes on from there.

The newest event is never deleted, however old: the next one is numbered after it, and the
gateways and every core resume by those numbers. A sweep deletes at most
:data:`PRUNE_BATCH` events, so that its write transaction stays short; when it deleted that
many, the next sweep runs at once (the first sweeps after an upgrade, with every event ever
written to go).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from kcm.core.store import repository

__all__ = ["PRUNE_BATCH", "OutboxPruned", "prune_outbox"]

#: The most events one sweep deletes.
PRUNE_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class OutboxPruned:
    """A sweep deleted a full batch of old events: more may be due (``more``: the next
    sweep runs at once)."""

    deleted: int
    through: int
    more: bool = True

    def __str__(self) -> str:
        return (f"outbox: {self.deleted} events older than outbox_retention deleted, through "
                f"sequence {self.through}; sweeping again for more")


def prune_outbox(session: Session, now: float, *, retention: float,
                 limit: int = PRUNE_BATCH) -> Sequence[object]:
    """A step of the state sweeper: delete the oldest events written more than
    ``retention`` seconds before ``now`` (at most ``limit``, never the newest). Reports only a
    full batch (which asks for the next sweep at once); the rest is routine, as the
    deletion of spent stream parts is."""
    deleted, through = repository.prune_outbox(
        session, int((now - retention) * 1_000_000), limit)
    return [OutboxPruned(deleted, through)] if deleted >= limit else []

"""What an operation handler is given: the transaction, the caller, the time, the keys."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from kcm.identity import Principal
from kcm.kernel.batch import BatchStopped
from kcm.kmip.messages import IdPlaceholder
from kcm.kmip.versions import Version

if TYPE_CHECKING:
    from kcm.core.keyring import Keyring
    from kcm.core.server_info import ServerInfo



@dataclass(slots=True)
class Caller:
    """The principal a request acts as, and how it reached the core.

    ``gateway`` is the gateway principal that relayed the request over the link (the
    core then trusts the asserted ``principal``); None for a direct connection.
    """

    principal: Principal
    source: str
    gateway: Principal | None = None


@dataclass(slots=True)
class OperationContext:
    """One batch item's view of the world. Handlers read it and never keep it."""

    session: Session
    caller: Caller
    version: Version
    now: int  # epoch seconds, fixed for the whole request
    keyring: Keyring
    server_info: ServerInfo
    id_placeholder: IdPlaceholder
    random_bytes: object  # Callable[[int], bytes]
    #: The most Unique Identifiers one Locate returns (``[core.limits]``); None: no cap.
    max_locate_results: int | None = None
    #: The request's stop hook (its deadline, its client gone), for a long search to ask.
    should_stop: Callable[[], str | None] | None = None
    #: Identifiers the item touched, for its audit record.
    object_ids: list[str] = field(default_factory=list)
    #: Extra facts for the audit record (text and numbers only, never key material).
    audit_detail: dict[str, object] = field(default_factory=dict)

    @property
    def principal(self) -> Principal:
        return self.caller.principal

    @property
    def tenant(self) -> str | None:
        return self.caller.principal.tenant

    def check_stop(self) -> None:
        """Raise :class:`~kcm.kernel.batch.BatchStopped` if the request must stop now (its
        deadline passed, its client gone): for an item that may run long, between steps."""
        if self.should_stop is not None:
            reason = self.should_stop()
            if reason is not None:
                raise BatchStopped(reason)

    def touched(self, uid: str) -> None:
        """Record that this item acted on ``uid`` (audit)."""
        if uid not in self.object_ids:
            self.object_ids.append(uid)

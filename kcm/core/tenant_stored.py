"""What each tenant stores against its bound, for the metrics (kcm.core.store.quota).

A read-only transaction on a store worker every :data:`INTERVAL` seconds reads the kept
counts (one row a tenant: the number of tenants is the operator's) and keeps them; a
scrape reads what was kept, never the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from kcm.core.store.engine import Store
from kcm.core.store.schema import Tenant

__all__ = ["INTERVAL", "StoredByTenant"]

#: Seconds between reads of the counts.
INTERVAL = 30.0

_log = Logger()


class StoredByTenant:
    """The tenants' (stored, bound) as last read; ``default``: the core's
    ``max_objects_per_tenant`` (a tenant without its own bound has it; 0: none)."""

    def __init__(self, store: Store, default: int) -> None:
        self._store = store
        self._default = default
        #: tenant -> (stored, bound), as last read.
        self.counts: dict[str, tuple[int, int]] = {}

    def _read(self, session: Session) -> dict[str, tuple[int, int]]:
        return {name: (stored, self._default if own is None else own)
                for name, stored, own in session.execute(select(
                    Tenant.name, Tenant.stored, Tenant.max_objects))}

    def refresh(self) -> Any:
        """Read the counts again (a Deferred; a failure is logged, the last counts kept)."""
        def failed(failure: Any) -> None:
            why = failure.getErrorMessage().strip()  # (its first line, as below)
            _log.warn("tenants' stored counts not read for the metrics: {why}",
                      why=(why.splitlines() or [""])[0][:200])

        done = self._store.run(self._read, write=False)
        done.addCallbacks(self._keep, failed)
        return done

    def _keep(self, counts: dict[str, tuple[int, int]]) -> None:
        self.counts = counts

    def stored(self) -> list[tuple[tuple[str], float]]:
        return [((tenant,), stored) for tenant, (stored, _) in sorted(self.counts.items())]

    def bounds(self) -> list[tuple[tuple[str], float]]:
        return [((tenant,), bound) for tenant, (_, bound) in sorted(self.counts.items())]

"""A service key (L3) version in the clear, as the L4 operations use it."""

from __future__ import annotations

from dataclasses import dataclass

from kcm.kernel.lifecycle import usable_for
from kcm.kmip.enums import State


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """One L3 version of ``tenant``/``service``: its identifier (``l3-<uuid>``), version,
    KMIP State and AES-256 key bytes (empty once destroyed).

    ``state`` is the state the key is in now (time-driven changes already applied by
    whoever built it).
    """

    uid: str
    tenant: str
    service: str
    version: int
    state: int
    key: bytes

    @property
    def usable_to_protect(self) -> bool:
        """May seal new L4s, encrypt records under its L4s, wrap: only when Active."""
        return usable_for(State(self.state), protect=True)

    @property
    def usable_to_process(self) -> bool:
        """May open its L4s, decrypt, unwrap: also when Deactivated, but never once
        Compromised — a compromised service key is dropped at once everywhere
        (ARCHITECTURE §4), so gateway and core give the same answer."""
        state = State(self.state)
        return state != State.COMPROMISED and usable_for(state, protect=False)

    def __repr__(self) -> str:
        # Never print the key (tracebacks, logs).
        return (f"ServiceKey(uid={self.uid!r}, tenant={self.tenant!r}, "
                f"service={self.service!r}, version={self.version}, state={self.state})")

"""A service key (L3) version in the clear, as the L4 operations use it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kcm.kernel.lifecycle import DESTROYED_STATES, usable_for
from kcm.kmip.enums import State

__all__ = ["DESTROYED_STATES", "WITHOUT_MATERIAL_STATES", "ServiceKey"]

#: States in which a service key version has no usable material: it may not be used at all,
#: not even to decrypt (a compromised one is dropped at once everywhere, ARCHITECTURE §4).
#: The core sends such a version without its material; a gateway drops it.
WITHOUT_MATERIAL_STATES = frozenset((State.COMPROMISED, *DESTROYED_STATES))
# DESTROYED_STATES (kcm.kernel.lifecycle): every L4 under such a version is Object
# Destroyed, so its tombstones say nothing.


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """One L3 version of ``tenant``/``service``: its identifier (``l3-<uuid>``), version,
    KMIP State and AES-256 key bytes (empty once destroyed).

    ``state`` is the state the key is in now (time-driven changes already applied by
    whoever built it). A version is never changed (a new state is a new ServiceKey), so
    what is derived from it on every L4 request (whether it may protect or process, the
    AES-GCM object on its key, a token's associated data) is worked out once, on first use.
    """

    uid: str
    tenant: str
    service: str
    version: int
    state: int
    key: bytes
    #: The TokenIds of the L4s revoked or destroyed under this version, when they come with
    #: it over the link (docs/link-protocol.md §2, link version 5): all of them (none unless
    #: given), or None when not all came (a core of an earlier version, or more than one
    #: frame carries), so that a gateway leaves this version's L4s to the core.
    tombstones: frozenset[str] | None = field(default=frozenset(), compare=False)
    #: What is derived once (see above): by name.
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def usable_to_protect(self) -> bool:
        """May seal new L4s, encrypt records under its L4s, wrap: only when Active."""
        usable = self._derived.get("protect")
        if usable is None:
            usable = self._derived["protect"] = usable_for(State(self.state), protect=True)
        return usable

    @property
    def usable_to_process(self) -> bool:
        """May open its L4s, decrypt, unwrap: also when Deactivated, but never once
        Compromised — a compromised service key is dropped at once everywhere
        (ARCHITECTURE §4), so gateway and core give the same answer."""
        usable = self._derived.get("process")
        if usable is None:
            state = State(self.state)
            usable = self._derived["process"] = (
                state not in WITHOUT_MATERIAL_STATES and usable_for(state, protect=False))
        return usable

    def aesgcm(self) -> AESGCM:
        """``AESGCM(key)``, built once (raises as AESGCM does for a destroyed key's b"")."""
        aesgcm = self._derived.get("aesgcm")
        if aesgcm is None:
            aesgcm = self._derived["aesgcm"] = AESGCM(self.key)
        return aesgcm

    def derived(self, name: str, make: Callable[[ServiceKey], object]) -> object:
        """``make(self)``, made once under ``name`` (for what another module derives from
        a version, such as a token's associated data)."""
        value = self._derived.get(name)
        if value is None:
            value = self._derived[name] = make(self)
        return value

    def __repr__(self) -> str:
        # Never print the key (tracebacks, logs).
        return (f"ServiceKey(uid={self.uid!r}, tenant={self.tenant!r}, "
                f"service={self.service!r}, version={self.version}, state={self.state})")

"""The gateway's warnings of refused uses of a service key, coalesced.

A local item refused because its caller may not use the service key it names (another
tenant's token or L3, another service's) is answered exactly as a missing key is; the log
says what really happened: the caller, the operation, the L3 and the token's TokenId, never
the token, which carries the sealed DEK (docs/link-protocol.md §3 "Who may").

Written for each such item, that line made another tenant's key cost more than a missing
one (a 64-item batch took 7.8 ms against 4.1 ms: a timing that tells the two apart), and
let one client grow the shared log by megabytes a second. So, as the core's refusal
records do (:mod:`kcm.core.refusal_records`), the refusals are followed per (caller's
tenant, or the caller when it has none; why): the first is logged at once, in full; the
others in the next ``interval`` seconds are only counted (a dict update), and one line
says how many when the interval ends (or at the next refusal after it, without a timer).
At most ``max_followed`` are followed at once; beyond that the oldest is dropped, with its
count logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.logger import Logger

from kcm.identity import Principal, is_valid_segment
from kcm.kernel.responses import operation_name
from kcm.kmip.enums import Operation
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import RequestBatchItem
from kcm.l4 import token
from kcm.l4.authorize import ServiceKeyUseDenied
from kcm.l4.identifiers import L3_PREFIX, L4_PREFIX
from kcm.l4.marking import l4_target

__all__ = ["DENIAL_INTERVAL", "MAX_FOLLOWED", "DeniedUses"]

log = Logger()

#: Seconds during which a (tenant, why) logs one refusal in full and counts the rest, as
#: the core's refusal records do (:data:`kcm.connection_guard.LOG_INTERVAL`).
DENIAL_INTERVAL = 10.0
#: The most (tenant, why) followed at once (the oldest goes, its count logged).
MAX_FOLLOWED = 1024

#: ``call_later(delay, f)``: run ``f`` later (``reactor.callLater``).
CallLater = Callable[[float, Callable[[], None]], object]

#: Whose refusals count together: a tenant (or a caller of none), and why.
_Key = tuple[str | None, str, str]


class _Counted:
    """The refusals of one key counted since its line was logged."""

    __slots__ = ("started", "count", "principal", "operation")

    def __init__(self, started: float) -> None:
        self.started = started
        self.count = 0
        self.principal = ""
        self.operation = 0


class DeniedUses:
    """Logs refused uses of service keys, coalesced (see the module)."""

    def __init__(self, seconds: Callable[[], float], call_later: CallLater | None = None, *,
                 interval: float = DENIAL_INTERVAL, max_followed: int = MAX_FOLLOWED) -> None:
        """``seconds``: the intervals' time; ``call_later``: ends an interval on time
        (None: its count is logged at the next refusal after it, or by :meth:`flush`)."""
        self._seconds = seconds
        self._call_later = call_later
        self._interval = interval
        self._max_followed = max_followed
        self._followed: dict[_Key, _Counted] = {}

    def __len__(self) -> int:
        return len(self._followed)

    def note(self, denied: Iterable[tuple[RequestBatchItem, KmipError]],
             principal: Principal) -> None:
        """``principal``'s items refused in ``denied``, each with its error."""
        tenant = principal.tenant
        caller = "" if tenant is not None else principal.id
        followed = self._followed
        for item, error in denied:
            reason = error.why if isinstance(error, ServiceKeyUseDenied) else error.message
            key = (tenant, caller, reason)
            counted = followed.get(key)
            if counted is not None:
                if self._seconds() - counted.started < self._interval:
                    counted.count += 1
                    counted.principal, counted.operation = principal.id, item.operation
                    continue
                self._interval_ended(key)  # (no timer ended it)
            self._follow(key)
            _log_denied_use(item, principal, error)

    def flush(self) -> None:
        """Log every count not logged yet (the gateway stops)."""
        for key in list(self._followed):
            self._interval_ended(key)

    def _follow(self, key: _Key) -> None:
        followed = self._followed
        while len(followed) >= self._max_followed:
            self._interval_ended(next(iter(followed)))  # the oldest
        followed[key] = _Counted(self._seconds())
        if self._call_later is not None:
            self._call_later(self._interval, lambda: self._interval_ended(key, on_time=True))

    def _interval_ended(self, key: _Key, on_time: bool = False) -> None:
        """Stop following ``key``, logging how many of its refusals were counted."""
        counted = self._followed.get(key)
        if counted is None:
            return
        if on_time and self._seconds() - counted.started < self._interval:
            return  # (a timer of an interval that was ended and begun again meanwhile)
        del self._followed[key]
        if counted.count:
            tenant, caller, reason = key
            log.warn("denied {count} more uses of service keys by {who} in {interval} s, the "
                     "last {operation} by {principal}: {reason}", count=counted.count,
                     who=f"tenant {tenant}" if tenant is not None else caller,
                     interval=f"{self._interval:g}", operation=operation_name(counted.operation),
                     principal=counted.principal, reason=reason)


def _log_denied_use(item: RequestBatchItem, principal: Principal, error: KmipError) -> None:
    """Log the refused attempt of ``principal`` to use a service key with ``item``: who, which
    operation, and what it named (the L3 uid, the token's TokenId and L3, the service)."""
    payload = item.request_payload
    l3_uid = token_id = service = wrapping_key = None
    uid = getattr(payload, "unique_identifier", None)
    if isinstance(uid, str) and uid.startswith(L4_PREFIX):
        try:
            sealed = token.parse(uid)
        except token.TokenError:
            pass  # refused before the token was read; it is not named
        else:
            token_id, l3_uid = sealed.token_id, sealed.l3_uid
    elif isinstance(uid, str) and uid.startswith(L3_PREFIX):
        l3_uid = uid
    elif int(item.operation) == Operation.CREATE:
        try:
            target = l4_target(principal, getattr(payload, "attributes", None) or [])
        except KmipError:
            target = None
        if isinstance(target, str):
            l3_uid = target
        elif target is not None:
            service = "/".join(target)
    spec = getattr(payload, "key_wrapping_specification", None)
    info = getattr(spec, "encryption_key_information", None)
    kek = getattr(info, "unique_identifier", None)
    if isinstance(kek, str) and kek.startswith(L3_PREFIX):  # anything else may be a token
        wrapping_key = kek
    # All four are the client's text (a token is parsed, not yet opened).
    token_id, l3_uid, service, wrapping_key = (
        logged_name(token_id), logged_name(l3_uid), logged_name(service),
        logged_name(wrapping_key))
    named = ", ".join(f"{label} {value}" for label, value in (
        ("L4", token_id), ("L3", l3_uid), ("service", service), ("wrapping key", wrapping_key))
        if value is not None) or "no key"
    # Another tenant's key is answered as a missing one: the log says what really happened.
    reason = error.why if isinstance(error, ServiceKeyUseDenied) else error.message
    log.warn("denied {operation} by {principal} ({named}): {reason}",
             operation=operation_name(item.operation), principal=principal.id, named=named,
             l3_uid=l3_uid, token_id=token_id, service=service, wrapping_key=wrapping_key,
             reason=reason, answered=error.message)


#: The most characters of a name a client sent that a log line carries.
_LOGGED_NAME_LENGTH = 64


def logged_name(name: str | None) -> str | None:
    """``name``, sent by a client (a service, a key's identifier), as a log line may carry it:
    as sent when it is short and each of its ``/``-separated parts could be a segment of a
    principal's path (:func:`kcm.identity.is_valid_segment`); else its escaped ``repr``,
    cut short (at most about 64 characters), and its length."""
    if name is None:
        return None
    if len(name) <= _LOGGED_NAME_LENGTH and all(map(is_valid_segment, name.split("/"))):
        return name
    shown = ascii(name[:_LOGGED_NAME_LENGTH])
    if len(shown) > _LOGGED_NAME_LENGTH - 16:
        shown = shown[:_LOGGED_NAME_LENGTH - 16] + "..."
    return f"{shown} ({len(name)} chars)"

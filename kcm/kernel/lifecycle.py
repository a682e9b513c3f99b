"""The KMIP key lifecycle: which state changes are allowed, and when time moves a state.

KMIP 1.4 §3.22 / KMIP 2.1 §4.57 (State). The one place that decides whether an
object may be activated, revoked or destroyed; state never goes backwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from kcm.kmip.enums import ResultReason, RevocationReasonCode, State
from kcm.kmip.errors import KmipError
from kcm.kmip.fields import EXTENSION_VALUES

_COMPROMISE_REASONS = frozenset(
    {RevocationReasonCode.KEY_COMPROMISE, RevocationReasonCode.CA_COMPROMISE}
)




def check_revocation_reason(code: int) -> None:
    """Refuse a Revocation Reason Code that is neither defined nor an extension value
    (Invalid Field): what a revocation says of itself must mean something."""
    if code in RevocationReasonCode._value2member_map_ or code in EXTENSION_VALUES:
        return
    raise KmipError(ResultReason.INVALID_FIELD,
                    f"Revocation Reason Code {int(code):#010x} is not defined")


def wrong_state(message: str) -> KmipError:
    """The error for an operation the object's state forbids: Wrong Key Lifecycle State
    (:mod:`kcm.kernel.result_reasons` says what KMIP 1.x answers instead)."""
    return KmipError(ResultReason.WRONG_KEY_LIFECYCLE_STATE, message)


@dataclass(frozen=True, slots=True)
class LifecycleDates:
    """The dates (epoch seconds, or None) that move an object's state with time."""

    activation_date: int | None = None
    deactivation_date: int | None = None


def state_at(state: State, dates: LifecycleDates, now: int) -> State:
    """The state an object is in at ``now``, given its stored state and dates.

    A Pre-Active object whose Activation Date has passed is Active; an Active (or
    Pre-Active) object whose Deactivation Date has passed is Deactivated.
    """
    if (
        state == State.PRE_ACTIVE
        and dates.activation_date is not None
        and dates.activation_date <= now
    ):
        state = State.ACTIVE
    if (
        state in (State.PRE_ACTIVE, State.ACTIVE)
        and dates.deactivation_date is not None
        and dates.deactivation_date <= now
    ):
        state = State.DEACTIVATED
    return state


def activate(state: State) -> State:
    """Activate: only a Pre-Active object becomes Active."""
    if state != State.PRE_ACTIVE:
        raise wrong_state(f"cannot activate an object in state {state.name}")
    return State.ACTIVE


def revoke(state: State, reason: int) -> State:
    """Revoke with a Revocation Reason Code.

    Compromise moves Pre-Active, Active and Deactivated to Compromised and Destroyed to
    Destroyed Compromised; an object compromised already is refused (no transition leaves
    it there, and its Compromise Date records the first report); another reason deactivates
    an Active object and is refused elsewhere.
    """
    if reason in _COMPROMISE_REASONS:
        if state in (State.COMPROMISED, State.DESTROYED_COMPROMISED):
            raise wrong_state("the object is already compromised")
        if state == State.DESTROYED:
            return State.DESTROYED_COMPROMISED
        return State.COMPROMISED
    if state == State.ACTIVE:
        return State.DEACTIVATED
    raise wrong_state(
        f"cannot revoke an object in state {state.name} for a reason other than compromise")


#: The states of a destroyed object (its material gone), whatever it was.
DESTROYED_STATES = frozenset((State.DESTROYED, State.DESTROYED_COMPROMISED))


def destroy(state: State) -> State:
    """Destroy: allowed unless the object is Active (it must be revoked first)."""
    if state == State.ACTIVE:
        raise wrong_state("cannot destroy an Active object; revoke it first")
    if state in DESTROYED_STATES:
        raise wrong_state("the object is already destroyed")
    if state == State.COMPROMISED:
        return State.DESTROYED_COMPROMISED
    return State.DESTROYED


def usable_for(state: State, *, protect: bool) -> bool:
    """Whether material in ``state`` may be used: to protect (encrypt, wrap) only when
    Active; to process (decrypt, unwrap, verify) also when Deactivated or Compromised.
    """
    if protect:
        return state == State.ACTIVE
    return state in (State.ACTIVE, State.DEACTIVATED, State.COMPROMISED)

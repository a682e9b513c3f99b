"""May this key be used for this purpose now: the one rule, for every plane.

A use (:class:`KeyUse`) says which states allow it, which Cryptographic Usage Mask bit it
needs, and whether it protects or processes. A key may be used when

* its state allows the use (:func:`kcm.kernel.lifecycle.usable_for`: protecting only while
  Active; processing also while Deactivated or Compromised; deriving while Pre-Active or
  Active, as PyKMIP's reference server allows, KMIP 1.4 §4.6 naming no state);
* a protecting use comes before the key's Protect Stop Date, a processing use not before
  its Process Start Date (KMIP 1.4 §3.25, §3.26; the OASIS CS-AC-M-8 cases refuse both);
* its Cryptographic Usage Mask, when set, has the use's bit (KMIP 1.4 §3.19).

Refusals are Wrong Key Lifecycle State and Incompatible Cryptographic Usage Mask; the
kernel answers a KMIP 1.x request with their stand-ins (:mod:`kcm.kernel.result_reasons`).
Pure: the caller reads the state, the dates and the mask from its object and passes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kcm.kernel.lifecycle import usable_for, wrong_state
from kcm.kmip.enums import CryptographicUsageMask, ResultReason, State
from kcm.kmip.errors import KmipError

__all__ = [
    "DECRYPT", "DERIVE", "ENCRYPT", "MAC_GENERATE", "MAC_VERIFY", "SIGN", "UNWRAP", "VERIFY",
    "WRAP", "KeyUse",
    "check_key_use", "check_usage_mask", "incompatible_mask", "mask_allows",
]


@dataclass(frozen=True, slots=True)
class KeyUse:
    """A purpose a key is put to."""

    verb: str  # for messages: "a key in state X cannot <verb>"
    mask_bit: int  # the Cryptographic Usage Mask bit it needs
    protect: bool | None  # True: protects; False: processes; None: neither date applies
    states: frozenset[State] | None = None  # None: usable_for(state, protect=protect)

    def allows_state(self, state: State) -> bool:
        if self.states is not None:
            return state in self.states
        return usable_for(state, protect=bool(self.protect))


ENCRYPT = KeyUse("encrypt", CryptographicUsageMask.ENCRYPT, protect=True)
DECRYPT = KeyUse("decrypt", CryptographicUsageMask.DECRYPT, protect=False)
SIGN = KeyUse("sign", CryptographicUsageMask.SIGN, protect=True)
VERIFY = KeyUse("verify signatures", CryptographicUsageMask.VERIFY, protect=False)
MAC_GENERATE = KeyUse("generate MACs", CryptographicUsageMask.MAC_GENERATE, protect=True)
MAC_VERIFY = KeyUse("verify MACs", CryptographicUsageMask.MAC_VERIFY, protect=False)
WRAP = KeyUse("wrap keys", CryptographicUsageMask.WRAP_KEY, protect=True)
UNWRAP = KeyUse("unwrap keys", CryptographicUsageMask.UNWRAP_KEY, protect=False)
DERIVE = KeyUse("derive keys", CryptographicUsageMask.DERIVE_KEY, protect=None,
                states=frozenset({State.PRE_ACTIVE, State.ACTIVE}))


def mask_allows(mask: int | None, wanted: int) -> bool:
    """Whether a Cryptographic Usage Mask (None: not set) has every bit of ``wanted``."""
    return mask is None or (int(mask) & wanted) == wanted


def incompatible_mask(message: str) -> KmipError:
    """The error for a use the key's Cryptographic Usage Mask forbids."""
    return KmipError(ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK, message)


def check_key_use(use: KeyUse, state: State, *, now: int,
                  protect_stop_date: int | None = None,
                  process_start_date: int | None = None,
                  usage_mask: int | None = None, key: str | None = None) -> None:
    """Refuse ``use`` of a key in ``state`` with these dates and this mask at ``now``.

    What is None is not judged. ``key`` names the key in the messages (when it is not the
    request's own key, say).
    """
    if not use.allows_state(state):
        subject = "a key" if key is None else f"the key {key!r}"
        raise wrong_state(f"{subject} in state {state.name} cannot {use.verb}")
    if use.protect is True and protect_stop_date is not None and now >= protect_stop_date:
        raise wrong_state(f"{_of_key('Protect Stop Date', key)} has passed")
    if use.protect is False and process_start_date is not None and now < process_start_date:
        raise wrong_state(f"{_of_key('Process Start Date', key)} is ahead")
    check_usage_mask(use, usage_mask, key=key)


def check_usage_mask(use: KeyUse, usage_mask: int | None, *, key: str | None = None) -> None:
    """Refuse ``use`` of a key whose Cryptographic Usage Mask (None: not set) lacks the
    use's bit."""
    if not mask_allows(usage_mask, use.mask_bit):
        raise incompatible_mask(
            f"{_of_key('Cryptographic Usage Mask', key)} does not allow {use.verb}")


def _of_key(what: str, key: str | None) -> str:
    return f"the key's {what}" if key is None else f"the {what} of the key {key!r}"

"""The one "may this key be used now" rule (kcm.kernel.key_use), without a store."""

from __future__ import annotations

import pytest

from kcm.kernel import key_use
from kcm.kernel.key_use import check_key_use, check_usage_mask, mask_allows
from kcm.kmip.enums import CryptographicUsageMask, ResultReason, State
from kcm.kmip.errors import KmipError

_S = State
NOW = 1_700_000_000


def reason(call) -> int | None:
    try:
        call()
    except KmipError as e:
        return e.reason
    return None


@pytest.mark.parametrize(("use", "usable"), [
    (key_use.ENCRYPT, {_S.ACTIVE}),
    (key_use.SIGN, {_S.ACTIVE}),
    (key_use.WRAP, {_S.ACTIVE}),
    (key_use.DECRYPT, {_S.ACTIVE, _S.DEACTIVATED, _S.COMPROMISED}),
    (key_use.VERIFY, {_S.ACTIVE, _S.DEACTIVATED, _S.COMPROMISED}),
    (key_use.UNWRAP, {_S.ACTIVE, _S.DEACTIVATED, _S.COMPROMISED}),
    (key_use.DERIVE, {_S.PRE_ACTIVE, _S.ACTIVE}),
])
def test_states(use: key_use.KeyUse, usable: set[State]) -> None:
    for state in State:
        expected = None if state in usable else ResultReason.WRONG_KEY_LIFECYCLE_STATE
        assert reason(lambda s=state: check_key_use(use, s, now=NOW)) == expected, state


def test_protect_stop_date_bounds_protection_only() -> None:
    def refused(use: key_use.KeyUse, stop: int) -> int | None:
        return reason(lambda: check_key_use(use, State.ACTIVE, now=NOW,
                                            protect_stop_date=stop))

    assert refused(key_use.ENCRYPT, NOW) == ResultReason.WRONG_KEY_LIFECYCLE_STATE
    assert refused(key_use.ENCRYPT, NOW + 1) is None
    assert refused(key_use.DECRYPT, NOW - 1) is None
    assert refused(key_use.DERIVE, NOW - 1) is None


def test_process_start_date_bounds_processing_only() -> None:
    def refused(use: key_use.KeyUse, start: int) -> int | None:
        return reason(lambda: check_key_use(use, State.ACTIVE, now=NOW,
                                            process_start_date=start))

    assert refused(key_use.VERIFY, NOW + 1) == ResultReason.WRONG_KEY_LIFECYCLE_STATE
    assert refused(key_use.VERIFY, NOW) is None
    assert refused(key_use.SIGN, NOW + 1) is None


def test_usage_mask() -> None:
    sign_only = int(CryptographicUsageMask.SIGN)
    assert mask_allows(None, CryptographicUsageMask.ENCRYPT)
    assert mask_allows(sign_only, CryptographicUsageMask.SIGN)
    assert not mask_allows(sign_only, CryptographicUsageMask.SIGN | CryptographicUsageMask.VERIFY)
    assert reason(lambda: check_key_use(key_use.ENCRYPT, State.ACTIVE, now=NOW,
                                        usage_mask=sign_only)) \
        == ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK
    assert reason(lambda: check_usage_mask(key_use.SIGN, sign_only)) is None


def test_state_is_judged_before_dates_and_mask_and_messages_name_the_key() -> None:
    with pytest.raises(KmipError) as caught:
        check_key_use(key_use.WRAP, State.DEACTIVATED, now=NOW, protect_stop_date=NOW,
                      usage_mask=0, key="k-1")
    assert caught.value.reason == ResultReason.WRONG_KEY_LIFECYCLE_STATE
    assert caught.value.message == "the key 'k-1' in state DEACTIVATED cannot wrap keys"
    with pytest.raises(KmipError) as caught:
        check_key_use(key_use.ENCRYPT, State.ACTIVE, now=NOW, usage_mask=0)
    assert caught.value.message == "the key's Cryptographic Usage Mask does not allow encrypt"

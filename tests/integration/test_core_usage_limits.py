"""Usage Limits count every use that applies protection (KMIP 1.4 §3.21, 2.1 §4.63;
kcm.core.usage_limits): Encrypt with a Symmetric or a Public Key, Sign, MAC and wrapping
another key; never Decrypt, Signature Verify, MAC Verify or unwrapping. Through kcm-core's
request handler, in process."""

from __future__ import annotations

from cryptography.hazmat.primitives import keywrap

from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    CryptographicUsageMask,
    EncodingOption,
    KeyWrapType,
    ObjectType,
    Operation,
    ResultReason,
    UsageLimitsUnit,
    ValidityIndicator,
    WrappingMethod,
)
from kcm.kmip.objects import EncryptionKeyInformation, KeyWrappingSpecification
from kcm.kmip.payloads import (
    AddAttributeRequest,
    CreateKeyPairRequest,
    DecryptRequest,
    EncryptRequest,
    GetRequest,
    ModifyAttributeRequest,
    RegisterRequest,
    SignatureVerifyRequest,
    SignRequest,
)
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType
from tests.core_support import CoreHarness
from tests.integration.test_core_asymmetric import key_pair_request, stored
from tests.integration.test_core_crypto import failed, ok, one, store_key
from tests.integration.test_core_mac_hash_rng import hmac_key, mac, mac_verify
from tests.integration.test_core_objects import aes_key
from tests.integration.test_core_stream_replay import usage_limits

USED_UP = "the key's usage limit is used up"
MESSAGE = b"protect me"
KEY = bytes(range(32))
KEK = bytes(range(100, 132))
_M = CryptographicUsageMask


def used_up(item) -> None:
    failed(item, ResultReason.PERMISSION_DENIED)
    assert item.result_message.startswith(USED_UP), item.result_message


def count_left(core: CoreHarness, uid: str) -> int:
    _, attributes = stored(core, uid)
    (limits,) = [a for a in attributes if a.tag == Tag.USAGE_LIMITS]
    return limits.value.find(Tag.USAGE_LIMITS_COUNT).value


def limited_pair(core: CoreHarness, limits: Attribute, *, private_mask: int,
                 public_mask: int) -> tuple[str, str]:
    """An RSA key pair, both keys with ``limits``."""
    request: CreateKeyPairRequest = key_pair_request(private_mask=private_mask,
                                                     public_mask=public_mask)
    request.private_key_attributes.append(limits)
    request.public_key_attributes.append(limits)
    made = ok(one(core, Operation.CREATE_KEY_PAIR, request))
    return made.private_key_unique_identifier, made.public_key_unique_identifier


def sign(core, uid, data=MESSAGE, **kwargs):
    return one(core, Operation.SIGN, SignRequest(unique_identifier=uid, data=data, **kwargs))


def verify(core, uid, signature, data=MESSAGE):
    return one(core, Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=uid, data=data, signature_data=signature))


def wrap_spec(kek_uid: str, **kwargs) -> KeyWrappingSpecification:
    return KeyWrappingSpecification(
        wrapping_method=WrappingMethod.ENCRYPT,
        encryption_key_information=EncryptionKeyInformation(unique_identifier=kek_uid), **kwargs)


def get_wrapped(core, uid, kek_uid, **kwargs):
    return one(core, Operation.GET, GetRequest(unique_identifier=uid,
                                               key_wrapping_specification=wrap_spec(kek_uid,
                                                                                    **kwargs)))


# Sign ------------------------------------------------------------------------------------
def test_sign_counts_and_verify_does_not(core: CoreHarness) -> None:
    private_uid, public_uid = limited_pair(core, usage_limits(2),
                                           private_mask=_M.SIGN | _M.VERIFY,
                                           public_mask=_M.VERIFY)
    signatures = [ok(sign(core, private_uid)).signature_data for _ in range(2)]
    used_up(sign(core, private_uid))
    assert count_left(core, private_uid) == 0
    for signature in signatures * 2:  # with the used-up key (its public half) and the other
        for uid in (private_uid, public_uid):
            assert ok(verify(core, uid, signature)).validity_indicator == ValidityIndicator.VALID
    assert count_left(core, public_uid) == 2


def test_a_signing_stream_counts_once_at_its_first_part(core: CoreHarness) -> None:
    private_uid, _ = limited_pair(core, usage_limits(2), private_mask=_M.SIGN,
                                  public_mask=_M.VERIFY)
    first = ok(sign(core, private_uid, data=b"a", init_indicator=True))
    middle = ok(sign(core, private_uid, data=b"b", correlation_value=first.correlation_value))
    assert count_left(core, private_uid) == 1
    ok(sign(core, private_uid, data=b"c", correlation_value=middle.correlation_value,
            final_indicator=True))
    ok(sign(core, private_uid))
    used_up(sign(core, private_uid, data=b"a", init_indicator=True))


def test_sign_by_bytes(core: CoreHarness) -> None:
    private_uid, _ = limited_pair(core, usage_limits(20, UsageLimitsUnit.BYTE),
                                  private_mask=_M.SIGN, public_mask=_M.VERIFY)
    ok(sign(core, private_uid, data=b"x" * 12))  # 8 left
    used_up(sign(core, private_uid, data=b"x" * 9))
    first = ok(sign(core, private_uid, data=b"x" * 5, init_indicator=True))  # 3 left
    used_up(sign(core, private_uid, data=b"x" * 4, correlation_value=first.correlation_value,
                 final_indicator=True))
    ok(sign(core, private_uid, data=b"x" * 3, correlation_value=first.correlation_value,
            final_indicator=True))
    assert count_left(core, private_uid) == 0


# MAC -------------------------------------------------------------------------------------
def test_mac_counts_and_mac_verify_does_not(core: CoreHarness) -> None:
    uid = hmac_key(core, extra=[usage_limits(2)])
    macs = [ok(mac(core, uid)).mac_data for _ in range(2)]
    used_up(mac(core, uid))
    for mac_data in macs * 2:
        assert ok(mac_verify(core, uid, mac_data)).validity_indicator == ValidityIndicator.VALID
    assert count_left(core, uid) == 0
    # A stream counts once, at its first part.
    streamed = hmac_key(core, extra=[usage_limits(1)])
    first = ok(mac(core, streamed, data=b"head", init_indicator=True))
    ok(mac(core, streamed, data=b"tail", correlation_value=first.correlation_value,
           final_indicator=True))
    used_up(mac(core, streamed))


def test_mac_by_bytes(core: CoreHarness) -> None:
    uid = hmac_key(core, extra=[usage_limits(10, UsageLimitsUnit.BYTE)])
    ok(mac(core, uid, data=b"x" * 6))
    used_up(mac(core, uid, data=b"x" * 5))
    ok(mac(core, uid, data=b"x" * 4))
    assert count_left(core, uid) == 0


# Encrypt with a Public Key ---------------------------------------------------------------
def test_rsa_encrypt_counts_and_decrypt_does_not(core: CoreHarness) -> None:
    private_uid, public_uid = limited_pair(core, usage_limits(2), private_mask=_M.DECRYPT,
                                           public_mask=_M.ENCRYPT)

    def rsa_encrypt():
        return one(core, Operation.ENCRYPT, EncryptRequest(unique_identifier=public_uid,
                                                           data=MESSAGE))

    sealed = [ok(rsa_encrypt()).data for _ in range(2)]
    used_up(rsa_encrypt())
    for data in sealed * 2:
        assert ok(one(core, Operation.DECRYPT, DecryptRequest(
            unique_identifier=private_uid, data=data))).data == MESSAGE
    assert (count_left(core, public_uid), count_left(core, private_uid)) == (0, 2)


# Wrapping --------------------------------------------------------------------------------
def test_wrapping_counts_against_the_wrapping_key_and_unwrapping_does_not(
        core: CoreHarness) -> None:
    kek_uid = store_key(core, KEK, mask=_M.WRAP_KEY | _M.UNWRAP_KEY,
                        extra=[usage_limits(2)])
    uid = store_key(core, KEY, extra=[usage_limits(1)])
    wrapped = [ok(get_wrapped(core, uid, kek_uid)).object for _ in range(2)]
    used_up(get_wrapped(core, uid, kek_uid))
    assert (count_left(core, kek_uid), count_left(core, uid)) == (0, 1)
    # The wrapped key, registered and read back in the clear: the used-up key unwraps it.
    registered = ok(one(core, Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.SYMMETRIC_KEY, object=wrapped[0],
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(_M.ENCRYPT))])))
    for _ in range(2):
        clear = ok(one(core, Operation.GET, GetRequest(
            unique_identifier=registered.unique_identifier,
            key_wrap_type=KeyWrapType.NOT_WRAPPED))).object
        assert clear.key_block.key_value.key_material == KEY
    assert count_left(core, kek_uid) == 0


def test_wrapping_by_bytes_counts_what_is_wrapped(core: CoreHarness) -> None:
    kek_uid = store_key(core, KEK, mask=_M.WRAP_KEY,
                        extra=[usage_limits(48, UsageLimitsUnit.BYTE)])
    uid = store_key(core, KEY)
    # No Encoding wraps the 32 bytes of key material alone.
    answer = ok(get_wrapped(core, uid, kek_uid, encoding_option=EncodingOption.NO_ENCODING))
    assert keywrap.aes_key_unwrap(KEK, answer.object.key_block.key_value) == KEY
    assert count_left(core, kek_uid) == 16
    used_up(get_wrapped(core, uid, kek_uid, encoding_option=EncodingOption.NO_ENCODING))


def test_a_key_wrapping_itself_counts_once(core: CoreHarness) -> None:
    """The Get's object and its wrapping key are one row: counted on one copy, which the
    Get then saves again (Fresh)."""
    uid = store_key(core, KEK, mask=_M.WRAP_KEY, extra=[
        usage_limits(2), Attribute.of(Tag.FRESH, True, ItemType.BOOLEAN)])
    ok(get_wrapped(core, uid, uid))
    ok(get_wrapped(core, uid, uid))
    used_up(get_wrapped(core, uid, uid))
    _, attributes = stored(core, uid)
    assert [a.value.value for a in attributes if a.tag == Tag.FRESH] == [False]
    assert count_left(core, uid) == 0


# A refused use takes nothing -------------------------------------------------------------
def test_a_failed_use_gives_its_count_back(core: CoreHarness) -> None:
    """Counted before the MAC runs; the item that fails is rolled back, count and all."""
    uid = hmac_key(core, extra=[usage_limits(1)])
    failed(mac(core, uid, data=None), ResultReason.INVALID_MESSAGE)  # no Data
    assert count_left(core, uid) == 1
    ok(mac(core, uid))
    assert count_left(core, uid) == 0


# The Count is the server's --------------------------------------------------------------
def _limits(total: int, count: int | None = None,
            unit: UsageLimitsUnit | None = None) -> Attribute:
    fields = [Item(Tag.USAGE_LIMITS_TOTAL, ItemType.LONG_INTEGER, total)]
    if count is not None:
        fields.append(Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, count))
    if unit is not None:
        fields.append(Item(Tag.USAGE_LIMITS_UNIT, ItemType.ENUMERATION, int(unit)))
    return Attribute.of(Tag.USAGE_LIMITS, fields, ItemType.STRUCTURE)


def _encrypt(core: CoreHarness, uid: str):
    return one(core, Operation.ENCRYPT, EncryptRequest(unique_identifier=uid, data=MESSAGE))


def test_a_client_count_is_not_taken_the_count_is_the_servers(core: CoreHarness) -> None:
    """KMIP 2.1 §4.63: a client sets the Total and Unit; the Count is the server's. A
    Register with a Total of 2 and a Count of 1,000 allowed 1,000 uses; a Modify could
    reset the count of a limit an administrator set."""
    registered = ok(one(core, Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.SYMMETRIC_KEY, object=aes_key(),
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(_M.ENCRYPT)),
                    Attribute.of(Tag.ACTIVATION_DATE, 946_684_800),
                    _limits(2, count=1000, unit=UsageLimitsUnit.OBJECT)])))
    uid = registered.unique_identifier
    assert count_left(core, uid) == 2
    ok(_encrypt(core, uid))
    # Raised to 5 with a Count of 1,000 given again: 1 was used, so 4 are left.
    ok(one(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
        unique_identifier=uid,
        attribute=_limits(5, count=1000, unit=UsageLimitsUnit.OBJECT))))
    assert count_left(core, uid) == 4
    for _ in range(4):
        ok(_encrypt(core, uid))
    used_up(_encrypt(core, uid))
    for limits, says in ((_limits(4, unit=UsageLimitsUnit.OBJECT), "below what was used (5)"),
                         (_limits(50, unit=UsageLimitsUnit.BYTE), "Unit of a key cannot"),
                         (_limits(-1), "Total of 0 or more")):
        refused = one(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
            unique_identifier=uid, attribute=limits))
        failed(refused, ResultReason.INVALID_FIELD)
        assert says in refused.result_message, refused.result_message
    # Added to a key without limits: as many left as the Total says.
    other = store_key(core, KEY, mask=_M.ENCRYPT)
    ok(one(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=other, attribute=_limits(3, count=0))))
    assert count_left(core, other) == 3

"""What kcm-core checks before key material is used, derived, unwrapped or kept, in process:

* Register checks an RSA key once (size, exponent, stated length, OpenSSL's validation);
  Sign, Decrypt and Get's conversions then use the stored key without validating it again,
  and a key stored before the checks costs no more than its size allows;
* Derive Key refuses a Sensitive or non-Extractable base;
* Get unwraps a registered wrapped key only with a key the caller could read in the clear,
  never wraps a Sensitive key under itself, and unwraps with a service key (L3) only in the
  states the L4 engine allows (never once Compromised);
* Destroy (and Revoke for compromise) drop the clear material the keyring keeps.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kcm.core.keyring import DEFAULT_FLAGS, Keyring
from kcm.core.store.schema import LEVEL_TENANT_KEY, WRAPPED_BY_L1
from kcm.crypto import rsa_keys
from kcm.kmip.attributes import Attribute, CryptographicParameters
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    DerivationMethod,
    KeyFormatType,
    KeyWrapType,
    ObjectType,
    Operation,
    ResultReason,
    RevocationReasonCode,
    SecretDataType,
    WrappingMethod,
)
from kcm.kmip.objects import (
    EncryptionKeyInformation,
    KeyBlock,
    KeyValue,
    KeyWrappingSpecification,
    SecretData,
)
from kcm.kmip.payloads import (
    ActivateRequest,
    CreateKeyPairRequest,
    DecryptRequest,
    DerivationParameters,
    DeriveKeyRequest,
    DestroyRequest,
    EncryptRequest,
    GetRequest,
    RegisterRequest,
    RevocationReason,
    RevokeRequest,
    SignRequest,
)
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType
from tests.core_support import CoreHarness, admin_principal
from tests.integration.test_core_objects import (
    PAST,
    V14,
    V21,
    _wrap_spec,
    aes_key,
    attributes_of,
    failed,
    ok,
    one,
    register,
)

_F = KeyFormatType
_M = CryptographicUsageMask
#: ``openssl genrsa -3 -traditional 512``: a real RSA key, too small, with e = 3.
WEAK_512_E3 = bytes.fromhex(
    "3082013a020100024100c0553782467ce2dbd32520cabbc8dc37b0e43d161341c05e5b8cea0aa57c7b41c4d3"
    "dc9f3e9c2a0534d88d734fa7d38d381f8344ddbc0ef8aac4c83fc41d305d0201030241008038cfac2efdec92"
    "8cc36b31d285e825209828b9622bd5943d089c0718fda78004408c379d8c0b5e128e7adb5f5356cf8e28de8f"
    "730844818c3366f690fef013022100f78e80bca74601fe8735e45cd9bdaa27fd6d0868560e3fb600a20bbe52"
    "e7b7b7022100c6e4898f2b0416f991ccf0cd66ed272de5752d055b21688057d5a20f97b7108b022100a509ab"
    "286f8401545a23ed933bd3c6c5539e059ae4097fceab16b27ee1efcfcf02210084985bb4c7580f510bddf5de"
    "449e1a1e98f8c8ae3cc0f0558fe3c15fba7a0b070220716f127856105899652cb9bbcd6db476986e4a9fbc93"
    "1a64cbed150f1f91b1e1")


# -- RSA material ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa_2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pkcs1(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _junk_rsa(bits: int) -> bytes:
    """A PKCS#1 RSA private key of ``bits`` bits whose values agree (p·q = n, CRT values in
    range) but whose "primes" are not prime: made in a millisecond at any size, where a
    real 8,192- or 16,384-bit key takes seconds to minutes. OpenSSL's validation refuses
    it; only a primality test tells."""
    half = bits // 2
    top = (1 << (half - 1)) | (1 << (half - 2)) | 1

    def odd() -> int:  # with no small factor, which Register refuses before OpenSSL looks
        while True:
            value = secrets.randbits(half) | top
            if math.gcd(value, rsa_keys._SMALL_PRIMES_PRODUCT) == 1:
                return value

    p, q = odd(), odd()
    while math.gcd(p, q) != 1:  # (for the CRT coefficient)
        q = odd()
    n = p * q
    d = (secrets.randbelow(n - 3) + 2) | 1
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                    rsa.RSAPublicNumbers(65537, n))
    return _pkcs1(numbers.private_key(unsafe_skip_rsa_key_validation=True))


def _key_item(tag: int, material: bytes | Item, *, fmt: int = _F.PKCS_1,
              algorithm: int | None = CryptographicAlgorithm.RSA,
              length: int | None = None) -> Item:
    block = KeyBlock(key_format_type=fmt, key_value=KeyValue(key_material=material),
                     cryptographic_algorithm=algorithm, cryptographic_length=length)
    return Item(tag, ItemType.STRUCTURE, [block.to_item(V21)])


def _register_key(core: CoreHarness, material: bytes | Item, *, public: bool = False,
                  mask: int = _M.SIGN, **block):
    tag, object_type = ((Tag.PUBLIC_KEY, ObjectType.PUBLIC_KEY) if public
                        else (Tag.PRIVATE_KEY, ObjectType.PRIVATE_KEY))
    return one(core, Operation.REGISTER, RegisterRequest(
        object_type=object_type, object=_key_item(tag, material, **block),
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(mask)), PAST]))


def _refused(item, reason: ResultReason) -> str:
    assert item.result_reason == reason, (item.result_reason, item.result_message)
    return item.result_message


def _sign(core: CoreHarness, uid: str):
    return one(core, Operation.SIGN, SignRequest(unique_identifier=uid, data=b"x"))


@pytest.fixture
def validations(monkeypatch) -> list[int]:
    """Every key OpenSSL validates from here on (its modulus size): the loaders called
    without ``unsafe_skip_rsa_key_validation``, and Register's own validation."""
    seen: list[int] = []
    for name in ("load_der_private_key", "load_pem_private_key"):
        real = getattr(serialization, name)

        def loader(data, password, backend=None, *, _real=real, **kwargs):
            key = _real(data, password, backend, **kwargs)
            if not kwargs.get("unsafe_skip_rsa_key_validation"):
                seen.append(key.key_size)
            return key
        monkeypatch.setattr(serialization, name, loader)
    real_validated = getattr(rsa_keys, "_validated", None)
    if real_validated is not None:  # (what the loaders above do not see)
        def validated(key):
            seen.append(key.key_size)
            return real_validated(key)
        monkeypatch.setattr(rsa_keys, "_validated", validated)
    return seen


@pytest.mark.parametrize("bits", [8192, 16384])
def test_register_refuses_rsa_keys_larger_than_create_makes(core: CoreHarness, bits) -> None:
    """The stall: a big key was stored unread, then validated at every use (4 s for 8,192
    bits, 47 s for 16,384, the GIL held). Now Register refuses it, without validating it."""
    der = _junk_rsa(bits)
    began = time.monotonic()
    message = _refused(_register_key(core, der, length=bits), ResultReason.INVALID_FIELD)
    assert f"not {bits}" in message
    numbers = serialization.load_der_private_key(
        der, None, unsafe_skip_rsa_key_validation=True).private_numbers()
    transparent = Item(Tag.KEY_MATERIAL, ItemType.STRUCTURE, [
        Item(Tag.MODULUS, ItemType.BIG_INTEGER, numbers.public_numbers.n),
        Item(Tag.PRIVATE_EXPONENT, ItemType.BIG_INTEGER, numbers.d),
        Item(Tag.PUBLIC_EXPONENT, ItemType.BIG_INTEGER, numbers.public_numbers.e)])
    _refused(_register_key(core, transparent, fmt=_F.TRANSPARENT_RSA_PRIVATE_KEY),
             ResultReason.INVALID_FIELD)
    public_der = serialization.load_der_private_key(
        der, None, unsafe_skip_rsa_key_validation=True).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    _refused(_register_key(core, public_der, public=True, mask=_M.VERIFY),
             ResultReason.INVALID_FIELD)
    assert time.monotonic() - began < 2.0


def test_register_refuses_a_weak_rsa_key_and_a_length_that_lies(core: CoreHarness,
                                                               rsa_2048) -> None:
    # A 512-bit e = 3 key stated as 4096 bits: stored and reported as 4096 before.
    _refused(_register_key(core, WEAK_512_E3, length=4096), ResultReason.INVALID_FIELD)
    _refused(_register_key(core, WEAK_512_E3), ResultReason.INVALID_FIELD)
    # A good key whose stated Cryptographic Length is not its size, in the key block or
    # as an attribute.
    message = _refused(_register_key(core, _pkcs1(rsa_2048), length=4096),
                       ResultReason.INVALID_FIELD)
    assert "2048" in message
    item = one(core, Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.PRIVATE_KEY, object=_key_item(Tag.PRIVATE_KEY, _pkcs1(rsa_2048)),
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 3072)]))
    _refused(item, ResultReason.INVALID_FIELD)
    # An even public exponent.
    n = rsa_2048.public_key().public_numbers().n
    even = Item(Tag.KEY_MATERIAL, ItemType.STRUCTURE, [
        Item(Tag.MODULUS, ItemType.BIG_INTEGER, n),
        Item(Tag.PUBLIC_EXPONENT, ItemType.BIG_INTEGER, 65536)])
    _refused(_register_key(core, even, public=True, fmt=_F.TRANSPARENT_RSA_PUBLIC_KEY,
                           mask=_M.VERIFY), ResultReason.INVALID_FIELD)
    # A public exponent of 2^256 or more (every public operation would cost like a private
    # one); just below is taken.
    for e, refused in ((2**256 + 1, True), (2**256 - 1, False)):
        big = Item(Tag.KEY_MATERIAL, ItemType.STRUCTURE, [
            Item(Tag.MODULUS, ItemType.BIG_INTEGER, n),
            Item(Tag.PUBLIC_EXPONENT, ItemType.BIG_INTEGER, e)])
        answer = _register_key(core, big, public=True, fmt=_F.TRANSPARENT_RSA_PUBLIC_KEY,
                               mask=_M.VERIFY)
        if refused:
            assert _refused(answer, ResultReason.INVALID_FIELD) == (
                "the RSA public exponent must be below 2^256")
        else:
            assert answer.result_reason is None
    # RSA material said to be another algorithm's.
    _refused(_register_key(core, _pkcs1(rsa_2048), algorithm=CryptographicAlgorithm.EC),
             ResultReason.INVALID_FIELD)
    # The same key, told truthfully, is taken (its length said or not).
    assert _register_key(core, _pkcs1(rsa_2048), length=2048).result_reason is None
    assert _register_key(core, _pkcs1(rsa_2048)).result_reason is None


def test_register_takes_a_transparent_rsa_private_key_only_with_its_primes(
        core: CoreHarness, rsa_2048) -> None:
    """Without P and Q the server would seek the factors from the exponents, as many tries
    as the key's maker likes, each a modular exponentiation (primes r * 2**2000 + 1 make
    a try thousands): minutes of the writer thread for one Register."""
    numbers = rsa_2048.private_numbers()
    public = numbers.public_numbers

    def transparent(*primes: Item) -> Item:
        return Item(Tag.KEY_MATERIAL, ItemType.STRUCTURE, [
            Item(Tag.MODULUS, ItemType.BIG_INTEGER, public.n),
            Item(Tag.PRIVATE_EXPONENT, ItemType.BIG_INTEGER, numbers.d),
            Item(Tag.PUBLIC_EXPONENT, ItemType.BIG_INTEGER, public.e), *primes])

    fmt = _F.TRANSPARENT_RSA_PRIVATE_KEY
    message = _refused(_register_key(core, transparent(), fmt=fmt), ResultReason.INVALID_FIELD)
    assert message == "a Transparent RSA Private Key must carry its primes P and Q"
    with_primes = transparent(Item(Tag.P, ItemType.BIG_INTEGER, numbers.p),
                              Item(Tag.Q, ItemType.BIG_INTEGER, numbers.q))
    assert _register_key(core, with_primes, fmt=fmt).result_reason is None


def test_register_refuses_an_rsa_key_openssl_finds_invalid(core: CoreHarness) -> None:
    _refused(_register_key(core, _junk_rsa(2048)), ResultReason.CRYPTOGRAPHIC_FAILURE)


def test_register_leaves_keys_it_never_reads_alone(core: CoreHarness) -> None:
    """An EC key (the server does not compute with it), and an encrypted PKCS#8 key it
    cannot read (the OASIS TC-ECC-2 case registers one), are stored as sent."""
    key = ec.generate_private_key(ec.SECP256R1())
    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    sealed = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.BestAvailableEncryption(b"pass phrase"))
    for der in (plain, sealed):
        item = _register_key(core, der, fmt=_F.PKCS_8, algorithm=CryptographicAlgorithm.EC,
                             length=256)
        assert item.result_reason is None, item.result_message


def test_stored_rsa_keys_are_not_validated_again(core: CoreHarness, rsa_2048,
                                                 validations) -> None:
    """Register validates once; Sign, Decrypt and Get's conversions use the stored key as
    it is (before: a full validation every time, 250 ms for a 4096-bit key)."""
    uid = _register_key(core, _pkcs1(rsa_2048), mask=_M.SIGN | _M.DECRYPT) \
        .response_payload.unique_identifier
    assert validations == [2048]
    pair = ok(core, Operation.CREATE_KEY_PAIR, CreateKeyPairRequest(common_attributes=[
        Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.RSA),
        Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 2048),
        Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(_M.SIGN | _M.VERIFY | _M.DECRYPT
                                                       | _M.ENCRYPT))]))
    made = pair.private_key_unique_identifier
    ok(core, Operation.ACTIVATE, ActivateRequest(unique_identifier=made))
    ok(core, Operation.ACTIVATE, ActivateRequest(
        unique_identifier=pair.public_key_unique_identifier))
    for private in (uid, made):
        for _ in range(3):
            ok(core, Operation.SIGN, SignRequest(unique_identifier=private, data=b"x"))
        for fmt in (_F.PKCS_8, _F.TRANSPARENT_RSA_PRIVATE_KEY):
            ok(core, Operation.GET, GetRequest(unique_identifier=private, key_format_type=fmt))
    sealed = ok(core, Operation.ENCRYPT, EncryptRequest(
        unique_identifier=pair.public_key_unique_identifier, data=b"m")).data
    assert ok(core, Operation.DECRYPT, DecryptRequest(unique_identifier=made,
                                                      data=sealed)).data == b"m"
    assert validations == [2048]


def test_a_stored_key_is_read_once_per_content(core: CoreHarness, rsa_2048,
                                               monkeypatch) -> None:
    """The loaded key is kept with the object's cache entry: a second Sign reads nothing."""
    from kcm.core.operations import _objects_common

    uid = _register_key(core, _pkcs1(rsa_2048)).response_payload.unique_identifier
    loads: list[object] = []
    real = _objects_common.load_private
    monkeypatch.setattr(_objects_common, "load_private",
                        lambda block, **kwargs: loads.append(block) or real(block, **kwargs))
    for _ in range(3):
        ok(core, Operation.SIGN, SignRequest(unique_identifier=uid, data=b"x"))
    assert len(loads) == 1


def test_rsa_keys_stored_before_the_checks(core: CoreHarness, rsa_2048, monkeypatch,
                                           validations) -> None:
    """Keys registered before Register checked them: one of a size the server uses keeps
    working, without OpenSSL's validation; a larger one is refused at use, at once, by its
    size (not validated for seconds first)."""
    from kcm.core.operations import register as register_module

    monkeypatch.setattr(register_module, "check_registered_key", lambda *a, **k: None,
                        raising=False)
    kept = _register_key(core, _pkcs1(rsa_2048)).response_payload.unique_identifier
    big = _register_key(core, _junk_rsa(16384), length=16384) \
        .response_payload.unique_identifier
    n = rsa_2048.public_key().public_numbers().n
    huge_e = _register_key(core, Item(Tag.KEY_MATERIAL, ItemType.STRUCTURE, [
        Item(Tag.MODULUS, ItemType.BIG_INTEGER, n),
        Item(Tag.PUBLIC_EXPONENT, ItemType.BIG_INTEGER, 2**1000 + 1)]), public=True,
        fmt=_F.TRANSPARENT_RSA_PUBLIC_KEY, mask=_M.ENCRYPT).response_payload.unique_identifier
    monkeypatch.undo()
    # A public exponent of 2^256 or more is refused at use (it made an Encrypt cost like a
    # private-key operation, on the writer).
    assert _refused(one(core, Operation.ENCRYPT, EncryptRequest(
        unique_identifier=huge_e, data=b"m")), ResultReason.CRYPTOGRAPHIC_FAILURE) == (
        "the RSA public exponent must be below 2^256")
    ok(core, Operation.SIGN, SignRequest(unique_identifier=kept, data=b"x"))
    began = time.monotonic()
    message = _refused(_sign(core, big), ResultReason.CRYPTOGRAPHIC_FAILURE)
    assert "16384" in message
    _refused(one(core, Operation.GET, GetRequest(unique_identifier=big,
                                                 key_format_type=_F.PKCS_8)),
             ResultReason.CRYPTOGRAPHIC_FAILURE)
    assert time.monotonic() - began < 1.0
    assert validations == []
    # Got as stored, it still is.
    ok(core, Operation.GET, GetRequest(unique_identifier=big))


# -- Derive Key ------------------------------------------------------------------------

def _derive(core: CoreHarness, *bases: str):
    return one(core, Operation.DERIVE_KEY, DeriveKeyRequest(
        object_type=ObjectType.SYMMETRIC_KEY, unique_identifiers=list(bases),
        derivation_method=DerivationMethod.ENCRYPT,
        derivation_parameters=DerivationParameters(cryptographic_parameters=(
            CryptographicParameters(block_cipher_mode=BlockCipherMode.ECB))),
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                    Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)]))


def _secret(core: CoreHarness, *flags: Attribute) -> str:
    return register(core, SecretData(secret_data_type=SecretDataType.SEED, key_block=KeyBlock(
        key_format_type=_F.OPAQUE, key_value=KeyValue(key_material=os.urandom(32)))),
        [*flags, PAST], object_type=ObjectType.SECRET_DATA)


def test_derive_refuses_a_sensitive_or_unextractable_base(core: CoreHarness) -> None:
    """ENCRYPT with a first base the caller knows returned a second base's bytes encrypted
    under it, in a derived key anyone could Get: a Secret Data not Extractable left in the
    clear while its Never Extractable stayed True."""
    known = register(core, aes_key(os.urandom(16)), [PAST])
    locked = _secret(core, Attribute.of(Tag.EXTRACTABLE, False))
    hidden = _secret(core, Attribute.of(Tag.SENSITIVE, True))
    _refused(_derive(core, known, locked), ResultReason.NOT_EXTRACTABLE)
    _refused(_derive(core, known, hidden), ResultReason.SENSITIVE)
    sensitive_key = register(core, aes_key(os.urandom(16)),
                             [Attribute.of(Tag.SENSITIVE, True), PAST])
    _refused(_derive(core, sensitive_key, _secret(core)), ResultReason.SENSITIVE)
    assert attributes_of(core, locked, Tag.NEVER_EXTRACTABLE) == {Tag.NEVER_EXTRACTABLE: [True]}
    assert _derive(core, known, _secret(core)).result_reason is None


# -- Get: unwrapping and wrapping ------------------------------------------------------

def _wrapped_copy(core: CoreHarness, kek: str, uid: str, version=V21) -> str:
    wrapped = ok(core, Operation.GET, GetRequest(
        unique_identifier=uid, key_wrapping_specification=_wrap_spec(kek)),
        version=version).object
    return ok(core, Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=[], object=wrapped),
        version=version).unique_identifier


def _get_clear(core: CoreHarness, uid: str, version=V21):
    return one(core, Operation.GET, GetRequest(unique_identifier=uid,
                                              key_wrap_type=KeyWrapType.NOT_WRAPPED),
               version=version)


@pytest.mark.parametrize("version", [V14, V21], ids=["1.4", "2.1"])
def test_no_clear_unwrap_with_a_key_the_caller_cannot_read(core: CoreHarness, version) -> None:
    """Get wrapped, Register the copy, Get it Not Wrapped: a Sensitive key came back in the
    clear, unwrapped with a key that was itself Sensitive, not Extractable, Wrap only."""
    secret = os.urandom(32)
    target = register(core, aes_key(secret), [Attribute.of(Tag.SENSITIVE, True)],
                      version=version)
    for flags, reason in (
            ([Attribute.of(Tag.SENSITIVE, True), Attribute.of(Tag.EXTRACTABLE, False)],
             ResultReason.NOT_EXTRACTABLE),
            ([Attribute.of(Tag.SENSITIVE, True)], ResultReason.SENSITIVE),
            ([Attribute.of(Tag.EXTRACTABLE, False)], ResultReason.NOT_EXTRACTABLE)):
        kek = register(core, aes_key(os.urandom(32)), [
            Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, _M.WRAP_KEY), *flags, PAST],
            version=version)
        copy = _wrapped_copy(core, kek, target, version)
        item = _get_clear(core, copy, version)
        assert item.response_payload is None
        if version == V21:
            _refused(item, reason)
        # Nor re-wrapped under a key the caller knows, nor converted.
        other = register(core, aes_key(os.urandom(32)), [PAST], version=version)
        assert one(core, Operation.GET, GetRequest(
            unique_identifier=copy, key_wrapping_specification=_wrap_spec(other)),
            version=version).response_payload is None
    assert attributes_of(core, target, Tag.ALWAYS_SENSITIVE) == {Tag.ALWAYS_SENSITIVE: [True]}
    # With a key of default attributes (the OASIS TC-WRAP cases) the server still unwraps.
    plain_kek = register(core, aes_key(os.urandom(32)), [PAST], version=version)
    plain = register(core, aes_key(secret), [PAST], version=version)
    copy = _wrapped_copy(core, plain_kek, plain, version)
    assert ok(core, Operation.GET, GetRequest(unique_identifier=copy,
                                              key_wrap_type=KeyWrapType.NOT_WRAPPED),
              version=version).object.key_block.key_bytes == secret


def test_a_sensitive_key_is_not_wrapped_under_itself(core: CoreHarness) -> None:
    uid = register(core, aes_key(os.urandom(32)), [Attribute.of(Tag.SENSITIVE, True), PAST])
    failed(core, Operation.GET, GetRequest(unique_identifier=uid,
                                           key_wrapping_specification=_wrap_spec(uid)),
           ResultReason.SENSITIVE)


def test_a_compromised_service_key_unwraps_nothing(core: CoreHarness) -> None:
    """docs/link-protocol.md: an L3 unwraps while Active or Deactivated, never once it is
    Compromised, at the core as at every gateway (the core's Get judged it by the generic
    rule, which lets a Compromised key process)."""
    from tests.integration.test_core_l4 import create_l4, current_l3, get_key

    l3 = current_l3(core)
    l4 = create_l4(core)
    dek = get_key(core, l4)
    spec = KeyWrappingSpecification(
        wrapping_method=WrappingMethod.ENCRYPT,
        encryption_key_information=EncryptionKeyInformation(unique_identifier=l3.uid))
    wrapped = ok(core, Operation.GET, GetRequest(unique_identifier=l4,
                                                key_wrapping_specification=spec)).object
    copy = ok(core, Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=[], object=wrapped)).unique_identifier
    assert ok(core, Operation.GET, GetRequest(
        unique_identifier=copy, key_wrap_type=KeyWrapType.NOT_WRAPPED)).object \
        .key_block.key_bytes == dek
    admin = admin_principal()
    ok(core, Operation.REVOKE, RevokeRequest(unique_identifier=l3.uid, revocation_reason=(
        RevocationReason(code=RevocationReasonCode.CESSATION_OF_OPERATION))), principal=admin)
    assert ok(core, Operation.GET, GetRequest(  # Deactivated: still decrypt-only
        unique_identifier=copy, key_wrap_type=KeyWrapType.NOT_WRAPPED)).object \
        .key_block.key_bytes == dek
    ok(core, Operation.REVOKE, RevokeRequest(unique_identifier=l3.uid, revocation_reason=(
        RevocationReason(code=RevocationReasonCode.KEY_COMPROMISE))), principal=admin)
    _refused(_get_clear(core, copy), ResultReason.WRONG_KEY_LIFECYCLE_STATE)


def test_a_service_key_wraps_no_managed_object(core: CoreHarness) -> None:
    """One key, one purpose (docs/link-protocol.md): a service key (L3) seals L4 tokens and
    wraps the data keys under them; a Get of a managed object wrapped under it (material
    the client chose: an AES block oracle under the L3) is Permission Denied. An L4's Get
    wrapped under it is unchanged."""
    from tests.integration.test_core_l4 import create_l4, current_l3

    l3 = current_l3(core)
    spec = KeyWrappingSpecification(
        wrapping_method=WrappingMethod.ENCRYPT,
        encryption_key_information=EncryptionKeyInformation(unique_identifier=l3.uid))
    managed_key = register(core)
    message = _refused(one(core, Operation.GET, GetRequest(
        unique_identifier=managed_key, key_wrapping_specification=spec)),
        ResultReason.PERMISSION_DENIED)
    assert message.endswith("wraps only the L4 data keys under it")
    assert ok(core, Operation.GET, GetRequest(unique_identifier=create_l4(core),
                                              key_wrapping_specification=spec)).object


# -- The keyring's clear material ------------------------------------------------------

def _held(core: CoreHarness, secret: bytes) -> bool:
    return any(secret in plaintext for plaintext, _ in core.keyring._unwrapped.values())


def test_destroy_drops_the_clear_material(core: CoreHarness) -> None:
    secret = os.urandom(32)
    uid = register(core, aes_key(secret))
    assert ok(core, Operation.GET, GetRequest(unique_identifier=uid)).object \
        .key_block.key_bytes == secret
    assert _held(core, secret)
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid))
    assert not _held(core, secret)


def test_a_destroyed_or_compromised_service_key_is_not_kept(core: CoreHarness) -> None:
    from tests.integration.test_core_l4 import create_l4, current_l3

    admin = admin_principal()
    l3 = current_l3(core)
    create_l4(core)  # unwraps the L3 to seal the L4
    assert _held(core, l3.key)
    ok(core, Operation.REVOKE, RevokeRequest(unique_identifier=l3.uid, revocation_reason=(
        RevocationReason(code=RevocationReasonCode.KEY_COMPROMISE))), principal=admin)
    assert not _held(core, l3.key)
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=l3.uid), principal=admin)
    assert not _held(core, l3.key)


def test_destroyed_material_is_not_cached_again() -> None:
    """A request that read the row before the Destroy and unwraps after it gets the
    material (its transaction's view), but the keyring does not keep it."""
    keyring = Keyring(os.urandom(32))
    blob = keyring.wrap_tenant_key("demo", "uid-1", b"clear material", DEFAULT_FLAGS)
    row = SimpleNamespace(attributes=None, tenant="demo", uid="uid-1", material=blob,
                          wrapped_by=WRAPPED_BY_L1,
                          object_type=2, level=LEVEL_TENANT_KEY, service=None, key_version=None)
    assert keyring.unwrap(None, row) == b"clear material"  # type: ignore[arg-type]
    assert len(keyring._unwrapped) == 1
    keyring.forget_material("demo", "uid-1", blob)
    assert not keyring._unwrapped
    assert keyring.unwrap(None, row) == b"clear material"  # type: ignore[arg-type]
    assert not keyring._unwrapped
    # Forgetting without the material (a compromise) drops it, and caches it again later.
    other = SimpleNamespace(attributes=None, tenant="demo", uid="uid-2", wrapped_by=WRAPPED_BY_L1,
                            object_type=2,
                            level=LEVEL_TENANT_KEY, service=None, key_version=None,
                            material=keyring.wrap_tenant_key("demo", "uid-2", b"other",
                                                             DEFAULT_FLAGS))
    keyring.unwrap(None, other)  # type: ignore[arg-type]
    keyring.forget_material("demo", "uid-2")
    assert not keyring._unwrapped
    keyring.unwrap(None, other)  # type: ignore[arg-type]
    assert len(keyring._unwrapped) == 1

"""L1 in a PKCS#11 token (:mod:`kcm.core.l1_pkcs11`) against a fresh SoftHSM2 token: the key
``kcm core init`` creates, wrapping in the token, the check value and audit key computed
there, and the clear refusals (wrong PIN, no token, no key, an exportable key)."""

from __future__ import annotations

import pkcs11
import pytest
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.cmac import CMAC
from pkcs11 import Attribute, KeyType, ObjectClass

from kcm.core import keys
from kcm.core.keyring import DEFAULT_FLAGS, Keyring, tenant_key_binding
from kcm.core.l1 import L1Error, open_l1
from kcm.core.l1_pkcs11 import Pkcs11L1, open_token_key
from tests.softhsm import MODULE, SoftHsm

AAD = keys.object_aad("demo", "l2-uid")


def test_init_creates_a_sensitive_non_extractable_aes256_key_then_reuses_it(
        softhsm: SoftHsm) -> None:
    l1, created = open_token_key(softhsm.uri(), create=True)
    assert created and l1.description == "L1 key 'kcm-l1' in PKCS#11 token 'kcm-test'"
    blob = l1.wrap(b"k" * 32, aad=AAD)
    check, audit_key = l1.check_value(), l1.audit_key()
    l1.close()

    again, created = open_token_key(softhsm.uri(), create=True)
    assert not created
    assert again.unwrap(blob, aad=AAD) == b"k" * 32
    assert (again.check_value(), again.audit_key()) == (check, audit_key)
    assert len(check) == 16 and len(audit_key) == 32
    token = pkcs11.lib(MODULE).get_token(token_label=softhsm.token)
    with token.open() as session:  # logged in already, by `again`
        (key,) = session.get_objects({Attribute.LABEL: "kcm-l1"})
        assert key[Attribute.KEY_TYPE] == KeyType.AES and key[Attribute.VALUE_LEN] == 32
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
        assert key[Attribute.TOKEN] and key[Attribute.PRIVATE]
    again.close()


def test_a_blob_fails_under_other_aad_or_tampered_or_another_token_key(
        softhsm: SoftHsm) -> None:
    l1, _ = open_token_key(softhsm.uri(), create=True)
    other, _ = open_token_key(softhsm.uri(object="other"), create=True)
    blob = l1.wrap(b"secret", aad=AAD)
    assert blob[0] == keys.WRAP_VERSION
    assert len(blob) == 1 + keys.NONCE_BYTES + len(b"secret") + keys.TAG_BYTES
    with pytest.raises(keys.UnwrapError, match="failed authentication"):
        l1.unwrap(blob, aad=keys.object_aad("demo", "another"))
    with pytest.raises(keys.UnwrapError, match="failed authentication"):
        l1.unwrap(blob[:-1] + bytes([blob[-1] ^ 1]), aad=AAD)
    with pytest.raises(keys.UnwrapError, match="failed authentication"):
        other.unwrap(blob, aad=AAD)
    with pytest.raises(keys.UnwrapError, match="version"):
        l1.unwrap(b"\x03" + blob[1:], aad=AAD)
    with pytest.raises(keys.UnwrapError, match="failed authentication"):
        l1.unwrap(b"\x01" + blob[1:], aad=AAD)  # (the version byte is authenticated)
    # A version 1 blob (the previous release's L2s) still opens.
    old = l1.wrap(b"older", aad=AAD, version=1)
    assert old[0] == 1 and l1.unwrap(old, aad=AAD) == b"older"
    # The token still works after a failed operation.
    assert l1.unwrap(blob, aad=AAD) == b"secret"
    assert other.check_value() != l1.check_value()
    assert other.audit_key() != l1.audit_key()


def test_token_results_match_the_documented_algorithms(softhsm: SoftHsm) -> None:
    """With a known key value (a test-only, readable key), the token's blob is the key file's
    format (keys.unwrap opens it), the check value is AES-CMAC of the label, and the audit key
    is the SP 800-108 counter-mode KDF with AES-CMAC."""
    value = bytes(range(32))
    token = pkcs11.lib(MODULE).get_token(token_label=softhsm.token)
    session = token.open(user_pin=softhsm.pin, rw=True)
    key = session.create_object({
        Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE: value, Attribute.LABEL: "known", Attribute.TOKEN: False,
        Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.SIGN: True})
    l1 = Pkcs11L1(session, key, "known")

    def cmac(message: bytes) -> bytes:
        mac = CMAC(AES(value))
        mac.update(message)
        return mac.finalize()

    blob = l1.wrap(b"material", aad=AAD)
    assert keys.unwrap(value, blob, aad=AAD) == b"material"
    assert l1.unwrap(keys.wrap(value, b"other", aad=AAD), aad=AAD) == b"other"
    assert l1.check_value() == cmac(b"kcm key check value v1")[:8].hex()
    fixed = b"kcm audit chain key v1\x00" + (256).to_bytes(4, "big")
    assert l1.audit_key() == cmac(b"\x00\x00\x00\x01" + fixed) + cmac(b"\x00\x00\x00\x02" + fixed)
    l1.close()


def test_the_keyring_wraps_l2s_through_the_token(softhsm: SoftHsm) -> None:
    l1, _ = open_l1("unused-key-file", softhsm.uri(), create=True)
    keyring = Keyring(l1)
    blob = keyring.wrap_tenant_key("demo", "l2-uid", b"t" * 32, DEFAULT_FLAGS)
    assert blob[0] == keys.WRAP_VERSION
    assert l1.unwrap(blob, aad=tenant_key_binding("demo", "l2-uid",
                                                  DEFAULT_FLAGS).aad()) == b"t" * 32
    assert keyring.audit_key == l1.audit_key()


def test_wrong_pin_missing_token_or_missing_key_are_refused_clearly(
        softhsm: SoftHsm, tmp_path) -> None:
    with pytest.raises(L1Error, match="PKCS#11 token 'kcm-test' refused the PIN"):
        open_token_key(softhsm.uri(pin="0000"), create=True)
    with pytest.raises(L1Error, match="no PKCS#11 token 'absent'"):
        open_token_key(softhsm.uri(token="absent"))
    with pytest.raises(L1Error, match="has no key labelled 'kcm-l1'; `kcm core init` creates"):
        open_token_key(softhsm.uri())
    with pytest.raises(L1Error, match="cannot load the PKCS#11 module /nonexistent.so"):
        open_token_key(softhsm.uri().replace(MODULE, "/nonexistent.so"))
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin + "\n")
    pin_file.chmod(0o600)
    assert open_token_key(softhsm.uri(pin_file=pin_file), create=True)[1]


def test_an_existing_extractable_key_is_refused(softhsm: SoftHsm) -> None:
    token = pkcs11.lib(MODULE).get_token(token_label=softhsm.token)
    with token.open(user_pin=softhsm.pin, rw=True) as session:
        session.generate_key(KeyType.AES, 256, label="exportable", store=True, template={
            Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True, Attribute.SIGN: True})
    with pytest.raises(L1Error, match="must be sensitive and not extractable"):
        open_token_key(softhsm.uri(object="exportable"), create=True)

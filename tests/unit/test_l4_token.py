"""L4 tokens: the format of docs/link-protocol.md §3, byte for byte, and nothing but
TokenError for anything that is not a token."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from kcm.kmip.enums import State
from kcm.l4 import token
from kcm.l4.identifiers import is_l3, is_l4, l3_uuid_bytes, new_l3_uid
from kcm.l4.service_key import ServiceKey

L3_UUID = uuid.UUID("0b7c9e8a-35f4-4c2e-9a51-7d2f6f3c1e00")
L3 = ServiceKey(uid=f"l3-{L3_UUID}", tenant="demo", service="app", version=1,
                state=State.ACTIVE, key=bytes(range(32)))
DEK = bytes(range(100, 132))
NONCE = bytes(range(12))


def test_the_format_is_the_documented_one() -> None:
    sealed = token.seal(L3, DEK, NONCE)
    assert sealed.startswith("l4.1.") and "=" not in sealed
    body = base64.urlsafe_b64decode(sealed[5:] + "=" * (-len(sealed[5:]) % 4))
    assert body[:16] == L3_UUID.bytes and body[16:28] == NONCE
    aad = b"l4.1" + L3_UUID.bytes + b"\x00\x04demo" + b"\x00\x03app"
    assert AESGCM(L3.key).decrypt(NONCE, body[28:], aad) == DEK
    assert token.token_id(sealed) == hashlib.sha256(sealed.encode()).hexdigest()[:32]


@pytest.mark.parametrize("length", [16, 24, 32])
def test_seal_parse_open_round_trip(length: int) -> None:
    dek = DEK[:length]
    sealed = token.seal(L3, dek, NONCE)
    parts = token.parse(sealed)
    assert (parts.l3_uid, parts.nonce, len(parts.ciphertext)) == (L3.uid, NONCE, length + 16)
    assert token.open(sealed, L3) == dek


@pytest.mark.parametrize("other", [
    ServiceKey(L3.uid, "other", "app", 1, State.ACTIVE, L3.key),
    ServiceKey(L3.uid, "demo", "billing", 1, State.ACTIVE, L3.key),
    ServiceKey(L3.uid, "demo", "app", 1, State.ACTIVE, bytes(32)),
    ServiceKey(f"l3-{uuid.UUID(int=1)}", "demo", "app", 1, State.ACTIVE, L3.key),
])
def test_a_token_opens_nowhere_else(other: ServiceKey) -> None:
    with pytest.raises(token.TokenError):
        token.open(token.seal(L3, DEK, NONCE), other)


def test_every_bit_of_the_body_matters() -> None:
    sealed = token.seal(L3, DEK, NONCE)
    body = bytearray(token.parse(sealed).l3_uuid + NONCE + token.parse(sealed).ciphertext)
    for i in range(16, len(body)):  # past the uuid, which would name another L3
        flipped = bytearray(body)
        flipped[i] ^= 1
        text = "l4.1." + base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"=").decode()
        with pytest.raises(token.TokenError):
            token.open(text, L3)


def test_non_canonical_spellings_are_refused() -> None:
    sealed = token.seal(L3, DEK, NONCE)
    # The last character carries unused low bits: another spelling of the same bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sealed[-1])
    twin = sealed[:-1] + alphabet[last | 1 if not last & 1 else last & ~1]
    assert twin != sealed
    with pytest.raises(token.TokenError):
        token.parse(twin)
    for bad in (sealed + "=", sealed.upper(), sealed.replace("l4.1.", "l4.2."), " " + sealed,
                sealed[:-1], sealed + "A", "l4.1.", "l3-x", ""):
        with pytest.raises(token.TokenError):
            token.parse(bad)


def test_seal_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError):
        token.seal(L3, b"short", NONCE)
    with pytest.raises(ValueError):
        token.seal(L3, DEK, b"nonce")


@given(tenant=st.text(max_size=20), service=st.text(max_size=20),
       l3_uuid=st.binary(min_size=16, max_size=16))
def test_every_token_binding_is_recognised(tenant: str, service: str, l3_uuid: bytes) -> None:
    """What the engine refuses as a client's associated data under an L3 covers every
    token's associated data (docs/link-protocol.md §3)."""
    assert token.is_binding(token.associated_data(l3_uuid, tenant, service))


def test_other_associated_data_is_not_a_binding() -> None:
    for aad in (None, b"", b"l4", b"l4.", b"L4.1", b"x-l4.1", b"l4.2" + bytes(16), b"row 7"):
        assert not token.is_binding(aad)
    assert token.is_binding(b"l4.1") and token.is_binding(b"l4.1anything")


def test_identifiers() -> None:
    uid = new_l3_uid(lambda n: bytes(n))
    assert is_l3(uid) and not is_l4(uid) and l3_uuid_bytes(uid) == uuid.UUID(uid[3:]).bytes
    assert is_l4("l4.1.x") and not is_l3("l4.1.x") and not is_l3(None)
    for bad in (uid.upper(), uid[:-1], "l3-" + uuid.UUID(uid[3:]).hex):
        with pytest.raises(ValueError):
            l3_uuid_bytes(bad)


@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_token_error(text: str) -> None:
    for candidate in (text, "l4.1." + text):
        try:
            token.parse(candidate)
            token.open(candidate, L3)
            token.token_id(candidate)
        except token.TokenError:
            pass


@given(st.binary(min_size=0, max_size=80))
def test_arbitrary_bodies_raise_only_token_error(body: bytes) -> None:
    text = "l4.1." + base64.urlsafe_b64encode(body).rstrip(b"=").decode()
    with contextlib.suppress(token.TokenError):
        token.open(text, L3)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=12, max_size=12),
       st.sampled_from([16, 24, 32]), st.data())
def test_any_token_round_trips(key: bytes, nonce: bytes, length: int, data) -> None:
    l3 = ServiceKey(L3.uid, "t", "s", 1, State.ACTIVE, key)
    dek = data.draw(st.binary(min_size=length, max_size=length))
    assert token.open(token.seal(l3, dek, nonce), l3) == dek


def test_what_a_service_key_derives_once_belongs_to_that_version_alone() -> None:
    """Sealing twice under one version seals alike (the derived binding is its own), and a
    version in another state, or of another tenant, derives its own answers afresh."""
    l3 = ServiceKey(uid=L3.uid, tenant="demo", service="app", version=1,
                    state=State.ACTIVE, key=L3.key)
    assert l3.usable_to_protect and token.seal(l3, DEK, NONCE) == token.seal(L3, DEK, NONCE)
    assert token.seal(l3, DEK, NONCE) == token.seal(l3, DEK, NONCE)
    deactivated = dataclasses.replace(l3, state=State.DEACTIVATED)
    assert not deactivated.usable_to_protect and deactivated.usable_to_process
    compromised = dataclasses.replace(l3, state=State.COMPROMISED)
    assert not compromised.usable_to_protect and not compromised.usable_to_process
    assert l3.usable_to_protect and l3 == L3 and hash(l3) == hash(L3)  # (derived: not compared)
    other = dataclasses.replace(l3, tenant="other")
    sealed_for_other = token.seal(other, DEK, NONCE)
    with pytest.raises(token.TokenError):
        token.open(sealed_for_other, l3)
    assert token.open(sealed_for_other, other) == DEK
    assert "key=" not in repr(l3) and "_derived" not in repr(l3)

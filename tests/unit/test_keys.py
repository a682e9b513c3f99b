"""The L1 key file and the AES-256-GCM wrapping format."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat

import pytest

from kcm.core.keys import (
    KeyFileError,
    UnwrapError,
    create_l1_keyfile,
    derive_audit_key,
    key_check_value,
    load_l1,
    object_aad,
    object_aad_v2,
    parse_l1,
    unwrap,
    wrap,
)

KEK = bytes(range(32))


def _counting_random(n: int) -> bytes:
    return bytes(range(1, n + 1))


# --- key file ------------------------------------------------------------------------------


def test_keyfile_is_private_and_loads(tmp_path) -> None:
    path = tmp_path / "l1.key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        create_l1_keyfile(path, random_bytes=lambda n: b"\x07" * n)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == base64.b64encode(b"\x07" * 32).decode() + "\n"
    assert load_l1(path) == b"\x07" * 32


def test_keyfile_is_never_overwritten(tmp_path) -> None:
    path = tmp_path / "l1.key"
    create_l1_keyfile(path)
    first = load_l1(path)
    with pytest.raises(FileExistsError):
        create_l1_keyfile(path)
    assert load_l1(path) == first


def test_keyfile_through_symlink_is_refused(tmp_path) -> None:
    target = tmp_path / "real.key"
    create_l1_keyfile(target)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(KeyFileError):
        load_l1(link)
    with pytest.raises(FileExistsError):
        create_l1_keyfile(link)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o002])
def test_keyfile_readable_by_others_is_refused(tmp_path, mode: int) -> None:
    path = tmp_path / "l1.key"
    create_l1_keyfile(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_l1(path)


def test_keyfile_owner_read_only_is_accepted(tmp_path) -> None:
    path = tmp_path / "l1.key"
    create_l1_keyfile(path)
    path.chmod(0o400)
    assert len(load_l1(path)) == 32


@pytest.mark.parametrize(
    "content",
    [b"", b"not base64!!\n", base64.b64encode(b"short") + b"\n", b"\xff\xfe"],
)
def test_malformed_keyfile_is_refused(tmp_path, content: bytes) -> None:
    path = tmp_path / "l1.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        load_l1(path)


def test_missing_keyfile_is_a_keyfile_error(tmp_path) -> None:
    with pytest.raises(KeyFileError, match="cannot open"):
        load_l1(tmp_path / "absent.key")


def test_parse_l1_accepts_an_environment_secret() -> None:
    assert parse_l1("  " + base64.b64encode(KEK).decode() + "\n") == KEK


def test_key_check_value_is_stable_and_key_specific() -> None:
    assert key_check_value(KEK) == key_check_value(bytes(KEK))
    assert key_check_value(KEK) != key_check_value(bytes(32))
    assert len(key_check_value(KEK)) == 16


def test_audit_key_is_hkdf_of_l1_with_its_own_label() -> None:
    # RFC 5869 by hand: no salt (32 zero bytes), info "kcm audit chain key v1", one block.
    prk = hmac.digest(bytes(32), KEK, hashlib.sha256)
    expected = hmac.digest(prk, b"kcm audit chain key v1\x01", hashlib.sha256)
    assert derive_audit_key(KEK) == expected
    assert derive_audit_key(bytes(32)) != expected
    assert expected not in (KEK, bytes.fromhex(key_check_value(KEK)))
    with pytest.raises(ValueError):
        derive_audit_key(KEK[:16])


# --- wrapping ------------------------------------------------------------------------------


def test_wrap_format_and_round_trip() -> None:
    aad = object_aad("t1", "uid-1")
    blob = wrap(KEK, b"secret material", aad=aad, random_bytes=_counting_random)
    assert blob[0] == 2
    assert blob[1:13] == bytes(range(1, 13))
    assert len(blob) == 1 + 12 + len(b"secret material") + 16
    assert unwrap(KEK, blob, aad=aad) == b"secret material"


def test_wrap_uses_a_fresh_nonce_each_time() -> None:
    aad = object_aad("t1", "uid-1")
    assert wrap(KEK, b"k" * 32, aad=aad) != wrap(KEK, b"k" * 32, aad=aad)


def test_every_flipped_bit_is_detected() -> None:
    aad = object_aad("t1", "uid-1")
    blob = wrap(KEK, b"k" * 32, aad=aad)
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(UnwrapError):
            unwrap(KEK, bytes(tampered), aad=aad)


def test_blob_cannot_move_to_another_object_or_tenant() -> None:
    blob = wrap(KEK, b"k" * 32, aad=object_aad("t1", "uid-1"))
    for tenant, uid in (("t1", "uid-2"), ("t2", "uid-1")):
        with pytest.raises(UnwrapError):
            unwrap(KEK, blob, aad=object_aad(tenant, uid))


def test_wrong_key_is_detected() -> None:
    aad = object_aad("t1", "uid-1")
    blob = wrap(KEK, b"k" * 32, aad=aad)
    with pytest.raises(UnwrapError):
        unwrap(bytes(32), blob, aad=aad)


def test_short_or_unknown_version_blobs_are_refused() -> None:
    aad = object_aad("t1", "uid-1")
    blob = wrap(KEK, b"", aad=aad)
    with pytest.raises(UnwrapError, match="short"):
        unwrap(KEK, blob[:-1], aad=aad)
    with pytest.raises(UnwrapError, match="version"):
        unwrap(KEK, b"\x03" + blob[1:], aad=aad)
    with pytest.raises(ValueError, match="version"):
        wrap(KEK, b"", aad=aad, version=3)


def test_object_aad_is_unambiguous() -> None:
    assert object_aad("ab", "c") != object_aad("a", "bc")


def _v2(tenant: str = "t1", uid: str = "uid-1", object_type: int = 2,
        level: int | None = None, service: str | None = None,
        key_version: int | None = None, extractable: bool = True,
        sensitive: bool = False) -> bytes:
    return object_aad_v2(tenant, uid, object_type=object_type, level=level, service=service,
                         key_version=key_version, extractable=extractable,
                         sensitive=sensitive)


def test_v2_aad_binds_what_decides_who_may_read_the_object() -> None:
    """Version 2: the level, service, key version and object type are bound besides the
    tenant and uid; a blob whose row says otherwise fails."""
    l3 = _v2(level=3, service="billing", key_version=1)
    blob = wrap(KEK, b"k" * 32, aad=l3)
    assert blob[0] == 2 and unwrap(KEK, blob, aad=l3) == b"k" * 32
    for changed in (_v2(level=None, service="billing", key_version=1),  # not an L3 any more
                    _v2(level=3, service="payroll", key_version=1),  # another service's
                    _v2(level=3, service=None, key_version=1),
                    _v2(level=3, service="billing", key_version=2),
                    _v2(level=3, service="billing", key_version=None),
                    _v2(object_type=3, level=3, service="billing", key_version=1),
                    _v2(tenant="t2", level=3, service="billing", key_version=1),
                    _v2(uid="uid-2", level=3, service="billing", key_version=1),
                    _v2(level=3, service="billing", key_version=1, extractable=False),
                    _v2(level=3, service="billing", key_version=1, sensitive=True),
                    object_aad("t1", "uid-1")):  # (the version 1 data)
        with pytest.raises(UnwrapError):
            unwrap(KEK, blob, aad=changed)


def test_v2_aad_is_unambiguous() -> None:
    """Length-prefixed and presence-marked: a NULL service is not any name (not even the
    empty one), nor 0 a NULL level or version, and no field runs into the next."""
    different = [_v2(), _v2(service=""), _v2(service="\x00"), _v2(level=0), _v2(key_version=0),
                 _v2(level=None, key_version=1), _v2(level=1, key_version=None),
                 _v2(tenant="t1u", uid="id-1"), _v2(service="a", key_version=1),
                 _v2(object_type=2 + (1 << 32)), object_aad("t1", "uid-1"),
                 _v2(extractable=False), _v2(sensitive=True),
                 _v2(extractable=False, sensitive=True)]
    assert len(set(different)) == len(different)
    assert object_aad_v2("ab", "c", object_type=2, level=None, service=None,
                         key_version=None, extractable=True,
                         sensitive=False) != _v2(tenant="a", uid="bc")


def test_a_v1_blob_still_opens_with_its_own_data_and_not_as_v2() -> None:
    """A blob written by the previous release (version 1, tenant and uid only) opens with
    the version 1 data; its version byte is authenticated, so it cannot pass for version 2
    (nor a version 2 blob for version 1)."""
    v1 = wrap(KEK, b"old", aad=object_aad("t1", "uid-1"), version=1)
    assert v1[0] == 1 and unwrap(KEK, v1, aad=object_aad("t1", "uid-1")) == b"old"
    with pytest.raises(UnwrapError):
        unwrap(KEK, b"\x02" + v1[1:], aad=object_aad("t1", "uid-1"))
    v2 = wrap(KEK, b"new", aad=object_aad("t1", "uid-1"))
    with pytest.raises(UnwrapError):
        unwrap(KEK, b"\x01" + v2[1:], aad=object_aad("t1", "uid-1"))


def test_kek_must_be_aes_256() -> None:
    with pytest.raises(ValueError):
        wrap(bytes(16), b"x", aad=b"")
    with pytest.raises(ValueError):
        unwrap(bytes(16), bytes(40), aad=b"")


def test_an_l1_in_the_environment_is_read_as_a_key_file_is_and_never_made() -> None:
    import base64

    import pytest as _pytest

    from kcm.core import keys as _keys
    from kcm.core.l1_file import FileL1, open_key_env

    key = bytes(range(32))
    l1, created = open_key_env("L1", environ={"L1": base64.b64encode(key).decode() + "\n"})
    assert not created and l1.check_value() == FileL1(key).check_value()
    assert l1.description == "L1 key in the environment variable L1"
    for environ, create, reason in (({}, True, "set it to a new key"),
                                    ({"L1": "  "}, False, "set it to the deployment's L1 key"),
                                    ({"L1": "not base64!"}, False, "not valid base64"),
                                    ({"L1": "AAAA"}, False, "must be 32 bytes, not 3")):
        with _pytest.raises(_keys.L1Error, match=reason) as refused:
            open_key_env("L1", create=create, environ=environ)
        assert "L1 (core.l1_key_env)" in str(refused.value)


def test_v2_aad_encoding_is_fixed() -> None:
    """The stored format: label, tenant and uid length-prefixed (4 bytes), the object type
    (8 bytes, signed), then level, service and key version each marked absent (0x00) or
    present (0x01 and the value), then the effective Extractable and Sensitive, one byte
    each (0x00 or 0x01). A change here makes every stored blob unreadable."""
    assert object_aad_v2("t", "u", object_type=2, level=3, service="s", key_version=1,
                         extractable=True, sensitive=False) == (
        b"kcm-object-v2\x00" + b"\x00\x00\x00\x01t" + b"\x00\x00\x00\x01u"
        + (2).to_bytes(8, "big") + b"\x01" + (3).to_bytes(8, "big")
        + b"\x01\x00\x00\x00\x01s" + b"\x01" + (1).to_bytes(8, "big") + b"\x01\x00")
    assert object_aad_v2("t", "u", object_type=2, level=None, service=None,
                         key_version=None, extractable=False, sensitive=True) == (
        b"kcm-object-v2\x00\x00\x00\x00\x01t\x00\x00\x00\x01u" + (2).to_bytes(8, "big")
        + b"\x00\x00\x00" + b"\x00\x01")


def test_v2_aad_binds_extractable_and_sensitive() -> None:
    """A blob wrapped for a key that is not Extractable, or Sensitive, does not open for a
    row whose attributes say otherwise (a database writer's way to have it served)."""
    for extractable, sensitive in ((False, False), (True, True), (False, True), (True, False)):
        aad = _v2(extractable=extractable, sensitive=sensitive)
        blob = wrap(KEK, b"k", aad=aad)
        assert unwrap(KEK, blob, aad=aad) == b"k"
        for other in ((not extractable, sensitive), (extractable, not sensitive),
                      (not extractable, not sensitive)):
            with pytest.raises(UnwrapError):
                unwrap(KEK, blob, aad=_v2(extractable=other[0], sensitive=other[1]))

"""The L1 master key file and the key-wrapping format of the key hierarchy.

Wrapped blob::

    version (1 byte) || nonce (12 bytes, random) || AES-256-GCM ciphertext || tag (16 bytes)

The version byte is authenticated together with the caller's associated data, which for a
stored object depends on the version: version 2 (written since this release),
:func:`object_aad_v2`, binds its tenant, uid, object type, level, service and key version
(what decides who may read it) and its effective Extractable and Sensitive (whether its
material may leave the server, and in the clear); version 1, :func:`object_aad`, its
tenant and uid only. A blob copied onto another object, or into another tenant, fails to
unwrap; so does a version 2 blob whose row was given another level, service, key version
or object type, or whose attributes were given another Extractable or Sensitive. L2s are
wrapped under L1; L3s and ordinary managed objects under their tenant's L2.

Keys derived from L1 (never stored; recomputed from the key file when needed):

* the audit key (:func:`derive_audit_key`), HKDF-SHA-256 of L1 with the label
  ``kcm audit chain key v1``, which MACs the audit chain (:mod:`kcm.core.audit`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: The version every wrap writes (:func:`object_aad_v2`).
WRAP_VERSION = 2
#: The previous version (:func:`object_aad`): still opened, see ``accept_v1_wrapping``.
WRAP_VERSION_V1 = 1
#: The versions :func:`unwrap` opens (the caller builds the matching associated data).
WRAP_VERSIONS = frozenset({WRAP_VERSION_V1, WRAP_VERSION})
#: The HKDF label of the audit key: no other key is derived from L1 with it.
AUDIT_KEY_LABEL = b"kcm audit chain key v1"

RandomBytes = Callable[[int], bytes]


class L1Error(Exception):
    """The L1 key cannot be had: its file or token is missing, wrong, or refuses us."""


class KeyFileError(L1Error):
    """The L1 key file is missing, malformed, or not private to its owner."""


class UnwrapError(Exception):
    """A wrapped blob is malformed, of an unknown version, tampered with, or not for this
    key or associated data."""


def parse_l1(text: str) -> bytes:
    """The 32-byte key from its base64 text form (file content or environment secret)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError("L1 key is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"L1 key must be {KEY_BYTES} bytes, not {len(key)}")
    return key


def create_l1_keyfile(
    path: str | os.PathLike[str], *, random_bytes: RandomBytes = os.urandom
) -> None:
    """Write a new random L1 key to ``path`` (base64, mode 0600), durably.

    Refuses to overwrite: raises FileExistsError if ``path`` exists, so a key in use can
    never be replaced by accident.
    """
    target = Path(path)
    key = random_bytes(KEY_BYTES)
    if len(key) != KEY_BYTES:
        raise ValueError("random source returned the wrong number of bytes")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        # The umask can only narrow the mode; fchmod makes 0600 exact whatever it is.
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_l1(path: str | os.PathLike[str]) -> bytes:
    """Read the L1 key from ``path``.

    Refuses (KeyFileError) a file that is not a regular file, is readable or writable by
    group or others, or does not hold exactly one base64 32-byte key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise KeyFileError(f"cannot open L1 key file {os.fspath(path)}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"L1 key file {os.fspath(path)} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"L1 key file {os.fspath(path)} has mode {stat.S_IMODE(info.st_mode):04o}; "
                "it must not be accessible by group or others (chmod 600)"
            )
        content = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyFileError("L1 key file is not base64 text") from exc
    return parse_l1(text)


def key_check_value(key: bytes) -> str:
    """A short public fingerprint of ``key`` (hex), to detect a wrong L1 at start-up.

    HMAC-SHA-256 of a fixed label, truncated to 8 bytes: it reveals nothing usable about the
    key and is stable across releases.
    """
    return hmac.new(key, b"kcm key check value v1", hashlib.sha256).digest()[:8].hex()


def derive_audit_key(l1: bytes) -> bytes:
    """The 32-byte key that MACs the audit chain, derived from ``l1`` (HKDF-SHA-256, no salt,
    info :data:`AUDIT_KEY_LABEL`). Derived once per process (the keyring does, when it is
    given L1), not once per record."""
    if len(l1) != KEY_BYTES:
        raise ValueError(f"L1 must be {KEY_BYTES} bytes")
    return HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=None, info=AUDIT_KEY_LABEL).derive(l1)


def object_aad(tenant: str, uid: str) -> bytes:
    """The associated data of a version 1 blob, binding it to one stored object.

    Length-prefixed, so no (tenant, uid) pair can collide with another.
    """
    tenant_bytes = tenant.encode("utf-8")
    uid_bytes = uid.encode("utf-8")
    return (
        b"kcm-object\x00"
        + len(tenant_bytes).to_bytes(4, "big")
        + tenant_bytes
        + len(uid_bytes).to_bytes(4, "big")
        + uid_bytes
    )


def object_aad_v2(tenant: str, uid: str, *, object_type: int, level: int | None,
                  service: str | None, key_version: int | None, extractable: bool,
                  sensitive: bool) -> bytes:
    """The associated data of a version 2 blob: the stored object's tenant and uid, the
    columns that decide who may read it (its object type, level, service and key version),
    and its effective Extractable and Sensitive (an absent attribute is the server's
    default: Extractable True, Sensitive False), which decide whether its material leaves
    the server, and in the clear.

    Every field length-prefixed or of fixed size, and each column that may be NULL marked
    present or absent, so no two rows' data are alike (a NULL service is not any name); the
    two flags end it, one byte each (0 or 1).
    """
    tenant_bytes, uid_bytes = tenant.encode("utf-8"), uid.encode("utf-8")
    parts = [_V2_LABEL, _LENGTH.pack(len(tenant_bytes)), tenant_bytes,
             _LENGTH.pack(len(uid_bytes)), uid_bytes, _NUMBER.pack(object_type),
             _ABSENT if level is None else _PRESENT_NUMBER.pack(1, level)]
    if service is None:
        parts.append(_ABSENT)
    else:
        service_bytes = service.encode("utf-8")
        parts += (_PRESENT_LENGTH.pack(1, len(service_bytes)), service_bytes)
    parts.append(_ABSENT if key_version is None else _PRESENT_NUMBER.pack(1, key_version))
    parts.append(_FLAGS[bool(extractable), bool(sensitive)])
    return b"".join(parts)


_V2_LABEL = b"kcm-object-v2\x00"
_ABSENT = b"\x00"
_LENGTH = struct.Struct(">I")
_NUMBER = struct.Struct(">q")
_PRESENT_NUMBER = struct.Struct(">Bq")
_PRESENT_LENGTH = struct.Struct(">BI")
_FLAGS = {(e, s): bytes([e, s]) for e in (False, True) for s in (False, True)}


def blob_version(blob: bytes) -> int | None:
    """The version byte of a wrapped blob (None: empty)."""
    return blob[0] if blob else None


def _aead(kek: bytes) -> AESGCM:
    if len(kek) != KEY_BYTES:
        raise ValueError(f"a wrapping key must be {KEY_BYTES} bytes (AES-256)")
    return AESGCM(kek)


def wrap(
    kek: bytes, plaintext: bytes, *, aad: bytes, random_bytes: RandomBytes = os.urandom,
    version: int = WRAP_VERSION,
) -> bytes:
    """Encrypt ``plaintext`` under the 32-byte ``kek`` with AES-256-GCM; see module doc.
    ``aad`` must be the associated data of ``version`` (the current one but in tests)."""
    if version not in WRAP_VERSIONS:
        raise ValueError(f"unknown wrapped blob version {version}")
    nonce = random_bytes(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise ValueError("random source returned the wrong number of bytes")
    header = bytes([version])
    return header + nonce + _aead(kek).encrypt(nonce, plaintext, header + aad)


def unwrap(kek: bytes, blob: bytes, *, aad: bytes) -> bytes:
    """The plaintext of ``blob``; raises UnwrapError unless it was wrapped by :func:`wrap`
    under ``kek`` with exactly ``aad`` and is unaltered. ``aad`` must be the associated data
    of the blob's version (:func:`blob_version`): the version byte is authenticated too, so
    a blob given another version fails."""
    aead = _aead(kek)
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES:
        raise UnwrapError("wrapped blob is too short")
    if blob[0] not in WRAP_VERSIONS:
        raise UnwrapError(f"unknown wrapped blob version {blob[0]}")
    nonce = blob[1 : 1 + NONCE_BYTES]
    try:
        return aead.decrypt(nonce, blob[1 + NONCE_BYTES :], blob[:1] + aad)
    except InvalidTag as exc:
        raise UnwrapError(
            "wrapped blob failed authentication (wrong key or object, or tampered with)"
        ) from exc

"""The row MAC of a stored object: each ``managed_objects`` row authenticated whole.

The wrapping (:mod:`kcm.core.keys`, version 2) binds an object's key material to the
columns that decide who may read it; the rest of its row (its state, dates, usage mask,
attribute blob) is authenticated here. ``row_mac`` (migration 0017) holds::

    version (1 byte, 1) || HMAC-SHA-256(row key, encoding of the row)

The row key is derived from the audit key (:func:`row_key`: HKDF-SHA-256, info
:data:`ROW_KEY_LABEL`), itself derived from L1 by whichever L1 holds it (a key file, or
a PKCS#11 token that never exports its key): never stored, the same at every core, and
it changes with nothing (an L1 is never replaced; a tenant key rotation leaves it alone,
so nothing has to be MACed again then).

The encoding (:func:`encode`) is a label naming its version, then each of
:data:`SEALED`, in that order: ``0x00`` if NULL; else ``0x01`` then the value, an integer
as 8 bytes signed big-endian, a text (UTF-8) or bytes as a 4-byte length and the bytes.
A value of another type than its column's (a float, a text in an integer column,
as SQLite keeps what is written; beyond 64 bits) has no encoding: such a row is refused.
What is left out, :data:`UNSEALED`, decides nothing about what an object may be used for
or who may read it: ``created_seq`` (the order objects were made), ``revision`` (the
optimistic concurrency counter), ``rotate_due`` (when the sweeper next looks at a key:
the rotation decision reads the sealed dates and attributes) and ``row_mac`` itself.

One :class:`RowSeal` per process (the keyring's, :meth:`kcm.core.keyring.Keyring.load`),
given to the store, which puts it in each transaction's ``info`` (:data:`ROW_SEAL_INFO`):
every write of a row (:mod:`kcm.core.store.repository`, and the ORM's flushes through
:func:`seal_flushes`) checks the row as it was read, then writes the new MAC, in the same
transaction; a row read to be used is checked by the keyring (:meth:`RowSeal.check`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["ROW_KEY_LABEL", "ROW_MAC_VERSION", "ROW_SEAL_INFO", "SEALED", "UNSEALED",
           "RowSeal", "encode", "row_key"]

#: Where a transaction's ``info`` holds the store's :class:`RowSeal` (absent: rows are
#: written without a MAC, as by a store no L1 was given to).
ROW_SEAL_INFO = "kcm.store.row_seal"
#: The HKDF info of the row key: no other key is derived from the audit key with it.
ROW_KEY_LABEL = b"kcm row mac key v1"
#: The first byte of every ``row_mac``.
ROW_MAC_VERSION = 1
_LABEL = b"kcm-row-v1\x00"
_VERSION_BYTE = bytes([ROW_MAC_VERSION])

#: The columns the MAC covers, in the order encoded, with how each is encoded.
_FIELDS: tuple[tuple[str, str], ...] = (
    ("uid", "t"), ("tenant", "t"), ("object_type", "i"), ("level", "i"), ("service", "t"),
    ("key_version", "i"), ("state", "i"), ("cryptographic_algorithm", "i"),
    ("cryptographic_length", "i"), ("cryptographic_usage_mask", "i"),
    ("initial_date", "i"), ("activation_date", "i"), ("deactivation_date", "i"),
    ("destroy_date", "i"), ("compromise_date", "i"), ("compromise_occurrence_date", "i"),
    ("last_change_date", "i"), ("process_start_date", "i"), ("protect_stop_date", "i"),
    ("material", "b"), ("material_format", "i"), ("wrapped_by", "t"), ("attributes", "b"),
)
SEALED: tuple[str, ...] = tuple(name for name, _ in _FIELDS)
UNSEALED: frozenset[str] = frozenset({"created_seq", "revision", "rotate_due", "row_mac"})
_KINDS = tuple(kind for _, kind in _FIELDS)
_sealed_of = attrgetter(*SEALED)
_ABSENT = b"\x00"
_INT = struct.Struct(">Bq")
_LENGTH = struct.Struct(">BI")


def encode(values: tuple[Any, ...]) -> bytes:
    """The encoding of a row whose :data:`SEALED` columns are ``values`` (in that order)."""
    parts = [_LABEL]
    append = parts.append
    for kind, value in zip(_KINDS, values, strict=True):
        if value is None:
            append(_ABSENT)
        elif kind == "i":
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"an integer column holds a {type(value).__name__}")
            append(_INT.pack(1, value))  # (struct.error beyond 64 bits)
        else:
            if kind == "t":
                if not isinstance(value, str):
                    raise TypeError(f"a text column holds a {type(value).__name__}")
                data = value.encode("utf-8")
            elif isinstance(value, bytes | bytearray | memoryview):
                data = bytes(value)
            else:
                raise TypeError(f"a binary column holds a {type(value).__name__}")
            append(_LENGTH.pack(1, len(data)))
            append(data)
    return b"".join(parts)


@functools.lru_cache(maxsize=8)
def row_key(audit_key: bytes) -> bytes:
    """The 32-byte key of the row MACs of the database whose audit key is ``audit_key``."""
    if len(audit_key) != 32:
        raise ValueError("the audit key must be 32 bytes")
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=ROW_KEY_LABEL).derive(audit_key)


class RowRefused(Exception):
    """A row that does not match its MAC (when no ``refuse`` was given to the seal)."""


def _refused(row: Any, why: str) -> Exception:
    return RowRefused(f"object {row.uid!r} of tenant {row.tenant!r}: {why}")


class RowSeal:
    """MACs rows under ``key`` (:func:`row_key`) and checks them.

    ``accept_unsealed``: whether a row without a MAC (written by an earlier release, or
    whose MAC was nulled in the database) is taken as it is (``[core]
    accept_rows_without_mac``). ``refuse(row, why)``: the error to raise for a row
    refused (the keyring's: logged and counted as a wrapping mismatch)."""

    __slots__ = ("_keyed", "accept_unsealed", "refuse")

    def __init__(self, key: bytes, *, accept_unsealed: bool = True,
                 refuse: Callable[[Any, str], Exception] = _refused) -> None:
        # (keyed once: each MAC copies it, which saves the key's set-up)
        self._keyed = hmac.new(key, None, hashlib.sha256)
        self.accept_unsealed = accept_unsealed
        self.refuse = refuse

    def mac_of(self, values: tuple[Any, ...]) -> bytes:
        """The ``row_mac`` of a row whose sealed columns are ``values``."""
        mac = self._keyed.copy()
        mac.update(encode(values))
        return _VERSION_BYTE + mac.digest()

    def mac(self, row: Any) -> bytes:
        """The ``row_mac`` of ``row`` (anything with the columns as attributes)."""
        return self.mac_of(_sealed_of(row))

    def mac_of_mapping(self, values: Mapping[str, Any]) -> bytes:
        """The ``row_mac`` of a row given as a mapping of its columns."""
        return self.mac_of(tuple(values.get(name) for name in SEALED))

    def why_refused(self, row: Any, values: tuple[Any, ...] | None = None) -> str | None:
        """Why ``row`` is refused (None: it is not): its MAC does not match its columns
        (``values``: its sealed columns, if not its attributes), or it has none and those
        are refused."""
        stored = getattr(row, "row_mac", None)  # (a row of a test's making may have none)
        if stored is None:
            return self.why_values_refused(None, ())
        return self.why_values_refused(stored, _sealed_of(row) if values is None else values)

    def why_values_refused(self, stored: bytes | None, values: tuple[Any, ...]) -> str | None:
        """:meth:`why_refused` of a row whose ``row_mac`` is ``stored`` and sealed columns
        ``values``."""
        if stored is None:
            return None if self.accept_unsealed else \
                "it has no row MAC, and accept_rows_without_mac is false"
        try:
            expected = self.mac_of(values)
        except (TypeError, ValueError, struct.error, UnicodeError) as e:
            # (a value of another type than its column's, as SQLite keeps one written so:
            # 1000.5 in a date, "1_2" in a usage mask; encoded as another value's would be)
            return f"its columns do not encode ({e})"
        if hmac.compare_digest(bytes(stored), expected):
            return None
        return "its row MAC does not match"

    def check(self, row: Any) -> None:
        """Raise ``refuse(row, why)`` if ``row`` is refused (:meth:`why_refused`)."""
        why = self.why_refused(row)
        if why is not None:
            raise self.refuse(row, why)


def seal_of(info: Mapping[str, Any]) -> RowSeal | None:
    """The seal of a transaction (its ``info``), if its store has one."""
    return info.get(ROW_SEAL_INFO)

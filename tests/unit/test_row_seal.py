"""The row MAC of a managed object (kcm.core.store.row_seal): its encoding is
unambiguous and covers every column but the few that decide nothing; its key is derived
from the audit key under a label of its own; a row changed anywhere it covers is refused,
one without a MAC only when those are refused."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from kcm.core import keys
from kcm.core.store.repository import ObjectColumns
from kcm.core.store.row_seal import (
    ROW_MAC_VERSION,
    SEALED,
    UNSEALED,
    RowRefused,
    RowSeal,
    encode,
    row_key,
)
from kcm.core.store.schema import ManagedObject

AUDIT_KEY = bytes(range(32))


def _row(**changes: object) -> ObjectColumns:
    values = dict.fromkeys(ObjectColumns._fields)
    values.update(uid="u-1", tenant="demo", object_type=2, state=2, created_seq=5,
                  revision=3, cryptographic_algorithm=3, cryptographic_length=256,
                  cryptographic_usage_mask=12, initial_date=1_765_000_000,
                  activation_date=1_765_000_000, last_change_date=1_765_000_001,
                  material=b"\x02" + bytes(60), material_format=1, wrapped_by="l2-1",
                  attributes=b"\x42\x00\x01" + bytes(40))
    values.update(changes)
    return ObjectColumns(**values)


def _sealed(seal: RowSeal, **changes: object) -> ObjectColumns:
    row = _row(**changes)
    return row._replace(row_mac=seal.mac(row))


def test_every_column_is_sealed_or_named_as_not() -> None:
    columns = [column.key for column in ManagedObject.__table__.columns]
    assert set(SEALED) | UNSEALED == set(columns)
    assert not set(SEALED) & UNSEALED
    assert len(SEALED) == len(set(SEALED))


def test_the_row_key_is_derived_from_the_audit_key_with_its_own_label() -> None:
    key = row_key(AUDIT_KEY)
    assert len(key) == 32 and key == row_key(AUDIT_KEY)
    assert key not in (AUDIT_KEY, keys.derive_audit_key(AUDIT_KEY))
    assert key != row_key(bytes(32))
    with pytest.raises(ValueError):
        row_key(b"short")


def test_the_mac_is_a_version_byte_and_an_hmac_sha256_of_the_encoding() -> None:
    seal = RowSeal(row_key(AUDIT_KEY))
    row = _row()
    values = tuple(getattr(row, name) for name in SEALED)
    expected = hmac.digest(row_key(AUDIT_KEY), encode(values), hashlib.sha256)
    assert seal.mac(row) == bytes([ROW_MAC_VERSION]) + expected
    assert seal.mac_of_mapping(row._asdict()) == seal.mac(row)


def test_the_encoding_tells_null_empty_and_neighbours_apart() -> None:
    base = tuple(getattr(_row(), name) for name in SEALED)
    service = SEALED.index("service")
    uid, tenant = SEALED.index("uid"), SEALED.index("tenant")
    level = SEALED.index("level")
    encodings = {
        encode(base),
        encode(base[:service] + ("",) + base[service + 1:]),  # empty, not NULL
        encode(base[:level] + (0,) + base[level + 1:]),  # 0, not NULL
        # a byte moved from one text to its neighbour
        encode(base[:uid] + ("u-1d", "emo") + base[tenant + 1:]),
    }
    assert len(encodings) == 4


@pytest.mark.parametrize(("column", "value"), [
    ("deactivation_date", 1_765_000_000.5), ("activation_date", 1_765_000_000.0),
    ("cryptographic_usage_mask", "1_2"), ("cryptographic_usage_mask", "12"),
    ("state", True), ("level", 2**64), ("uid", b"u-1"), ("material", 61),
    ("attributes", "x")])
def test_a_value_of_another_type_than_its_columns_is_refused(column: str,
                                                             value: object) -> None:
    """SQLite keeps what a database writer puts in a column, whatever its type: a value
    that would encode as the stored one does (a date with a fraction, a usage mask as a
    text Python reads as the number) is refused, not taken for it."""
    seal = RowSeal(row_key(AUDIT_KEY))
    row = _sealed(seal, state=1, level=None, activation_date=1_765_000_000,
                  deactivation_date=1_765_000_000, cryptographic_usage_mask=12)
    assert seal.why_refused(row) is None
    why = seal.why_refused(row._replace(**{column: value}))
    assert why is not None and why.startswith("its columns do not encode"), why
    with pytest.raises(RowRefused, match="do not encode"):
        seal.check(row._replace(**{column: value}))


@pytest.mark.parametrize("column", SEALED)
def test_a_change_of_any_sealed_column_is_refused(column: str) -> None:
    seal = RowSeal(row_key(AUDIT_KEY))
    row = _sealed(seal)
    assert seal.why_refused(row) is None
    was = getattr(row, column)
    other: object
    if isinstance(was, str):
        other = was + "x"
    elif isinstance(was, bytes):
        other = was[:-1] + bytes([was[-1] ^ 1])
    elif was is None:
        other = {"service": "x"}.get(column, 4)
    else:
        other = was + 1
    tampered = row._replace(**{column: other})
    assert "row MAC does not match" in (seal.why_refused(tampered) or "")
    assert seal.why_refused(row._replace(**{column: None})) is not None or was is None
    with pytest.raises(RowRefused, match="u-1"):
        seal.check(tampered)


def test_what_decides_nothing_may_change() -> None:
    seal = RowSeal(row_key(AUDIT_KEY))
    row = _sealed(seal)
    assert seal.why_refused(row._replace(revision=9, created_seq=77, rotate_due=0)) is None


def test_the_typical_changes_of_a_database_writer_are_refused() -> None:
    seal = RowSeal(row_key(AUDIT_KEY))
    deactivated = _sealed(seal, state=3, deactivation_date=1_765_000_100)
    for tampered in (deactivated._replace(state=2),
                     deactivated._replace(state=2, deactivation_date=None),
                     deactivated._replace(cryptographic_usage_mask=12 | 1),
                     deactivated._replace(deactivation_date=1_999_999_999),
                     deactivated._replace(row_mac=b"\x02" + deactivated.row_mac[1:]),
                     deactivated._replace(row_mac=deactivated.row_mac[:-1])):
        assert seal.why_refused(tampered) is not None, tampered


def test_another_databases_key_refuses_the_row() -> None:
    row = _sealed(RowSeal(row_key(AUDIT_KEY)))
    assert RowSeal(row_key(os.urandom(32))).why_refused(row) is not None


def test_a_row_without_a_mac_is_taken_only_while_those_are_accepted() -> None:
    refused: list[tuple[str, str]] = []

    def refuse(row: object, why: str) -> Exception:
        refused.append((row.uid, why))  # type: ignore[attr-defined]
        return ValueError(why)

    seal = RowSeal(row_key(AUDIT_KEY), refuse=refuse)
    unsealed = _row()
    assert unsealed.row_mac is None
    seal.check(unsealed)
    seal.accept_unsealed = False
    with pytest.raises(ValueError, match="accept_rows_without_mac is false"):
        seal.check(unsealed)
    assert refused == [("u-1", "it has no row MAC, and accept_rows_without_mac is false")]
    seal.check(_sealed(seal))  # (a row with its MAC is taken either way)

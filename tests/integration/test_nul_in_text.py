"""Text with a NUL character (KMIP's Text Strings are UTF-8, NUL included) in a vendor
attribute's value is stored and found on PostgreSQL, whose text columns hold no NUL (its
Locate key is hashed): its Create was General Failure, and migration 0008 failed on one
stored before it, stopping every upgrade. A Name or Object Group, whose text the store
indexes as it is, with a NUL is refused, Invalid Field, on both backends (General Failure
on PostgreSQL, stored on SQLite). In-process core on a real PostgreSQL database, and on
SQLite."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.core.store.engine import Store
from kcm.kmip.attributes import VENDOR_TAG, Attribute, Name
from kcm.kmip.enums import NameType, ObjectType, Operation, ResultReason, ResultStatus
from kcm.kmip.payloads import CreateRequest, LocateRequest
from kcm.kmip.payloads.attribute_ops import GetAttributesRequest
from kcm.kmip.payloads.lifecycle import ActivateRequest, DestroyRequest, GetRequest
from kcm.kmip.tags import Tag
from kcm.testing.postgres import fresh_database
from kcm.testing.requests import aes256
from kcm.ttlv import Item, ItemType
from tests.core_support import CoreHarness, demo_app_harness
from tests.integration.test_core_objects import V21, one
from tests.pg import postgres_url  # noqa: F401  (fixture)

TEXT = "a\x00b"
_NUMBERS = itertools.count()


def _attributes() -> list[Attribute]:
    return [Attribute(VENDOR_TAG, Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, TEXT),
                      None, "x", "nul")]


@pytest.mark.parametrize("attribute", [
    Attribute.of(Tag.NAME, Name(value=TEXT, type=NameType.UNINTERPRETED_TEXT_STRING)),
    Attribute.of(Tag.OBJECT_GROUP, TEXT)], ids=["Name", "Object Group"])
def test_a_name_or_group_with_nul_is_invalid_field(harness: CoreHarness,
                                                    attribute: Attribute) -> None:
    refused = one(harness, Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256([attribute])), version=V21)
    assert (refused.result_status, refused.result_reason) == (
        ResultStatus.OPERATION_FAILED, ResultReason.INVALID_FIELD), refused.result_message
    assert refused.result_message.endswith("may not contain a NUL character")


@pytest.fixture(params=["sqlite", "postgresql"])
def harness(request, tmp_path: Path) -> Iterator[CoreHarness]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kcm.db'}"
    else:
        url = fresh_database(request.getfixturevalue("postgres_url"),
                             f"kcm_nul_{os.getpid()}_{next(_NUMBERS)}")
    store = Store(url, migrate=True)
    store.startService()
    with demo_app_harness(store) as harness:
        yield harness


def test_text_with_nul_is_stored_and_found(harness: CoreHarness) -> None:
    created = one(harness, Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256(_attributes())), version=V21)
    assert created.result_status == ResultStatus.SUCCESS, created.result_message
    uid = created.response_payload.unique_identifier
    for criterion in _attributes():
        found = one(harness, Operation.LOCATE, LocateRequest(attributes=[criterion]),
                    version=V21)
        assert found.result_status == ResultStatus.SUCCESS, found.result_message
        assert found.response_payload.unique_identifiers == [uid], criterion


@pytest.mark.parametrize("case", ["locate-uid", "locate-name", "locate-group"])
def test_locate_by_a_text_with_nul_finds_nothing(harness: CoreHarness, case: str) -> None:
    """(On PostgreSQL it was General Failure, an internal error logged.)"""
    criterion = {
        "locate-uid": Attribute.of(Tag.UNIQUE_IDENTIFIER, TEXT),
        "locate-name": Attribute.of(Tag.NAME, Name(
            value=TEXT, type=NameType.UNINTERPRETED_TEXT_STRING)),
        "locate-group": Attribute.of(Tag.OBJECT_GROUP, TEXT)}[case]
    found = one(harness, Operation.LOCATE, LocateRequest(attributes=[criterion]), version=V21)
    assert found.result_status == ResultStatus.SUCCESS, found.result_message
    assert not found.response_payload.unique_identifiers


@pytest.mark.parametrize("operation", [Operation.GET, Operation.GET_ATTRIBUTES,
                                       Operation.ACTIVATE, Operation.DESTROY])
def test_a_unique_identifier_with_nul_is_object_not_found(harness: CoreHarness,
                                                        operation: Operation) -> None:
    payload = {Operation.GET: GetRequest, Operation.GET_ATTRIBUTES: GetAttributesRequest,
               Operation.ACTIVATE: ActivateRequest,
               Operation.DESTROY: DestroyRequest}[operation](unique_identifier=TEXT)
    refused = one(harness, operation, payload, version=V21)
    assert (refused.result_status, refused.result_reason) == (
        ResultStatus.OPERATION_FAILED, ResultReason.OBJECT_NOT_FOUND), refused.result_message

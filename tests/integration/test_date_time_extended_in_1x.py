"""Date-Time Extended (item type 0x0B) is KMIP 2.x's: a 1.x request's attribute of that
type is Invalid Field, and a value a 2.x client stored so is answered to a 1.x client as
the Date-Time of its second. A 1.4 Add Attribute of one was stored, and any 1.x Get
Attributes of the object then carried a type no 1.x client reads (PyKMIP 0.11: ValueError:
11 is not a valid Types)."""

from __future__ import annotations

import time

from kcm.kmip.attributes import VENDOR_TAG, Attribute
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.payloads import AddAttributeRequest, GetAttributesRequest
from kcm.testing.requests import item, request, response
from kcm.ttlv import Item, ItemType
from tests.core_support import CoreHarness, core  # noqa: F401  (fixture)
from tests.integration.test_core_objects import V14, V21, one, register

WHEN_US = 1_700_000_000_123_456


def _when(**naming) -> Attribute:
    return Attribute(VENDOR_TAG, Item(VENDOR_TAG, ItemType.DATE_TIME_EXTENDED, WHEN_US),
                     **naming)


def test_a_1x_request_of_one_is_invalid_field(core: CoreHarness) -> None:  # noqa: F811
    uid = register(core, version=V14)
    # (kcm's encoder writes a 1.x Date-Time: the value's type byte made 0x0B by hand)
    wire = request(item(Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=_when(vendor_identification="x", name="when"))),
        version=V14)
    value_head = bytes.fromhex("42000B0900000008")  # Attribute Value, Date-Time, 8 bytes
    assert wire.count(value_head) == 1
    wire = wire.replace(value_head, bytes.fromhex("42000B0B00000008"))
    [added] = response(core.handler.respond(wire, core.caller(), int(time.time()))
                       ).batch_items
    assert (added.result_status, added.result_reason) == (
        ResultStatus.OPERATION_FAILED, ResultReason.INVALID_FIELD), added.result_message
    assert added.result_message == "Date-Time Extended is not an item type of KMIP 1.x"


def test_a_2x_value_is_answered_to_1x_as_its_second(core: CoreHarness) -> None:  # noqa: F811
    uid = register(core, version=V14)
    added = one(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=_when(vendor_identification="x", name="when")),
        version=V21)
    assert added.result_status == ResultStatus.SUCCESS, added.result_message
    wire = core.handler.respond(request(item(Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=uid)), version=V14), core.caller(), int(time.time()))
    [when] = [a for a in response(wire).batch_items[0].response_payload.attributes
              if a.tag == VENDOR_TAG]
    assert (when.value.type, when.value.value) == (ItemType.DATE_TIME, WHEN_US // 1_000_000)
    assert b"\x42\x00\x0b\x0b" not in wire  # no Attribute Value of type 0x0B
    # ... and a 2.1 client still reads its microseconds
    [got] = [a for a in one(core, Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=uid), version=V21).response_payload.attributes
        if a.tag == VENDOR_TAG]
    assert (got.value.type, got.value.value) == (ItemType.DATE_TIME_EXTENDED, WHEN_US)

"""An attribute without its Attribute Value (a required field) in a Create, Register or
Create Key Pair is refused, Invalid Message: a custom (1.x) or
vendor (2.x) attribute without one was stored as far as the store's encoding, which
failed, General Failure and a critical traceback in the core's log."""

from __future__ import annotations

import pytest

from kcm.kmip.attributes import VENDOR_TAG, Attribute
from kcm.kmip.enums import ObjectType, Operation, ResultReason, ResultStatus
from kcm.kmip.payloads import CreateRequest, RegisterRequest
from kcm.testing.requests import aes256
from tests.core_support import CoreHarness, core  # noqa: F401  (fixture)
from tests.integration.test_core_objects import V14, V21, aes_key, one

#: A custom ("x-note" in 1.x) / vendor (2.x) attribute without Attribute Value.
VALUELESS = Attribute(VENDOR_TAG, None, None, "x", "note")


@pytest.mark.parametrize("version", [V14, V21], ids=["1.4", "2.1"])
@pytest.mark.parametrize("operation", ["create", "register"])
def test_an_attribute_without_a_value_is_invalid_message(core: CoreHarness,  # noqa: F811
                                                         version, operation: str) -> None:
    if operation == "create":
        op, payload = Operation.CREATE, CreateRequest(
            object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256([VALUELESS]))
    else:
        op, payload = Operation.REGISTER, RegisterRequest(
            object_type=ObjectType.SYMMETRIC_KEY, attributes=[VALUELESS], object=aes_key())
    item = one(core, op, payload, version=version)
    assert (item.result_status, item.result_reason) == (
        ResultStatus.OPERATION_FAILED, ResultReason.INVALID_MESSAGE), item.result_message
    assert item.result_message == "x-note has no Attribute Value"

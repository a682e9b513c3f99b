"""The attribute byte bounds end to end: a real `twistd kcm-core` on SQLite, tenant demo's
application growing one key's x- attributes one request at a time (each request well under
the message limit), as the reviewer's attack did with 40 of 900 KB, scaled down to reach the
per-object bound. The add that would pass it is refused, the key stays at most that size
and readable whole, and tenant other's application creates keys as before."""

from __future__ import annotations

import sqlite3

from kcm.core.managed import MAX_ATTRIBUTE_BYTES, MAX_OBJECT_ATTRIBUTE_BYTES
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.payloads import AddAttributeRequest, GetAttributesRequest
from kcm.testing.requests import create_managed, item
from kcm.ttlv import Item, ItemType
from tests.e2e_support import CoreProcess, send_v21, succeeded_v21


def blob(name: str, size: int) -> Attribute:
    return Attribute.vendor("x", name, Item(0, ItemType.BYTE_STRING, b"\x5a" * size))


def stored_bytes(core: CoreProcess, uid: str) -> int:
    database = core.root / "kcm.db"
    with sqlite3.connect(database) as connection:
        (size,) = connection.execute(
            "select length(attributes) from managed_objects where uid = ?", (uid,)).fetchone()
    return int(size)


def test_one_tenant_cannot_grow_a_key_past_the_bound(core_process: CoreProcess) -> None:
    large = MAX_ATTRIBUTE_BYTES - 64
    with core_process.client("app") as app, core_process.client("other_app") as other:
        (created,) = succeeded_v21(app, create_managed())
        uid = created.unique_identifier
        assert send_v21(app, item(Operation.ADD_ATTRIBUTE, AddAttributeRequest(
            unique_identifier=uid, attribute=blob("huge", MAX_ATTRIBUTE_BYTES))))[0] \
            .result_reason == ResultReason.SERVER_LIMIT_EXCEEDED
        answers = []
        for n in range(MAX_OBJECT_ATTRIBUTE_BYTES // large + 2):
            (answer,) = send_v21(app, item(Operation.ADD_ATTRIBUTE, AddAttributeRequest(
                unique_identifier=uid, attribute=blob(f"b{n}", large))))
            answers.append(answer)
            if answer.result_status != ResultStatus.SUCCESS:
                break
        refused = answers[-1]
        assert (refused.result_status, refused.result_reason, refused.result_message) == (
            ResultStatus.OPERATION_FAILED, ResultReason.SERVER_LIMIT_EXCEEDED,
            f"an object keeps at most {MAX_OBJECT_ATTRIBUTE_BYTES} bytes of attributes")
        assert len(answers) >= MAX_OBJECT_ATTRIBUTE_BYTES // large - 1
        assert stored_bytes(core_process, uid) <= MAX_OBJECT_ATTRIBUTE_BYTES
        # Still readable whole, in one response under the message limit.
        (everything,) = succeeded_v21(app, item(Operation.GET_ATTRIBUTES,
                                                GetAttributesRequest(unique_identifier=uid)))
        assert len(everything.attributes) >= len(answers) - 1
        # The other tenant is served as before.
        made = succeeded_v21(other, *[create_managed() for _ in range(5)])
        assert len({m.unique_identifier for m in made}) == 5

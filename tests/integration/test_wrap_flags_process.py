"""A real kcm-core binds each key's wrapping to its effective Extractable and Sensitive
(wrap format version 2, kcm.core.keyring.Flags): a change of either by the application
(Modify, Set Attribute) re-wraps the key, which stays usable; a flag changed in the
database's attribute blob (sqlite3 on its file) is refused, from the caches too."""

from __future__ import annotations

import os
import re
from pathlib import Path

from kcm.core.attribute_blob import decode_attributes, encode_attributes
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import ObjectType, Operation, ResultReason, ResultStatus
from kcm.kmip.objects import KeyBlock, KeyValue, SymmetricKey
from kcm.kmip.payloads import (
    CreateRequest,
    ModifyAttributeRequest,
    RegisterRequest,
    SetAttributeRequest,
)
from kcm.kmip.tags import Tag
from kcm.testing.processes import CoreProcess
from kcm.testing.requests import activate, aes256, encrypt, get, item
from tests.e2e_support import decrypt_sealed, send_v21, succeeded_v21
from tests.integration.test_wrap_binding_process import _db, _metric, _refused, _with_metrics

SENSITIVE, UNEXTRACTABLE = Attribute.of(Tag.SENSITIVE, True), Attribute.of(Tag.EXTRACTABLE, False)


def _create(client, *flags: Attribute) -> str:  # noqa: ANN001
    uid = succeeded_v21(client, item(Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256(flags))))[0].unique_identifier
    succeeded_v21(client, activate(uid))
    return uid


def _register(client, key: bytes, *flags: Attribute) -> str:  # noqa: ANN001
    block = KeyBlock(key_format_type=1, key_value=KeyValue(key_material=key),
                     cryptographic_algorithm=3, cryptographic_length=len(key) * 8)
    uid = succeeded_v21(client, item(Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=list(flags),
        object=SymmetricKey(key_block=block))))[0].unique_identifier
    succeeded_v21(client, activate(uid))
    return uid


def _reason(client, request) -> int | None:  # noqa: ANN001
    return send_v21(client, request)[0].result_reason


def test_a_change_of_the_flags_keeps_the_key_usable(tmp_path: Path) -> None:
    core = _with_metrics(tmp_path)
    core.start()
    try:
        app = core.client("app")
        # Register with Extractable False: used, never returned.
        key = os.urandom(32)
        locked = _register(app, key, UNEXTRACTABLE)
        sealed = succeeded_v21(app, encrypt(locked, b"locked"))[0]
        assert _reason(app, get(locked)) == ResultReason.NOT_EXTRACTABLE
        succeeded_v21(app, decrypt_sealed(locked, sealed))
        # Sensitive changed by Modify Attribute, then by Set Attribute (used in between:
        # unwrapped and cached under the flags it had).
        hidden = _create(app, SENSITIVE)
        sealed = succeeded_v21(app, encrypt(hidden, b"hidden"))[0]
        assert _reason(app, get(hidden)) == ResultReason.SENSITIVE
        admin = core.client("admin")  # (an application may not make a key less protected)
        succeeded_v21(admin, item(Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
            unique_identifier=hidden, attribute=Attribute.of(Tag.SENSITIVE, False))))
        material = succeeded_v21(app, get(hidden))[0].object.key_block.key_value.key_material
        succeeded_v21(app, encrypt(hidden), decrypt_sealed(hidden, sealed))
        succeeded_v21(app, item(Operation.SET_ATTRIBUTE, SetAttributeRequest(
            unique_identifier=hidden, attribute=Attribute.of(Tag.SENSITIVE, True))))
        assert _reason(app, get(hidden)) == ResultReason.SENSITIVE
        succeeded_v21(app, encrypt(hidden), decrypt_sealed(hidden, sealed))
        # Extractable False -> True by Modify (KMIP lets a client modify it, KCM its tenant
        # administrator only; Never Extractable then says so): the registered key is
        # returned as it was given.
        assert _reason(app, item(Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
            unique_identifier=locked, attribute=Attribute.of(Tag.EXTRACTABLE, True)))) \
            == ResultReason.PERMISSION_DENIED
        succeeded_v21(admin, item(Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
            unique_identifier=locked, attribute=Attribute.of(Tag.EXTRACTABLE, True))))
        assert succeeded_v21(app, get(locked))[0].object.key_block.key_value.key_material \
            == key
        succeeded_v21(app, encrypt(locked))
        assert len(material) == 32
        assert _metric(core, "kcm_core_wrapping_mismatches_total") == 0
    finally:
        core.stop()


def _edit_flag(core: CoreProcess, uid: str, tag: int, value: bool) -> None:
    """Set attribute ``tag`` of ``uid`` to ``value`` in its stored attribute blob (and raise
    its revision, as kcm-core would), as a database writer can."""
    with _db(core) as db:
        (blob,) = db.execute("SELECT attributes FROM managed_objects WHERE uid = ?",
                             (uid,)).fetchone()
        attributes = decode_attributes(blob)
        assert [a.typed for a in attributes if a.tag == tag] == [not value]
        edited = [Attribute.of(tag, value) if a.tag == tag else a for a in attributes]
        db.execute("UPDATE managed_objects SET attributes = ?, revision = revision + 1 "
                   "WHERE uid = ?", (encode_attributes(edited), uid))


def test_a_flag_changed_in_the_database_is_refused_even_after_use(tmp_path: Path) -> None:
    core = _with_metrics(tmp_path)
    core.start()
    try:
        app = core.client("app")
        locked, hidden = _create(app, UNEXTRACTABLE), _create(app, SENSITIVE)
        for uid in (locked, hidden):  # used: unwrapped and cached
            succeeded_v21(app, encrypt(uid))
        assert _reason(app, get(locked)) == ResultReason.NOT_EXTRACTABLE
        assert _reason(app, get(hidden)) == ResultReason.SENSITIVE
        _edit_flag(core, locked, Tag.EXTRACTABLE, True)
        _edit_flag(core, hidden, Tag.SENSITIVE, False)
        for uid in (locked, hidden):
            answers = send_v21(app, get(uid), encrypt(uid))
            assert all(a.result_status == ResultStatus.OPERATION_FAILED for a in answers)
            for answer in answers:
                _refused(answer)
        log = core.log.read_text()
        for uid in (locked, hidden):
            assert re.search(rf"object {uid} of tenant demo refused: its row does not match "
                             r"its wrapping \(its row MAC does not match\)", log), log[-3000:]
        assert _metric(core, "kcm_core_wrapping_mismatches_total") == 4
        # Put back as they were: served again.
        _edit_flag(core, locked, Tag.EXTRACTABLE, False)
        _edit_flag(core, hidden, Tag.SENSITIVE, True)
        for uid in (locked, hidden):
            succeeded_v21(app, encrypt(uid))
    finally:
        core.stop()

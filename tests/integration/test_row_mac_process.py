"""A real kcm-core whose database is changed behind its back (sqlite3 on its file), in the
columns the wrapping does not bind: each row's MAC (kcm.core.store.row_seal, migration
0017) refuses a key made Active again, a usage mask widened, a date moved; a row whose MAC
was nulled is refused with ``accept_rows_without_mac = false``; a database of the previous
release (no MACs) keeps serving and ends with every row MACed by the state sweeper."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from kcm.core.attribute_blob import decode_attributes, encode_attributes
from kcm.core.managed import date_attribute
from kcm.core.store.migrate import current_revision
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import Operation, ResultStatus, RevocationReasonCode, State
from kcm.kmip.payloads.lifecycle import RevocationReason, RevokeRequest
from kcm.kmip.tags import Tag
from kcm.testing.processes import CoreProcess
from kcm.testing.requests import (
    activate,
    create_l4,
    create_managed,
    encrypt,
    get,
    get_attributes,
    item,
)
from tests.e2e_support import decrypt_sealed, deploy, send_v21, succeeded_v21, wait_until
from tests.migration_support import downgrade
from tests.tamper_support import core_db as _db
from tests.tamper_support import core_with_metrics as _with_metrics
from tests.tamper_support import metric as _metric
from tests.tamper_support import refused_integrity as _refused
from tests.tamper_support import set_core as _set

STATE_ACTIVE, STATE_DEACTIVATED, STATE_COMPROMISED = 2, 3, 4
USAGE_ENCRYPT = 0x4


def _active_key(client) -> str:  # noqa: ANN001
    uid = succeeded_v21(client, create_managed())[0].unique_identifier
    succeeded_v21(client, activate(uid))
    return uid


def _revoke(uid: str, code: RevocationReasonCode):  # noqa: ANN202
    return item(Operation.REVOKE, RevokeRequest(unique_identifier=uid,
                                                revocation_reason=RevocationReason(code=code)))


def _change(core: CoreProcess, uid: str, assignments: str) -> None:
    """Change ``uid``'s row as a database writer can, its revision raised as kcm-core
    would (else the object cache serves the row as it was)."""
    with _db(core) as db:
        db.execute(f"UPDATE managed_objects SET {assignments}, revision = revision + 1 "
                   "WHERE uid = ?", (uid,))


def _without_mac(core: CoreProcess) -> int:
    with _db(core) as db:
        return db.execute("SELECT count(*) FROM managed_objects WHERE row_mac IS NULL"
                          ).fetchone()[0]


def test_a_key_made_usable_again_in_the_database_is_refused_and_counted(
        tmp_path: Path) -> None:
    core = _with_metrics(tmp_path)
    core.start()
    try:
        app = core.client("app")
        deactivated, compromised, narrow, dated, kept = (_active_key(app) for _ in range(5))
        succeeded_v21(app, _revoke(deactivated, RevocationReasonCode.CESSATION_OF_OPERATION),
                      _revoke(compromised, RevocationReasonCode.KEY_COMPROMISE))
        for uid in (deactivated, compromised, narrow, dated):
            send_v21(app, get(uid), encrypt(uid))  # (read, cached, unwrapped)
        with _db(core) as db:
            states = dict(db.execute("SELECT uid, state FROM managed_objects WHERE uid IN "
                                     "(?, ?)", (deactivated, compromised)).fetchall())
            (mask,) = db.execute("SELECT cryptographic_usage_mask FROM managed_objects "
                                 "WHERE uid = ?", (narrow,)).fetchone()
        assert states == {deactivated: STATE_DEACTIVATED, compromised: STATE_COMPROMISED}
        _change(core, deactivated, f"state = {STATE_ACTIVE}, deactivation_date = NULL")
        _change(core, compromised, f"state = {STATE_ACTIVE}")
        _change(core, narrow, f"cryptographic_usage_mask = {(mask or 0) | USAGE_ENCRYPT}")
        _change(core, dated, "activation_date = activation_date + 1")
        for uid in (deactivated, compromised, narrow, dated):
            for answer in send_v21(app, get(uid), encrypt(uid), get_attributes(uid)):
                _refused(answer)
        succeeded_v21(app, get(kept), encrypt(kept))
        wait_until(lambda: _metric(core, "kcm_core_wrapping_mismatches_total") >= 12,
                   "the refusals counted", timeout=5)
        log = core.log.read_text()
        for uid in (deactivated, compromised, narrow, dated):
            assert re.search(rf"object {uid} of tenant demo refused: its row does not match "
                             r"its wrapping \(its row MAC does not match", log), log[-3000:]
        # Put back as they were: served again (the MAC is the row's, not its revision's).
        _change(core, dated, "activation_date = activation_date - 1")
        succeeded_v21(app, get(dated), encrypt(dated))
    finally:
        core.stop()


def test_a_service_key_changed_in_the_database_is_not_used_nor_moved(
        tmp_path: Path) -> None:
    """The app's service key (L3), used (unwrapped, cached): given another usage mask in
    its row, an L4 is no longer made with it; put back, it is. Given a passed Deactivation
    Date in its attributes and row, the sweeper does not move it by that date (which would
    MAC whatever else was changed), and its sweeps do not fail."""
    core = _with_metrics(tmp_path)
    core.start()
    try:
        app = core.client("app")
        succeeded_v21(app, create_l4())
        with _db(core) as db:
            (l3, mask) = db.execute(
                "SELECT uid, cryptographic_usage_mask FROM managed_objects WHERE "
                "tenant = 'demo' AND level = 3 AND service = 'app'").fetchone()
        _change(core, l3, f"cryptographic_usage_mask = {(mask or 0) ^ 0x100}")
        [answer] = send_v21(app, create_l4())
        _refused(answer)
        _change(core, l3, f"cryptographic_usage_mask = {'NULL' if mask is None else mask}")
        succeeded_v21(app, create_l4())
        with _db(core) as db:
            (blob,) = db.execute("SELECT attributes FROM managed_objects WHERE uid = ?",
                                 (l3,)).fetchone()
        dated = encode_attributes([*decode_attributes(blob),
                                   date_attribute(Tag.DEACTIVATION_DATE, 1)])
        with _db(core) as db:
            db.execute("UPDATE managed_objects SET attributes = ?, deactivation_date = 1, "
                       "revision = revision + 1 WHERE uid = ?", (dated, l3))
        time.sleep(1.5)  # (sweeps)
        with _db(core) as db:
            (state,) = db.execute("SELECT state FROM managed_objects WHERE uid = ?",
                                  (l3,)).fetchone()
        assert state == STATE_ACTIVE  # (not moved, so not MACed as moved)
        log = core.log.read_text()
        assert len(re.findall(rf"object {l3} of tenant demo refused: its row does not match "
                              r"its wrapping \(its row MAC does not match\)", log)) == 1, \
            log[-3000:]  # (one line a minute; the sweeps' refusals counted)
        assert _metric(core, "kcm_core_wrapping_mismatches_total") >= 2
        assert "failed and was rolled back" not in log and "state sweep failed" not in log
    finally:
        core.stop()


def test_a_revoked_key_made_due_in_the_database_stays_refused_under_load(
        tmp_path: Path) -> None:
    """A revoked key made Active again in the database, with a ``rotate_due`` passed (a
    column the MAC leaves out): every sweep's managed rotation reads it by its columns and
    is refused, and the requests of the group commit it shares its session with read it
    too. Encrypts with it from four clients while the sweeps run (every 50 ms) are all
    refused: before, hundreds in a few seconds succeeded (the row the sweep left in the
    session was used unchecked, the key's material still unwrapped in memory)."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.state_sweep_interval = 0.05
    core.write_config()
    core.start()
    try:
        app = core.client("app")
        uid = _active_key(app)
        succeeded_v21(app, encrypt(uid))
        succeeded_v21(app, _revoke(uid, RevocationReasonCode.CESSATION_OF_OPERATION))
        with _db(core) as db:
            (blob,) = db.execute("SELECT attributes FROM managed_objects WHERE uid = ?",
                                 (uid,)).fetchone()
            active = encode_attributes([
                *(a for a in decode_attributes(blob)
                  if a.tag not in (Tag.STATE, Tag.DEACTIVATION_DATE)),
                Attribute.of(Tag.STATE, State.ACTIVE)])
            db.execute(f"UPDATE managed_objects SET state = {STATE_ACTIVE}, "
                       "deactivation_date = NULL, rotate_due = 0, attributes = ? "
                       "WHERE uid = ?", (active, uid))
        served: list[str] = []
        until = time.monotonic() + 5

        def encrypting() -> None:
            client = core.client("app")
            while time.monotonic() < until and not served:
                for answer in send_v21(client, encrypt(uid)):
                    if answer.result_status == ResultStatus.SUCCESS:
                        served.append(uid)
                    else:
                        _refused(answer)

        clients = [threading.Thread(target=encrypting) for _ in range(4)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        assert not served, "an Encrypt with the revoked key succeeded"
    finally:
        core.stop()


def test_a_row_without_a_mac_is_refused_only_when_those_are_refused(tmp_path: Path) -> None:
    core = _with_metrics(tmp_path)
    core.start()
    try:
        app = core.client("app")
        nulled, kept = _active_key(app), _active_key(app)
    finally:
        core.stop()
    assert _without_mac(core) == 0
    with _db(core) as db:
        db.execute("UPDATE managed_objects SET row_mac = NULL, state = 3 WHERE uid = ?",
                   (nulled,))
    _set(core, accept_rows_without_mac=False)
    core.start()
    try:
        app = core.client("app")
        for answer in send_v21(app, get(nulled), encrypt(nulled)):
            _refused(answer)
        succeeded_v21(app, get(kept), encrypt(kept))
        wait_until(lambda: _metric(core, "kcm_core_objects_without_row_mac") == 1,
                   "the row without a MAC counted")
        time.sleep(1.5)  # (sweeps: it is not MACed)
        assert _without_mac(core) == 1
        assert "accept_rows_without_mac is false" in core.log.read_text()
    finally:
        core.stop()


def test_a_database_of_the_previous_release_is_served_and_macd(tmp_path: Path) -> None:
    """The previous release's schema (0016) and rows (no MAC): kcm-core upgrades it,
    serves every object at once, and its state sweeper MACs every row; a change made
    afterwards is refused."""
    core = _with_metrics(tmp_path)
    core.start()
    try:
        app = core.client("app")
        uids = [_active_key(app) for _ in range(3)]
        sealed = succeeded_v21(app, encrypt(uids[0], b"before"))[0]
        succeeded_v21(app, create_l4())
    finally:
        core.stop()
    downgrade(core.database, "0016")  # (the column goes: rows as that release wrote them)
    assert current_revision(core.database) == "0016"
    with _db(core) as db:
        (total,) = db.execute("SELECT count(*) FROM managed_objects").fetchone()
    core.start()
    try:
        app = core.client("app")
        for uid in uids:
            succeeded_v21(app, get(uid), encrypt(uid))
        succeeded_v21(app, decrypt_sealed(uids[0], sealed), create_l4())
        wait_until(lambda: _without_mac(core) == 0, "every row MACed", timeout=30)
        wait_until(lambda: _metric(core, "kcm_core_objects_without_row_mac") == 0,
                   "the gauge at 0", timeout=30)
        with _db(core) as db:
            assert db.execute("SELECT count(*) FROM managed_objects").fetchone()[0] >= total
        for uid in uids:
            succeeded_v21(app, get(uid), encrypt(uid))
        _change(core, uids[1], f"state = {STATE_DEACTIVATED}")
        _refused(send_v21(app, get(uids[1]))[0])
        assert "failed and was rolled back" not in core.log.read_text()
    finally:
        core.stop()

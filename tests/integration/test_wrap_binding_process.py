"""A real kcm-core whose database is changed behind its back (sqlite3 on its file): a row
whose level or service was changed is not unwrapped, from the store or from a cache, and
is answered General Failure; a database of version 1 blobs (the previous release's) is
served, re-wrapped as version 2 by the state sweeper, and refused with
``accept_v1_wrapping = false`` (kcm.core.keyring, kcm.core.wrap_upgrade)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

from kcm.core import keys
from kcm.core.keyring import Binding, row_flags
from kcm.core.store.schema import LEVEL_SERVICE_KEY, WRAPPED_BY_L1
from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.testing.processes import CoreProcess, GatewayProcess
from kcm.testing.requests import activate, create_l4, create_managed, encrypt, get
from tests.e2e_support import decrypt_sealed, deploy, send_v21, succeeded_v21, wait_until
from tests.tamper_support import core_db as _db
from tests.tamper_support import core_with_metrics as _with_metrics
from tests.tamper_support import metric as _metric
from tests.tamper_support import refused_integrity as _refused
from tests.tamper_support import set_core as _set


def _active_key(client) -> str:  # noqa: ANN001
    uid = succeeded_v21(client, create_managed())[0].unique_identifier
    succeeded_v21(client, activate(uid))
    return uid


def test_a_row_changed_in_the_database_is_refused_even_after_use(tmp_path: Path) -> None:
    core = _with_metrics(tmp_path)
    core.kcm("core", "service", "add", "demo", "legacy")
    core.start()
    try:
        app, legacy = core.client("app"), core.client("legacy")
        # Another service's key, used (unwrapped, cached) before it is moved to the app's.
        theirs = _active_key(legacy)
        succeeded_v21(legacy, get(theirs), encrypt(theirs))
        assert send_v21(app, get(theirs))[0].result_reason == ResultReason.PERMISSION_DENIED
        # The app's own service key (L3), used to make an L4 (unwrapped, cached).
        succeeded_v21(app, create_l4())
        with _db(core) as db:
            (l3,) = db.execute("SELECT uid FROM managed_objects WHERE tenant = 'demo' AND "
                               "level = ? AND service = 'app'", (LEVEL_SERVICE_KEY,)).fetchone()
            db.execute("UPDATE managed_objects SET service = 'app' WHERE uid = ?", (theirs,))
            db.execute("UPDATE managed_objects SET level = NULL, key_version = NULL "
                       "WHERE uid = ?", (l3,))
        # The revision as it was: the object cache's entries (the rows as they were, and
        # the keys unwrapped under them) are all that is used; nothing is served.
        for answer in send_v21(app, get(theirs), encrypt(theirs), get(l3), encrypt(l3)):
            assert answer.result_status == ResultStatus.OPERATION_FAILED
        # The revision raised too, as kcm-core would: the rows are read as changed.
        with _db(core) as db:
            db.execute("UPDATE managed_objects SET revision = revision + 1 WHERE uid IN (?, ?)",
                       (theirs, l3))
        for answer in send_v21(app, get(theirs), encrypt(theirs), get(l3)):
            _refused(answer)
        # (an Encrypt naming an L3 is the L4 engine's, which finds service keys by level)
        assert send_v21(app, encrypt(l3))[0].result_reason == ResultReason.OBJECT_NOT_FOUND
        log = core.log.read_text()
        for uid in (theirs, l3):
            assert re.search(rf"object {uid} of tenant demo refused: its row does not match "
                             "its wrapping", log), log[-3000:]
        # (one line a minute per object, the metric counts every refusal)
        refused = len(re.findall(r"refused: its row does not match its wrapping", log))
        assert refused >= 2 and _metric(core, "kcm_core_wrapping_mismatches_total") >= 3
        # The rows put back as they were are served again.
        with _db(core) as db:
            db.execute("UPDATE managed_objects SET service = 'legacy', revision = revision + 1 "
                       "WHERE uid = ?", (theirs,))
            db.execute("UPDATE managed_objects SET level = ?, key_version = 1, "
                       "revision = revision + 1 WHERE uid = ?", (LEVEL_SERVICE_KEY, l3))
        succeeded_v21(legacy, get(theirs), encrypt(theirs))
    finally:
        core.stop()


def test_a_client_asking_for_a_changed_row_again_and_again_makes_one_line(
        tmp_path: Path) -> None:
    """One log line per refusal, the request's (its correlation id, as the client was
    told), and one a minute per object however often it is asked for; each counted."""
    core = _with_metrics(tmp_path)
    core.start()
    try:
        app = core.client("app")
        uid = _active_key(app)
        with _db(core) as db:
            db.execute("UPDATE managed_objects SET key_version = 7, revision = revision + 1 "
                       "WHERE uid = ?", (uid,))
        answers = [send_v21(app, get(uid))[0] for _ in range(20)]
        for answer in answers:
            _refused(answer)
        wait_until(lambda: _metric(core, "kcm_core_wrapping_mismatches_total") == 20,
                   "the refusals counted", timeout=5)
        cid = re.search(r"correlation id ([0-9a-f-]+)", answers[0].result_message).group(1)
        lines = [line for line in core.log.read_text().splitlines()
                 if uid in line and "does not match its wrapping" in line]
        assert len(lines) == 1, lines
        assert (f"operation GET failed [correlation id {cid}]: object {uid} of tenant demo "
                "refused: its row does not match its wrapping") in lines[0]
    finally:
        core.stop()


def test_a_service_key_moved_to_another_service_is_not_sent_to_a_gateway(
        tmp_path: Path) -> None:
    """Another service's L3 moved to the app's service, as its newest version: the gateway's
    fetch of the app's service keys (FetchServiceKey) is refused, not served that key."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.kcm("core", "service", "add", "demo", "legacy")
    with _db(core) as db:
        (theirs,) = db.execute("SELECT uid FROM managed_objects WHERE tenant = 'demo' AND "
                               "level = ? AND service = 'legacy'",
                               (LEVEL_SERVICE_KEY,)).fetchone()
        db.execute("UPDATE managed_objects SET service = 'app', key_version = 2, "
                   "revision = revision + 1 WHERE uid = ?", (theirs,))
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=())
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        with gateway.client("app") as app:
            [answer] = send_v21(app, create_l4())
        assert answer.result_status == ResultStatus.OPERATION_FAILED, answer
        assert re.search(rf"object {theirs} of tenant demo refused: its row does not match "
                         "its wrapping", core.log.read_text())
    finally:
        gateway.stop()
        core.stop()


def _to_v1(core: CoreProcess) -> int:
    """Every blob of the database wrapped again in the version 1 format, as the release
    before the previous wrote them (bound to tenant and uid only), and every row without a
    row MAC, as that release wrote them too; how many."""
    l1 = keys.load_l1(core.root / "l1.key")
    with _db(core) as db:
        rows = db.execute("SELECT uid, tenant, object_type, level, service, key_version, "
                          "wrapped_by, material, attributes FROM managed_objects "
                          "WHERE material IS NOT NULL").fetchall()
        clear, l2_keys = {}, {}
        for row in sorted(rows, key=lambda r: r[6] != WRAPPED_BY_L1):  # the L2s first
            uid, tenant, wrapped_by, blob = row[0], row[1], row[6], row[7]
            assert blob[0] == keys.WRAP_VERSION
            kek = l1 if wrapped_by == WRAPPED_BY_L1 else l2_keys[wrapped_by]
            clear[uid] = keys.unwrap(kek, blob, aad=Binding(
                tenant, uid, *row[2:6], *row_flags(SimpleNamespace(attributes=row[8]))).aad())
            if wrapped_by == WRAPPED_BY_L1:
                l2_keys[uid] = clear[uid]
            kek_of = kek
            db.execute("UPDATE managed_objects SET material = ? WHERE uid = ?", (
                keys.wrap(kek_of, clear[uid], aad=keys.object_aad(tenant, uid), version=1), uid))
        db.execute("UPDATE managed_objects SET row_mac = NULL")
    return len(rows)


def _versions(core: CoreProcess) -> dict[int, int]:
    with _db(core) as db:
        return dict(db.execute("SELECT substr(material, 1, 1), count(*) FROM managed_objects "
                               "WHERE material IS NOT NULL GROUP BY 1").fetchall())


def test_a_v1_database_is_refused_without_accept_v1_then_served_and_rewrapped(
        tmp_path: Path) -> None:
    core = _with_metrics(tmp_path)
    core.start()
    try:
        app = core.client("app")
        uid = _active_key(app)
        sealed = succeeded_v21(app, encrypt(uid, b"before"))[0]
        key = succeeded_v21(app, get(uid))[0].object.key_block.key_value.key_material
    finally:
        core.stop()
    total = _to_v1(core)
    assert _versions(core) == {b"\x01": total}
    # accept_v1_wrapping = false: refused like a tampered row, and left as it is.
    _set(core, accept_v1_wrapping=False)
    core.start()
    try:
        for answer in send_v21(core.client("app"), get(uid), encrypt(uid)):
            _refused(answer)
        wait_until(lambda: _metric(core, "kcm_core_v1_wrapped_objects") == total,
                   "the v1 blobs counted")
        assert "accept_v1_wrapping is false" in core.log.read_text()
        time.sleep(1.5)  # (sweeps)
        assert _versions(core) == {b"\x01": total}
    finally:
        core.stop()
    # The default (true): served at once, and re-wrapped in the background.
    core.write_config()
    core.start()
    try:
        app = core.client("app")
        assert succeeded_v21(app, get(uid))[0].object.key_block.key_value.key_material == key
        wait_until(lambda: _versions(core) == {b"\x02": total}, "every blob re-wrapped",
                   timeout=30)
        wait_until(lambda: _metric(core, "kcm_core_v1_wrapped_objects") == 0,
                   "the gauge at 0", timeout=30)
        assert succeeded_v21(app, get(uid))[0].object.key_block.key_value.key_material == key
        succeeded_v21(app, decrypt_sealed(uid, sealed), encrypt(uid, b"after"), create_l4())
        # Re-wrapped as version 2: a change of its service (to none, which the app may
        # read) is now refused.
        with _db(core) as db:
            db.execute("UPDATE managed_objects SET service = NULL, revision = revision + 1 "
                       "WHERE uid = ?", (uid,))
        _refused(send_v21(app, get(uid))[0])
    finally:
        core.stop()


def test_a_v1_service_key_made_an_applications_object_is_not_laundered(
        tmp_path: Path) -> None:
    """A database of the previous release (version 1 blobs: tenant and uid only) whose
    writer made the app's service key (L3) look like an ordinary object of the app's,
    before this release's sweeper re-wrapped it: the app is not served it, the sweeper
    does not re-wrap it as version 2 bound to those columns (which would open for ever,
    with ``accept_v1_wrapping = false`` too), and it stays refused once false is set."""
    core = _with_metrics(tmp_path)
    with _db(core) as db:
        (l3,) = db.execute("SELECT uid FROM managed_objects WHERE tenant = 'demo' AND "
                           "level = ? AND service = 'app'", (LEVEL_SERVICE_KEY,)).fetchone()
    core.kcm("core", "service", "rotate", "demo", "app")  # (the app stays provisioned)
    total = _to_v1(core)
    with _db(core) as db:
        db.execute("UPDATE managed_objects SET level = NULL, key_version = NULL, "
                   "revision = revision + 1 WHERE uid = ?", (l3,))
    core.start()
    try:
        _refused(send_v21(core.client("app"), get(l3))[0])
        wait_until(lambda: _versions(core) == {b"\x01": 1, b"\x02": total - 1},
                   "the others re-wrapped", timeout=30)
        wait_until(lambda: _metric(core, "kcm_core_v1_wrapped_objects") == 1,
                   "the tampered row left", timeout=30)
        assert re.search(rf"object {l3} of tenant demo refused: .*a version 1 blob whose "
                         "row has a service key's identifier", core.log.read_text())
    finally:
        core.stop()
    _set(core, accept_v1_wrapping=False)
    core.start()
    try:
        _refused(send_v21(core.client("app"), get(l3))[0])
    finally:
        core.stop()


def test_a_changed_row_does_not_stop_a_tenant_key_rotations_rewrap(tmp_path: Path) -> None:
    """A row changed in the database among those a rotated tenant key wraps: the running
    core's sweeper moves the others, leaves that one (refused once), and does not fail its
    re-wrap step at every sweep."""
    core = _with_metrics(tmp_path)
    core.start()
    try:
        app = core.client("app")
        uids = [_active_key(app) for _ in range(3)]
        with _db(core) as db:
            db.execute("UPDATE managed_objects SET service = NULL, revision = revision + 1 "
                       "WHERE uid = ?", (uids[0],))
        core.kcm("core", "tenant", "rotate", "demo")
        wait_until(lambda: "1 refused" in core.log.read_text(), "the re-wrap done",
                   timeout=30)
        time.sleep(1.5)  # (sweeps)
        log = core.log.read_text()
        assert "step rewrap_step failed" not in log, log[-3000:]
        assert len(re.findall(rf"object {uids[0]} of tenant demo refused", log)) == 1
        for uid in uids[1:]:
            succeeded_v21(app, get(uid), encrypt(uid))
    finally:
        core.stop()

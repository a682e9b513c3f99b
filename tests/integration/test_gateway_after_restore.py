"""A gateway that relinks to a core whose database was restored from a backup (the
documented procedure, docs/operations.md "Backup and restore"), late enough that the
restored outbox has caught up with the event number the gateway remembers: the events the
restore made anew under those numbers are not taken for the ones it applied. The gateway
notices (the last event it applied is sent again, and differs), drops what it cached, and
then answers as the restored core does: the service key revoked as compromised in the
restored database is not used, and the version made after the backup is not sealed under.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from kcm.kmip.enums import Operation, RevocationReasonCode
from kcm.kmip.payloads.lifecycle import RevocationReason, RevokeRequest
from kcm.l4 import token as l4_token
from tests.e2e_support import (
    GatewayProcess,
    applied_events,
    deploy,
    refusals,
    send_v21,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import create_l4, encrypt, item


def _compromised(uid: str) -> object:
    return item(Operation.REVOKE, RevokeRequest(
        unique_identifier=uid,
        revocation_reason=RevocationReason(code=RevocationReasonCode.KEY_COMPROMISE)))


def _outbox_head(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT max(seq) FROM outbox").fetchone()[0]


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_a_gateway_relinked_after_a_restore_follows_the_restored_database(
        tmp_path: Path) -> None:
    db = tmp_path / "core" / "kcm.db"
    core = deploy(tmp_path / "core", f"sqlite:///{db}")
    core.start()
    gateway = GatewayProcess(tmp_path / "gw", core)
    try:
        gateway.start()
        gateway.wait_linked()
        with gateway.client() as c:
            [t1] = succeeded_v21(c, create_l4())
        l3_v1 = l4_token.parse(t1.unique_identifier).l3_uid
        backup = tmp_path / "backup.db"
        core.kcm("core", "backup", str(backup))
        # After the backup (lost by the restore): a new version of demo/app, applied.
        before = len(applied_events(gateway))
        core.kcm("core", "service", "rotate", "demo", "app")
        wait_until(lambda: len(applied_events(gateway)) > before, "the gateway applies it")
        gateway_seq = applied_events(gateway)[-1][0]
        # The gateway is away (a paused VM) while the core is restored as documented.
        gateway.process.send_signal(signal.SIGSTOP)
        core.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        shutil.copy2(backup, db)
        core.kcm("core", "init", "--restored")
        core.start()
        assert "restore generation 1" in core.log.read_text()  # (the copy tells)
        # In the restored database, v1 is revoked as compromised, and its outbox reaches
        # the number the gateway remembers.
        with core.client("admin") as c:
            assert refusals(send_v21(c, _compromised(l3_v1))) == [None]
        extra = 0
        while _outbox_head(db) < gateway_seq:
            core.kcm("core", "service", "add", "demo", f"pad{extra}")
            extra += 1
        with core.client() as c:
            at_core = [refusals(send_v21(c, encrypt(t1.unique_identifier))),
                       refusals(send_v21(c, create_l4()))]
        assert at_core[0] != [None] and at_core[1] != [None]
        links = gateway.links()
        gateway.process.send_signal(signal.SIGCONT)
        gateway.wait_linked(more_than=links, timeout=15)
        wait_until(lambda: "database was restored" in gateway.log.read_text(),
                   "the gateway notices the restore")
        time.sleep(0.5)
        with gateway.client() as c:
            at_gateway = [refusals(send_v21(c, encrypt(t1.unique_identifier))),
                          refusals(send_v21(c, create_l4()))]
        assert at_gateway == at_core
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.send_signal(signal.SIGCONT)
        gateway.stop()
        core.stop()

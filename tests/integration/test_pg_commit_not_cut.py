"""The silent-server watchdog (kcm.core.store.server_silence) never cuts a COMMIT: once
sent, the server may complete it whatever the client does (a frozen server resuming, a
wait for a synchronous standby), and a cut one told its requests "try again" for work
that was done. A store of kcm-core's kind on a cluster of the test's own, whose COMMITs
wait for a synchronous standby that is not there until the setting is cleared."""

from __future__ import annotations

import os
import threading
import time

import sqlalchemy

from kcm.core.hierarchy import provision_tenant
from kcm.core.keyring import Keyring
from kcm.core.store.engine import Store
from kcm.testing.postgres import Cluster
from tests.pg import own_cluster  # noqa: F401  (fixture)


def _set_standby(admin: sqlalchemy.Engine, names: str | None) -> None:
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(
            "ALTER SYSTEM RESET synchronous_standby_names" if names is None else
            f"ALTER SYSTEM SET synchronous_standby_names = '{names}'"))
        connection.execute(sqlalchemy.text("SELECT pg_reload_conf()"))


def test_a_commit_waiting_longer_than_the_limit_is_not_cut(own_cluster: Cluster  # noqa: F811
                                                          ) -> None:
    store = Store(own_cluster.url, migrate=True, silence_limit=1.0)
    store.startService()
    keyring = Keyring(os.urandom(32))
    store.audit_key = keyring.audit_key
    admin = sqlalchemy.create_engine(own_cluster.url, isolation_level="AUTOCOMMIT")
    outcome: list[object] = []
    try:
        _set_standby(admin, "nobody")
        time.sleep(0.5)  # (the reload reaches the backends)
        def write() -> None:
            try:
                store.run_sync(lambda s: provision_tenant(s, keyring, "waited",
                                                          now=int(time.time())))
                outcome.append("committed")
            except Exception as error:  # noqa: BLE001 - what the test looks for
                outcome.append(error)

        writing = threading.Thread(target=write, daemon=True)
        writing.start()
        writing.join(3.0)  # three times the limit: its COMMIT still waits
        assert outcome == [] and writing.is_alive()
        _set_standby(admin, None)  # the standby "answers": the COMMIT completes
        writing.join(10.0)
        assert outcome == ["committed"]
    finally:
        _set_standby(admin, None)
        admin.dispose()
        store.stopService()
    check = sqlalchemy.create_engine(own_cluster.url)
    try:
        with check.connect() as connection:
            assert connection.execute(sqlalchemy.text(
                "SELECT count(*) FROM tenants WHERE name = 'waited'")).scalar() == 1
    finally:
        check.dispose()

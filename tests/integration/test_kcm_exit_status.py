"""The `kcm` command's exit status (real processes): 75 (EX_TEMPFAIL) when the database or
the KMIP server is unavailable now, so that a script may try again; 2 for everything else
("no such tenant"), 1 for a KMIP failure answer, 75 for one that says to try again (a tenant
over its request rate) but 1 for a tenant at its bound on stored objects."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from kcm.testing.postgres import Cluster
from kcm.testing.processes import BIN, CoreProcess, GatewayProcess, deploy, process_env
from tests.integration.test_tls_crl_process import _revoke as revoke
from tests.pg import own_cluster  # noqa: F401  (fixture)


def kcm_key(core: CoreProcess, *args: str, who: str = "app",
            port: int | None = None) -> subprocess.CompletedProcess:
    """`kcm key ARGS` against ``core``'s KMIP port (or ``port``: a gateway's) with the
    PKI's application (``who``)."""
    pki = core.pki
    pair = getattr(pki, who)
    return subprocess.run(
        [str(BIN / "kcm"), "key", *args, "--server", f"127.0.0.1:{port or core.port}",
         "--cert", str(pair.cert), "--key", str(pair.key), "--ca", str(pki.ca.cert),
         "--timeout", "5"], env=process_env(), capture_output=True, text=True, timeout=60)


def test_a_sqlite_file_another_process_locks_is_75_and_a_missing_tenant_2(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    shell = sqlite3.connect(tmp_path / "core" / "kcm.db", isolation_level=None)
    shell.execute("BEGIN EXCLUSIVE")
    try:
        locked = core.kcm("core", "tenant", "add", "third", check=False)
    finally:
        shell.execute("ROLLBACK")
        shell.close()
    assert locked.returncode == 75, locked.stderr
    assert locked.stderr.startswith("kcm core tenant add: error: ")
    assert "database is locked" in locked.stderr
    missing = core.kcm("core", "tenant", "show", "nosuch", check=False)
    assert missing.returncode == 2, missing.stderr
    assert core.kcm("core", "tenant", "add", "third").returncode == 0


def test_a_stopped_core_is_75_to_the_kmip_client_commands_and_a_failure_answer_1(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    stopped = kcm_key(core, "create")
    assert stopped.returncode == 75, stopped.stderr
    assert stopped.stderr.startswith(f"kcm key create: error: cannot connect to "
                                     f"127.0.0.1:{core.port}: ")
    core.start()
    try:
        answered = kcm_key(core, "get", "no-such-object")
        assert answered.returncode == 1, answered.stderr
        assert kcm_key(core, "create").returncode == 0
    finally:
        core.stop()


def test_a_gateway_without_its_core_is_75_to_what_it_must_forward(tmp_path: Path) -> None:
    """A gateway whose core is down answers what it must forward General Failure, never
    sent: the documented "...; try again" (it said "the core is unreachable; only L4
    operations are served until it is back", and the command exited 1, so a script that
    retries on 75 gave up)."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core)
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        assert kcm_key(core, "create", port=gateway.port).returncode == 0
        core.stop()
        forwarded = kcm_key(core, "create", port=gateway.port)
        assert forwarded.returncode == 75, forwarded.stderr
        assert forwarded.stderr.startswith("kcm key create: GENERAL_FAILURE: the core is "
                                           "unreachable"), forwarded.stderr
        assert forwarded.stderr.rstrip().endswith("; try again")
    finally:
        gateway.stop()
        core.stop()


def test_a_tenant_over_its_request_rate_is_75_and_one_at_its_object_bound_1(
        tmp_path: Path) -> None:
    # demo: one item, then one every 20 s; other: no rate, a bound of one stored object.
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  requests_per_second_per_tenant=0.05, request_burst_per_tenant=1)
    core.kcm("core", "tenant", "limit", "other", "--requests-per-second", "0",
             "--max-objects", "1")
    core.start()
    try:
        assert kcm_key(core, "create").returncode == 0
        throttled = kcm_key(core, "create")
        assert throttled.returncode == 75, throttled.stderr
        # (kcm key speaks KMIP 1.4 by default: Feature Not Supported, 1.x's reason for it)
        assert throttled.stderr.startswith("kcm key create: FEATURE_NOT_SUPPORTED: the "
                                           "tenant's request rate of 0.05 items/s was "
                                           "exceeded; retry in "), throttled.stderr
        # (other's service key is its one stored object already)
        bound = kcm_key(core, "create", who="other_app")
        assert bound.returncode == 1, bound.stderr
        assert "at its bound of 1 stored objects" in bound.stderr
    finally:
        core.stop()


def test_a_revoked_client_certificate_is_2_not_75(tmp_path: Path) -> None:
    # TLS 1.3: the core's refusal of the certificate (an alert) reaches the client at its
    # first read, after its handshake succeeded; trying again never helps.
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    crl = tmp_path / "core" / "crl.pem"
    revoke(core.pki, crl, "app")
    core.tls_settings = {"crl": str(crl)}
    core.write_config()
    core.start()
    try:
        refused = kcm_key(core, "create")
        assert refused.returncode == 2, refused.stderr
        assert "certificate revoked" in refused.stderr
        assert kcm_key(core, "create", who="other_app").returncode == 0
    finally:
        core.stop()


def test_a_stopped_postgresql_is_75(own_cluster: Cluster,  # noqa: F811
                                    tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", own_cluster.url)
    assert core.kcm("core", "tenant", "list").returncode == 0
    own_cluster.stop()
    down = core.kcm("core", "tenant", "list", check=False)
    assert down.returncode == 75, down.stderr
    assert down.stderr.startswith("kcm core tenant list: error: ")
    assert "connection failed" in down.stderr


def test_a_postgresql_role_that_may_not_log_in_is_2(own_cluster: Cluster,  # noqa: F811
                                                    tmp_path: Path) -> None:
    # libpq's refusal has no SQLSTATE; trying again never helps (it was 75).
    import sqlalchemy

    admin = sqlalchemy.create_engine(own_cluster.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text("CREATE ROLE locked PASSWORD 'x' NOLOGIN"))
    finally:
        admin.dispose()
    url = sqlalchemy.engine.make_url(own_cluster.url).set(username="locked", password="x")
    core = CoreProcess(tmp_path / "core", url.render_as_string(hide_password=False))
    core.root.mkdir(mode=0o700, parents=True)
    core.write_config()
    refused = core.kcm("core", "tenant", "list", check=False)
    assert refused.returncode == 2, refused.stderr
    assert "not permitted to log in" in refused.stderr

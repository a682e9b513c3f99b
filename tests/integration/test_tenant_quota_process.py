"""A running kcm-core (SQLite) with a small ``max_objects_per_tenant``: a tenant creates
and registers up to its bound through our SDK and PyKMIP, the next is refused with Server
Limit Exceeded (2.1; Feature Not Supported in 1.x) on a connection that goes on serving,
another tenant is unaffected, a Destroy frees room once the purge (``destroyed_retention``)
has deleted the object, and a restart keeps the count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kmip.core import enums as pykmip_enums
from kmip.pie import exceptions as pie_exceptions

from kcm.client import KmipOperationFailed, Session
from kcm.kmip.enums import ResultReason
from kcm.testing.processes import CoreProcess, deploy
from tests.e2e_support import audit_rows, wait_until

#: Tenant demo holds its tenant key and its service key app (deploy's template): 2 rows.
HELD = 2
BOUND = HELD + 3
MESSAGE = f"tenant demo is at its bound of {BOUND} stored objects (max_objects_per_tenant)"


def _session(core: CoreProcess, who: str = "app", version=(2, 1)) -> Session:
    pair = getattr(core.pki, who)
    return Session.connect([f"127.0.0.1:{core.port}"], version=version, cert=str(pair.cert),
                           key=str(pair.key), ca=str(core.pki.ca.cert))


def _shown(core: CoreProcess) -> dict:
    return json.loads(core.kcm("core", "tenant", "show", "demo", "--json").stdout)


def _refused(attempt, reason=ResultReason.SERVER_LIMIT_EXCEEDED) -> None:
    with pytest.raises(KmipOperationFailed) as caught:
        attempt()
    assert (caught.value.reason, caught.value.message) == (reason, MESSAGE)


@pytest.mark.long  # ten seconds or more
def test_a_tenant_stops_at_its_bound_and_a_purge_frees_room(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  max_objects_per_tenant=BOUND)
    core.state_sweep_interval = 0.2
    core.write_config()
    core.config.write_text(core.config.read_text().replace(
        "[core]\n", "[core]\ndestroyed_retention = 1\n", 1))
    core.start()
    try:
        assert (_shown(core)["stored"], _shown(core)["bound"]) == (HELD, BOUND)
        pykmip = core.pykmip()
        try:
            with _session(core) as sdk:
                first = sdk.create()
                sdk.register_symmetric(bytes(range(32)))
                pykmip.create(pykmip_enums.CryptographicAlgorithm.AES, 256)
                _refused(sdk.create)
                _refused(lambda: sdk.register_symmetric(bytes(16)))
                with pytest.raises(pie_exceptions.KmipOperationFailure) as caught:
                    pykmip.create(pykmip_enums.CryptographicAlgorithm.AES, 256)
                # (KMIP 1.x has no Server Limit Exceeded: the reason of the same kind)
                assert caught.value.reason == pykmip_enums.ResultReason.FEATURE_NOT_SUPPORTED
                assert caught.value.message == MESSAGE
                # The connections go on serving; another tenant is unaffected.
                assert sdk.get_attributes(first, [])
                with _session(core, "other_app") as other:
                    other.create()
                sdk.destroy(first)
                _refused(sdk.create)  # destroyed, not yet purged: it still counts
                wait_until(lambda: _shown(core)["stored"] == BOUND - 1,
                           "the destroyed object to be purged", timeout=10)
                sdk.create()
                _refused(sdk.create)
        finally:
            pykmip.close()
        refused = [(row["operation"], row["result_reason"]) for row in audit_rows(core)
                   if row["result_reason"] in ("SERVER_LIMIT_EXCEEDED", "FEATURE_NOT_SUPPORTED")]
        assert refused == [("CREATE", "SERVER_LIMIT_EXCEEDED"),
                           ("REGISTER", "SERVER_LIMIT_EXCEEDED"),
                           ("CREATE", "FEATURE_NOT_SUPPORTED"),
                           ("CREATE", "SERVER_LIMIT_EXCEEDED"),
                           ("CREATE", "SERVER_LIMIT_EXCEEDED")]
        core.stop()
        core.start()  # the count is in the database
        assert _shown(core)["stored"] == BOUND
        with _session(core) as sdk:
            _refused(sdk.create)
        assert core.kcm("core", "tenant", "limit", "demo", "--max-objects",
                        str(BOUND + 1)).returncode == 0
        with _session(core) as sdk:  # the tenant's own bound, read by the running core
            sdk.create()
    finally:
        core.stop()

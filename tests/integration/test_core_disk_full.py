"""kcm-core's database volume full, on real processes: writes are refused with a clear
KMIP answer (and so are reads: each writes its audit record first), the gateway goes on
serving L4 work from its cached keys, /readyz says 503 and why (and stays so until 2 MiB
are free, not just above the 1 MiB line), one line names the full disk; once space is
freed, everything works again without a restart, and the audit chain verifies."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import GatewayProcess, deploy, free_port, scrape
from kcm.testing.requests import activate, create_l4, create_managed, encrypt, get
from tests.e2e_support import send_v21, succeeded_v21, wait_until
from tests.small_disk import fill, needs_mount, small_disk

UNAVAILABLE = "the key store is unavailable; try again"


def refused(answers) -> bool:
    return all(a.result_status == ResultStatus.OPERATION_FAILED
               and a.result_message.startswith(UNAVAILABLE) for a in answers)


@needs_mount
def test_a_full_database_disk_refuses_writes_and_recovers_by_itself(tmp_path: Path) -> None:
    with small_disk(tmp_path / "db", "4m") as disk:
        core = deploy(tmp_path / "core", f"sqlite:///{disk / 'kcm.db'}")
        core.metrics_port = free_port()
        core.write_config()
        gateway = GatewayProcess(tmp_path / "gateway", core)
        try:
            core.start()
            gateway.start()
            gateway.wait_linked()
            with core.client() as client, gateway.client() as via_gateway:
                [made] = succeeded_v21(client, create_managed())
                key = made.unique_identifier
                [token] = succeeded_v21(via_gateway, create_l4())
                filler = fill(disk)

                assert refused(send_v21(client, create_managed()))
                assert refused(send_v21(client, activate(key)))
                assert refused(send_v21(client, get(key)))  # (its audit record first)
                for _ in range(3):  # L4 work at the gateway: its cached service key
                    succeeded_v21(via_gateway, encrypt(token.unique_identifier, b"record"))
                status, body = scrape(core.metrics_port, "/readyz")
                assert status == 503
                assert json.loads(body)["database"] == (
                    f"not writable: the disk is full ({disk}: 0 bytes free)")
                log = core.log.read_text()
                assert log.count(f"kcm-core cannot write its database: the disk is full "
                                 f"({disk}: 0 bytes free)") == 1  # (not one per request)

                # Hysteresis: 1.5 MiB freed is above the line, not enough to be ready
                # again (2 MiB), however often it is asked (each reading lasts a second).
                with open(filler, "r+b") as f:
                    f.truncate(filler.stat().st_size - (3 << 19))
                for _ in range(3):
                    time.sleep(0.6)
                    status, body = scrape(core.metrics_port, "/readyz")
                    assert status == 503, body
                    assert "the disk is full" in json.loads(body)["database"]
                filler.unlink()
                wait_until(lambda: scrape(core.metrics_port, "/readyz")[0] == 200,
                           "readiness after space was freed")
                succeeded_v21(client, activate(key), get(key), create_managed())
        finally:
            gateway.stop()
            core.stop()
        verified = core.kcm("audit", "verify", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit log intact" in verified.stdout

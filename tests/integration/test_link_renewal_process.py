"""A gateway's renewed certificate moves its links make-before-break, end to end (real
kcm-core and kcm-gateway processes, certificates of the development PKI):

* a renewal the core takes: each worker opens a second link with the new certificate and
  moves to it once the core welcomes it, under a load of forwarded and L4 requests that
  sees no failure across the switch;
* a renewal the core refuses (its CRL lists the new certificate): forwarded requests go
  on over the link made with the old one, the gateway says so once and counts it
  (``kcm_gateway_link_renewals_total{result="refused"}``); the core restarted meanwhile,
  the link is made again with the old certificate (not the refused one); the next
  renewal, one the core takes, moves the link."""

from __future__ import annotations

import time
from pathlib import Path

from kcm.conformance.client import KmipClient
from kcm.kmip.enums import ResultStatus
from kcm.pki import write_certificate
from kcm.testing.processes import GatewayProcess, deploy, free_port
from kcm.testing.requests import create_l4, create_managed, get_attributes
from tests.e2e_support import ClientLoad, send_v21, succeeded_v21, wait_until
from tests.integration.test_metrics_process import metrics
from tests.integration.test_tls_renewal_process import REFRESH, _renewed, _write_crl

TAKEN = "the link with the renewed certificate is up"
REFUSED = "refused a link with this gateway's renewed certificate"


def _step(*items: object):
    """A load step: ``items`` in one request, each of which must succeed."""
    def step(client: KmipClient) -> str | None:
        answers = send_v21(client, *items)
        if all(a.result_status == ResultStatus.SUCCESS for a in answers):
            return None
        return "; ".join(str(a.result_message) for a in answers)
    return step


def _setup(tmp_path: Path, workers: int, metrics_port: int | None = None
           ) -> tuple[object, GatewayProcess, Path]:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    crl = tmp_path / "core" / "crl.pem"
    _write_crl(core.pki, crl, [])
    core.tls_settings = {"crl": str(crl), "crl_refresh": REFRESH}
    core.write_config()
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=workers,
                             metrics_port=metrics_port,
                             tls_settings={"crl_refresh": REFRESH})
    return core, gateway, crl


def test_a_renewal_the_core_takes_moves_each_worker_s_link_with_no_request_failed(
        tmp_path: Path) -> None:
    core, gateway, _ = _setup(tmp_path, workers=2)
    loads: list[ClientLoad] = []
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        with gateway.client() as client:
            [created] = succeeded_v21(client, create_managed())
        forwarded, local = _step(get_attributes(created.unique_identifier)), _step(create_l4())
        # Several connections each way: the listener spreads them over both workers.
        loads = [ClientLoad(gateway, step) for step in (forwarded, local) * 3]
        for load in loads:
            load.start()
        wait_until(lambda: all(load.steps > 5 for load in loads), "the load under way",
                   timeout=20)
        links = gateway.links()
        cert, key = _renewed(core.pki, core.pki.gateway)
        write_certificate(core.pki.gateway, cert, key)
        wait_until(lambda: gateway.log.read_text().count(TAKEN) == 2,
                   "both workers moved to a link with the renewed certificate", timeout=20)
        before = [load.steps for load in loads]
        wait_until(lambda: all(load.steps > seen + 5
                               for load, seen in zip(loads, before, strict=True)),
                   "the load going on after the switch", timeout=20)
        for load in loads:
            load.done.set()
        for load in loads:
            load.join(timeout=10)
        assert [load.failures for load in loads] == [[]] * len(loads)
        log = gateway.log.read_text()
        assert gateway.links() == links + 2 and REFUSED not in log
        assert "link to the core lost" not in log
        assert log.count("the link made with the previous certificate is closed") == 2
        print(f"steps per connection: {[load.steps for load in loads]}")
    finally:
        for load in loads:
            load.done.set()
        gateway.stop()
        core.stop()


def test_a_renewal_the_core_refuses_leaves_the_old_link_serving(tmp_path: Path) -> None:
    port = free_port()
    core, gateway, crl = _setup(tmp_path, workers=1, metrics_port=port)
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        with gateway.client() as client:
            [created] = succeeded_v21(client, create_managed())
            cert, key = _renewed(core.pki, core.pki.gateway)
            _write_crl(core.pki, crl, [cert])  # the core refuses the renewed certificate
            wait_until(lambda: "1 revoked certificate(s) listed" in core.log.read_text(),
                       "the core's CRL taken", timeout=10)
            write_certificate(core.pki.gateway, cert, key)
            wait_until(lambda: REFUSED in gateway.log.read_text(), "the refusal said",
                       timeout=20)
            wait_until(lambda: metrics(port).get(
                ("kcm_gateway_link_renewals_total", (("result", "refused"),)), 0) >= 1,
                       "the refusal counted", timeout=10)
            for _ in range(20):  # forwarded, over the link made with the old certificate
                succeeded_v21(client, get_attributes(created.unique_identifier))
            time.sleep(3.5)  # (the new link tried again meanwhile: said once)
            succeeded_v21(client, get_attributes(created.unique_identifier))
            log = gateway.log.read_text()
            assert log.count(REFUSED) == 1 and "link to the core lost" not in log
            line = next(line for line in log.splitlines() if REFUSED in line)
            assert line.isascii() and "tls.ca" in line
            assert metrics(port)[("kcm_gateway_link_renewals_total",
                                  (("result", "linked"),))] == 0
            assert metrics(port)[("kcm_gateway_link_up", ())] == 1
            # The core restarted meanwhile: the link is made again with the certificate
            # the core took (the renewed one, which it refuses, is tried beside it).
            links = gateway.links()
            core.stop()
            core.start()
            gateway.wait_linked(more_than=links, timeout=20)

            def forwarded() -> bool:
                answers = send_v21(client, get_attributes(created.unique_identifier))
                return answers[0].result_status == ResultStatus.SUCCESS

            wait_until(forwarded, "forwarded requests served after the core's restart",
                       timeout=10)
            assert metrics(port)[("kcm_gateway_link_renewals_total",
                                  (("result", "linked"),))] == 0
            # The next renewal, of a certificate the core takes, moves the link at once.
            cert, key = _renewed(core.pki, core.pki.gateway)
            write_certificate(core.pki.gateway, cert, key)
            wait_until(lambda: TAKEN in gateway.log.read_text(), "the link moved", timeout=20)
            succeeded_v21(client, get_attributes(created.unique_identifier))
            assert metrics(port)[("kcm_gateway_link_renewals_total",
                                  (("result", "linked"),))] == 1
    finally:
        gateway.stop()
        core.stop()

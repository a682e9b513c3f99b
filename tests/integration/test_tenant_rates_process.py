"""Each tenant's request rate (kcm.core.request_rates) on a real kcm-core and kcm-gateway
(twistd, real PKI, real KMIP clients): tenant demo over its rate is refused whole (Server
Limit Exceeded; Feature Not Supported in 1.x) while tenant other is served at the same
time; a request forwarded by a gateway counts as its caller's tenant; a refusal leaves no
audit record of its own, but a metric and one log line, and one ``ThrottleTenant`` record
per tenant a minute counts them (written when the core stops, the chain intact); ``kcm
core tenant limit --requests-per-second`` reaches the running core within its read
interval."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.testing.processes import GatewayProcess, deploy, free_port, scrape
from kcm.testing.requests import create_managed, query, request, response
from tests.e2e_support import audit_rows, wait_until

#: The message of a refusal, its retry time left out.
REFUSED = re.compile(r"the tenant's request rate of 1 items/s was exceeded; retry in "
                     r"[0-9.]+ s\Z")


def _one(client, item=None, version=(2, 1)):
    return response(client.send(request(item or query(), version=version))).batch_items[0]


def _refused(answer, reason=ResultReason.SERVER_LIMIT_EXCEEDED) -> bool:
    return (answer.result_status == ResultStatus.OPERATION_FAILED
            and answer.result_reason == reason and REFUSED.match(answer.result_message or "")
            is not None)


def _throttled(core, tenant: str) -> float:
    found = re.search(rf'^kcm_core_tenant_requests_throttled_total\{{tenant="{tenant}"\}} '
                      r"(\S+)$", scrape(core.metrics_port)[1].decode(), re.M)
    return float(found.group(1)) if found else 0.0


def test_a_tenant_over_its_rate_is_refused_and_the_others_go_on(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  requests_per_second_per_tenant=1, request_burst_per_tenant=3)
    core.metrics_port = free_port()
    core.write_config()
    # other's own rate, read as the core starts: far above what this test sends.
    core.kcm("core", "tenant", "limit", "other", "--requests-per-second", "1000")
    gateway = GatewayProcess(tmp_path / "gateway", core)
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        with core.client("app") as demo, core.client("other_app") as other, \
                gateway.client("app") as forwarded:
            # (the gateway's own fetches are not counted: demo's bucket is full)
            assert [_one(demo).result_status for _ in range(3)] == [ResultStatus.SUCCESS] * 3
            before = audit_rows(core)[-1]["seq"]
            # demo's bucket is empty: its requests are refused whole, unrun; other's served
            # between them, on the same core at the same time.
            for _ in range(20):
                assert _refused(_one(demo, create_managed()))
                assert _one(other).result_status == ResultStatus.SUCCESS
            # 1.x has no Server Limit Exceeded: the reason of the same kind.
            assert _refused(_one(demo, version=(1, 4)), ResultReason.FEATURE_NOT_SUPPORTED)
            # Forwarded by the gateway: counted as demo's.
            assert _refused(_one(forwarded, create_managed()))
            rows = audit_rows(core, before)
            # other's 20 Queries were audited; not one of demo's 22 refusals.
            assert len(rows) == 20 and all(r["result_status"] == "SUCCESS" for r in rows)
            assert _throttled(core, "demo") == 22 and _throttled(core, "other") == 0
            lines = [line for line in core.log.read_text().splitlines()
                     if "over its rate of 1 items/s refused" in line]
            assert len(lines) == 1 and "tenant demo: 1 requests" in lines[0]

            # Its own rate, set while the core runs: 0 lifts the limit, within 5 s.
            core.kcm("core", "tenant", "limit", "demo", "--requests-per-second", "0")
            # (five in a row: more than its bucket of three could ever pay)
            took = wait_until(lambda: all(_one(demo).result_status == ResultStatus.SUCCESS
                                          for _ in range(5)),
                              "demo's own rate taken", timeout=8, interval=0.25)
            assert took < 6
            for _ in range(5):
                answer = _one(forwarded, create_managed())
                assert answer.result_status == ResultStatus.SUCCESS, answer.result_message
            # ... and set back to the core's.
            core.kcm("core", "tenant", "limit", "demo", "--requests-per-second", "default")
            wait_until(lambda: _refused(_one(demo)), "the core's rate again", timeout=8,
                       interval=0.1)
    finally:
        gateway.stop()
        core.stop()


def test_a_tenant_s_refusals_leave_one_audit_record_written_as_the_core_stops(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  requests_per_second_per_tenant=0.01, request_burst_per_tenant=2)
    core.start()
    try:
        with core.client("app") as demo:
            assert [_one(demo).result_status for _ in range(2)] == [ResultStatus.SUCCESS] * 2
            before = audit_rows(core)[-1]["seq"]
            for _ in range(10):
                answer = _one(demo)
                assert answer.result_reason == ResultReason.SERVER_LIMIT_EXCEEDED
            for _ in range(2):  # two batch items each
                two = request(query(), query(), version=(2, 1))
                [answer] = response(demo.send(two)).batch_items  # refused whole
                assert answer.result_reason == ResultReason.SERVER_LIMIT_EXCEEDED
            # Nothing written as they were refused: the record waits for the minute's end.
            assert audit_rows(core, before) == []
    finally:
        core.stop()  # cleanly: the counts not yet written are recorded as it stops
    exported = core.kcm("audit", "export", "--tenant", "demo", "--operation",
                        "ThrottleTenant").stdout.splitlines()
    [record] = [json.loads(line) for line in exported]
    assert (record["principal"], record["tenant"], record["result_status"],
            record["result_reason"]) == ("kcm-core/request-rate", "demo",
                                         "OPERATION_FAILED", "SERVER_LIMIT_EXCEEDED")
    detail = record["detail"]
    assert (detail["count"], detail["items"], detail["rate"], detail["burst"],
            detail["cores"]) == (12, 14, 0.01, 2.0, 1)
    assert list(detail["principals"].values()) == [12]
    assert sum(detail["sources"].values()) == 12
    assert detail["first"] <= detail["last"]
    verified = core.kcm("audit", "verify", "--json")
    assert json.loads(verified.stdout)["ok"] is True

"""A tenant at its bound of stored objects (kcm.core.store.quota) through a kcm-gateway:
what the gateway forwards (an L4 Revoke, whose tombstone the core keeps; a managed key's
Create) is refused with the core's reason and message, Server Limit Exceeded in 2.x,
Feature Not Supported in 1.x, while the gateway's own L4 work goes on."""

from __future__ import annotations

import json

from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.testing.requests import CONTINUE, create_l4, create_managed, request, response
from tests.e2e_support import (  # noqa: F401  (fixtures)
    CoreProcess,
    GatewayProcess,
    core_process,
    gateway_process,
    send_v21,
    succeeded_v21,
)
from tests.integration.test_topology import revoke


def test_forwarded_items_over_the_bound_are_refused_as_at_the_core(
        core_process: CoreProcess, gateway_process: GatewayProcess) -> None:  # noqa: F811
    core = core_process
    with gateway_process.client("app") as app:
        [created] = succeeded_v21(app, create_l4())
        token = created.unique_identifier
        stored = json.loads(core.kcm("core", "tenant", "show", "demo", "--json").stdout)["stored"]
        assert core.kcm("core", "tenant", "limit", "demo", "--max-objects",
                        str(stored)).returncode == 0
        message = f"tenant demo is at its bound of {stored} stored objects (max_objects_per_tenant)"
        answers = send_v21(app, revoke(token), create_managed(), create_l4())
        assert [(a.result_status, a.result_reason, a.result_message) for a in answers[:2]] == [
            (ResultStatus.OPERATION_FAILED, ResultReason.SERVER_LIMIT_EXCEEDED, message)] * 2
        assert answers[2].result_status == ResultStatus.SUCCESS  # (an L4 stores nothing)
        [old] = response(app.send(request(revoke(token), version=(1, 4),
                                          continuation=CONTINUE))).batch_items
        assert (old.result_reason, old.result_message) == (
            ResultReason.FEATURE_NOT_SUPPORTED, message)
        assert core.kcm("core", "tenant", "limit", "demo", "--max-objects",
                        str(stored + 1)).returncode == 0
        succeeded_v21(app, revoke(token))

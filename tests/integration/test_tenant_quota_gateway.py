"""A tenant at its bound of stored objects (kcm.core.store.quota) through a kcm-gateway:
a managed key's Create, which the gateway forwards, is refused with the core's reason and
message, Server Limit Exceeded in 2.x, Feature Not Supported in 1.x, while an L4 Revoke
(whose tombstone the core keeps, within the bound's revocation headroom) is served and the
gateway's own L4 work goes on."""

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
        message = f"tenant demo is at its bound of {stored} stored objects (kcm core tenant limit)"
        answers = send_v21(app, create_managed(), revoke(token), create_l4())
        assert [(a.result_status, a.result_reason, a.result_message) for a in answers] == [
            (ResultStatus.OPERATION_FAILED, ResultReason.SERVER_LIMIT_EXCEEDED, message),
            (ResultStatus.SUCCESS, None, None),  # (a revocation: within the headroom)
            (ResultStatus.SUCCESS, None, None)]  # (an L4 stores nothing)
        [old] = response(app.send(request(create_managed(), version=(1, 4),
                                          continuation=CONTINUE))).batch_items
        assert (old.result_reason, old.result_message) == (
            ResultReason.FEATURE_NOT_SUPPORTED, message)
        assert core.kcm("core", "tenant", "limit", "demo", "--max-objects",
                        str(stored + 2)).returncode == 0  # (the tombstone took one)
        succeeded_v21(app, create_managed())

"""docs/operations.md's openssl recipe ("With openssl") with real processes: its files,
made in a deployment's PKI directory (the application named as one of its tenants'), serve
a real kcm-core and kcm-gateway: the gateway links to the core (each checks the other's
certificate), and the application's certificate is accepted by both, directly and through
the gateway."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import GatewayProcess
from kcm.testing.requests import create_managed, query, request, response
from tests.e2e_support import deploy
from tests.unit.test_docs_openssl_recipe import recipe

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def test_the_recipes_certificates_serve_a_core_a_gateway_and_an_application(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    made = recipe().replace("tenant/acme/service/billing", "tenant/demo/service/app")
    subprocess.run(["bash", "-c", made], cwd=core.pki.directory, check=True,
                   capture_output=True, timeout=60)
    core.start()
    gateway = GatewayProcess(tmp_path / "gateway", core)
    try:
        gateway.start()
        gateway.wait_linked()
        with core.client() as client:  # the application, at the core
            [answer] = response(client.send(request(query()))).batch_items
            assert answer.result_status is ResultStatus.SUCCESS, answer.result_message
        with gateway.client() as client:  # and through the gateway (forwarded to the core)
            [answer] = response(client.send(request(create_managed()))).batch_items
            assert answer.result_status is ResultStatus.SUCCESS, answer.result_message
    finally:
        gateway.stop()
        core.stop()

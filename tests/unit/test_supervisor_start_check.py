"""A kcm-gateway supervisor checks at its start what each of its workers would check at
theirs (kcm.gateway.tap.check_worker_identity): a configuration no worker can start with
stops the supervisor at once, with the line a single gateway process logs, instead of
leaving it up with its workers exiting again and again."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from kcm.gateway import tap
from kcm.pki import init_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return init_pki(tmp_path_factory.mktemp("pki") / "dev")


def gateway_options(pki: Any, who: str, *argv: str) -> tap.Options:
    """Options of a gateway with ``who``'s certificate (``gateway``: a gateway's)."""
    pair = getattr(pki, who)
    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--core",
                          "tcp:127.0.0.1:1", "--trust-domain", "kcm.test",
                          "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
                          "--tls-ca", str(pki.ca.cert), *argv])
    return options


def test_a_certificate_that_names_no_gateway_stops_the_supervisors_start(pki: Any) -> None:
    single = tap.makeService(gateway_options(pki, "app", "--workers", "1"), reactor=Clock())
    with pytest.raises(ValueError, match="does not name a gateway") as one:
        single.getServiceNamed("kcm-gateway-identity").startService()
    service = tap.makeService(gateway_options(pki, "app", "--workers", "2"), reactor=Clock())
    with pytest.raises(ValueError, match="does not name a gateway") as many:
        service.startService()
    assert str(many.value) == str(one.value)  # the same line as one gateway process's
    assert service.getServiceNamed("kcm-kmip-socket").port is None  # nothing bound...
    assert service.getServiceNamed("kcm-gateway-workers").workers == {}  # ...nor started
    assert not service.running


def test_a_gateways_certificate_passes_the_check(pki: Any) -> None:
    tap.check_worker_identity(Clock(), gateway_options(pki, "gateway")["gateway_config"])

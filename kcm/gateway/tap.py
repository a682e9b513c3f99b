"""``twistd kcm-gateway``: options and service assembly (no I/O until the service starts)."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import reactor as default_reactor
from twisted.python import usage

from kcm.config_file import ConfigError
from kcm.gateway.config import load_config
from kcm.gateway.service import GatewayService


class Options(usage.Options):
    """Command line of ``twistd kcm-gateway``; every option overrides the config file."""

    optParameters = [
        ["config", "c", None, "Configuration file (TOML, a [gateway] table)."],
        ["listen", None, None, "KMIP listener, an endpoint string (tcp:5698:interface=...)."],
        ["core", None, None, "The core's link listener, a client endpoint (tcp:HOST:PORT)."],
        ["core-server-name", None, None, "Name the core's certificate must carry."],
        ["trust-domain", None, None, "SPIFFE trust domain of client identities."],
        ["tls-cert", None, None, "Gateway certificate (PEM), for clients and the link."],
        ["tls-key", None, None, "Gateway private key (PEM)."],
        ["tls-ca", None, None, "CA certificates that peers' certificates must chain to."],
        ["l3-ttl", None, None, "Seconds a cached service key (L3) is fresh."],
        ["max-stale", None, None, "Seconds a cached L3 may serve while the core is down."],
        ["prewarm", None, None, "Comma-separated tenant/service list to fetch at start."],
        ["max-in-flight", None, None, "Forwarded requests in flight before reading pauses."],
        ["log-level", None, None, "Log level (debug, info, warning, error)."],
    ]

    def postOptions(self) -> None:
        overrides = {key.replace("-", "_"): self[key] for key, *_ in self.optParameters
                     if key != "config"}
        try:
            self["gateway_config"] = load_config(self["config"], overrides)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options, reactor: Any = default_reactor) -> service.IService:
    """The kcm-gateway service, assembled from parsed options."""
    return GatewayService(options["gateway_config"], reactor=reactor)

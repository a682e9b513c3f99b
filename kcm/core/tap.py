"""``twistd kcm-core``: options and service assembly (no I/O until the service starts)."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import reactor as default_reactor
from twisted.python import usage

from kcm.config_file import ConfigError
from kcm.core.config import load_config
from kcm.core.service import CoreService


class Options(usage.Options):
    """Command line of ``twistd kcm-core``; every option overrides the config file."""

    optParameters = [
        ["config", "c", None, "Configuration file (TOML, a [core] table)."],
        ["listen", None, None, "KMIP listener, an endpoint string (tcp:5696:interface=...)."],
        ["link-listen", None, None, "Gateway link listener, an endpoint string (tcp:5697:...)."],
        ["database", None, None, "SQLAlchemy database URL."],
        ["l1-key-file", None, None, "The L1 master key file."],
        ["trust-domain", None, None, "SPIFFE trust domain of client identities."],
        ["policy-file", None, None, "Policy file mapping certificate subjects to principals."],
        ["tls-cert", None, None, "Server certificate (PEM)."],
        ["tls-key", None, None, "Server private key (PEM)."],
        ["tls-ca", None, None, "CA certificates that client certificates must chain to."],
        ["log-level", None, None, "Log level (debug, info, warning, error)."],
    ]

    def postOptions(self) -> None:
        overrides = {key.replace("-", "_"): self[key] for key, *_ in self.optParameters
                     if key != "config"}
        try:
            self["core_config"] = load_config(self["config"], overrides)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options, reactor: Any = default_reactor) -> service.IService:
    """The kcm-core service, assembled from parsed options."""
    return CoreService(options["core_config"], reactor=reactor)

"""Reading a service's TOML configuration section and its command-line overrides, the same
way for kcm-core and kcm-gateway. Pure but for reading the file it is given."""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from twisted.python import usage

from kcm.config_values import ConfigError
from kcm.logging import check_log_format, parse_level
from kcm.tls_policy import TlsPolicy

#: The tables a KCM configuration file may have: a file may hold more than one service's.
SECTIONS = ("core", "gateway", "client")

#: The smallest ``limits.max_message_size`` a configuration may set, in bytes. A Register
#: or Get of one X.509 certificate is 1-2 KB, an RSA-4096 private key about 2.5 KB; below
#: this, ordinary requests (or their answers) are refused.
MIN_MESSAGE_SIZE = 4096

#: Endpoint kinds a KCM listener takes (``listen``, ``link_listen``): Twisted's TCP and
#: Unix-socket listeners, and the descriptors a gateway supervisor hands its workers.
LISTENER_KINDS = ("tcp", "tcp6", "unix", "fd", "handoff")
#: Endpoint kinds of the metrics listener (a gateway worker's is a Unix socket).
METRICS_KINDS = ("tcp", "tcp6", "unix")
#: Endpoint kinds a gateway connects to a core with (``core``).
CLIENT_KINDS = ("tcp", "unix")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A section's ``[section.tls]`` table: the PEM files (this server's certificate and
    key, and the CA peer certificates must chain to), and which TLS versions and TLS 1.2
    cipher suites its KMIP listener accepts (:mod:`kcm.tls_policy`)."""

    cert: str
    key: str
    ca: str
    min_version: str = "1.2"
    profile: str = "default"
    ciphers: str | None = None
    #: A file of CRLs client certificates are checked against (:mod:`kcm.tls_crl`); None:
    #: no revocation check.
    crl: str | None = None
    #: Seconds between two looks at ``crl`` for changes (more than 0, at most an hour).
    crl_refresh: float = 30.0

    def __post_init__(self) -> None:
        self.policy  # noqa: B018 - refuses a wrong setting now
        refresh = self.crl_refresh
        if (isinstance(refresh, bool) or not isinstance(refresh, int | float)
                or not 0 < refresh <= 3600):
            raise ValueError("tls.crl_refresh must be a number of seconds, more than 0 and "
                             "at most 3600")

    @property
    def policy(self) -> TlsPolicy:
        """The versions and suites: ``min_version``, ``profile`` and ``ciphers``."""
        return TlsPolicy(str(self.min_version), self.profile, self.ciphers)


def tls_file_problem(tls: TlsFiles, section: str, *, prefix: str | None = None) -> str | None:
    """What is wrong with the PEM files of ``tls``, naming the setting and the file (the
    first problem found), or None if they load and the key is its certificate's. Called
    after a TLS context could not be built, whose own error names no file. The settings
    are ``SECTION.tls.cert`` ... unless ``prefix`` names them otherwise (``client``:
    ``client.cert``)."""
    prefix = prefix or f"{section}.tls"
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    contents: dict[str, bytes] = {}
    for name in ("cert", "key", "ca"):
        path = getattr(tls, name)
        try:
            contents[name] = Path(path).read_bytes()
        except OSError as e:
            return f"{prefix}.{name}: cannot read {path}: {e.strerror}"
    certificates: dict[str, list[Any]] = {}
    for name in ("cert", "ca"):
        try:
            certificates[name] = x509.load_pem_x509_certificates(contents[name])
        except ValueError:
            return f"{prefix}.{name}: {getattr(tls, name)} holds no PEM certificate"
    from kcm.tls import is_ca_certificate

    if not any(is_ca_certificate(c) for c in certificates["ca"]):
        return (f"{prefix}.ca: {tls.ca} holds no CA certificate (Basic Constraints cA "
                f"TRUE, or keyCertSign): no peer's certificate could chain to it")
    try:
        key = serialization.load_pem_private_key(contents["key"], password=None)
    except TypeError:
        return (f"{prefix}.key: {tls.key} is encrypted (KCM needs the key unencrypted, "
                "mode 0600)")
    except (ValueError, UnsupportedAlgorithm):
        return f"{prefix}.key: {tls.key} holds no PEM private key KCM can use"
    from kcm.tls_checks import key_matches

    if not key_matches(certificates["cert"][0], key):
        return (f"{prefix}.key: {tls.key} is not the key of the certificate in "
                f"{tls.cert}")
    return None


C = TypeVar("C")


def load_section(default: C, section: str, path: str | Path | None,
                 overrides: Mapping[str, Any] | None, top_level: Collection[str], *,
                 retired: Mapping[str, str] | None = None,
                 coerce: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> C:
    """``default`` (a dataclass with ``tls``, ``limits``, ``log_level`` and ``log_format``
    fields) updated from the TOML
    table ``[section]`` (with ``[section.tls]`` and ``[section.limits]``) of the file at
    ``path`` (None: defaults only), then from ``overrides`` (top-level keys, plus
    ``tls_cert``/``tls_key``/``tls_ca``/``tls_min_version``/``tls_profile``/``tls_ciphers``;
    None values are ignored). ``retired`` maps settings
    that no longer exist to the error that explains it; ``coerce`` converts the top-level
    values (command-line overrides arrive as strings). Raises :class:`ConfigError` naming
    the first wrong setting."""
    table = _read(path, section)
    values: dict[str, Any] = {}
    for name in ("tls", "limits"):
        if not isinstance(table.get(name, {}), dict):
            raise ConfigError(f"{section}.{name} must be a table ([{section}.{name}])")
    for key, value in table.items():
        if key in top_level:
            values[key] = value
        elif retired and key in retired:
            raise ConfigError(retired[key])
        elif key not in ("tls", "limits"):
            raise ConfigError(f"unknown setting {section}.{key}")
    tls = dict(table.get("tls", {}))
    limits = dict(table.get("limits", {}))
    limit_names = {f.name for f in fields(default.limits)}  # type: ignore[attr-defined]
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "tls_crl_refresh":  # (a string on the command line)
            tls["crl_refresh"] = seconds(f"{section}.tls.crl_refresh", _number(value),
                                         most=3600)
        elif key.startswith("tls_"):
            tls[key[4:]] = value
        elif key in top_level:
            current = getattr(default, key, None)
            numeric = type(current) in (int, float)  # (not a bool)
            values[key] = _number(value) if numeric else value
        elif key in limit_names:
            limits[key] = _limit_value(section, key, value, getattr(default.limits, key))
        else:
            raise ConfigError(f"unknown override {key}")
    tls_names = {f.name for f in fields(TlsFiles)}
    for key, value in tls.items():
        if key not in tls_names:
            raise ConfigError(f"unknown setting {section}.tls.{key}")
        if key in ("cert", "key", "ca") and (not isinstance(value, str) or not value):
            raise ConfigError(f"{section}.tls.{key} must be the path of a PEM file")
        if key == "crl" and (not isinstance(value, str) or not value):
            raise ConfigError(f"{section}.tls.crl must be the path of a file of CRLs")
    if coerce is not None:
        values = coerce(values)
    # A section's limits are ConnectionLimits or an extension of them (kcm-core's).
    unknown = set(limits) - {f.name for f in fields(default.limits)}  # type: ignore[attr-defined]
    if unknown:
        raise ConfigError(f"unknown setting {section}.limits.{sorted(unknown)[0]}")
    try:
        config = replace(default, **values)
        if tls:
            config = replace(config, tls=replace(config.tls, **tls))
        if limits:
            config = replace(config, limits=replace(config.limits, **limits))
    except TypeError as e:  # (its message may name no setting: the section is said)
        raise ConfigError(f"[{section}]: {e}") from None
    except ValueError as e:  # a value its dataclass refuses
        raise ConfigError(f"{section}.{e}") from None
    try:
        parse_level(config.log_level)  # type: ignore[attr-defined]
        check_log_format(config.log_format)  # type: ignore[attr-defined]
    except ValueError as e:
        raise ConfigError(f"{section}: {e}") from None
    if config.limits.max_message_size < MIN_MESSAGE_SIZE:  # type: ignore[attr-defined]
        raise ConfigError(f"{section}.limits.max_message_size must be at least "
                          f"{MIN_MESSAGE_SIZE} bytes")
    if not isinstance(config.log_file, str):  # type: ignore[attr-defined]
        raise ConfigError(f"{section}.log_file must be a file path, or - for standard output")
    return config


def _number(value: Any) -> Any:
    """A command-line value (a string) as the number it spells (an int, else a float);
    anything else as it is, for its setting's check to refuse."""
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def seconds(setting: str, value: Any, *, most: float | None = None) -> float:
    """A duration setting in seconds (a number: a TOML string is refused, as a command-line
    value that spells no number): finite and above 0 (NaN and infinity are refused), and at
    most ``most`` if given."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{setting} must be a positive number of seconds")
    if not math.isfinite(value) or value <= 0 or (most is not None and value > most):
        bound = f", at most {most:g}" if most is not None else ""
        raise ConfigError(f"{setting} must be a positive number of seconds{bound}")
    return float(value)


def check_endpoint(setting: str, value: Any, kinds: Collection[str], *,
                   client: bool = False, empty: bool = False) -> str:
    """``value`` if it is an endpoint string of one of ``kinds`` that Twisted parses
    (a server endpoint, or with ``client`` a client one); ``empty``: "" is allowed too
    (the listener is off). Parsing builds the endpoint object only: nothing listens."""
    if not isinstance(value, str):
        raise ConfigError(f"{setting} must be an endpoint string such as tcp:5696, not "
                          f"{type(value).__name__}")
    if empty and value == "":
        return value
    kind, _, rest = value.partition(":")
    kind = kind.strip().lower()
    if kind in ("ssl", "tls", "txtls"):
        raise ConfigError(f"{setting} {value!r}: give a plain endpoint (tcp:...); KCM adds "
                          "the TLS itself")
    if kind not in kinds:
        raise ConfigError(f"{setting} {value!r}: the endpoint kind must be one of "
                          f"{', '.join(kinds)}")
    if kind in ("fd", "handoff"):
        if not rest.strip().isdigit():
            raise ConfigError(f"{setting} {value!r}: {kind}: takes a descriptor number")
        return value
    positional = len(_positional(rest)) if kind in ("tcp", "tcp6") else 0
    if positional > (2 if client else 3) or (positional and _UNESCAPED_IPV6.search(rest)):
        # Twisted reads an IPv6 address written with bare colons as a host or an interface
        # of its first group and drops the rest (tcp:host=fd00:0:0:0:0:0:0:7:port=5697
        # names host fd00; tcp:host=fd00::7:port=5697 host "" port 7), or fails with its
        # own words.
        raise ConfigError(f"{setting} {value!r} is not a valid endpoint: {_IPV6_HINT}")
    if not client and positional > (2 if kind == "tcp" else 1):
        # tcp:PORT:INTERFACE:BACKLOG, tcp6:PORT:BACKLOG: the listener adds a backlog by name
        # (kcm.tls.with_backlog), which Twisted would refuse as given twice.
        raise ConfigError(f"{setting} {value!r}: give the backlog by name (backlog=N)")
    from twisted.internet.endpoints import clientFromString, serverFromString

    try:
        endpoint = (clientFromString if client else serverFromString)(_NO_REACTOR, value)
    except (ValueError, TypeError, KeyError) as e:
        why = "its port is not a number" if "invalid literal for int()" in str(e) else str(e)
        if _UNESCAPED_IPV6.search(value):
            why = _IPV6_HINT
        raise ConfigError(f"{setting} {value!r} is not a valid endpoint: {why}") from None
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not (1 if client else 0) <= port <= 65535:
        raise ConfigError(f"{setting} {value!r}: the port must be from 1 to 65535")
    return value


#: An IPv6 address written as elsewhere (``::1``, ``[::1]``), which an endpoint string takes
#: only with its colons escaped.
_UNESCAPED_IPV6 = re.compile(r"\[|(?<!\\)::")
_IPV6_HINT = ("an IPv6 address needs its colons escaped, no brackets: "
              "tcp6:5696:interface=\\:\\:1 (a listener), tcp:\\:\\:1:5697 (a core)")

def _positional(rest: str) -> list[str]:
    """The fields of an endpoint string after its kind that are not ``name=value``, split
    at its unescaped colons (a client's host and port, a listener's port)."""
    fields = re.split(r"(?<!\\):", rest)
    return [f for f in fields if "=" not in f]


#: Stands for the reactor while an endpoint string is only parsed (no endpoint is used).
_NO_REACTOR = object()

def _overlap(one: str, other: str) -> bool:
    """Whether listening on the same port of interfaces ``one`` and ``other`` collides: the
    same address, an IPv4 "any" ("" or 0.0.0.0) and any IPv4 address, or "::" (which
    Linux binds for IPv4 too) and any address."""
    if one == other or "::" in (one, other):
        return True
    ipv4_any = ("", "0.0.0.0")
    return (one in ipv4_any and ":" not in other) or (other in ipv4_any and ":" not in one)


def check_distinct_ports(settings: Collection[tuple[str, str]]) -> None:
    """Refuse two of ``settings`` (setting, endpoint string; already checked by
    :func:`check_endpoint`) that listen on the same TCP port of one interface: the second
    listener could not start."""
    from twisted.internet.endpoints import serverFromString

    taken: list[tuple[str, int, str]] = []
    for setting, value in settings:
        if not value or value.partition(":")[0].strip().lower() not in ("tcp", "tcp6"):
            continue
        endpoint = serverFromString(_NO_REACTOR, value)
        port, interface = getattr(endpoint, "_port", 0), getattr(endpoint, "_interface", "")
        if not port:
            continue
        for other, other_port, other_interface in taken:
            if port == other_port and _overlap(interface, other_interface):
                raise ConfigError(f"{setting} listens on port {port} of an interface "
                                  f"{other} listens on")
        taken.append((setting, port, interface))


def _limit_value(section: str, name: str, value: Any, default: Any) -> Any:
    """A command-line limit (a string) as its default's type, int or float (int for a
    limit unset by default: ``max_connections_per_tenant``)."""
    if not isinstance(value, str):
        return value
    try:
        return (int if default is None else type(default))(value)
    except ValueError:
        whole = default is None or isinstance(default, int)
        kind = "a whole number" if whole else "a number of seconds"
        raise ConfigError(f"{section}.limits.{name} must be {kind}, not {value!r}") from None


def limit_options(limits: Any) -> list[list[Any]]:
    """twistd ``optParameters`` for every field of the ``limits`` dataclass: ``--NAME``
    (``--max-message-size``), overriding ``limits.NAME`` of the configuration file (the
    overrides :func:`load_section` takes by the field's name)."""
    return [[f.name.replace("_", "-"), None, None,
             f"limits.{f.name} (default {_default_text(getattr(limits, f.name))}); see "
             "docs/operations.md, Limits and hostile clients."] for f in fields(limits)]


def _default_text(value: Any) -> str:
    """A limit's default as ``--help`` says it (None: the one of max_connections_per_tenant,
    derived from max_connections)."""
    return "half of max-connections" if value is None else repr(value)


def _read(path: str | Path | None, section: str) -> dict[str, Any]:
    """The ``[section]`` table of the file at ``path``: a file given must have it (a file
    without is not this service's configuration, and defaults are not what was meant), and
    no table KCM does not know (a misspelt ``[cor]`` is not silently ignored)."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    unknown = sorted(key for key in document if key not in SECTIONS)
    if unknown:
        what = "table" if isinstance(document[unknown[0]], dict) else "setting"
        raise ConfigError(f"{path}: unknown {what} {unknown[0]!r} (a KCM configuration has "
                          f"[{'], ['.join(SECTIONS)}] tables)")
    if section not in document:
        raise ConfigError(f"{path} has no [{section}] table: it is not a kcm-{section} "
                          "configuration")
    table = document[section]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {section} must be a table ([{section}])")
    return table


class ServiceOptions(usage.Options):
    """A service's twistd options: on a wrong option or setting, twistd prints the usage
    and then the error; this makes the usage one line pointing to ``--help`` (which still
    prints every option), so that the error is not lost after a hundred lines."""

    #: The twistd subcommand, for the one-line usage.
    command = ""
    _refused = False

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError:
            self._refused = True
            raise

    def with_daemon_log(self, config: C) -> C:
        """``config``, whose ``log_file`` of ``-`` (standard output) becomes twistd's
        ``--logfile`` (``twistd.log`` by default, as an absolute path) when twistd
        daemonizes: a daemon's standard output is ``/dev/null``. The ``log-file`` option
        is set to it as well, for the processes this one starts (a gateway's workers)."""
        parent = getattr(self, "parent", None)
        if (config.log_file not in ("", "-")  # type: ignore[attr-defined]
                or parent is None or parent.get("nodaemon", True)):
            return config
        chosen = parent.get("logfile")
        path = os.path.abspath(chosen if chosen not in (None, "", "-") else "twistd.log")
        self["log-file"] = path
        return replace(config, log_file=path)  # type: ignore[type-var]

    def getUsage(self, width: int | None = None) -> str:
        if self._refused:
            return f"See twistd {self.command} --help for the options."
        return super().getUsage(width)

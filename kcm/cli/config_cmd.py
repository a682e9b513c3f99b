"""``kcm config``: check a kcm-core, kcm-gateway or client configuration before it is used.

* ``kcm config check -c FILE [--open-token]``: a preflight to run before starting or
  upgrading the service whose table the file has (``[core]``: kcm-core, ``[gateway]``:
  kcm-gateway; ``[client]``: the SDK and ``kcm key``, ``seal``, ``open``; a file with
  several is checked for each). It finds what would stop the start, or
  what this release refuses, without starting anything and without writing anything: the
  configuration loads and validates; the TLS files load and the key is the certificate's;
  the key file's mode; the certificate's dates, its chain to the configured CA, its
  extended key usages, and that it is the identity the other end of the link requires (a
  core's: no URI SAN, not a CA; a gateway's: its SPIFFE ID); the policy and log files; for
  kcm-core, the data directories (of the L1 key file and of a SQLite database: not open to
  other users, as ``kcm core init`` requires), the L1 key (a token only with
  ``--open-token``, read-only), the database (it
  exists, is reachable, its schema revision against this release's) and the L1 check value
  the database recorded; for kcm-gateway, the cores, workers and pinning; and the
  connection caps against the open-file limit (``ulimit -n``) of this shell. A ``[client]``
  table is loaded as the SDK loads it (:func:`kcm.client.config.load_client_config`), its
  TLS files as the SDK's clients load them (nothing is connected to), with the key file's
  mode, the certificate's dates, chain and clientAuth use.

It prints one line per check, ``ok: ...``, ``warning: ...`` or ``error: ...``, never a
secret (the database URL is shown without its password, no PIN, no key), and exits 0 when
no line is an error, 1 otherwise (2 for bad usage). Each check calls the code the service
runs at start, so the two cannot disagree; run it as the service's user, from its working
directory (relative paths in the configuration are taken from there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import stat
import tomllib
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kcm.cli import CommandError, add_command, database_error

if TYPE_CHECKING:
    from cryptography import x509
    from sqlalchemy.orm import Session

    from kcm.config_file import TlsFiles
    from kcm.core.config import CoreConfig
    from kcm.core.l1 import L1Key
    from kcm.gateway.config import GatewayConfig
    from kcm.kmip_protocol import ConnectionLimits

__all__ = ["EXPIRY_WARNING_DAYS", "Finding", "check_config", "register"]

OK, WARNING, ERROR = "ok", "warning", "error"

#: A certificate that expires within this many days is warned about.
EXPIRY_WARNING_DAYS = 30

#: The tables a configuration file may have, in the order they are checked.
_SERVICES = ("core", "gateway", "client")


@dataclass(frozen=True, slots=True)
class Finding:
    """The outcome of one check: ``level`` (ok, warning, error) and what was found."""

    level: str
    text: str

    @property
    def line(self) -> str:
        """The finding as its printed line: one line of printable ASCII."""
        text = " ".join(self.text.split())
        text = text.encode("ascii", "backslashreplace").decode("ascii")
        return f"{self.level}: " + "".join(c if " " <= c <= "~" else "?" for c in text)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``config`` and its actions to the ``kcm`` parser."""
    actions = add_command(subparsers, "config",
                          "check a kcm-core, kcm-gateway or client configuration", __doc__)
    check = actions.add_parser(
        "check", help="find what would stop the service's start, writing nothing")
    check.add_argument("-c", "--config", required=True, metavar="FILE",
                       help="the configuration file (its [core], [gateway] or [client] "
                            "table)")
    check.add_argument("--open-token", action="store_true",
                       help="with l1_pkcs11: open the token read-only, as kcm-core does, "
                            "and check its L1 against the database (without: not opened)")
    check.set_defaults(run=_run_check, prog="kcm config check")


def _run_check(args: argparse.Namespace) -> int:
    status = 0
    for finding in check_config(args.config, open_token=args.open_token):
        print(finding.line, flush=True)
        if finding.level == ERROR:
            status = 1
    return status


def check_config(path: str, *, open_token: bool = False,
                 now: dt.datetime | None = None) -> Iterator[Finding]:
    """The findings of every check of the configuration file ``path``, as they are made
    (see the module's docstring); ``now`` (UTC) dates the certificates."""
    now = now if now is not None else dt.datetime.now(dt.UTC)
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as e:
        yield Finding(ERROR, f"cannot read {path}: {e.strerror}")
        return
    except tomllib.TOMLDecodeError as e:
        yield Finding(ERROR, f"{path}: {e}")
        return
    services = [name for name in _SERVICES if name in document]
    if not services:
        yield Finding(ERROR, f"{path} has no [core], [gateway] or [client] table: it is not a "
                             "kcm-core, kcm-gateway or client configuration")
        return
    for service in services:
        if service == "core":
            yield from _core(path, now, open_token)
        elif service == "gateway":
            yield from _gateway(path, now)
        else:
            yield from _client(path, now)


# kcm-core -------------------------------------------------------------------------------
def _core(path: str, now: dt.datetime, open_token: bool) -> Iterator[Finding]:
    from kcm.config_file import ConfigError
    from kcm.core.config import load_config
    from kcm.identity import core_certificate_refusal

    try:
        config = load_config(path)
    except ConfigError as e:
        yield Finding(ERROR, str(e))
        return
    yield Finding(OK, f"{path}: [core] loads and validates (kcm-core)")

    def identity(cert: x509.Certificate) -> Finding:
        refusal = core_certificate_refusal(cert)
        if refusal is not None:
            return Finding(ERROR, f"core.tls.cert: gateways refuse it as a core's: {refusal}")
        return Finding(OK, "core.tls.cert: a core's certificate (no URI SAN, not a CA), as "
                           "gateways require")

    yield from _tls(config.tls, "core", now, identity, usages=("serverAuth",))
    if config.policy_file:
        yield _policy_file(config.policy_file)
    yield from _log_file("core", config.log_file)
    yield from _data_directories(config)
    l1 = yield from _l1(config, open_token)
    try:
        yield from _database(config, l1)
    finally:
        close = getattr(l1, "close", None)  # a token's session
        if close is not None:
            close()
    caps = [("max_connections", config.limits.max_connections)]
    if config.link_listen:  # (the link listener's guard is reserved from the KMIP one's)
        caps.append(("max_link_connections", config.limits.max_link_connections))
    yield _descriptors("core", caps)
    yield _tenant_connections("core", config.limits)


def _data_directories(config: CoreConfig) -> Iterator[Finding]:
    """The directories of the L1 key file and of a SQLite database are private, as
    ``kcm core init`` requires (its own check, on each that exists: one missing it creates,
    0700, and this creates nothing)."""
    from kcm.cli.core_cmd import _data_directories, _private_directory

    for directory in dict.fromkeys(_data_directories(config)):
        if not os.path.lexists(directory):
            yield Finding(OK, f"core: data directory {directory} does not exist (kcm core "
                              "init creates it, mode 0700)")
            continue
        if not os.path.isdir(directory):
            yield Finding(ERROR, f"core: data directory {directory} is not a directory")
            continue
        try:
            _private_directory(directory)  # (exists: it only checks)
        except CommandError as e:
            yield Finding(ERROR, f"core: {e} (kcm core init refuses it)")
        except OSError as e:
            yield Finding(ERROR, f"core: data directory {directory}: {e.strerror}")
        else:
            mode = stat.S_IMODE(os.stat(directory).st_mode)
            yield Finding(OK, f"core: data directory {directory} is not open to other users "
                              f"(mode {mode:04o})")


def _l1(config: CoreConfig, open_token: bool) -> Generator[Finding, None, L1Key | None]:
    """Open L1 as kcm-core does when it starts (:class:`kcm.core.service.MasterKey`); a
    token only with ``open_token``. Returns the key, or None."""
    from kcm.core.l1 import L1Error, l1_setting, open_configured_l1

    if config.l1_pkcs11 and not open_token:
        from kcm.core.l1_pkcs11 import Pkcs11Uri

        try:
            where = Pkcs11Uri.parse(config.l1_pkcs11)
        except L1Error as e:
            yield Finding(ERROR, f"core.l1_pkcs11: {e}")
            return None
        yield Finding(OK, f"core.l1_pkcs11: names key {where.object!r} in PKCS#11 token "
                          f"{where.token!r}; the token was not opened, nor L1 checked against "
                          "the database (--open-token does, read-only)")
        return None
    setting = l1_setting(config)
    try:
        l1, _ = open_configured_l1(config)
    except (OSError, L1Error) as e:
        yield Finding(ERROR, f"core.{setting}: {e}")
        return None
    if config.l1_pkcs11:
        yield Finding(OK, f"core.l1_pkcs11: the {l1.description} opens (read-only)")
    elif config.l1_key_env:
        yield Finding(OK, f"core.l1_key_env: the {l1.description} loads")
    else:
        mode = stat.S_IMODE(os.stat(config.l1_key_file).st_mode)
        yield Finding(OK, f"core.l1_key_file: the {l1.description} loads (mode {mode:04o})")
    return l1


def _database(config: CoreConfig, l1: L1Key | None) -> Iterator[Finding]:
    """The database exists (never created), is reachable, its schema is this release's or
    one ``kcm core init`` upgrades, and it recorded ``l1``'s check value."""
    from sqlalchemy.exc import SQLAlchemyError

    from kcm.cli.core_cmd import existing_database, run_in_store, shown_url
    from kcm.core.l1 import L1_CHECK_META, l1_refusal, l1_setting
    from kcm.core.store import repository
    from kcm.core.store.engine import Store
    from kcm.core.store.migrate import (
        SchemaTooNew,
        SchemaUnknown,
        current_revision,
        head_revision,
        is_known_revision,
        tables_without_revision,
    )

    try:
        url = existing_database(config)
    except CommandError as e:
        yield Finding(ERROR, f"core.database: {e}")
        return
    shown = shown_url(url)
    try:
        current = current_revision(url)
    except SQLAlchemyError as e:
        reason = database_error(str(getattr(e, "orig", None) or e))
        yield Finding(ERROR, f"core.database: {shown} cannot be reached or read: {reason}")
        return
    yield Finding(OK, f"core.database: {shown} is reachable")
    try:
        refused = _sessions_refusal(url)
    except SQLAlchemyError as e:
        reason = database_error(str(getattr(e, "orig", None) or e))
        yield Finding(ERROR, f"core.database: {shown} cannot be reached or read: {reason}")
        return
    if refused is not None:
        yield Finding(ERROR, f"core.database: {refused}")
    head = head_revision()
    if current is None:
        if tables_without_revision(url):
            yield Finding(ERROR, f"core.database: {SchemaUnknown()}")
        else:
            yield Finding(ERROR, f"core.database: {shown} has no kcm-core schema (kcm core "
                                 "init creates it)")
        return
    if current == head:
        yield Finding(OK, f"core.database: schema at {head}, this kcm's")
    elif is_known_revision(current):
        yield Finding(WARNING, f"core.database: schema behind: kcm core init will upgrade "
                               f"it from {current} to {head} (kcm-core does at start)")
    else:
        yield Finding(ERROR, f"core.database: {SchemaTooNew(current, head)}")
        return
    if not config.accept_v1_wrapping:
        yield from _v1_refused(url)
    if not config.accept_rows_without_mac and current == head:
        yield from _unsealed_refused(url)
    if l1 is None:
        return
    store = Store(url, threads=1)
    try:
        known = run_in_store(store, lambda s: repository.get_meta(s, L1_CHECK_META),
                             write=False)
    except CommandError as e:
        yield Finding(ERROR, f"core.database: {e}")
        return
    finally:
        store.stopService()
    refusal = l1_refusal(known, l1)
    setting = l1_setting(config)
    if refusal is not None:
        yield Finding(ERROR, f"core.{setting}: {refusal}")
    else:
        yield Finding(OK, f"core.{setting}: its check value is the database's")


def _v1_refused(url: str) -> Iterator[Finding]:
    """With ``accept_v1_wrapping`` false: a warning if the database holds version 1 blobs
    (a restored copy backed up before the thirty-ninth sitting), which kcm-core refuses."""
    from kcm.core.wrap_upgrade import v1_blobs

    yield from _refused(url, v1_blobs, "accept_v1_wrapping", v1_refusal)


def _unsealed_refused(url: str) -> Iterator[Finding]:
    """With ``accept_rows_without_mac`` false: a warning if the database holds rows without
    a row MAC (written by an earlier release), which kcm-core refuses."""
    from kcm.core.row_mac_upgrade import rows_without_mac

    yield from _refused(url, rows_without_mac, "accept_rows_without_mac", unsealed_refusal)


def _refused(url: str, count_rows: Callable[[Session], int], setting: str,
             refusal: Callable[[int], str]) -> Iterator[Finding]:
    """A warning if ``count_rows`` finds rows in the database at ``url`` that kcm-core
    refuses while ``setting`` is false (``refusal``: what that count means)."""
    from kcm.cli.core_cmd import run_in_store
    from kcm.core.store.engine import Store

    store = Store(url, threads=1)
    try:
        count = run_in_store(store, count_rows, write=False)
    except CommandError as e:
        yield Finding(ERROR, f"core.database: {e}")
        return
    finally:
        store.stopService()
    if count:
        yield Finding(WARNING, f"core.{setting}: false, and {refusal(count)}")


def unsealed_refusal(count: int) -> str:
    """What ``count`` rows without a row MAC mean with ``accept_rows_without_mac`` false."""
    return (f"the database holds {count:,} objects without a row MAC (written by an earlier "
            "release): kcm-core refuses them; set it true until "
            "kcm_core_objects_without_row_mac reads 0")


def v1_refusal(count: int) -> str:
    """What ``count`` version 1 blobs mean with ``accept_v1_wrapping`` false."""
    return (f"the database holds {count:,} objects wrapped in the version 1 format (a copy "
            "backed up before the thirty-ninth sitting?): kcm-core refuses them; set it "
            "true until kcm_core_v1_wrapped_objects reads 0")


def _sessions_refusal(url: str) -> str | None:
    """Why kcm-core would not start on the PostgreSQL database at ``url``
    (:func:`kcm.core.session_pinning.sessions_refusal`: a pooler in transaction or
    statement mode, read-only sessions); None otherwise, or on SQLite."""
    from sqlalchemy.engine import make_url

    if make_url(url).get_backend_name() != "postgresql":
        return None
    from kcm.core.session_pinning import sessions_refusal
    from kcm.core.store.engine import open_engine

    engine = open_engine(url)
    try:
        return sessions_refusal(engine)
    finally:
        engine.dispose()


# kcm-gateway ----------------------------------------------------------------------------
def _gateway(path: str, now: dt.datetime) -> Iterator[Finding]:
    from kcm.gateway.config import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as e:
        yield Finding(ERROR, str(e))
        return
    yield Finding(OK, f"{path}: [gateway] loads and validates (kcm-gateway)")
    yield Finding(OK, f"gateway.core: {', '.join(config.core)} (core_order "
                      f"{config.core_order}; each core's certificate must name "
                      f"{config.core_server_name})")
    workers = yield from _workers(config)

    def identity(cert: x509.Certificate) -> Finding:
        # What the gateway's start requires (kcm.gateway.service.GatewayIdentity), and the
        # core's link listener too: a certificate naming a GATEWAY of the trust domain.
        from kcm.gateway.service import gateway_name_of

        try:
            name = gateway_name_of(config.tls.cert, config.trust_domain)
        except ValueError as e:
            return Finding(ERROR, f"gateway.tls.cert: {e}: the gateway does not start, and "
                                  "the core refuses a link from any other")
        return Finding(OK, f"gateway.tls.cert: names gateway {name} "
                           f"(spiffe://{config.trust_domain}/gateway/{name}), as the core's "
                           "link requires")

    yield from _tls(config.tls, "gateway", now, identity, usages=("serverAuth", "clientAuth"))
    yield from _log_file("gateway", config.log_file)
    yield _descriptors("gateway", [("max_connections", config.limits.max_connections)],
                       per_worker=workers > 1)
    yield _tenant_connections("gateway", config.limits)


def _workers(config: GatewayConfig) -> Generator[Finding, None, int]:
    """How many gateway processes the configuration runs, and how they are placed."""
    from kcm.gateway.placement import usable_cpus, worker_cpus
    from kcm.gateway.supervisor import worker_count

    workers = worker_count(config.workers)
    if workers == 1:
        yield Finding(OK, "gateway.workers: one process")
        return workers
    pinned = worker_cpus(workers, config.pin_workers, usable_cpus())
    placed = (f"each pinned to a CPU of {len(set(pinned.values()))}" if pinned
              else "not pinned")
    yield Finding(OK, f"gateway.workers: {workers} worker processes under a supervisor, "
                      f"{placed} (pin_workers {config.pin_workers})")
    return workers


# A client ------------------------------------------------------------------------------
def _client(path: str, now: dt.datetime) -> Iterator[Finding]:
    """The ``[client]`` table as the SDK loads it, and its TLS files as its clients load
    them (nothing is connected to)."""
    from kcm.client.config import load_client_config
    from kcm.config_file import TlsFiles

    try:
        config = load_client_config(path)
    except OSError as e:
        yield Finding(ERROR, f"cannot read {path}: {e.strerror}")
        return
    except ValueError as e:
        yield Finding(ERROR, str(e))
        return
    yield Finding(OK, f"{path}: [client] loads and validates (the SDK; kcm key, seal, open)")

    def names(endpoints: Sequence[object]) -> str:
        return ", ".join(str(endpoint) for endpoint in endpoints)

    if config.gateway == config.core:
        yield Finding(OK, f"client: calls go to {names(config.gateway)} (in order, "
                          f"timeout {config.timeout:g} s)")
    else:
        yield Finding(OK, f"client: L4 calls go to {names(config.gateway)}, the others to "
                          f"{names(config.core)} (timeout {config.timeout:g} s)")

    def load(tls: TlsFiles) -> object:
        # Both clients' own loads: the blocking one's (Python's ssl) and the Twisted one's.
        from kcm.client.endpoints import FailoverConnection
        from kcm.client.endpoints import TlsFiles as ClientFiles
        from kcm.client.pool import tls_endpoint_factory

        files = ClientFiles(tls.cert, tls.key, tls.ca)
        endpoints = list(dict.fromkeys(config.gateway + config.core))
        # (Both refuse an encrypted key in the same words; neither asks for its pass
        # phrase.)
        factory = tls_endpoint_factory(None, files, endpoints)
        FailoverConnection(endpoints, files)  # (connects at its first call only)
        return factory

    yield from _tls(TlsFiles(config.cert, config.key, config.ca), "client", now, None,
                    usages=("clientAuth",), prefix="client", load=load)


# Both -----------------------------------------------------------------------------------
def _tls(tls: TlsFiles, section: str, now: dt.datetime,
         identity: Callable[[x509.Certificate], Finding] | None, *,
         usages: Sequence[str], prefix: str | None = None,
         load: Callable[[TlsFiles], object] | None = None) -> Iterator[Finding]:
    """The TLS files load as ``load`` loads them (default: as the service's listener does
    at start), the key file's mode, the certificate's dates, chain, ``usages`` and identity
    (``identity(cert)``, if given). ``prefix``: the files' settings' (default
    ``SECTION.tls``)."""
    from kcm.config_file import tls_file_problem
    from kcm.tls import key_file_mode_problem, load_certificates

    prefix = prefix or f"{section}.tls"
    refused = False
    try:
        mode = os.stat(tls.key).st_mode
    except OSError:
        mode = None  # the load below says why
    if mode is not None:
        problem = key_file_mode_problem(tls.key, mode)
        if problem is None:
            yield Finding(OK, f"{prefix}.key: mode {stat.S_IMODE(mode):04o}")
        else:
            refused = problem.refused
            yield Finding(ERROR if refused else WARNING, f"{prefix}.key: {problem.message}")
    if refused:  # the load would only repeat it: check the files without it
        failure = tls_file_problem(tls, section, prefix=prefix)
    else:
        try:
            (load or _listener_tls)(tls)
            failure = None
        except Exception as e:  # the start's own diagnosis (kcm.process) names the file
            failure = tls_file_problem(tls, section, prefix=prefix) or f"{prefix}: {e}"
    if failure is not None:
        yield Finding(ERROR, failure)
        return
    yield Finding(OK, f"{prefix}: {tls.cert}, {tls.key} and {tls.ca} load; the key is "
                      "the certificate's")
    chain = load_certificates(tls.cert)
    yield _dates(chain[0], prefix, now)
    yield _chain(chain, load_certificates(tls.ca), prefix, tls.ca, now)
    yield _usages(chain[0], prefix, usages)
    if identity is not None:
        yield identity(chain[0])
    if tls.crl:
        yield _crl(tls, prefix, now)


def _listener_tls(tls: TlsFiles) -> object:
    """The TLS options of a service's listener, as it builds them at start."""
    from kcm.tls import listener_tls_options, read_tls_material

    return listener_tls_options(read_tls_material(tls.cert, tls.key, tls.ca), tls.policy)


def _crl(tls: TlsFiles, prefix: str, now: dt.datetime) -> Finding:
    """The CRL file loads and each CRL is a CA's of the bundle, and none has expired."""
    from kcm.tls_crl import load_crls

    try:
        crls = load_crls(tls.crl or "", tls.ca)
    except ValueError as e:
        return Finding(ERROR, f"{prefix}.crl: {e}")
    newest: dict[object, x509.CertificateRevocationList] = {}  # each CA's newest is used
    for crl in crls:
        key = (crl.issuer, _authority_key(crl))
        if key not in newest or crl.last_update_utc > newest[key].last_update_utc:
            newest[key] = crl
    expired = [crl for crl in newest.values()
               if crl.next_update_utc is not None and crl.next_update_utc <= now]
    if expired:
        return Finding(ERROR, f"{prefix}.crl: the CRL of "
                              f"{expired[0].issuer.rfc4514_string()} expired "
                              f"{_day(expired[0].next_update_utc)}: every certificate of "
                              "that CA is refused until a newer one is in the file")
    from kcm.tls import load_certificates
    from kcm.tls_crl import cas_without_crl

    missing = cas_without_crl(crls, load_certificates(tls.ca))
    if missing:
        return Finding(WARNING, f"{prefix}.crl: {tls.crl} holds no CRL of "
                                f"{missing[0].subject.rfc4514_string()}, a CA of {tls.ca}: "
                                "every client certificate it issued is refused; add its CRL "
                                "(an empty one if it revoked none)")
    return Finding(OK, f"{prefix}.crl: {len(crls)} CRL(s) of the CAs of {tls.ca}, "
                       f"{sum(len(list(crl)) for crl in crls)} certificate(s) revoked")


def _authority_key(crl: x509.CertificateRevocationList) -> bytes | None:
    from cryptography import x509

    try:
        return crl.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _dates(cert: x509.Certificate, prefix: str, now: dt.datetime) -> Finding:
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < before:
        return Finding(ERROR, f"{prefix}.cert: not valid before {_day(before)}")
    if now >= after:
        return Finding(ERROR, f"{prefix}.cert: expired {_day(after)}")
    days = (after - now).days
    if after - now < dt.timedelta(days=EXPIRY_WARNING_DAYS):
        return Finding(WARNING, f"{prefix}.cert: expires {_day(after)}, in {days} days: "
                                "renew it (docs/operations.md, \"Certificates\")")
    return Finding(OK, f"{prefix}.cert: valid until {_day(after)} ({days} days)")


def _day(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _chain(chain: Sequence[x509.Certificate], authorities: Sequence[x509.Certificate],
           prefix: str, ca_path: str, now: dt.datetime) -> Finding:
    """Whether OpenSSL (what every peer's TLS runs) verifies ``chain`` up to a CA of
    ``authorities``: a warning if not (peers may trust another bundle). Without its time
    checks when the certificate is out of its dates, which are reported apart."""
    from kcm.tls_checks import chain_problem, validity_problem

    problem = chain_problem(chain, authorities,
                            None if validity_problem(chain[0], now) else now)
    if problem is not None:
        return Finding(WARNING, f"{prefix}.cert: not verified against {prefix}.ca "
                                f"{ca_path}: {problem}")
    return Finding(OK, f"{prefix}.cert: chains to {prefix}.ca {ca_path}")


def _usages(cert: x509.Certificate, prefix: str, needed: Sequence[str]) -> Finding:
    """The extended key usages peers' TLS checks (``needed``, of serverAuth and clientAuth):
    serverAuth for both services' listeners (and a gateway's check of its core), clientAuth
    for a gateway's link and a client (a server's TLS refuses a client certificate not for
    client use)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    oids = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
            "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None  # any use
    names = " and ".join(needed)
    if usages is not None and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
        missing = [name for name in needed if oids[name] not in usages]
        if missing:
            return Finding(ERROR, f"{prefix}.cert: its extendedKeyUsage lacks "
                                  f"{' and '.join(missing)}: peers' TLS refuses it")
    return Finding(OK, f"{prefix}.cert: fit for {names}")


def _policy_file(path: str) -> Finding:
    """The policy file loads as kcm-core's start loads it (:class:`kcm.core.service.
    PolicyFile`)."""
    from kcm.core.gateway_scopes import GatewayScopes
    from kcm.identity import SubjectMap

    try:
        subjects = SubjectMap.from_toml(path)
        scopes = GatewayScopes.from_toml(path)
    except OSError as e:
        return Finding(ERROR, f"core.policy_file: cannot read {path}: {e.strerror}")
    except (ValueError, tomllib.TOMLDecodeError) as e:
        return Finding(ERROR, f"core.policy_file {path}: {e}")
    return Finding(OK, f"core.policy_file: {path} loads ({len(subjects)} subject mappings, "
                       f"{len(scopes)} gateway scopes)")


def _log_file(section: str, path: str) -> Iterator[Finding]:
    """A log file can be appended to, or created (nothing is opened: the service opens it
    for appending when it starts, :func:`kcm.process.open_log`)."""
    if path in ("", "-"):
        return
    if os.path.lexists(path):
        from kcm.process import log_file_refusal

        status = os.lstat(path)
        refusal = ("a symbolic link" if os.path.islink(path)
                   else log_file_refusal(status))
        if refusal is not None:
            yield Finding(ERROR, f"{section}.log_file: {path} will not be written: {refusal}")
        elif os.access(path, os.W_OK):
            yield Finding(OK, f"{section}.log_file: {path} can be appended to")
        else:
            yield Finding(ERROR, f"{section}.log_file: {path} cannot be appended to")
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
        yield Finding(OK, f"{section}.log_file: {path} will be created (0600)")
    else:
        yield Finding(ERROR, f"{section}.log_file: {path} cannot be created: {directory} is "
                             "not a directory this user may write")


def _tenant_connections(section: str, limits: ConnectionLimits) -> Finding:
    """The bound of one tenant's connections in force, and a warning when the setting
    exceeds ``max_connections`` (it then bounds nothing: one tenant may take every slot)."""
    bound, most = limits.tenant_connections, limits.max_connections
    prefix = f"{section}.limits.max_connections_per_tenant"
    if limits.max_connections_per_tenant is None:
        return Finding(OK, f"{prefix}: {bound}, half of max_connections ({most})")
    if bound > most:
        return Finding(WARNING, f"{prefix}: {bound} exceeds max_connections ({most}) and "
                                "bounds nothing: one tenant may take every connection. "
                                f"Lower it (at most {most // 2} for one tenant never to "
                                "refuse another's), or leave it unset (half of "
                                "max_connections)")
    return Finding(OK, f"{prefix}: {bound} of max_connections ({most})")


def _descriptors(section: str, caps: list[tuple[str, int]], *,
                 per_worker: bool = False) -> Finding:
    """The connection caps against this shell's open-file limit, by the rule the service's
    connection guard warns by (:func:`kcm.connection_guard.descriptor_budget`)."""
    from kcm.connection_guard import DESCRIPTORS_KEPT, descriptor_budget

    budget = descriptor_budget(caps)
    each = " in each worker" if per_worker else ""
    needs = (f"{section}: {budget.settings} ({budget.total}) + {DESCRIPTORS_KEPT} "
             f"descriptors{each}")
    if budget.soft is None:
        return Finding(OK, f"{needs}: no open-file limit (ulimit -n) in this shell")
    if budget.short:
        return Finding(WARNING, f"{needs} exceed ulimit -n {budget.soft} of this shell: lower "
                                "the caps or raise the limit (systemd: LimitNOFILE)")
    return Finding(OK, f"{needs} fit ulimit -n {budget.soft} of this shell")

"""``kcm core``: set up and administer a kcm-core deployment (operator commands).

* ``kcm core init [-c CONFIG]``: create the L1 key file (mode 0600) if missing (or the
  token key with ``l1_pkcs11``; never the key in the environment with ``l1_key_env``), create or
  upgrade the database schema (Alembic), record the L1 check value, and anchor audit records
  written before the audit chain was keyed.
* ``kcm core tenant add TENANT [-c CONFIG]``: create a tenant and its tenant key (L2).
* ``kcm core service add TENANT SERVICE [-c CONFIG]``: create a service key (L3) for a
  service of a tenant; run again to add a new version (rotation).
* ``kcm core service rotate TENANT SERVICE [-c CONFIG]``: a new version of an existing
  service's key (refuses a service that does not exist).
* ``kcm core tenant rotate TENANT [-c CONFIG]``: a new tenant key (L2), the old one
  deactivated; kcm-core re-wraps the tenant's keys and objects under the new one.
* ``kcm core tenant list|show TENANT [--json]``, ``kcm core service list [TENANT] [--json]``:
  the tenants, a tenant's keys and objects, the service keys (every version); read only.
* ``kcm core tenant limit TENANT [--max-objects N|default] [--recount]``: set or show a
  tenant's bound on what it stores (objects and L4 tombstones; kcm.core.store.quota);
  ``--recount`` counts the rows again and corrects the kept count.
* ``kcm core tenant remove TENANT --yes``: remove a tenant whose objects are all destroyed,
  with its key hierarchy (gateways are told; every L4 of its services stops working).
* ``kcm core policy``, ``kcm core tenant policy TENANT``, ``kcm core service policy TENANT
  SERVICE`` ``[--interval D] [--max-uses N] [--overlap D] [--clear]``: the rotation policy
  of the deployment (default), a tenant or a service; without settings, show it.
* ``kcm core service show TENANT SERVICE [--json]``: a service's key versions, their states,
  ages and usage counts, and its rotation policy.
* ``kcm core backup FILE [-c CONFIG]``: an online, consistent copy of the SQLite database
  (SQLite's backup API, while kcm-core runs); PostgreSQL: ``pg_dump``.
* ``kcm core bootstrap TENANT SERVICE [-c CONFIG]``: make sure the tenant and a service key
  exist (idempotent; what ``make run`` uses).
* ``kcm core new-l1-key``: print a new random L1 key (base64), for a secret store that gives
  it to kcm-core and these commands in the environment variable ``l1_key_env`` names.

These run on the core's host, with direct access to its database and L1 key (file, token or
environment), named by the configuration file of ``-c`` or ``$KCM_CORE_CONFIG``: without
either, a command refuses to run (it never falls back on the built-in defaults). None
but ``init`` creates a database: a missing one is an error that names where it was looked
for (a relative path in the configuration is taken from the working directory). Those that
use L1 refuse a key whose check value is not the database's, as kcm-core does when it
starts. A tenant or service name must be one a certificate's SPIFFE ID can carry
(:func:`kcm.identity.is_valid_segment`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from kcm.cli import CommandError, add_command, database_error
from kcm.cli.output_file import partial_file, publish, refuse_existing

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from kcm.core.config import CoreConfig
    from kcm.core.keyring import Keyring
    from kcm.core.l1 import L1Key
    from kcm.core.store.engine import Store

T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``core`` and its actions to the ``kcm`` parser."""
    actions = add_command(subparsers, "core", "initialise and administer kcm-core", __doc__)

    init = actions.add_parser("init", help="create the L1 key file and the database schema")
    config_option(init)
    init.add_argument("--restored", action="store_true",
                      help="the database is a restored copy: raise its restore generation "
                           "(once per restore, kcm-core stopped)")
    init.set_defaults(run=_run_init, prog="kcm core init")

    tenant = actions.add_parser("tenant", help="tenants")
    tenant_actions = tenant.add_subparsers(dest="tenant_action", metavar="ACTION",
                                           required=True)
    add_tenant = tenant_actions.add_parser("add", help="create a tenant and its key (L2)")
    add_tenant.add_argument("tenant")
    config_option(add_tenant)
    add_tenant.set_defaults(run=_run_tenant_add, prog="kcm core tenant add")

    list_tenants = tenant_actions.add_parser("list", help="list the tenants")
    _read_options(list_tenants)
    list_tenants.set_defaults(run=_inventory("run_tenant_list"), prog="kcm core tenant list")
    show_tenant = tenant_actions.add_parser(
        "show", help="a tenant's keys (L2, L3 versions) and objects by state")
    show_tenant.add_argument("tenant")
    _read_options(show_tenant)
    show_tenant.set_defaults(run=_inventory("run_tenant_show"), prog="kcm core tenant show")
    remove_tenant = tenant_actions.add_parser(
        "remove", help="remove a tenant whose objects are all destroyed, with its keys")
    remove_tenant.add_argument("tenant")
    remove_tenant.add_argument("--yes", action="store_true",
                               help="really remove it (without: say what would go)")
    config_option(remove_tenant)
    remove_tenant.set_defaults(run=_inventory("run_tenant_remove"),
                               prog="kcm core tenant remove")

    limit_tenant = tenant_actions.add_parser(
        "limit", help="set or show a tenant's bound on the objects it stores and its request "
        "rate")
    limit_tenant.add_argument("tenant")
    limit_tenant.add_argument(
        "--max-objects", metavar="N",
        help="objects and L4 tombstones the tenant may store (0: no bound; default: the "
             "core's [core.limits] max_objects_per_tenant)")
    limit_tenant.add_argument(
        "--requests-per-second", metavar="N",
        help="batch items a second the tenant's requests may make, sustained, shared by "
             "the cores (0: no limit; default: the core's [core.limits] "
             "requests_per_second_per_tenant)")
    limit_tenant.add_argument(
        "--request-burst", metavar="N",
        help="batch items the tenant may send at once above its rate (0: one second of "
             "its rate; default: the core's [core.limits] request_burst_per_tenant)")
    limit_tenant.add_argument(
        "--recount", action="store_true",
        help="count the tenant's objects and L4 tombstones again and correct its kept "
             "count if it differs (audited RecountTenant)")
    _read_options(limit_tenant)
    limit_tenant.set_defaults(run=_inventory("run_tenant_limit"), prog="kcm core tenant limit")

    rotate_tenant = tenant_actions.add_parser(
        "rotate", help="a new tenant key (L2); kcm-core re-wraps the tenant's keys under it")
    rotate_tenant.add_argument("tenant")
    config_option(rotate_tenant)
    rotate_tenant.set_defaults(run=_run_tenant_rotate, prog="kcm core tenant rotate")

    tenant_policy = tenant_actions.add_parser(
        "policy", help="set or show a tenant's rotation policy for its service keys")
    tenant_policy.add_argument("tenant")
    _policy_options(tenant_policy)
    tenant_policy.set_defaults(run=_rotation("run_policy"), prog="kcm core tenant policy")

    default_policy = actions.add_parser(
        "policy", help="set or show the default rotation policy of service keys")
    _policy_options(default_policy)
    default_policy.set_defaults(run=_rotation("run_policy"), prog="kcm core policy")

    service = actions.add_parser("service", help="services")
    service_actions = service.add_subparsers(dest="service_action", metavar="ACTION",
                                             required=True)
    add_service = service_actions.add_parser(
        "add", help="create a service key (L3) version for a tenant's service")
    add_service.add_argument("tenant")
    add_service.add_argument("service")
    config_option(add_service)
    add_service.set_defaults(run=_run_service_add, prog="kcm core service add")

    rotate_service = service_actions.add_parser(
        "rotate", help="a new service key (L3) version for an existing service")
    rotate_service.add_argument("tenant")
    rotate_service.add_argument("service")
    config_option(rotate_service)
    rotate_service.set_defaults(run=_run_service_rotate, prog="kcm core service rotate")

    list_services = service_actions.add_parser(
        "list", help="list the service keys (L3), every version, of one tenant or all")
    list_services.add_argument("tenant", nargs="?")
    _read_options(list_services)
    list_services.set_defaults(run=_inventory("run_service_list"), prog="kcm core service list")

    service_policy = service_actions.add_parser(
        "policy", help="set or show a service's rotation policy")
    service_policy.add_argument("tenant")
    service_policy.add_argument("service")
    _policy_options(service_policy)
    service_policy.set_defaults(run=_rotation("run_policy"), prog="kcm core service policy")

    show_service = service_actions.add_parser(
        "show", help="a service's key versions (state, age, uses) and rotation policy")
    show_service.add_argument("tenant")
    show_service.add_argument("service")
    _read_options(show_service)
    show_service.set_defaults(run=_rotation("run_service_show"), prog="kcm core service show")

    backup = actions.add_parser(
        "backup", help="an online, consistent copy of the SQLite database (PostgreSQL: pg_dump)")
    backup.add_argument("file", help="the copy to write (must not exist)")
    config_option(backup)
    backup.set_defaults(run=_run_backup, prog="kcm core backup")

    bootstrap = actions.add_parser(
        "bootstrap", help="ensure a tenant and a service key exist (idempotent)")
    bootstrap.add_argument("tenant")
    bootstrap.add_argument("service")
    config_option(bootstrap)
    bootstrap.set_defaults(run=_run_bootstrap, prog="kcm core bootstrap")

    new_l1 = actions.add_parser(
        "new-l1-key", help="print a new random L1 key (base64) for a secret store that gives "
                           "it to kcm-core in an environment variable (core.l1_key_env)")
    new_l1.set_defaults(run=_run_new_l1_key, prog="kcm core new-l1-key")


def _read_options(parser: argparse.ArgumentParser) -> None:
    config_option(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def _policy_options(parser: argparse.ArgumentParser) -> None:
    from kcm.cli.core_rotation import add_policy_options

    add_policy_options(parser)
    config_option(parser)


def _rotation(name: str) -> Callable[[argparse.Namespace], int]:
    """The function ``name`` of :mod:`kcm.cli.core_rotation`, imported when it runs."""
    def run(args: argparse.Namespace) -> int:
        from kcm.cli import core_rotation

        return getattr(core_rotation, name)(args)
    return run


def _inventory(name: str) -> Callable[[argparse.Namespace], int]:
    """The function ``name`` of :mod:`kcm.cli.core_inventory`, imported when it runs."""
    def run(args: argparse.Namespace) -> int:
        from kcm.cli import core_inventory

        return getattr(core_inventory, name)(args)
    return run


def config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``-c/--config``, kcm-core's configuration file (default: $KCM_CORE_CONFIG)."""
    parser.add_argument("-c", "--config", default=os.environ.get("KCM_CORE_CONFIG"),
                        metavar="FILE",
                        help="kcm-core configuration file (default: $KCM_CORE_CONFIG; one "
                             "of the two is needed)")


def core_config(args: argparse.Namespace) -> CoreConfig:
    """The kcm-core configuration ``-c/--config`` names; CommandError when it is wrong, or
    when neither ``-c`` nor ``$KCM_CORE_CONFIG`` names one: the built-in defaults would
    make a command act on ``var/kcm-core.db`` and ``var/l1.key`` of whatever directory it
    runs in (``kcm core init``: a new L1 key and database there), not the deployment's."""
    from kcm.config_file import ConfigError
    from kcm.core.config import load_config

    if not args.config:
        raise CommandError("no configuration: give -c FILE (the kcm-core configuration) or "
                           "set KCM_CORE_CONFIG")
    try:
        return load_config(args.config)
    except ConfigError as e:
        raise CommandError(str(e)) from e


def existing_database(config: CoreConfig) -> str:
    """The database URL of ``config``, once it is known to exist: a SQLite file that is not
    there is a CommandError naming where it was looked for (only ``kcm core init`` creates a
    database; a command asked to read one never does), and so is one of several names
    (:mod:`kcm.core.store.sqlite_links`)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from kcm.core.store.sqlite_links import linked_refusal

    try:
        url = make_url(config.database)
    except ArgumentError as e:
        # Not echoed: a malformed URL may still hold a password.
        scheme = config.database.partition(":")[0][:40]
        raise CommandError(f"the database setting ({scheme}:...) is not a database URL, "
                           f"e.g. postgresql+psycopg://USER@HOST/DB or "
                           f"sqlite:///var/kcm.db") from e
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if not path or not os.path.isfile(path):
            where = os.path.abspath(path) if path else "(none)"
            rule = ("" if os.path.isabs(path) else
                    f"; a relative path in the configuration is taken from the working "
                    f"directory, {os.getcwd()}")
            raise CommandError(f"no database at {where}{rule} (kcm core init creates one)")
        linked = linked_refusal(path)  # (kcm core backup opens it without an engine)
        if linked is not None:
            raise CommandError(linked)
    return config.database


def open_store(args: argparse.Namespace, config: CoreConfig | None = None) -> Store:
    """A :class:`~kcm.core.store.engine.Store` on the existing database of ``-c/--config``
    (never creating one); CommandError when there is none."""
    from kcm.core.store.engine import Store

    config = config or core_config(args)
    return closed_at_end(args, Store(schema_checked(existing_database(config))))


def schema_checked(url: str) -> str:
    """``url``, once its schema is this release's: a command of an older release never
    writes into (nor reads) a schema a newer one made, nor one not yet upgraded
    (:func:`kcm.core.store.migrate.schema_refusal`); a CommandError otherwise."""
    from kcm.core.store.migrate import schema_refusal

    refusal = schema_refusal(url)
    if refusal is not None:
        raise CommandError(refusal)
    return url


def closed_at_end(args: argparse.Namespace, store: Store) -> Store:
    """``store``, its connections closed when the command ends (:func:`kcm.cli.main`)."""
    closing = getattr(args, "closing", None)
    if closing is not None:
        closing.callback(store.stopService)
    return store


def run_in_store(store: Store, fn: Callable[[Session], T], *, write: bool = True) -> T:
    """``store.run_sync(fn)``, with database failures (unreachable, not initialised) as
    one-line CommandErrors."""
    from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

    try:
        return store.run_sync(fn, write=write)
    except (OperationalError, ProgrammingError) as e:
        text = str(e.orig) if e.orig is not None else str(e)
        if database_error(text) != text:  # the database itself is missing, not its schema
            raise CommandError(f"database {shown_url(store.url)}: {database_error(text)}") from e
        if "no such table" in text or "does not exist" in text:
            raise CommandError(f"the database {shown_url(store.url)} has no kcm-core schema "
                               f"(kcm core init creates it): {text}") from e
        raise CommandError(f"database {shown_url(store.url)}: {text}") from e
    except SQLAlchemyError as e:
        raise CommandError(f"database {shown_url(store.url)}: {e}") from e


def shown_url(url: str) -> str:
    """A database URL as it may be printed: without its password, in the URL's user part
    or in its query."""
    from sqlalchemy.engine import make_url

    from kcm.core.config import SECRET_QUERY_KEYS

    parsed = make_url(url)
    hidden = {key: "hidden" for key in parsed.query if key.lower() in SECRET_QUERY_KEYS}
    if hidden:
        parsed = parsed.update_query_dict(hidden)
    return parsed.render_as_string(hide_password=True)


def _run_init(args: argparse.Namespace) -> int:
    from kcm.core import audit
    from kcm.core.l1 import L1_CHECK_META, L1Error, l1_refusal, open_configured_l1
    from kcm.core.l1_before_migration import recorded_l1_check
    from kcm.core.lineage import Lineage, ensure_lineage, mark_restored, read_lineage
    from kcm.core.store import repository
    from kcm.core.store.engine import Store
    from kcm.core.store.migrate import (
        SchemaTooNew,
        SchemaUnknown,
        current_revision,
        tables_without_revision,
        upgrade,
    )
    from kcm.core.store.row_seal import RowSeal, row_key

    config = core_config(args)
    for directory in _data_directories(config):
        _private_directory(directory)
    before = current_revision(config.database)
    if before is None and tables_without_revision(config.database):
        raise CommandError(str(SchemaUnknown()))  # (before an L1 is looked for, or made)
    if args.restored and before is None:
        raise CommandError("--restored: the database is empty; put the restored copy "
                           "where 'database' points first")
    # A database that records an L1 has one already: a key missing here is copied from
    # the deployment, never made anew (a new key would only be refused below, left behind
    # as a file or a token object); a wrong one is refused before anything is migrated.
    recorded = None if before is None else recorded_l1_check(config.database)
    try:
        l1, created = open_configured_l1(config, create=recorded is None)
    except L1Error as e:
        if recorded is not None:
            raise CommandError(
                f"{e}; the database already has an L1 key: copy the deployment's L1 here "
                "(kcm core init makes one only for a new database)") from e
        raise CommandError(str(e)) from e
    if recorded is not None and (refusal := l1_refusal(recorded, l1)) is not None:
        raise CommandError(refusal)
    try:
        upgrade(config.database)
    except (SchemaTooNew, SchemaUnknown) as e:
        raise CommandError(str(e)) from e
    after = current_revision(config.database)
    store = closed_at_end(args, Store(config.database))
    store.audit_key = l1.audit_key()
    store.row_seal = RowSeal(row_key(store.audit_key))
    check = l1.check_value()

    #: Per try of the transaction (the last one's counts): whether the restored copy had no
    #: deployment id yet.
    unnamed: list[bool] = []

    def record(session: Session) -> tuple[audit.AuditRow | None, Lineage]:
        known = repository.get_meta(session, L1_CHECK_META)
        refusal = None if known is None else l1_refusal(known, l1)
        if refusal is not None:
            raise CommandError(refusal)
        repository.set_meta(session, L1_CHECK_META, check)
        if args.restored:  # (a copy backed up before deployment ids gets one now)
            unnamed.append(read_lineage(session) is None)
        lineage = mark_restored(session) if args.restored else ensure_lineage(session)
        try:
            return audit.key_chain(session, by="kcm core init"), lineage
        except audit.AuditChainError as e:
            raise CommandError(str(e)) from None

    anchor, lineage = store.run_sync(record)
    print(f"{l1.description} ({'created' if created else 'existing'})")
    schema = ("schema up to date" if before == after else f"schema created at {after}"
              if before is None else f"schema upgraded from {before} to {after}")
    print(f"database: {shown_url(config.database)}{_where(config.database)} ({schema})")
    if anchor is not None:
        print(f"audit chain keyed: record {anchor.seq} anchors the {anchor.seq - 1} records "
              "written before")
    print(f"{lineage}" + (" (raised: a restored copy)" if args.restored else ""))
    if not config.accept_v1_wrapping:
        from kcm.cli.config_cmd import v1_refusal
        from kcm.core.wrap_upgrade import v1_blobs

        count = store.run_sync(v1_blobs, write=False)
        if count:
            print(f"warning: accept_v1_wrapping is false, and {v1_refusal(count)}")
    if not config.accept_rows_without_mac:
        from kcm.cli.config_cmd import unsealed_refusal
        from kcm.core.row_mac_upgrade import rows_without_mac

        count = store.run_sync(rows_without_mac, write=False)
        if count:
            print(f"warning: accept_rows_without_mac is false, and {unsealed_refusal(count)}")
    if unnamed and unnamed[-1]:
        print("note: the copy had no deployment id (backed up before this release): it is "
              "given the one its L1 key gives, the original's unless the L1 key was rotated "
              "after the backup; a gateway that then refuses its cores as another deployment "
              "needs a restart")
    return 0


#: What the commands' write transactions import (lazily, as every command does): imported
#: before the transaction, not in it, since on SQLite a running kcm-core's writers wait for
#: the lock the transaction holds from its first statement.
_WRITE_MODULES = ("kcm.core.audit", "kcm.core.events", "kcm.core.hierarchy",
                  "kcm.core.rotation_policy", "kcm.core.store.repository",
                  "kcm.core.store.schema", "kcm.core.tenant_rotation", "kcm.core.usage",
                  "kcm.kmip.enums", "kcm.kmip.errors")


def _import_write_modules() -> None:
    for name in _WRITE_MODULES:
        importlib.import_module(name)


def _with_keyring(args: argparse.Namespace, fn: Callable[[Session, Keyring], T]) -> T:
    """``fn(session, keyring)`` in one write transaction, with the L1 key of ``-c/--config``,
    once the database's L1 check value says it is this database's L1 (as kcm-core checks it
    when it starts): another key would wrap keys no one can unwrap and MAC audit records
    ``kcm audit verify`` then reports broken."""
    from kcm.core.keyring import Keyring
    from kcm.core.l1 import L1Error, open_configured_l1
    from kcm.core.store.engine import Store

    config = core_config(args)
    store = closed_at_end(args, Store(schema_checked(existing_database(config))))
    try:
        l1 = open_configured_l1(config)[0]
    except (OSError, L1Error) as e:
        raise CommandError(f"cannot load the L1 key: {e}") from e
    keyring = Keyring(l1, accept_v1=config.accept_v1_wrapping,
                      accept_unsealed=config.accept_rows_without_mac)
    store.audit_key = keyring.audit_key
    store.row_seal = keyring.row_seal
    _import_write_modules()

    def checked(session: Session) -> T:
        require_l1_of_database(session, l1)
        return fn(session, keyring)

    return run_in_store(store, checked)


def require_l1_of_database(session: Session, l1: L1Key) -> None:
    """CommandError unless the database holds a check value (``kcm core init`` records it)
    and it is ``l1``'s."""
    from kcm.core.l1 import L1_CHECK_META, l1_refusal
    from kcm.core.store import repository

    refusal = l1_refusal(repository.get_meta(session, L1_CHECK_META), l1)
    if refusal is not None:
        raise CommandError(refusal)


#: The operations of the audit records of the keys these commands create.
ADD_TENANT_OPERATION = "AddTenant"
ADD_SERVICE_KEY_OPERATION = "AddServiceKey"


def _add_tenant(session: Session, keyring: Keyring, tenant: str, *, now: int, by: str) -> str:
    """``tenant``'s current L2, created (with the tenant) if it has none; a key created is
    audited (:data:`ADD_TENANT_OPERATION`, principal ``by``) in the same transaction."""
    from kcm.core.hierarchy import provision_tenant
    from kcm.core.store import repository

    existing = repository.find_l2(session, tenant, active_only=True)
    if existing is not None:
        return existing.uid
    uid = provision_tenant(session, keyring, tenant, now=now)
    _audit_created(session, by, ADD_TENANT_OPERATION, tenant, uid, {"level": "L2"})
    return uid


def _add_service_key(session: Session, keyring: Keyring, tenant: str, service: str, *,
                     now: int, by: str) -> str:
    """A new L3 version of ``tenant``/``service``, audited
    (:data:`ADD_SERVICE_KEY_OPERATION`, principal ``by``) in the same transaction."""
    from kcm.core.hierarchy import provision_service
    from kcm.core.store import repository

    uid = provision_service(session, keyring, tenant, service, now=now)
    versions = repository.find_l3(session, tenant, service)
    version = next((row.key_version for row in versions if row.uid == uid), None)
    _audit_created(session, by, ADD_SERVICE_KEY_OPERATION, tenant, uid,
                   {"level": "L3", "service": service, "version": version})
    return uid


def _audit_created(session: Session, by: str, operation: str, tenant: str, uid: str,
                   detail: dict[str, str | int | None]) -> None:
    from kcm.core.audit import AuditEvent, append_audit

    append_audit(session, AuditEvent(
        principal=by, operation=operation, result_status="SUCCESS",
        correlation_id=f"cli-{int(time.time() * 1e6)}", source="cli", tenant=tenant,
        object_ids=(uid,), detail=detail))


def _usable_names(**names: str) -> None:
    """CommandError unless each of ``names`` (kind: name) can be a segment of a principal's
    SPIFFE ID (:func:`kcm.identity.is_valid_segment`): a tenant or service no certificate can
    name could never be used."""
    from kcm.identity import is_valid_segment

    for kind, name in names.items():
        if not is_valid_segment(name):
            shown = ascii(name[:64]) + ("..." if len(name) > 64 else "")
            raise CommandError(f"{kind} name {shown} is not one a certificate can carry: use "
                               "letters, digits, '.', '-' and '_' (not '.' or '..')")


def _run_tenant_add(args: argparse.Namespace) -> int:
    _usable_names(tenant=args.tenant)
    uid = _with_keyring(args, lambda s, k: _add_tenant(s, k, args.tenant, now=int(time.time()),
                                                       by="kcm core tenant add"))
    print(f"tenant {args.tenant}: tenant key {uid}")
    return 0


def _run_tenant_rotate(args: argparse.Namespace) -> int:
    """A new current L2 for an existing tenant; the old one is deactivated at once and the
    running kcm-core re-wraps the tenant's service keys and objects under the new one, in
    batches (docs/operations.md, "Tenant keys (L2)")."""
    from kcm.core.store.schema import Tenant
    from kcm.core.tenant_rotation import rotate_tenant_key

    def rotate(session: Session, keyring: Keyring) -> tuple[str, list[str]]:
        if session.get(Tenant, args.tenant) is None:
            raise CommandError(f"no tenant {args.tenant!r}")
        return rotate_tenant_key(session, keyring, args.tenant, now=int(time.time()),
                                 by="kcm core tenant rotate", reason="command")

    new, old = _with_keyring(args, rotate)
    print(f"tenant {args.tenant}: tenant key {new}; deactivated {', '.join(old) or 'none'} "
          "(kcm-core re-wraps what it wrapped)")
    return 0


def _run_service_add(args: argparse.Namespace) -> int:
    from kcm.kmip.errors import KmipError

    _usable_names(tenant=args.tenant, service=args.service)
    try:
        uid = _with_keyring(args, lambda s, k: _add_service_key(
            s, k, args.tenant, args.service, now=int(time.time()), by="kcm core service add"))
    except KmipError as e:
        raise CommandError(e.message) from e
    print(f"tenant {args.tenant}, service {args.service}: service key {uid}")
    return 0


def _run_service_rotate(args: argparse.Namespace) -> int:
    """Like ``service add``, but only for a service that exists: a typo makes no new service.
    Gateways learn of the new version (an ``l3.rotated`` event) and seal new L4s under it;
    L4s under the older versions keep working while those are active."""
    from kcm.core.store import repository

    def rotate(session: Session, keyring: Keyring) -> tuple[str, int]:
        if not repository.find_l3(session, args.tenant, args.service):
            raise CommandError(f"tenant {args.tenant} has no service {args.service} "
                               "(kcm core service add creates one)")
        uid = _add_service_key(session, keyring, args.tenant, args.service,
                               now=int(time.time()), by="kcm core service rotate")
        return uid, repository.find_l3(session, args.tenant, args.service)[0].key_version

    uid, version = _with_keyring(args, rotate)
    print(f"tenant {args.tenant}, service {args.service}: service key {uid} (version {version})")
    return 0


def _run_bootstrap(args: argparse.Namespace) -> int:
    from kcm.core.store import repository

    _usable_names(tenant=args.tenant, service=args.service)

    def ensure(session: Session, keyring: Keyring) -> str:
        now = int(time.time())
        _add_tenant(session, keyring, args.tenant, now=now, by="kcm core bootstrap")
        existing = repository.find_l3(session, args.tenant, args.service, active_only=True)
        if existing:
            return existing[0].uid
        return _add_service_key(session, keyring, args.tenant, args.service, now=now,
                                by="kcm core bootstrap")

    uid = _with_keyring(args, ensure)
    print(f"tenant {args.tenant}, service {args.service}: service key {uid}")
    return 0


def _run_new_l1_key(args: argparse.Namespace) -> int:
    """A new L1 key on standard output, in the form a key file holds; nothing is written
    anywhere else (the secret store keeps it: losing it loses every key it wraps)."""
    import base64

    from kcm.core.keys import KEY_BYTES

    key = os.urandom(KEY_BYTES)
    sys.stdout.write(base64.b64encode(key).decode("ascii") + "\n")
    sys.stdout.flush()
    return 0


def _run_backup(args: argparse.Namespace) -> int:
    """Copy the SQLite database with SQLite's online backup API: one read transaction, so the
    copy is the database as of one moment, while kcm-core keeps serving."""
    import sqlite3

    from sqlalchemy.engine import make_url

    config = core_config(args)
    url = make_url(existing_database(config))
    if url.get_backend_name() != "sqlite":
        raise CommandError("the database is PostgreSQL: back it up with pg_dump "
                           "(docs/operations.md, \"Backup and restore\")")
    refuse_existing(args.file)
    try:
        with partial_file(args.file) as partial:  # in a directory of the command's own
            source = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True)
            try:
                target = sqlite3.connect(partial)
                try:
                    source.backup(target)
                    (check,) = target.execute("PRAGMA integrity_check").fetchone()
                    if check != "ok":
                        raise CommandError(f"the copy fails SQLite's integrity check: {check}")
                    target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                    (objects,) = target.execute(
                        "SELECT count(*) FROM managed_objects").fetchone()
                    (records,) = target.execute("SELECT count(*) FROM audit_log").fetchone()
                finally:
                    target.close()
            finally:
                source.close()
            publish(partial, args.file)  # synced, and never over a FILE made meanwhile
    except sqlite3.Error as e:
        raise CommandError(f"backup of {url.database} failed: {e}") from e
    except OSError as e:
        raise CommandError(f"cannot write {args.file}: {e.strerror}") from e
    print(f"{args.file}: a consistent copy of {url.database} ({objects} objects, {records} "
          "audit records); the L1 key is not in it: keep a copy of that apart")
    return 0


def _where(database: str) -> str:
    """`` at /abs/path`` for a SQLite database named by a relative path (from the working
    directory, which the reader may not have in mind), else nothing."""
    prefix = "sqlite:///"
    path = database[len(prefix):] if database.startswith(prefix) else ""
    return f" at {os.path.abspath(path)}" if path and not os.path.isabs(path) else ""


def _data_directories(config: CoreConfig) -> list[str]:
    """The directories that hold the L1 key file (unless L1 is in a token) and an SQLite
    database (and its WAL/SHM)."""
    directories = ([] if config.l1_pkcs11 or config.l1_key_env
                   else [os.path.dirname(os.path.abspath(config.l1_key_file))])
    prefix = "sqlite:///"
    if config.database.startswith(prefix) and config.database[len(prefix):]:
        directories.append(os.path.dirname(os.path.abspath(config.database[len(prefix):])))
    return directories


def _private_directory(directory: str) -> None:
    """Create ``directory`` owner-only (0700), or refuse one that others may read or enter:
    the L1 key file and the database must not sit where other users can reach them."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        # Under systemd, /var/lib/kcm exists only once the unit has started
        # (StateDirectory=): the operator makes it first (docs/operations.md).
        raise CommandError(f"cannot make the data directory {directory}: {e.strerror}; make "
                           f"it first, owned by this user, mode 0700 (install -d -o USER "
                           f"-m 0700 {directory})") from e
    mode = os.stat(directory).st_mode & 0o777
    if mode & 0o007:
        raise CommandError(f"the data directory {directory} is accessible by other users "
                           f"(mode {mode:04o}); make it private first: chmod 700 {directory}")

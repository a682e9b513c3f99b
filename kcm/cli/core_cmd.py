"""``kcm core``: set up and administer a kcm-core deployment (operator commands).

* ``kcm core init [-c CONFIG]``: create the L1 key file (mode 0600) if missing, create or
  upgrade the database schema (Alembic), record the L1 check value, and anchor audit records
  written before the audit chain was keyed.
* ``kcm core tenant add TENANT [-c CONFIG]``: create a tenant and its tenant key (L2).
* ``kcm core service add TENANT SERVICE [-c CONFIG]``: create a service key (L3) for a
  service of a tenant; run again to add a new version (rotation).
* ``kcm core bootstrap TENANT SERVICE [-c CONFIG]``: make sure the tenant and a service key
  exist (idempotent; what ``make run`` uses).

These run on the core's host, with direct access to its database and L1 key file.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

from kcm.cli import CommandError, add_command

if TYPE_CHECKING:
    from kcm.core.config import CoreConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``core`` and its actions to the ``kcm`` parser."""
    actions = add_command(subparsers, "core", "initialise and administer kcm-core", __doc__)

    init = actions.add_parser("init", help="create the L1 key file and the database schema")
    config_option(init)
    init.set_defaults(run=_run_init, prog="kcm core init")

    tenant = actions.add_parser("tenant", help="tenants")
    tenant_actions = tenant.add_subparsers(dest="tenant_action", metavar="ACTION",
                                           required=True)
    add_tenant = tenant_actions.add_parser("add", help="create a tenant and its key (L2)")
    add_tenant.add_argument("tenant")
    config_option(add_tenant)
    add_tenant.set_defaults(run=_run_tenant_add, prog="kcm core tenant add")

    service = actions.add_parser("service", help="services")
    service_actions = service.add_subparsers(dest="service_action", metavar="ACTION",
                                             required=True)
    add_service = service_actions.add_parser(
        "add", help="create a service key (L3) version for a tenant's service")
    add_service.add_argument("tenant")
    add_service.add_argument("service")
    config_option(add_service)
    add_service.set_defaults(run=_run_service_add, prog="kcm core service add")

    bootstrap = actions.add_parser(
        "bootstrap", help="ensure a tenant and a service key exist (idempotent)")
    bootstrap.add_argument("tenant")
    bootstrap.add_argument("service")
    config_option(bootstrap)
    bootstrap.set_defaults(run=_run_bootstrap, prog="kcm core bootstrap")


def config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``-c/--config``, kcm-core's configuration file (default: $KCM_CORE_CONFIG)."""
    parser.add_argument("-c", "--config", default=os.environ.get("KCM_CORE_CONFIG"),
                        help="kcm-core configuration file (default: $KCM_CORE_CONFIG)")


def core_config(args: argparse.Namespace) -> CoreConfig:
    """The kcm-core configuration ``-c/--config`` names; CommandError when it is wrong."""
    from kcm.config_file import ConfigError
    from kcm.core.config import load_config

    try:
        return load_config(args.config)
    except ConfigError as e:
        raise CommandError(str(e)) from e


def _run_init(args: argparse.Namespace) -> int:
    from kcm.core import audit
    from kcm.core.l1 import L1Error, open_l1
    from kcm.core.service import L1_CHECK_META
    from kcm.core.store import repository
    from kcm.core.store.engine import Store
    from kcm.core.store.migrate import upgrade

    config = core_config(args)
    for directory in _data_directories(config):
        _private_directory(directory)
    try:
        l1, created = open_l1(config.l1_key_file, config.l1_pkcs11, create=True)
    except L1Error as e:
        raise CommandError(str(e)) from e
    upgrade(config.database)
    store = Store(config.database)
    store.audit_key = l1.audit_key()
    check = l1.check_value()

    def record(session) -> audit.AuditRow | None:
        known = repository.get_meta(session, L1_CHECK_META)
        if known is not None and known != check:
            raise CommandError(f"the {l1.description} is not the L1 key of this database")
        repository.set_meta(session, L1_CHECK_META, check)
        return audit.key_chain(session, by="kcm core init")

    anchor = store.run_sync(record)
    print(f"{l1.description} ({'created' if created else 'existing'})")
    print(f"database: {config.database} (schema up to date)")
    if anchor is not None:
        print(f"audit chain keyed: record {anchor.seq} anchors the {anchor.seq - 1} records "
              "written before")
    return 0


def _with_keyring(args: argparse.Namespace, fn) -> str:
    from kcm.core.keyring import Keyring
    from kcm.core.l1 import L1Error, open_l1
    from kcm.core.store.engine import Store

    config = core_config(args)
    try:
        keyring = Keyring(open_l1(config.l1_key_file, config.l1_pkcs11)[0])
    except (OSError, L1Error) as e:
        raise CommandError(f"cannot load the L1 key: {e}") from e
    store = Store(config.database)
    store.audit_key = keyring.audit_key
    return store.run_sync(lambda session: fn(session, keyring))


def _run_tenant_add(args: argparse.Namespace) -> int:
    from kcm.core.hierarchy import provision_tenant

    uid = _with_keyring(args, lambda s, k: provision_tenant(s, k, args.tenant,
                                                            now=int(time.time())))
    print(f"tenant {args.tenant}: tenant key {uid}")
    return 0


def _run_service_add(args: argparse.Namespace) -> int:
    from kcm.core.hierarchy import provision_service
    from kcm.kmip.errors import KmipError

    try:
        uid = _with_keyring(args, lambda s, k: provision_service(
            s, k, args.tenant, args.service, now=int(time.time())))
    except KmipError as e:
        raise CommandError(e.message) from e
    print(f"tenant {args.tenant}, service {args.service}: service key {uid}")
    return 0


def _run_bootstrap(args: argparse.Namespace) -> int:
    from kcm.core.hierarchy import provision_service, provision_tenant
    from kcm.core.store import repository

    def ensure(session, keyring) -> str:
        now = int(time.time())
        provision_tenant(session, keyring, args.tenant, now=now)
        existing = repository.find_l3(session, args.tenant, args.service, active_only=True)
        if existing:
            return existing[0].uid
        return provision_service(session, keyring, args.tenant, args.service, now=now)

    uid = _with_keyring(args, ensure)
    print(f"tenant {args.tenant}, service {args.service}: service key {uid}")
    return 0


def _data_directories(config: CoreConfig) -> list[str]:
    """The directories that hold the L1 key file (unless L1 is in a token) and an SQLite
    database (and its WAL/SHM)."""
    directories = ([] if config.l1_pkcs11
                   else [os.path.dirname(os.path.abspath(config.l1_key_file))])
    prefix = "sqlite:///"
    if config.database.startswith(prefix) and config.database[len(prefix):]:
        directories.append(os.path.dirname(os.path.abspath(config.database[len(prefix):])))
    return directories


def _private_directory(directory: str) -> None:
    """Create ``directory`` owner-only (0700), or refuse one that others may read or enter:
    the L1 key file and the database must not sit where other users can reach them."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    mode = os.stat(directory).st_mode & 0o777
    if mode & 0o007:
        raise CommandError(f"the data directory {directory} is accessible by other users "
                           f"(mode {mode:04o}); make it private first: chmod 700 {directory}")

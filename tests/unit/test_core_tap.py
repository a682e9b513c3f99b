"""twistd kcm-core: options, and the service tree makeService assembles (reading nothing);
a start that cannot go through stops whole, with a clear error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import delete, update
from twisted.application.service import Application, IService
from twisted.internet.task import Clock
from twisted.logger import ILogObserver
from twisted.python import usage

from kcm.core import audit, keys, tap
from kcm.core.config import CoreConfig
from kcm.core.keyring import Keyring
from kcm.core.policy import AccessPolicy, ApplicationObjects
from kcm.core.service import L1_CHECK_META, CoreService, MasterKey, StartupError
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.core.store.schema import AuditLog, Meta
from kcm.kmip_protocol import ConnectionLimits
from kcm.link.frames import FRAME_OVERHEAD
from kcm.tls_policy import TlsPolicy
from tests.unit.test_audit import write_legacy_chain
from tests.vectors import REPO_ROOT

TREE = ["kcm-sqlite-owner", "kcm-database-sessions", "kcm-l1-before-migration", "kcm-store",
        "kcm-object-cache-expiry", "kcm-l1", "kcm-tenant-rates", "kcm-core-presence",
        "kcm-audit-checkpoints",
        "kcm-policy",
        "kcm-tls-refresh", "kcm-kmip-listener",
        "kcm-event-fanout", "kcm-outbox-listener", "kcm-link-listener", "kcm-state-sweeper"]


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_defaults_and_logging_options() -> None:
    assert parse()["core_config"] == CoreConfig()
    assert (CoreConfig().log_format, CoreConfig().log_level) == ("json", "info")
    config = parse("--log-format", "text", "--log-level", "debug")["core_config"]
    assert (config.log_format, config.log_level) == ("text", "debug")


def test_audit_checkpoint_interval(tmp_path: Path) -> None:
    assert CoreConfig().audit_checkpoint_interval == 300.0
    config_file = tmp_path / "core.toml"
    config_file.write_text("[core]\naudit_checkpoint_interval = 60\n")
    assert parse("-c", str(config_file))["core_config"].audit_checkpoint_interval == 60.0
    options = parse("-c", str(config_file), "--audit-checkpoint-interval", "2.5")
    assert options["core_config"].audit_checkpoint_interval == 2.5
    reactor = Clock()
    checkpoints = tap.makeService(options, reactor=reactor).getServiceNamed(
        "kcm-audit-checkpoints")
    assert (checkpoints.step, checkpoints.clock) == (2.5, reactor)
    for wrong in ("0", "-5", "soon"):
        with pytest.raises(usage.UsageError, match="audit_checkpoint_interval"):
            parse("--audit-checkpoint-interval", wrong)


def test_the_sqlite_lock_waits_for_the_store_it_is_given() -> None:
    """The SQLite file's lock is let go once the store's threads have ended
    (kcm.core.sqlite_owner): only if the core's owner is given the core's store."""
    core = tap.makeService(parse(), reactor=Clock())
    assert core.getServiceNamed("kcm-sqlite-owner").store is core.getServiceNamed("kcm-store")


def test_object_cache_size(tmp_path: Path) -> None:
    assert CoreConfig().object_cache_size == 10_000
    config_file = tmp_path / "core.toml"
    config_file.write_text("[core]\nobject_cache_size = 50\n")
    assert parse("-c", str(config_file))["core_config"].object_cache_size == 50
    options = parse("-c", str(config_file), "--object-cache-size", "0")
    assert options["core_config"].object_cache_size == 0
    store = tap.makeService(options, reactor=Clock()).getServiceNamed("kcm-store")
    assert store.objects.size == 0
    for wrong in ("-1", "many", "2.5"):
        with pytest.raises(usage.UsageError, match="object_cache_size"):
            parse("--object-cache-size", wrong)


def test_the_object_cache_ages_on_the_reactor_time_its_expiry_timer_runs_on() -> None:
    """The cache's ttl and the timer that expires it run on one clock (the reactor's), as
    the keyring's current-L2 ttl does: advancing the reactor past the ttl evicts an entry
    no request reads again."""
    reactor = Clock()
    core = tap.makeService(parse(), reactor=reactor)
    cache = core.getServiceNamed("kcm-store").objects
    expiry = core.getServiceNamed("kcm-object-cache-expiry")
    cache.put("t", "u", (1, 1), ())
    expiry.startService()
    try:
        reactor.advance(cache.ttl - 1)
        assert cache.holds("t", "u")
        reactor.advance(cache.ttl / 10 + 1)
        assert not cache.holds("t", "u")
    finally:
        expiry.stopService()
    assert core.getServiceNamed("kcm-l1").keyring._clock == reactor.seconds


def test_tls_policy_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    assert CoreConfig().tls.policy == TlsPolicy()  # ECDHE + AEAD, TLS 1.2 and 1.3
    config_file = tmp_path / "core.toml"
    config_file.write_text('[core.tls]\nprofile = "kmip-compat"\n')
    policy = parse("-c", str(config_file))["core_config"].tls.policy
    assert policy == TlsPolicy(profile="kmip-compat")
    assert "AES128-SHA256" in policy.tls12_ciphers
    assert parse("--tls-min-version", "1.3")["core_config"].tls.policy.min_version == "1.3"
    ciphers = parse("--tls-ciphers", "ECDHE+AESGCM")["core_config"].tls.policy.tls12_ciphers
    assert ciphers == "ECDHE+AESGCM"


@pytest.mark.parametrize("argv", [
    ["--tls-min-version", "1.1"], ["--tls-profile", "legacy"],
    ["--tls-profile", "kmip-compat", "--tls-ciphers", "AES128-SHA256"],
    ["--tls-profile", "kmip-compat", "--tls-min-version", "1.3"],
])
def test_wrong_tls_policies_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError, match="core.tls"):
        parse(*argv)


@pytest.mark.parametrize("argv", [["--log-format", "xml"], ["--log-level", "chatty"]])
def test_unknown_logging_settings_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError, match="log"):
        parse(*argv)


def test_application_objects_is_a_policy_setting_with_a_safe_default() -> None:
    assert CoreConfig().access == AccessPolicy(ApplicationObjects.OWN_SERVICE)
    config = parse("--application-objects", "tenant")["core_config"]
    assert config.access.application_objects is ApplicationObjects.TENANT
    with pytest.raises(usage.UsageError, match="application_objects must be one of "
                                               "own-service, tenant"):
        parse("--application-objects", "everything")
    # The handler the service tree is built with applies it.
    core = tap.makeService(parse("--application-objects", "tenant"), reactor=Clock())
    assert core.handler._server_info.access == config.access


def test_the_documented_example_file_loads() -> None:
    from kcm.core.config import load_config

    config = load_config(REPO_ROOT / "etc" / "kcm-core.toml")
    assert config.log_format == "json"


def test_request_limits_come_from_core_limits_and_reach_the_handler(tmp_path: Path) -> None:
    from kcm.core.config import CoreLimits

    assert CoreLimits() == CoreLimits(max_batch_items=64, max_locate_results=1000,
                                      request_deadline=10.0)
    path = tmp_path / "core.toml"
    path.write_text("[core.limits]\nmax_batch_items = 8\nmax_locate_results = 50\n"
                    "request_deadline = 2.5\nidle_timeout = 30.0\n")
    core = tap.makeService(parse("-c", str(path)), reactor=Clock())
    limits = core.handler.limits
    assert (limits.max_batch_items, limits.max_locate_results, limits.request_deadline,
            limits.idle_timeout) == (8, 50, 2.5, 30.0)


def test_max_objects_per_tenant_reaches_the_store_and_is_checked(tmp_path: Path) -> None:
    """A finite bound by default (a fresh install is protected); 0 is none; the store puts
    it in each write transaction (kcm.core.store.quota)."""
    from kcm.core.config import CoreLimits

    assert CoreLimits().max_objects_per_tenant == 1_000_000
    assert tap.makeService(parse(), reactor=Clock()).store.max_objects_per_tenant == 1_000_000
    path = tmp_path / "core.toml"
    path.write_text("[core.limits]\nmax_objects_per_tenant = 0\n")
    assert tap.makeService(parse("-c", str(path)),
                           reactor=Clock()).store.max_objects_per_tenant == 0
    assert parse("--max-objects-per-tenant", "5")["core_config"].limits \
        .max_objects_per_tenant == 5
    for wrong in (-1, True, 2.5):
        with pytest.raises(ValueError, match="max_objects_per_tenant must be a whole number"):
            CoreLimits(max_objects_per_tenant=wrong)


def test_the_tenants_request_rate_reaches_the_handler_and_is_checked(tmp_path: Path) -> None:
    """Off by default (a one-tenant deployment is never throttled by surprise); the file's
    or the command line's rate and burst reach the handler's buckets."""
    from kcm.core.config import CoreLimits

    assert (CoreLimits().requests_per_second_per_tenant,
            CoreLimits().request_burst_per_tenant) == (0, 0)
    rates = tap.makeService(parse(), reactor=Clock()).handler._rates
    assert rates.limit("demo") == (0.0, 1.0) and rates.admit("demo", 10**6) is None
    path = tmp_path / "core.toml"
    path.write_text("[core.limits]\nrequests_per_second_per_tenant = 10\n"
                    "request_burst_per_tenant = 25\n")
    rates = tap.makeService(parse("-c", str(path)), reactor=Clock()).handler._rates
    assert rates.limit("demo") == (10.0, 25.0)
    limits = parse("--requests-per-second-per-tenant", "2.5",
                   "--request-burst-per-tenant", "0")["core_config"].limits
    assert (limits.requests_per_second_per_tenant, limits.request_burst_per_tenant) == (2.5, 0)
    for wrong in (-1, True, float("nan"), float("inf"), "10"):
        with pytest.raises(ValueError, match="requests_per_second_per_tenant must be a number"):
            CoreLimits(requests_per_second_per_tenant=wrong)
    for wrong in (-1, True, 2.5):
        with pytest.raises(ValueError, match="request_burst_per_tenant must be a whole number"):
            CoreLimits(request_burst_per_tenant=wrong)


def test_l1_in_a_token_comes_from_l1_pkcs11_in_the_file_or_on_the_command_line(
        tmp_path: Path) -> None:
    uri = "pkcs11:token=kcm;object=kcm-l1?module-path=/m.so&pin-source=file:/p"
    path = tmp_path / "core.toml"
    path.write_text(f'[core]\nl1_pkcs11 = "{uri}"\n')
    assert parse("-c", str(path))["core_config"].l1_pkcs11 == uri
    assert parse("--l1-pkcs11", uri + "x")["core_config"].l1_pkcs11 == uri + "x"
    assert parse()["core_config"].l1_pkcs11 is None  # the key file is the default
    core = tap.makeService(parse("-c", str(path)), reactor=Clock())
    assert core.getServiceNamed("kcm-l1").l1_pkcs11 == uri


@pytest.mark.parametrize(("option", "value", "secret", "why"), [
    ("--database", "postgresql+psycopg://kcm:S3cret@db:5432/kcm", "S3cret", "password"),
    ("--database", "postgresql+psycopg://kcm@db/kcm?sslpassword=S3cret", "S3cret",
     "password"),
    ("--l1-pkcs11", "pkcs11:token=kcm;object=kcm-l1?module-path=/m.so&pin-value=S3cret",
     "S3cret", "PIN"),
])
def test_a_secret_on_the_command_line_is_refused_in_the_file_taken(
        tmp_path: Path, option: str, value: str, secret: str, why: str) -> None:
    """A command line is every local user's to read (ps): a password or a PIN there is
    refused, without repeating it; the same value in the configuration file is taken."""
    with pytest.raises(usage.UsageError) as refused:
        parse(option, value)
    assert why in str(refused.value) and secret not in str(refused.value)
    path = tmp_path / "core.toml"
    setting = option[2:].replace("-", "_")
    path.write_text(f'[core]\n{setting} = "{value}"\n')
    assert getattr(parse("-c", str(path))["core_config"], setting) == value


def test_the_command_line_takes_a_database_url_and_a_pkcs11_uri_without_secrets() -> None:
    config = parse("--database", "postgresql+psycopg://kcm@db/kcm?sslmode=verify-full",
                   "--l1-pkcs11",
                   "pkcs11:token=kcm;object=kcm-l1?module-path=/m.so&pin-source=file:/p",
                   )["core_config"]
    assert config.database == "postgresql+psycopg://kcm@db/kcm?sslmode=verify-full"


@pytest.mark.parametrize(("setting", "error"), [
    ("max_batch_items = 0", "core.limits.max_batch_items must be a whole number of at least 1"),
    ("max_locate_results = 2.5", "core.limits.max_locate_results must be a whole number"),
    ("request_deadline = 0", "core.limits.request_deadline must be a positive number"),
    ("request_deadline = \"soon\"", "core.limits.request_deadline must be a positive number"),
    ("max_batch = 3", "unknown setting core.limits.max_batch"),
])
def test_wrong_request_limits_are_usage_errors(tmp_path: Path, setting: str, error: str) -> None:
    path = tmp_path / "core.toml"
    path.write_text(f"[core.limits]\n{setting}\n")
    with pytest.raises(usage.UsageError, match=error):
        parse("-c", str(path))


def test_make_service_assembles_the_tree_and_reads_nothing(tmp_path: Path,
                                                          monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default paths name files that do not exist here
    core = tap.makeService(parse("--policy-file", "absent.toml"), reactor=Clock())
    assert isinstance(core, CoreService)
    assert [child.name for child in core] == TREE
    assert core.handler is not None and core.store is not None
    assert core.fanout is not None and core.link_factory is not None
    # A fan-out that cannot read the outbox sends the gateways to another core: watched
    # where other cores may share the database (PostgreSQL), not on this SQLite file.
    assert core.fanout.on_stale == [core.link_factory.events_stale]
    assert core.fanout.stale_after is None
    assert core.subject_map is None and not core.keyring.loaded
    assert not core.running and not any(child.running for child in core)
    assert list(tmp_path.iterdir()) == []  # no database, no directory


def test_the_fan_out_has_the_core_forget_each_removed_tenant(tmp_path: Path,
                                                             monkeypatch) -> None:
    from kcm.core.events import TenantRemovals

    monkeypatch.chdir(tmp_path)
    core = tap.makeService(parse("--policy-file", "absent.toml"), reactor=Clock())
    [watch] = [s for s in core.fanout._subscribers if isinstance(s, TenantRemovals)]
    assert watch._forget == [core.store.known.forget_tenant, core.keyring.forget_tenant]


def test_on_postgresql_the_fan_out_is_watched_for_staleness(tmp_path: Path,
                                                          monkeypatch) -> None:
    from kcm.core.event_fanout import STALE_AFTER

    monkeypatch.chdir(tmp_path)
    core = tap.makeService(parse("--policy-file", "absent.toml", "--database",
                                 "postgresql+psycopg://kcm@127.0.0.1:1/kcm"), reactor=Clock())
    assert core.fanout.stale_after == STALE_AFTER
    assert core.fanout.on_stale == [core.link_factory.events_stale]


def test_without_a_link_listener_there_is_no_fanout() -> None:
    core = tap.makeService(parse("--link-listen", ""), reactor=Clock())
    assert [child.name for child in core] == [
        name for name in TREE
        if name not in ("kcm-event-fanout", "kcm-outbox-listener", "kcm-link-listener")]
    assert core.fanout is None and core.link_factory is None


@pytest.mark.parametrize("max_message_size", [None, 64 << 10, 8 << 20])
def test_link_frames_are_sized_from_the_maximum_message_size(tmp_path: Path,
                                                             max_message_size) -> None:
    path = tmp_path / "core.toml"
    path.write_text("[core.limits]\n" + (f"max_message_size = {max_message_size}\n"
                                         if max_message_size else ""))
    core = tap.makeService(parse("-c", str(path)), reactor=Clock())
    size = max_message_size or ConnectionLimits().max_message_size
    assert core.link_factory.settings.max_frame_size == size + FRAME_OVERHEAD


def test_twistd_application_gets_the_kcm_log_observer() -> None:
    application = Application("kcm-core")
    core = tap.makeService(parse(), reactor=Clock())
    core.setServiceParent(application)
    assert ILogObserver.providedBy(application.getComponent(ILogObserver))
    assert list(IService(application)) == [core]


@pytest.fixture
def deployment(tmp_path: Path) -> tuple[str, Path]:
    database = f"sqlite:///{tmp_path / 'kcm.db'}"
    l1_file = tmp_path / "l1.key"
    keys.create_l1_keyfile(l1_file)
    return database, l1_file


def start(database: str, l1_file: Path) -> CoreService:
    core = tap.makeService(parse("--database", database, "--l1-key-file", str(l1_file)),
                           reactor=Clock())
    return core


def test_an_uninitialised_database_stops_the_start(deployment) -> None:
    core = start(*deployment)
    with pytest.raises(StartupError, match="not initialised: run `kcm core init` first"):
        core.startService()
    assert not core.running and not any(child.running for child in core)
    assert not core.keyring.loaded


def test_another_l1_key_stops_the_start(deployment) -> None:
    database, l1_file = deployment
    upgrade(database)
    store = Store(database)
    store.run_sync(lambda s: repository.set_meta(s, L1_CHECK_META,
                                                 keys.key_check_value(os.urandom(32))))
    store.stopService()
    core = start(database, l1_file)
    with pytest.raises(StartupError, match="is not the L1 key of this database"):
        core.startService()
    assert not core.running and not any(child.running for child in core)


def test_the_master_key_keys_the_store_and_anchors_an_unkeyed_chain(deployment) -> None:
    database, l1_file = deployment
    # Two records as kcm-core wrote them before the chain was keyed (schema 0001: no MAC,
    # head SEQ:DIGEST), the database then upgraded.
    unkeyed_digest = write_legacy_chain(database, 2)
    l1 = keys.load_l1(l1_file)
    store = Store(database)
    store.run_sync(lambda s: repository.set_meta(s, L1_CHECK_META, keys.key_check_value(l1)))
    keyring = Keyring()
    MasterKey(keyring, store, str(l1_file)).startService()
    assert store.audit_key == keyring.audit_key == keys.derive_audit_key(l1)
    result = store.run_sync(audit.verify_chain, write=False)
    assert (result.ok, result.records_checked, result.unkeyed_records) == (True, 3, 2)
    anchor = store.run_sync(lambda s: s.get(AuditLog, 3))
    assert (anchor.operation, anchor.principal, anchor.prev_digest) == (
        audit.KEY_CHAIN_OPERATION, "kcm-core", unkeyed_digest)
    MasterKey(Keyring(), store, str(l1_file)).startService()  # a keyed chain: nothing to do
    assert store.run_sync(audit.verify_chain, write=False).records_checked == 3
    store.stopService()


def test_the_master_key_refuses_a_chain_stripped_of_its_macs(deployment) -> None:
    """A chain keyed from the start whose MACs were all removed (and its head deleted):
    kcm-core does not start, rather than anchor the forgery."""
    database, l1_file = deployment
    upgrade(database)
    l1 = keys.load_l1(l1_file)
    store = Store(database)
    store.run_sync(lambda s: repository.set_meta(s, L1_CHECK_META, keys.key_check_value(l1)))
    store.run_sync(lambda s: [audit.append_audit(s, audit.AuditEvent("p", "Get", "S", "c"),
                                                 audit_key=keys.derive_audit_key(l1))
                              for _ in range(2)])

    def strip(session) -> None:
        session.execute(update(AuditLog).values(mac=None))
        session.execute(delete(Meta).where(Meta.key == audit.HEAD_META_KEY))

    store.run_sync(strip)
    store.stopService()
    core = start(database, l1_file)
    with pytest.raises(StartupError, match=r"^the newest audit record \(2\) has no MAC and is "
                                           r"not due for anchoring \(MACs removed\?\); run "
                                           r"`kcm audit verify`$"):
        core.startService()
    assert not core.running
    store = Store(database)
    assert store.run_sync(lambda s: s.get(AuditLog, 3), write=False) is None
    store.stopService()


def test_the_link_listener_has_a_connection_cap_of_its_own_from_core_limits(
        tmp_path: Path) -> None:
    """KMIP clients can never take the slots the gateways link on (review 4, defect 2):
    the link listener's guard is reserved from the KMIP listener's, with its own cap."""
    path = tmp_path / "core.toml"
    path.write_text("[core.limits]\nhandshake_timeout = 2.5\nmax_connections = 300\n"
                    "max_connections_per_address = 7\nmax_unsent_output = 65536\n"
                    "write_timeout = 5.0\nmax_link_connections = 12\n")
    core = tap.makeService(parse("-c", str(path)), reactor=Clock())
    kmip, link = core.getServiceNamed("kcm-kmip-listener"), core.getServiceNamed(
        "kcm-link-listener")
    assert kmip.guard is not None and link.guard is not None
    assert link.guard is not kmip.guard and kmip.guard.reserved == [link.guard]
    assert (kmip.guard.max_connections, link.guard.max_connections) == (300, 12)
    assert link.guard.setting == "max_link_connections"
    assert kmip.bound_output and not link.bound_output
    limits = kmip.guard.limits
    assert (limits.handshake_timeout, limits.max_connections, limits.max_connections_per_address,
            limits.max_unsent_output, limits.write_timeout) == (2.5, 300, 7, 65536, 5.0)
    assert tap.makeService(parse(), reactor=Clock()).getServiceNamed(
        "kcm-link-listener").guard.max_connections == 64
    assert parse("--max-link-connections", "8")["core_config"].limits.max_link_connections == 8


def test_the_ipv6_address_prefix_reaches_both_listeners_guards(tmp_path: Path) -> None:
    path = tmp_path / "core.toml"
    path.write_text("[core.limits]\nipv6_address_prefix = 64\n")
    core = tap.makeService(parse("-c", str(path)), reactor=Clock())
    for name in ("kcm-kmip-listener", "kcm-link-listener"):
        assert core.getServiceNamed(name).guard.group("2001:db8:1:2::7") == \
            "2001:db8:1:2::/64"
    options = parse("-c", str(path), "--ipv6-address-prefix", "48")
    assert options["core_config"].limits.ipv6_address_prefix == 48
    with pytest.raises(usage.UsageError,
                       match="core.limits.ipv6_address_prefix must be a whole number"):
        parse("--ipv6-address-prefix", "31")


@pytest.mark.parametrize(("setting", "error"), [
    ("handshake_timeout = 0", "core.limits.handshake_timeout must be a positive number"),
    ("max_connections = 0", "core.limits.max_connections must be a whole number"),
    ("max_connections_per_address = 1.5", "core.limits.max_connections_per_address must be"),
    ("max_unsent_output = -1", "core.limits.max_unsent_output must be a whole number"),
    ("write_timeout = \"never\"", "core.limits.write_timeout must be a positive number"),
    ("max_link_connections = 0", "core.limits.max_link_connections must be a whole number"),
    ("ipv6_address_prefix = 16", "core.limits.ipv6_address_prefix must be a whole number "
                                 "from 32 to 128"),
])
def test_wrong_connection_limits_are_usage_errors(tmp_path: Path, setting: str,
                                                  error: str) -> None:
    path = tmp_path / "core.toml"
    path.write_text(f"[core.limits]\n{setting}\n")
    with pytest.raises(usage.UsageError, match=error):
        parse("-c", str(path))


def test_every_limit_and_database_threads_have_a_command_line_override(tmp_path: Path) -> None:
    """docs/operations.md promises an override for every setting (issue 13)."""
    from dataclasses import fields

    from kcm.core.config import CoreLimits

    config_file = tmp_path / "core.toml"
    config_file.write_text("[core]\ndatabase_threads = 2\n[core.limits]\nmax_pending = 4\n"
                           "request_deadline = 3.0\n")
    config = parse("-c", str(config_file), "--database-threads", "8", "--max-pending", "6",
                   "--request-deadline", "2.5", "--max-workers-per-tenant", "2")["core_config"]
    assert config.database_threads == 8
    assert (config.limits.max_pending, config.limits.request_deadline,
            config.limits.max_workers_per_tenant) == (6, 2.5, 2)
    names = {key for key, *_ in tap.Options.optParameters}
    assert {f.name.replace("_", "-") for f in fields(CoreLimits)} <= names
    for argv, error in ((["--database-threads", "0"], "database_threads"),
                        (["--database-threads", "many"], "database_threads"),
                        (["--max-pending", "1.5"], "limits.max_pending must be a whole number"),
                        (["--idle-timeout", "soon"], "limits.idle_timeout must be a number"),
                        (["--idle-timeout", "-1"], "idle_timeout")):
        with pytest.raises(usage.UsageError, match=error):
            parse(*argv)


def test_object_cache_bytes(tmp_path: Path) -> None:
    assert CoreConfig().object_cache_bytes == 128 << 20
    config_file = tmp_path / "core.toml"
    config_file.write_text("[core]\nobject_cache_bytes = 16777216\n")
    options = parse("-c", str(config_file))
    assert options["core_config"].object_cache_bytes == 16 << 20
    store = tap.makeService(options, reactor=Clock()).getServiceNamed("kcm-store")
    assert store.objects.max_bytes == 16 << 20 and store.objects.max_entry_bytes == 256 << 10
    for wrong in ("-1", "1000", "many"):
        config_file.write_text(f"[core]\nobject_cache_bytes = {wrong!r}\n".replace("'", '"')
                               if wrong == "many" else f"[core]\nobject_cache_bytes = {wrong}\n")
        with pytest.raises((usage.UsageError, ValueError), match="object_cache_bytes"):
            parse("-c", str(config_file))


def test_every_setting_of_either_plane_has_a_command_line_override() -> None:
    """README.rst and etc/*.toml say every setting has one: `--object-cache-bytes`,
    `--hung-worker-timeout` and `--tls-crl-refresh` were missing."""
    from dataclasses import fields

    from kcm.config_file import TlsFiles
    from kcm.core.config import _TOP_LEVEL as CORE_SETTINGS
    from kcm.gateway import tap as gateway_tap
    from kcm.gateway.config import _TOP_LEVEL as GATEWAY_SETTINGS

    for options, settings in ((tap.Options, CORE_SETTINGS),
                              (gateway_tap.Options, GATEWAY_SETTINGS)):
        names = {key for key, *_ in options.optParameters}
        assert {s.replace("_", "-") for s in settings} <= names
        assert {"tls-" + f.name.replace("_", "-") for f in fields(TlsFiles)} <= names


def test_the_crl_refresh_from_the_command_line_is_a_number_of_seconds(tmp_path: Path) -> None:
    config_file = tmp_path / "core.toml"
    config_file.write_text("[core]\n")
    assert parse("-c", str(config_file), "--tls-crl-refresh", "2.5")[
        "core_config"].tls.crl_refresh == 2.5
    with pytest.raises(usage.UsageError, match="tls.crl_refresh"):
        parse("-c", str(config_file), "--tls-crl-refresh", "soon")


def test_the_drain_timeout_reaches_the_drain(tmp_path: Path) -> None:
    """A stopping core waits ``drain_timeout`` (5 s by default) for its requests."""
    from unittest import mock

    from twisted.internet.defer import Deferred

    from kcm.drain import DRAIN_TIMEOUT

    assert parse()["core_config"].drain_timeout == DRAIN_TIMEOUT
    config = parse("--drain-timeout", "11")["core_config"]
    core = CoreService(config, reactor=Clock(), store=mock.Mock(), keyring=mock.Mock(),
                       handler=mock.Mock(), policy=mock.Mock())
    core.running = True  # (as if started)
    with mock.patch("kcm.core.service.drain", return_value=Deferred()) as drained:
        core.stopService()
    assert drained.call_args.kwargs["timeout"] == 11.0
    for wrong in ("0", "-1", "3601", "soon"):
        with pytest.raises(usage.UsageError, match="core.drain_timeout"):
            parse("--drain-timeout", wrong)


def test_the_state_sweeper_writes_in_its_own_share_of_the_writer() -> None:
    """A sweep's transaction is a group commit under its own share key, so the writer's
    time is shared between it and the tenants (a re-wrap on a worker of its own held every
    tenant's request for whole batches)."""
    from functools import partial

    from kcm.core.request_handler import SWEEPER_SHARE

    core = tap.makeService(parse(), reactor=Clock())
    sweeper = core.getServiceNamed("kcm-state-sweeper")
    assert isinstance(sweeper._write, partial)
    assert sweeper._write.func == core.handler.write_in_turn
    assert sweeper._write.args == (SWEEPER_SHARE,)
    assert SWEEPER_SHARE[0] not in {"tenant", "principal"}  # never a caller's (share_of)


def test_accept_v1_wrapping_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    """On by default (this release); false from the file or ``--accept-v1-wrapping``, and
    given to the keyring; anything but a boolean is refused."""
    assert parse()["core_config"].accept_v1_wrapping is True
    config_file = tmp_path / "core.toml"
    config_file.write_text("[core]\naccept_v1_wrapping = false\n")
    assert parse("-c", str(config_file))["core_config"].accept_v1_wrapping is False
    assert parse("-c", str(config_file), "--accept-v1-wrapping", "true"
                 )["core_config"].accept_v1_wrapping is True
    core = tap.makeService(parse("--accept-v1-wrapping", "false"), reactor=Clock())
    assert core.keyring.accept_v1 is False
    for wrong in ('"no"', "1"):
        config_file.write_text(f"[core]\naccept_v1_wrapping = {wrong}\n")
        with pytest.raises(usage.UsageError, match="accept_v1_wrapping must be true or false"):
            parse("-c", str(config_file))
    with pytest.raises(usage.UsageError, match="accept_v1_wrapping must be true or false"):
        parse("--accept-v1-wrapping", "maybe")

"""twistd kcm-core: options, and the service tree makeService assembles (reading nothing);
a start that cannot go through stops whole, with a clear error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.application.service import Application, IService
from twisted.internet.task import Clock
from twisted.logger import ILogObserver
from twisted.python import usage

from kcm.core import keys, tap
from kcm.core.config import CoreConfig
from kcm.core.policy import AccessPolicy, ApplicationObjects
from kcm.core.service import L1_CHECK_META, CoreService, StartupError
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from tests.vectors import REPO_ROOT

TREE = ["kcm-store", "kcm-l1", "kcm-policy", "kcm-kmip-listener", "kcm-event-fanout",
        "kcm-link-listener", "kcm-state-sweeper"]


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_defaults_and_logging_options() -> None:
    assert parse()["core_config"] == CoreConfig()
    assert (CoreConfig().log_format, CoreConfig().log_level) == ("json", "info")
    config = parse("--log-format", "text", "--log-level", "debug")["core_config"]
    assert (config.log_format, config.log_level) == ("text", "debug")


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


def test_make_service_assembles_the_tree_and_reads_nothing(tmp_path: Path,
                                                          monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default paths name files that do not exist here
    core = tap.makeService(parse("--policy-file", "absent.toml"), reactor=Clock())
    assert isinstance(core, CoreService)
    assert [child.name for child in core] == TREE
    assert core.handler is not None and core.store is not None
    assert core.fanout is not None and core.link_factory is not None
    assert core.subject_map is None and not core.keyring.loaded
    assert not core.running and not any(child.running for child in core)
    assert list(tmp_path.iterdir()) == []  # no database, no directory


def test_without_a_link_listener_there_is_no_fanout() -> None:
    core = tap.makeService(parse("--link-listen", ""), reactor=Clock())
    assert [child.name for child in core] == [
        name for name in TREE if name not in ("kcm-event-fanout", "kcm-link-listener")]
    assert core.fanout is None and core.link_factory is None


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

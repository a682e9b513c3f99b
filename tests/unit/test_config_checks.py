"""What kcm-core's and kcm-gateway's configuration refuse before anything starts (a
value that would fail later, on every connection or as a traceback), and how a start that
fails anyway is reported: one line naming the setting or file, no traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python import usage

from kcm import process
from kcm.cli import main
from kcm.cli.dev_cmd import start_failure
from kcm.config_file import MIN_MESSAGE_SIZE, ConfigError, TlsFiles, tls_file_problem
from kcm.core import tap as core_tap
from kcm.core.config import load_config as load_core
from kcm.gateway import tap as gateway_tap
from kcm.gateway.config import load_config as load_gateway
from kcm.kmip_protocol import ConnectionLimits
from kcm.pki import init_pki


def _core(tmp_path: Path, text: str, overrides: dict[str, Any] | None = None) -> Any:
    path = tmp_path / "core.toml"
    path.write_text(text)
    return load_core(path, overrides)


def _gateway(tmp_path: Path, text: str, overrides: dict[str, Any] | None = None) -> Any:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_gateway(path, overrides)


# 1. The trust domain is checked with the rest of the configuration.

@pytest.mark.parametrize("value", ['"KCM.Test"', "5", '"kcm test"', '""'])
def test_a_wrong_trust_domain_is_refused_at_load(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"^core\.trust_domain "):
        _core(tmp_path, f"[core]\ntrust_domain = {value}\n")
    with pytest.raises(ConfigError, match=r"^gateway\.trust_domain "):
        _gateway(tmp_path, f"[gateway]\ntrust_domain = {value}\n")


def test_a_wrong_trust_domain_on_the_command_line_is_a_usage_error() -> None:
    with pytest.raises(usage.UsageError, match="core.trust_domain 'KCM.Test'"):
        core_tap.Options().parseOptions(["--trust-domain", "KCM.Test"])


# 2. Durations are finite, positive and bounded; whole numbers are whole.

@pytest.mark.parametrize(("setting", "error"), [
    ("[core.limits]\nhandshake_timeout = nan", "core.limits.handshake_timeout"),
    ("[core.limits]\nhandshake_timeout = inf", "core.limits.handshake_timeout"),
    ("[core.limits]\nhandshake_timeout = 3601", "core.limits.handshake_timeout .*at most 3600"),
    ("[core.limits]\nmessage_timeout = 7200", "core.limits.message_timeout .*at most 3600"),
    ("[core.limits]\nidle_timeout = -inf", "core.limits.idle_timeout"),
    ("[core.limits]\nwrite_timeout = nan", "core.limits.write_timeout"),
    ("[core.limits]\nrequest_deadline = nan", "core.limits.request_deadline"),
    ("[core.limits]\nrequest_deadline = inf", "core.limits.request_deadline"),
    ("[core]\naudit_checkpoint_interval = inf", "core.audit_checkpoint_interval"),
    ("[core]\nstate_sweep_interval = nan", "core.state_sweep_interval"),
    ("[core]\ndatabase_threads = 2.7", "core.database_threads must be a whole number"),
    ("[core]\ndatabase_threads = 257", "core.database_threads .* from 1 to 256"),
    ("[core]\nobject_cache_size = 10.5", "core.object_cache_size must be a whole number"),
    ("[core.limits]\nmax_message_size = 100", "core.limits.max_message_size must be at least"),
])
def test_core_durations_and_counts(tmp_path: Path, setting: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        _core(tmp_path, setting + "\n")


@pytest.mark.parametrize(("setting", "error"), [
    ("[gateway]\nl3_ttl = nan", "gateway.l3_ttl"),
    ("[gateway]\nmax_stale = inf", "gateway.max_stale"),
    ("[gateway]\ndek_cache_ttl = nan", "gateway.dek_cache_ttl"),
    ("[gateway]\nusage_report_interval = inf", "gateway.usage_report_interval"),
    ("[gateway]\nmax_in_flight = 2.5", "gateway.max_in_flight must be a whole number"),
    ("[gateway]\nmax_tombstones = 1e6", "gateway.max_tombstones must be a whole number"),
    ("[gateway]\nworkers = 1025", "gateway.workers must be 0 .* to 1024"),
    ("[gateway.limits]\nhandshake_timeout = nan", "gateway.limits.handshake_timeout"),
    ("[gateway.limits]\nmax_message_size = 4095", "gateway.limits.max_message_size"),
])
def test_gateway_durations_and_counts(tmp_path: Path, setting: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        _gateway(tmp_path, setting + "\n")


@pytest.mark.parametrize(("option", "value"), [
    ("handshake_timeout", "nan"), ("message_timeout", "inf"),
    ("request_deadline", "nan"), ("state_sweep_interval", "nan"),
    ("database_threads", "2.7"), ("max_message_size", "1024"),
])
def test_command_line_durations_and_counts(option: str, value: str) -> None:
    with pytest.raises(ConfigError, match=option):
        load_core(None, {option: value})


@pytest.mark.parametrize(("setting", "error"), [
    ("[core]\ndatabase_threads = \"4\"", "core.database_threads must be a whole number"),
    ("[core]\nobject_cache_size = \"100\"", "core.object_cache_size must be a whole number"),
    ("[core]\nstate_sweep_interval = \"60\"", "core.state_sweep_interval"),
    ("[core.limits]\nrequest_deadline = \"5\"", "core.limits.request_deadline"),
    ("[core.limits]\nmax_batch_items = \"5\"", "core.limits.max_batch_items"),
])
def test_a_number_written_as_a_toml_string_is_refused(tmp_path: Path, setting: str,
                                                       error: str) -> None:
    """TOML has numbers: a quoted one is a mistake the file's reader should hear of (the
    command line's strings are the only ones read as numbers)."""
    with pytest.raises(ConfigError, match=error):
        _core(tmp_path, setting + "\n")


@pytest.mark.parametrize(("setting", "error"), [
    ("[gateway]\nworkers = \"2\"", "gateway.workers must be a whole number"),
    ("[gateway]\nmax_in_flight = \"8\"", "gateway.max_in_flight must be a whole number"),
    ("[gateway]\nl3_ttl = \"30\"", "gateway.l3_ttl"),
    ("[gateway.tls]\ncrl_refresh = \"30\"", "tls.crl_refresh"),
])
def test_a_gateway_number_written_as_a_toml_string_is_refused(tmp_path: Path, setting: str,
                                                               error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        _gateway(tmp_path, setting + "\n")


def test_command_line_numbers_are_read_from_their_strings() -> None:
    config = load_core(None, {"database_threads": "3", "state_sweep_interval": "2.5",
                              "object_cache_size": "0", "request_deadline": "4",
                              "tls_crl_refresh": "5"})
    assert (config.database_threads, config.state_sweep_interval, config.object_cache_size,
            config.limits.request_deadline, config.tls.crl_refresh) == (3, 2.5, 0, 4, 5.0)
    with pytest.raises(ConfigError, match="core.database_threads must be a whole number"):
        load_core(None, {"database_threads": "three"})


def test_the_limits_themselves_refuse_nan_and_infinity() -> None:
    for name in ("idle_timeout", "message_timeout", "handshake_timeout", "write_timeout"):
        for value in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"limits.{name}"):
                ConnectionLimits(**{name: value})
    assert ConnectionLimits(handshake_timeout=3600, idle_timeout=86400).idle_timeout == 86400


def test_sane_values_still_load(tmp_path: Path) -> None:
    config = _core(tmp_path, "[core]\ndatabase_threads = 256\naudit_checkpoint_interval = 60\n"
                   f"[core.limits]\nmax_message_size = {MIN_MESSAGE_SIZE}\n"
                   "handshake_timeout = 3600\nrequest_deadline = 2.5\n")
    assert (config.database_threads, config.limits.max_message_size,
            config.limits.handshake_timeout) == (256, MIN_MESSAGE_SIZE, 3600)
    gateway = _gateway(tmp_path, "[gateway]\nworkers = 1024\nl3_ttl = 30\nmax_in_flight = 8\n")
    assert (gateway.workers, gateway.l3_ttl, gateway.max_in_flight) == (1024, 30.0, 8)
    assert load_core(None, {"database_threads": "3"}).database_threads == 3


# 3. A file given must be this service's; unknown tables are refused.

def test_a_file_without_the_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no \[core\] table"):
        _core(tmp_path, "[gateway]\nlisten = \"tcp:5698\"\n")
    with pytest.raises(ConfigError, match=r"has no \[gateway\] table"):
        _gateway(tmp_path, "[core]\nlisten = \"tcp:5696\"\n")
    with pytest.raises(ConfigError, match=r"has no \[core\] table"):
        _core(tmp_path, "")


def test_an_unknown_table_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown table 'cor'"):
        _core(tmp_path, "[cor]\nlisten = \"tcp:5696\"\n")
    with pytest.raises(ConfigError, match="unknown setting 'listen'"):
        _core(tmp_path, "listen = \"tcp:5696\"\n[core]\n")


def test_shared_files_and_sub_tables_alone_still_load(tmp_path: Path) -> None:
    both = "[core]\ndatabase_threads = 2\n[gateway]\nworkers = 2\n[client]\n"
    assert _core(tmp_path, both).database_threads == 2
    assert _gateway(tmp_path, both).workers == 2
    assert _core(tmp_path, "[core.limits]\nmax_pending = 4\n").limits.max_pending == 4


def test_the_core_command_refuses_a_gateway_configuration(
        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.vectors import REPO_ROOT

    assert main(["core", "tenant", "list", "-c", str(REPO_ROOT / "etc/kcm-gateway.toml")]) != 0
    assert "has no [core] table" in capsys.readouterr().err


# 4. [section.tls] names its unknown settings as the other tables do.

def test_an_unknown_tls_setting_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^unknown setting core\.tls\.certificate$"):
        _core(tmp_path, "[core.tls]\ncertificate = \"x.pem\"\n")
    with pytest.raises(ConfigError, match=r"^unknown setting gateway\.tls\.certificate$"):
        _gateway(tmp_path, "[gateway.tls]\ncertificate = \"x.pem\"\n")
    with pytest.raises(ConfigError, match=r"core\.tls\.cert must be the path"):
        _core(tmp_path, "[core.tls]\ncert = 5\n")


# 5. Values that used to fail while the service was assembled, and how a start fails.

@pytest.mark.parametrize(("setting", "error"), [
    ("listen = 25696", "core.listen must be an endpoint string"),
    ("listen = \"ssl:25696\"", "core.listen 'ssl:25696': give a plain endpoint"),
    ("listen = \"tcp:notaport\"", "core.listen 'tcp:notaport' .* port is not a number"),
    ("listen = \"tcp:5696:bogus=1\"", "core.listen 'tcp:5696:bogus=1' is not a valid endpoint"),
    ("listen = \"tcp:70000\"", "core.listen 'tcp:70000': the port must be"),
    ("link_listen = \"tls:5697\"", "core.link_listen 'tls:5697'"),
    ("metrics_listen = \"http://0.0.0.0:9696\"", "core.metrics_listen .* one of tcp, tcp6"),
    ("metrics_listen = 9696", "core.metrics_listen must be an endpoint string"),
    ("database = \"postgresql+psycopg://kcm:pw@db.example:5x32/kcm\"",
     "core.database: the port of the URL is not a number"),
    ("database = \"not a url\"", "core.database is not a database URL"),
    ("database = 5", "core.database must be a database URL"),
    # (kcm config check stopped with a ValueError, kcm-core refused it at start)
    ("database = \"mysql://kcm:pw@db.example/kcm\"", "core.database: unsupported database "
     "'mysql'"),
    # (a traceback at start, and kcm config check stopped with an AttributeError)
    ("log_level = 5", "core: log_level must be a string"),
    ("log_format = 5", "core: unknown log format 5"),
    # (kcm config check passed it, and the second listener could not start)
    ("listen = \"tcp:25696:interface=127.0.0.1\"\nlink_listen = \"tcp:25696\"",
     "core.link_listen listens on port 25696 of an interface core.listen listens on"),
    ("listen = \"tcp:25696\"\nmetrics_listen = \"tcp:25696:interface=10.0.0.1\"",
     "core.metrics_listen listens on port 25696"),
    ("l1_key_env = \"KCM L1\"", "core.l1_key_env must name an environment variable"),
    ("l1_key_env = \"1KEY\"", "core.l1_key_env must name an environment variable"),
    ("l1_key_env = \"\"", "core.l1_key_env must be a non-empty string"),
    ("l1_key_env = \"KCM_L1\"\nl1_pkcs11 = \"pkcs11:token=t;object=o\"",
     "core.l1_key_env and core.l1_pkcs11 name two L1 keys: set one"),
])
def test_core_values_checked_at_load(tmp_path: Path, setting: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error) as refused:
        _core(tmp_path, f"[core]\n{setting}\n")
    assert "pw@" not in str(refused.value)  # a database password is not repeated


@pytest.mark.parametrize(("setting", "error"), [
    ("listen = 5698", "gateway.listen must be an endpoint string"),
    ("core = \"ssl:127.0.0.1:5697\"", "gateway.core 'ssl:127.0.0.1:5697': give a plain"),
    ("core = [\"tcp:127.0.0.1:5697\", \"tcp:localhost\"]", "gateway.core 'tcp:localhost'"),
    ("core_server_name = 5", "gateway.core_server_name must be"),
    # (kcm config check passed these, and kcm-gateway refused them at start)
    ("core_server_name = \"kcm_core.internal\"", "gateway.core_server_name 'kcm_core.internal' "
     "is not a DNS name or IP address a TLS client can check: .*U\\+005F"),
    ("core_server_name = \"core..example\"", "gateway.core_server_name 'core..example' is not"),
    (f"core_server_name = \"{'a' * 64}.example\"", "gateway.core_server_name 'a+.example' is not"),
    ("metrics_listen = \"http://x\"", "gateway.metrics_listen"),
    ("log_level = 5", "gateway: log_level must be a string"),
    ("listen = \"tcp:25698\"\nmetrics_listen = \"tcp:25698:interface=127.0.0.1\"",
     "gateway.metrics_listen listens on port 25698"),
    # (IPv6 written as in a URL or bare: Python's TypeError, or nothing about the colons)
    ("core = \"tcp:[::1]:5697\"", r"gateway.core 'tcp:\[::1\]:5697' is not a valid "
     r"endpoint: an IPv6 address needs its colons escaped, no brackets: .*tcp:\\:\\:1:5697"),
    ("core = \"tcp:::1:5697\"", "gateway.core .* needs its colons escaped"),
    ("listen = \"tcp6:5698:interface=::1\"", "gateway.listen .* needs its colons escaped"),
    ("listen = \"tcp6:[::1]:5698\"", "gateway.listen .* needs its colons escaped"),
    # (brackets around an address written in full, without "::")
    ("core = \"tcp:[fd00:0:0:0:0:0:0:7]:5697\"", "gateway.core .* needs its colons escaped"),
    # (an address written in full with bare colons: Twisted read host fd00 and dropped the
    # rest, or failed in its own words)
    ("core = \"tcp:host=fd00:0:0:0:0:0:0:7:port=5697\"",
     "gateway.core .* needs its colons escaped"),
    ("core = \"tcp:fd00:0:0:0:0:0:0:7:5697\"", "gateway.core .* needs its colons escaped"),
    ("listen = \"tcp:5698:interface=fd00:0:0:0:0:0:0:7\"",
     "gateway.listen .* needs its colons escaped"),
    ("listen = \"tcp6:5698:interface=fd00:0:0:0:0:0:0:7\"",
     "gateway.listen .* needs its colons escaped"),
    # (with "::": Twisted read host "" and port 7, and nothing failed)
    ("core = \"tcp:host=fd00::7:port=5697\"", "gateway.core .* needs its colons escaped"),
])
def test_gateway_values_checked_at_load(tmp_path: Path, setting: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        _gateway(tmp_path, f"[gateway]\n{setting}\n")


def test_endpoint_kinds_the_product_uses_still_load(tmp_path: Path) -> None:
    config = _core(tmp_path, "[core]\nlisten = \"tcp6:5696:interface=\\\\:\\\\:1\"\n"
                   "link_listen = \"\"\nmetrics_listen = \"unix:/run/kcm.sock:mode=600\"\n"
                   "database = \"postgresql+psycopg://kcm@db.example:5432/kcm\"\n")
    assert config.link_listen == ""
    gateway = _gateway(tmp_path, "[gateway]\nlisten = \"fd:3\"\n"
                       "core = [\"tcp:10.0.0.1:5697\", \"tcp:10.0.0.2:5697\"]\n")
    assert gateway.core == ("tcp:10.0.0.1:5697", "tcp:10.0.0.2:5697")
    gateway = _gateway(tmp_path, "[gateway]\nlisten = 'tcp6:5698:interface=\\:\\:1'\n"
                       "core = ['tcp:\\:\\:1:5697', 'tcp:host=fd00\\:\\:7:port=5697']\n")
    assert gateway.core == ("tcp:\\:\\:1:5697", "tcp:host=fd00\\:\\:7:port=5697")
    # A tcp listener's interface may follow its port without its name (Twisted's
    # tcp:PORT:INTERFACE), as before the IPv6 hint; a backlog, only by name.
    assert _gateway(tmp_path, "[gateway]\nlisten = \"tcp:5698:127.0.0.1\"\n"
                    ).listen == "tcp:5698:127.0.0.1"
    # (The IPv6 hint is a tcp endpoint's: a unix socket's name may hold "[".)
    assert _gateway(tmp_path, "[gateway]\nmetrics_listen = \"unix:/run/kcm[1].sock\"\n"
                    ).metrics_listen == "unix:/run/kcm[1].sock"
    for listen in ("tcp:5696:127.0.0.1:1024", "tcp6:5696:1024"):  # (it would fail at start)
        with pytest.raises(ConfigError, match="give the backlog by name"):
            _core(tmp_path, f"[core]\nlisten = \"{listen}\"\n")
    for name in ("localhost", "kcm-core.example", "10.0.0.1", "fd00::1", "bücher.example"):
        assert _gateway(tmp_path, f"[gateway]\ncore_server_name = \"{name}\"\n"
                        ).core_server_name == name
    assert load_gateway(None, {"listen": "handoff:3"}).listen == "handoff:3"


def test_a_refused_configuration_prints_a_short_usage(tmp_path: Path) -> None:
    """twistd prints the options' usage, then the error: the usage is one line then."""
    path = tmp_path / "core.toml"
    path.write_text("[core]\nlisten = 25696\n")
    for plugin, options in (("kcm-core", core_tap.Options()),
                            ("kcm-gateway", gateway_tap.Options())):
        with pytest.raises(usage.UsageError):
            options.parseOptions(["-c", str(path), "--listen", "25696"])
        assert options.getUsage() == f"See twistd {plugin} --help for the options."
    assert "--database-threads" in core_tap.Options().getUsage()  # --help: every option


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return init_pki(tmp_path_factory.mktemp("pki") / "dev")


def test_tls_file_problems_name_the_setting_and_file(pki: Any, tmp_path: Path) -> None:
    good = TlsFiles(str(pki.core.cert), str(pki.core.key), str(pki.ca.cert))
    assert tls_file_problem(good, "core") is None
    other_key = TlsFiles(str(pki.core.cert), str(pki.gateway.key), str(pki.ca.cert))
    assert tls_file_problem(other_key, "core") == (
        f"core.tls.key: {pki.gateway.key} is not the key of the certificate in {pki.core.cert}")
    missing = TlsFiles(str(tmp_path / "nope.pem"), str(pki.core.key), str(pki.ca.cert))
    assert tls_file_problem(missing, "core") == (
        f"core.tls.cert: cannot read {tmp_path / 'nope.pem'}: No such file or directory")
    key_as_ca = TlsFiles(str(pki.core.cert), str(pki.core.key), str(pki.ca.key))
    assert tls_file_problem(key_as_ca, "gateway") == (
        f"gateway.tls.ca: {pki.ca.key} holds no PEM certificate")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    assert tls_file_problem(TlsFiles(str(pki.core.cert), str(junk), str(pki.ca.cert)),
                            "core") == f"core.tls.key: {junk} holds no PEM private key KCM can use"
    # A leaf given for the CA: the process started, and refused every peer at its handshake.
    leaf_as_ca = TlsFiles(str(pki.core.cert), str(pki.core.key), str(pki.app.cert))
    assert tls_file_problem(leaf_as_ca, "core") == (
        f"core.tls.ca: {pki.app.cert} holds no CA certificate (Basic Constraints cA TRUE, "
        "or keyCertSign): no peer's certificate could chain to it")
    from kcm.tls import server_tls_options
    with pytest.raises(ValueError, match="holds no CA certificate"):
        server_tls_options(pki.core.cert, pki.core.key, pki.app.cert)


class _Config:
    def __init__(self, tls: TlsFiles, policy_file: str | None = None) -> None:
        self.tls, self.policy_file = tls, policy_file


class _Failing(Service):
    def __init__(self, name: str, error: BaseException) -> None:
        self.name, self.error = name, error  # type: ignore[assignment]

    def startService(self) -> None:
        raise self.error


def test_a_failed_start_is_one_line_naming_the_file(
        pki: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the test's own, restored
    monkeypatch.setattr(process, "forbid_core_dumps", lambda: None)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        service = process.ProcessService("kcm-core", reactor=MemoryReactorClock())
        service.config = _Config(TlsFiles(str(pki.core.cert), str(pki.app.key),  # type: ignore[attr-defined]
                                          str(pki.ca.cert)))
        error = ValueError("[('x509 certificate routines', '', 'key values mismatch')]")
        _Failing("kcm-kmip-listener", error).setServiceParent(service)
        with pytest.raises(ValueError):
            service.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    [critical] = [e for e in events if e["log_level"] == LogLevel.critical]
    assert critical["error"] == (f"core.tls.key: {pki.app.key} is not the key of the "
                                 f"certificate in {pki.core.cert}")
    [debug] = [e for e in events if e["log_level"] == LogLevel.debug and "log_failure" in e]
    assert debug["log_failure"].value is error  # the traceback, at debug level only
    # Reaching the top uncaught (twistd re-raises it), it prints nothing more.
    printed: list[object] = []
    monkeypatch.setattr(sys, "stderr", type("W", (), {"write": printed.append,
                                                      "flush": lambda self: None})())
    sys.excepthook(ValueError, error, None)
    assert printed == []


def test_policy_and_os_errors_name_their_file(pki: Any) -> None:
    tls = TlsFiles(str(pki.core.cert), str(pki.core.key), str(pki.ca.cert))
    service = type("S", (), {"config": _Config(tls, "etc/policy.toml"),
                             "process_name": "kcm-core"})()
    reason = process.start_failure_reason(
        service, "kcm-policy", ValueError("Expected ']' (at line 1, column 10)"))
    assert reason == "policy_file etc/policy.toml: Expected ']' (at line 1, column 10)"
    missing = FileNotFoundError(2, "No such file or directory", "etc/policy.toml")
    assert process.start_failure_reason(service, "kcm-policy", missing) == (
        "policy_file etc/policy.toml: No such file or directory")
    # Not a TLS reader: its own error, on one line, whatever the TLS files are.
    assert process.start_failure_reason(service, "kcm-store", ValueError("a\n  b")) == "a b"


def test_a_log_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    from twisted.application.service import Application

    service = process.ProcessService("kcm-core", log_path=str(tmp_path / "no" / "x.log"))
    with pytest.raises(SystemExit, match=r"^kcm-core did not start: log_file: cannot open "):
        service.setServiceParent(Application("kcm-core"))



@pytest.mark.parametrize(("mode", "owner", "why"), [
    (0o666, None, "others may read or write it"),
    (0o604, None, "others may read or write it"),
    (0o600, 65534, "it belongs to another user"),
])
def test_a_log_file_others_may_read_is_refused_and_left_unwritten(
        tmp_path: Path, mode: int, owner: int | None, why: str) -> None:
    """The log carries the audit records: a file made beforehand by another user, or one
    every user may read, is not appended to (the secrets review)."""
    from twisted.application.service import Application

    if owner is not None and os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root (CI runs as root)")
    log = tmp_path / "kcm-core.log"
    log.write_bytes(b"")
    log.chmod(mode)
    if owner is not None:
        os.chown(log, owner, -1)
    service = process.ProcessService("kcm-core", log_path=str(log))
    with pytest.raises(SystemExit, match=rf"^kcm-core did not start: log_file: cannot open "
                                         rf"{log}: {why}"):
        service.setServiceParent(Application("kcm-core"))
    assert log.read_bytes() == b""


def test_a_log_file_the_group_may_read_is_taken(tmp_path: Path) -> None:
    """logrotate's ``create 0640 kcm adm`` makes such a file."""
    log = tmp_path / "kcm-core.log"
    log.write_bytes(b"")
    log.chmod(0o640)
    stream = process.open_log(str(log))
    stream.write("a line\n")
    stream.close()
    assert log.read_text() == "a line\n"


# 6. kcm pki init checks its arguments before it writes anything.

@pytest.mark.parametrize(("argv", "error"), [
    (["--days", "10000000"], "--days must be from 1 to 36500"),
    (["--days", "0"], "--days must be from 1 to 36500"),
    (["--host", "bad host!"], "--host 'bad host!' is neither a DNS name nor an IP address"),
    (["--host=-x.example"], "is neither a DNS name"),
])
def test_pki_init_refuses_wrong_arguments_first(tmp_path: Path, argv: list[str], error: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pki", "init", str(tmp_path / "pki"), *argv]) != 0
    assert error in capsys.readouterr().err
    assert not (tmp_path / "pki").exists()


def test_pki_init_takes_dns_names_and_addresses(tmp_path: Path) -> None:
    assert main(["pki", "init", str(tmp_path / "pki"), "--host", "kcm-1.example.com",
                 "--host", "::1", "--days", "36500"]) == 0


# kcm dev run: the reason a service gave, not the last lines alone.

def test_dev_run_finds_the_reason_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "kcm-core.log"
    log.write_text("2026-12-05T21:58:52+0000 [kcm.process#critical] kcm-core did not start: "
                   "kcm-l1: L1 key file var/l1.key has mode 0644\n"
                   + "2026-12-05T21:58:52+0000 [-] Main loop terminated.\n" * 30)
    assert start_failure(log) == ("kcm-core did not start: kcm-l1: L1 key file var/l1.key has "
                                  "mode 0644")
    log.write_text('{"level": "critical", "text": "kcm-core did not start: kcm-store: x"}\n')
    assert start_failure(log) == "kcm-core did not start: kcm-store: x"
    log.write_text("Usage: twistd [options]\nSee twistd kcm-core --help for the options.\n"
                   "twistd -n: core.listen must be an endpoint string such as tcp:5696\n")
    assert start_failure(log) == ("twistd -n: core.listen must be an endpoint string such as "
                                  "tcp:5696")
    log.write_text("nothing\n")
    assert start_failure(log) is None


def test_a_root_openssl_takes_as_a_ca_is_taken() -> None:
    """OpenSSL takes a root without Basic Constraints whose Key Usage has keyCertSign (and a
    version 1 root); so does the CA check (it refused them at first, and the server with)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from kcm.tls import is_ca_certificate

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")])

    def made(*extensions: x509.ExtensionType) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(1)
                   .not_valid_before(datetime.datetime(2020, 1, 1))
                   .not_valid_after(datetime.datetime(2040, 1, 1)))
        for extension in extensions:
            builder = builder.add_extension(extension, critical=True)
        return builder.sign(key, hashes.SHA256())

    usage = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                           "data_encipherment", "key_agreement", "crl_sign",
                           "encipher_only", "decipher_only"), False)
    assert is_ca_certificate(made(x509.KeyUsage(key_cert_sign=True, **usage)))
    assert is_ca_certificate(made(x509.BasicConstraints(ca=True, path_length=None)))
    assert not is_ca_certificate(made(x509.BasicConstraints(ca=False, path_length=None)))
    assert not is_ca_certificate(made(x509.KeyUsage(key_cert_sign=False, **usage)))
    assert not is_ca_certificate(made())

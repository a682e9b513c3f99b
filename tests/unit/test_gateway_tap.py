"""twistd kcm-gateway: options, configuration file and overrides, service assembly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage

from kcm.gateway import supervisor, tap
from kcm.gateway.config import GatewayConfig, load_config
from kcm.gateway.service import GatewayService
from kcm.gateway.supervisor import GatewaySupervisor
from kcm.kmip_protocol import ConnectionLimits
from kcm.link.frames import FRAME_OVERHEAD
from tests.vectors import REPO_ROOT


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_defaults_run_beside_a_core() -> None:
    config = parse()["gateway_config"]
    assert config == GatewayConfig()
    assert config.listen == "tcp:5698:interface=127.0.0.1"
    assert config.core == ("tcp:127.0.0.1:5697",)
    assert (config.l3_ttl, config.max_stale) == (300.0, 3600.0)


def test_the_documented_example_file_loads() -> None:
    config = load_config(REPO_ROOT / "etc" / "kcm-gateway.toml")
    assert config.tls.cert == "var/pki/gateway.pem"
    assert config.prewarm_services() == [("demo", "app")]


def test_file_then_command_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nlisten = "tcp:7000"\nl3_ttl = 10\nmax_stale = 20\n'
                    'prewarm = ["acme/db"]\n[gateway.tls]\ncert = "a.pem"\n'
                    '[gateway.limits]\nmax_pending = 4\n')
    config = parse("-c", str(path), "--l3-ttl", "5", "--prewarm", "a/b, c/d",
                   "--tls-key", "k.pem")["gateway_config"]
    assert config.listen == "tcp:7000"
    assert (config.l3_ttl, config.max_stale) == (5.0, 20.0)
    assert config.prewarm_services() == [("a", "b"), ("c", "d")]
    assert (config.tls.cert, config.tls.key) == ("a.pem", "k.pem")
    assert config.limits.max_pending == 4


@pytest.mark.parametrize("text", [
    '[gateway]\nprewarm = ["no-slash"]\n',
    '[gateway]\nbogus = 1\n',
    '[gateway.limits]\nbogus = 1\n',
    '[gateway]\nl3_ttl = 100\nmax_stale = 10\n',
    '[gateway]\nmax_in_flight = 0\n',
    '[gateway]\ndek_cache_size = -1\n',
    '[gateway]\ndek_cache_size = 1.5\n',
    '[gateway]\ndek_cache_ttl = 0\n',
])
def test_bad_settings_are_usage_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    with pytest.raises(usage.UsageError):
        parse("-c", str(path))


def test_make_service_only_assembles(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default certificate paths name files that do not exist
    service = tap.makeService(parse("--listen", "tcp:0"), reactor=Clock())
    assert isinstance(service, GatewayService)
    assert service.config.listen == "tcp:0"
    assert [child.name for child in service] == [
        # None: the refresher
        "kcm-sighup", "kcm-tls-refresh", "kcm-gateway-identity", "kcm-link",
        "kcm-kmip-listener", None, "kcm-dek-cache-expiry", "kcm-usage-report"]
    assert service.link is not None and service.cache is not None
    assert service.handler is not None
    assert not service.running and not any(child.running for child in service)
    assert service.link.gateway_name == "kcm-gateway"  # the certificate is not read yet


def test_held_keys_are_refreshed_in_later_turns_every_refresh_period(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    reactor = Clock()
    service = tap.makeService(parse("--listen", "tcp:0"), reactor=reactor)
    [refresher] = [child for child in service if child.name is None]
    assert refresher.step == service.cache.refresh_period == 300 / 16
    assert refresher.call[0] == service.cache.refresh_due
    assert service.cache._call_later == reactor.callLater  # (the rest of a refresh: later)


def test_opened_deks_are_kept_as_configured(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    service = tap.makeService(parse("--listen", "tcp:0", "--dek-cache-size", "50",
                                    "--dek-cache-ttl", "20"), reactor=Clock())
    opened_keys = service.cache.opened_keys
    assert (opened_keys.max_entries, opened_keys.ttl) == (50, 20.0)
    expiry = service.getServiceNamed("kcm-dek-cache-expiry")
    assert expiry.step == 2.0


def test_no_opened_deks_are_kept_with_a_size_of_0(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    service = tap.makeService(parse("--listen", "tcp:0", "--dek-cache-size", "0"),
                              reactor=Clock())
    assert service.cache.opened_keys is None
    assert "kcm-dek-cache-expiry" not in [child.name for child in service]


@pytest.mark.parametrize("max_message_size", [None, 64 << 10, 8 << 20])
def test_link_frames_are_sized_from_the_maximum_message_size(tmp_path: Path,
                                                             max_message_size) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[gateway.limits]\n" + (f"max_message_size = {max_message_size}\n"
                                            if max_message_size else ""))
    service = tap.makeService(parse("-c", str(path)), reactor=Clock())
    size = max_message_size or ConnectionLimits().max_message_size
    assert service.link.max_frame_size == size + FRAME_OVERHEAD


def test_a_start_that_cannot_read_the_certificate_fails_whole(tmp_path: Path,
                                                              monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    service = tap.makeService(parse("--listen", "tcp:0"), reactor=Clock())
    with pytest.raises(FileNotFoundError, match="gateway.pem"):
        service.startService()
    assert not service.running and not any(child.running for child in service)


def test_plugin_is_one_service_maker() -> None:
    source = (REPO_ROOT / "twisted" / "plugins" / "kcm_gateway.py").read_text()
    namespace: dict = {}
    exec(compile(source, "kcm_gateway.py", "exec"), namespace)
    maker = namespace["kcm_gateway"]
    assert (maker.tapname, maker.module) == ("kcm-gateway", "kcm.gateway.tap")


def test_the_kmip_listener_is_guarded_by_gateway_limits(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[gateway.limits]\nhandshake_timeout = 3.0\nmax_connections = 200\n"
                    "max_connections_per_address = 9\nmax_unsent_output = 1048576\n"
                    "write_timeout = 12.0\n")
    service = tap.makeService(parse("-c", str(path)), reactor=Clock())
    listener = service.getServiceNamed("kcm-kmip-listener")
    limits = listener.guard.limits
    assert (limits.handshake_timeout, limits.max_connections, limits.max_connections_per_address,
            limits.max_unsent_output, limits.write_timeout) == (3.0, 200, 9, 1 << 20, 12.0)
    with pytest.raises(usage.UsageError, match="gateway.limits.write_timeout must be"):
        path.write_text("[gateway.limits]\nwrite_timeout = 0\n")
        parse("-c", str(path))


def test_the_ipv6_address_prefix_reaches_the_guard_and_the_workers(tmp_path: Path) -> None:
    """limits.ipv6_address_prefix, from the file or --ipv6-address-prefix, is the KMIP
    listener guard's grouping, and a supervisor's workers are started with it."""
    assert parse()["gateway_config"].limits.ipv6_address_prefix == 128
    path = tmp_path / "gw.toml"
    path.write_text("[gateway.limits]\nipv6_address_prefix = 56\n")
    guard = tap.makeService(parse("-c", str(path)), reactor=Clock()).getServiceNamed(
        "kcm-kmip-listener").guard
    assert guard.group("2001:db8:1:2::7") == "2001:db8:1::/56"
    options = parse("-c", str(path), "--workers", "2", "--ipv6-address-prefix", "64")
    assert options["gateway_config"].limits.ipv6_address_prefix == 64
    command = tap.worker_command(options, 1)
    assert command[command.index("--ipv6-address-prefix") + 1] == "64"
    for argv in (["--ipv6-address-prefix", "129"], ["--ipv6-address-prefix", "x"]):
        with pytest.raises(usage.UsageError,
                           match="gateway.limits.ipv6_address_prefix must be a whole number"):
            parse(*argv)


def test_the_handler_refuses_batches_by_the_gateway_limit(tmp_path: Path) -> None:
    assert parse().get("gateway_config").limits.max_batch_items == 64  # the core's default
    path = tmp_path / "gw.toml"
    path.write_text("[gateway.limits]\nmax_batch_items = 8\n")
    service = tap.makeService(parse("-c", str(path)), reactor=Clock())
    assert service.handler._max_batch_items == 8
    with pytest.raises(usage.UsageError,
                       match="gateway.limits.max_batch_items must be a whole number"):
        path.write_text("[gateway.limits]\nmax_batch_items = 0\n")
        parse("-c", str(path))


def test_tls_policy_reaches_the_gateway(tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.toml"
    config_file.write_text('[gateway.tls]\nprofile = "kmip-compat"\nmin_version = "1.2"\n')
    config = parse("-c", str(config_file))["gateway_config"]
    assert config.tls.policy.profile == "kmip-compat"
    with pytest.raises(usage.UsageError, match="gateway.tls.min_version"):
        parse("--tls-min-version", "1.0")


# workers ---------------------------------------------------------------------------------------
def test_workers_setting_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[gateway]\nworkers = 4\n")
    assert parse()["gateway_config"].workers == 1
    assert parse("-c", str(path))["gateway_config"].workers == 4
    assert parse("-c", str(path), "--workers", "0")["gateway_config"].workers == 0


@pytest.mark.parametrize("text", ["workers = -1", "workers = 1.5", "workers = true",
                                  'workers = "two"'])
def test_bad_workers_settings_are_usage_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(f"[gateway]\n{text}\n")
    with pytest.raises(usage.UsageError, match="gateway.workers"):
        parse("-c", str(path))
    with pytest.raises(usage.UsageError, match="--worker takes"):
        parse("--worker", "0")


def test_one_worker_is_one_gateway_process_without_a_supervisor(tmp_path: Path) -> None:
    service = tap.makeService(parse("--workers", "1", "--listen", "tcp:0"), reactor=Clock())
    assert isinstance(service, GatewayService)
    assert "kcm-supervisor-lifeline" not in [child.name for child in service]
    assert service.log_fields == {}


def test_more_workers_make_a_supervisor_that_only_assembles(tmp_path: Path) -> None:
    clock = Clock()
    service = tap.makeService(parse("--workers", "3", "--listen", "tcp:0"), reactor=clock)
    assert isinstance(service, GatewaySupervisor)
    assert [child.name for child in service] == ["kcm-gateway-identity", "kcm-tls-files",
                                                 "kcm-kmip-socket", "kcm-gateway-workers"]
    listener = service.getServiceNamed("kcm-kmip-socket")
    pool = service.getServiceNamed("kcm-gateway-workers")
    assert listener.description == "tcp:0" and listener.port is None
    assert pool.count == 3 and pool.listener is listener and pool.workers == {}
    assert not service.running
    assert service.log_fields == {"worker": "supervisor"}


def test_a_supervisor_without_the_tls_files_fails_to_start_before_binding(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default certificate paths name files that do not exist
    service = tap.makeService(parse("--workers", "2", "--listen", "tcp:0"), reactor=Clock())
    with pytest.raises(FileNotFoundError):
        service.startService()
    assert service.getServiceNamed("kcm-kmip-socket").port is None
    assert service.getServiceNamed("kcm-gateway-workers").workers == {}


def cpus(monkeypatch, *usable: int) -> None:
    """This process may run on ``usable`` CPUs, as far as kcm-gateway asks."""
    monkeypatch.setattr(supervisor, "usable_cpus", lambda: list(usable))
    monkeypatch.setattr(tap, "usable_cpus", lambda: list(usable))


def test_workers_zero_is_one_per_cpu(monkeypatch) -> None:
    cpus(monkeypatch, 0, 1, 2, 3)
    service = tap.makeService(parse("--workers", "0"), reactor=Clock())
    assert service.getServiceNamed("kcm-gateway-workers").count == 4
    assert service.pinned == {1: 0, 2: 1, 3: 2, 4: 3}  # pin_workers = auto: one per CPU
    cpus(monkeypatch, 0)
    assert isinstance(tap.makeService(parse("--workers", "0"), reactor=Clock()), GatewayService)


def test_a_worker_runs_the_same_configuration_on_the_inherited_socket(tmp_path: Path,
                                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gw.toml").write_text("[gateway]\nworkers = 2\n")
    options = parse("-c", "gw.toml", "--workers", "2", "--listen", "tcp:7000",
                    "--l3-ttl", "5", "--log-level", "debug")
    monkeypatch.chdir("/")  # a daemon's --rundir: the path stays the one given at start
    command = tap.worker_command(options, 2)
    # SIGHUP is ignored from the worker's first statement (a unit's SIGHUP is the
    # supervisor's, even while a worker starts).
    assert command[:4] == [sys.executable, "-P", "-c",
                           "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
                           "from twisted.scripts.twistd import run; run()"]
    assert command[4:] == [
        "--nodaemon", "--pidfile=", "kcm-gateway", "--worker", "2", "--listen", "fd:3",
        "--config", str(tmp_path / "gw.toml"), "--l3-ttl", "5", "--log-level", "debug",
        "--metrics-listen", ""]
    # What that command line makes in the worker: one gateway, on fd 3, that watches its
    # supervisor and logs as worker 2.
    worker_options = parse(*command[7:])
    assert worker_options["worker"] == 2
    worker = tap.makeService(worker_options, reactor=Clock())
    assert isinstance(worker, GatewayService)
    assert worker.config.listen == "fd:3" and worker.config.l3_ttl == 5.0
    assert worker.getServiceNamed("kcm-kmip-listener").description == "fd:3"
    assert [child.name for child in worker][-1] == "kcm-supervisor-lifeline"
    assert worker.log_fields == {"worker": 2, "pid": os.getpid()}


def test_every_limit_has_a_command_line_override_that_workers_inherit(tmp_path: Path) -> None:
    """docs/operations.md promises an override for every setting (issue 13)."""
    from dataclasses import fields

    options = parse("--max-message-size", "65536", "--handshake-timeout", "2.5",
                    "--workers", "2")
    limits = options["gateway_config"].limits
    assert (limits.max_message_size, limits.handshake_timeout) == (65536, 2.5)
    names = {key for key, *_ in tap.Options.optParameters}
    assert {f.name.replace("_", "-") for f in fields(ConnectionLimits)} <= names
    command = tap.worker_command(options, 1)
    assert command[-6:-2] == ["--max-message-size", "65536", "--handshake-timeout", "2.5"]
    with pytest.raises(usage.UsageError, match="limits.max_batch_items must be a whole"):
        parse("--max-batch-items", "lots")


def test_a_supervisors_workers_listen_on_the_connections_it_hands_them() -> None:
    from twisted.internet import reactor

    service = tap.makeService(parse("--workers", "2", "--listen",
                                    "tcp:0:interface=127.0.0.1"), reactor=reactor)
    listener = service.getServiceNamed("kcm-kmip-socket")
    pool = service.getServiceNamed("kcm-gateway-workers")
    listener.startService()
    try:
        command = pool.command(1)
        listen = command[command.index("--listen") + 1]
        assert listen == listener.worker_listen == "handoff:3"
        worker = tap.makeService(parse(*command[7:]), reactor=Clock())
        assert worker.getServiceNamed("kcm-kmip-listener").description == listen
    finally:
        listener.stopService()


def test_a_supervisor_with_metrics_gives_each_worker_a_socket_of_its_own(tmp_path: Path) -> None:
    """``metrics_listen`` with workers: the supervisor listens on it and each worker serves
    its metrics on a Unix socket in the supervisor's private directory, whatever the
    configuration file says (it names the supervisor's port)."""
    config = tmp_path / "gw.toml"
    config.write_text('[gateway]\nworkers = 2\nmetrics_listen = "tcp:0:interface=127.0.0.1"\n')
    service = tap.makeService(parse("-c", str(config)), reactor=Clock())
    names = [child.name for child in service]
    assert names.index("kcm-worker-metrics") < names.index("kcm-gateway-workers")
    assert names.index("kcm-metrics-listener") < names.index("kcm-gateway-workers")
    worker_metrics = service.getServiceNamed("kcm-worker-metrics")
    pool = service.getServiceNamed("kcm-gateway-workers")
    worker_metrics.startService()
    try:
        directory = Path(worker_metrics.directory)
        assert directory.stat().st_mode & 0o777 == 0o700
        command = pool.command(2)
        metrics_listen = command[command.index("--metrics-listen") + 1]
        assert metrics_listen == f"unix:{directory / 'worker-2.sock'}:mode=600"
        worker = tap.makeService(parse(*command[7:]), reactor=Clock())
        assert isinstance(worker, GatewayService)
        assert worker.config.metrics_listen == metrics_listen
        assert "kcm-metrics-listener" in [child.name for child in worker]
    finally:
        worker_metrics.stopService()
    assert not directory.exists()


def test_without_metrics_a_supervisors_workers_have_none() -> None:
    service = tap.makeService(parse("--workers", "2"), reactor=Clock())
    names = [child.name for child in service]
    assert "kcm-worker-metrics" not in names and "kcm-metrics-listener" not in names
    command = service.getServiceNamed("kcm-gateway-workers").command(1)
    assert command[command.index("--metrics-listen") + 1] == ""
    worker = tap.makeService(parse(*command[7:]), reactor=Clock())
    assert "kcm-metrics-listener" not in [child.name for child in worker]


# busy polling ------------------------------------------------------------------------------------
def test_busy_poll_from_the_file_and_the_command_line_reaches_the_process_and_its_workers(
        tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[gateway]\nbusy_poll_us = 700\n")
    assert parse()["gateway_config"].busy_poll_us == 0
    assert tap.makeService(parse("--listen", "tcp:0"), reactor=Clock()).busy_poll == 0
    assert parse("-c", str(path))["gateway_config"].busy_poll_us == 700
    options = parse("-c", str(path), "--busy-poll-us", "300", "--listen", "tcp:0")
    service = tap.makeService(options, reactor=Clock())
    assert isinstance(service, GatewayService)
    assert service.busy_poll == pytest.approx(300e-6)
    # A supervisor only hands connections over: it sleeps at once; its workers poll.
    options = parse("-c", str(path), "--busy-poll-us", "300", "--workers", "2")
    supervisor_service = tap.makeService(options, reactor=Clock())
    assert isinstance(supervisor_service, GatewaySupervisor)
    assert supervisor_service.busy_poll == 0
    command = tap.worker_command(options, 1)
    assert command[command.index("--busy-poll-us") + 1] == "300"
    worker = tap.makeService(parse(*command[7:]), reactor=Clock())
    assert worker.busy_poll == pytest.approx(300e-6)


@pytest.mark.parametrize("text", ["busy_poll_us = -1", "busy_poll_us = 10001",
                                  "busy_poll_us = 1.5", 'busy_poll_us = "fast"',
                                  "drain_timeout = 0", "drain_timeout = -1",
                                  "drain_timeout = 3601", 'drain_timeout = "soon"'])
def test_bad_busy_poll_and_drain_settings_are_usage_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(f"[gateway]\n{text}\n")
    with pytest.raises(usage.UsageError, match=f"gateway.{text.split()[0]}"):
        parse("-c", str(path))


# hung workers ------------------------------------------------------------------------------------
def test_the_hung_worker_timeout_reaches_the_pool(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    assert parse()["gateway_config"].hung_worker_timeout == 10.0
    pool = tap.makeService(parse("--workers", "2"), reactor=Clock()).getServiceNamed(
        "kcm-gateway-workers")
    assert pool.hung_after == 10.0
    path.write_text("[gateway]\nhung_worker_timeout = 4.5\n")
    pool = tap.makeService(parse("-c", str(path), "--workers", "2"),
                           reactor=Clock()).getServiceNamed("kcm-gateway-workers")
    assert pool.hung_after == 4.5


@pytest.mark.parametrize("text", ["hung_worker_timeout = 2.9", "hung_worker_timeout = -1",
                                  'hung_worker_timeout = "soon"'])
def test_bad_hung_worker_timeouts_are_usage_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(f"[gateway]\n{text}\n")
    with pytest.raises(usage.UsageError, match="gateway.hung_worker_timeout"):
        parse("-c", str(path))


# drain_timeout ----------------------------------------------------------------------------------
def test_the_drain_timeout_reaches_the_drain_and_the_pools_kill(tmp_path: Path) -> None:
    """A stopping gateway waits ``drain_timeout`` for its requests (a forwarded one that
    runs to the core's request deadline included, if set so); its supervisor kills a
    worker 5 s after that."""
    from unittest import mock

    from kcm.drain import DRAIN_TIMEOUT, STOP_MARGIN

    assert parse()["gateway_config"].drain_timeout == DRAIN_TIMEOUT
    pool = tap.makeService(parse("--workers", "2"), reactor=Clock()).getServiceNamed(
        "kcm-gateway-workers")
    assert pool.stop_timeout == DRAIN_TIMEOUT + STOP_MARGIN == 10.0
    path = tmp_path / "gw.toml"
    path.write_text("[gateway]\ndrain_timeout = 12.5\n")
    pool = tap.makeService(parse("-c", str(path), "--workers", "2"),
                           reactor=Clock()).getServiceNamed("kcm-gateway-workers")
    assert pool.stop_timeout == 17.5
    gateway = GatewayService(parse("--drain-timeout", "12.5")["gateway_config"],
                             reactor=Clock())
    gateway.kmip_factory, gateway.running = mock.Mock(), True  # (as if started)
    with mock.patch("kcm.gateway.service.drain", return_value=Deferred()) as drained:
        gateway.stopService()
    assert drained.call_args.kwargs["timeout"] == 12.5


# pinned workers ----------------------------------------------------------------------------------
def test_one_worker_per_cpu_is_pinned_by_default_and_hands_connections_by_cpu(
        monkeypatch) -> None:
    cpus(monkeypatch, 2, 5)
    options = parse("--workers", "2")
    assert options["gateway_config"].pin_workers == "auto"
    service = tap.makeService(options, reactor=Clock())
    assert service.pinned == {1: 2, 2: 5}
    assert service.getServiceNamed("kcm-kmip-socket").near == {2: {1}, 5: {2}}
    pool = service.getServiceNamed("kcm-gateway-workers")
    for index, cpu in ((1, 2), (2, 5)):
        command = pool.command(index)
        assert command[command.index("--cpu") + 1] == str(cpu)
        worker = tap.makeService(parse(*command[7:]), reactor=Clock())
        assert isinstance(worker, GatewayService) and worker.cpu == cpu


@pytest.mark.parametrize(("workers", "mode", "pinned"), [
    (3, "auto", {}),  # not one per CPU: the kernel places them
    (3, "always", {1: 0, 2: 1, 3: 0}),
    (2, "never", {}),
    (2, "always", {1: 0, 2: 1}),
])
def test_pin_workers_from_the_file_and_the_command_line(tmp_path: Path, monkeypatch,
                                                        workers: int, mode: str,
                                                        pinned: dict[int, int]) -> None:
    cpus(monkeypatch, 0, 1)
    path = tmp_path / "gw.toml"
    path.write_text(f'[gateway]\npin_workers = "{mode}"\n')
    for options in (parse("-c", str(path), "--workers", str(workers)),
                    parse("--pin-workers", mode, "--workers", str(workers))):
        service = tap.makeService(options, reactor=Clock())
        assert service.pinned == pinned
        pool = service.getServiceNamed("kcm-gateway-workers")
        assert ("--cpu" in pool.command(1)) == bool(pinned)
        assert service.getServiceNamed("kcm-kmip-socket").near == {
            cpu: {index for index, on in pinned.items() if on == cpu}
            for cpu in set(pinned.values())}


def test_one_gateway_process_is_never_pinned(monkeypatch) -> None:
    cpus(monkeypatch, 0, 1)
    service = tap.makeService(parse("--pin-workers", "always", "--listen", "tcp:0"),
                              reactor=Clock())
    assert isinstance(service, GatewayService) and service.cpu is None


@pytest.mark.parametrize("argv", [("--pin-workers", "sometimes"), ("--cpu", "1"),
                                  ("--worker", "1", "--cpu", "x")])
def test_bad_pinning_settings_are_usage_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(usage.UsageError, match="pin_workers|--cpu"):
        parse(*argv)


def test_a_long_prewarm_list_is_fetched_a_few_at_a_time_and_whole() -> None:
    """3,000 services sent at once filled their tenants' fetch queues and the link: most
    failed, and so did those tenants' requests. A few are fetched at a time, the next as
    one is done (in a later reactor turn), whatever the one before answered; fetches that
    fail at once (the link lost) recurse no deeper for it, and once the link is down the
    rest is left to the requests that need them."""
    from dataclasses import replace as changed

    from twisted.internet.defer import fail

    from kcm.gateway.link_client import LinkDown
    from kcm.gateway.service import PREWARM_AT_ONCE
    from kcm.kmip.enums import ResultReason
    from kcm.kmip.errors import KmipError

    services = tuple(f"t{n % 7}/s{n}" for n in range(30))
    clock = Clock()
    gateway = GatewayService(changed(GatewayConfig(), prewarm=services), reactor=clock)
    calls: list[tuple[str, str, Deferred]] = []

    class Link:
        connected = True

    class Cache:
        def prewarm(self, tenant: str, service: str, caller: object) -> Deferred:
            calls.append((tenant, service, d := Deferred()))
            return d

    gateway.cache, gateway.link, gateway.running = Cache(), Link(), True  # type: ignore[assignment]
    gateway._prewarm()
    assert len(calls) == PREWARM_AT_ONCE == 4
    done = 0
    while done < len(calls):
        outcome = None if done % 3 else KmipError(ResultReason.GENERAL_FAILURE, "refused")
        calls[done][2].callback(outcome)
        done += 1
        clock.advance(0)
        assert len(calls) - done <= PREWARM_AT_ONCE
    assert [f"{t}/{s}" for t, s, _ in calls] == list(services)

    # 3,000 fetches failing at once: one level of the stack each turn, not one a service
    many = tuple(f"t{n % 300}/s{n}" for n in range(3000))
    gateway = GatewayService(changed(GatewayConfig(), prewarm=many), reactor=clock)
    tried: list[str] = []

    class Failing:
        def prewarm(self, tenant: str, service: str, caller: object) -> Deferred:
            tried.append(service)
            return fail(LinkDown("no link to the core")).addErrback(
                lambda f: KmipError(ResultReason.GENERAL_FAILURE, f.getErrorMessage()))

    gateway.cache, gateway.link, gateway.running = Failing(), Link(), True  # type: ignore[assignment]
    gateway._prewarm()
    assert len(tried) == PREWARM_AT_ONCE  # each next one in a later turn
    clock.advance(0)
    assert len(tried) == 3000  # every one tried, and no RecursionError on the way

    link = Link()
    gateway = GatewayService(changed(GatewayConfig(), prewarm=many), reactor=clock)
    gateway.cache, gateway.link, gateway.running = Failing(), link, True  # type: ignore[assignment]
    tried.clear()
    gateway._prewarm()
    link.connected = False  # the link lost: the rest is left to the requests
    clock.advance(0)
    assert len(tried) == PREWARM_AT_ONCE and clock.getDelayedCalls() == []


# tenant_turn_time -------------------------------------------------------------------------------
def test_the_tenant_turn_time_is_read_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    assert parse()["gateway_config"].tenant_turn_time == 0.002
    path.write_text("[gateway]\ntenant_turn_time = 0.01\n")
    assert parse("-c", str(path))["gateway_config"].tenant_turn_time == 0.01
    assert parse("--tenant-turn-time", "0.5")["gateway_config"].tenant_turn_time == 0.5


@pytest.mark.parametrize("text", ["tenant_turn_time = 0", "tenant_turn_time = 1.5",
                                  'tenant_turn_time = "soon"'])
def test_bad_tenant_turn_times_are_usage_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(f"[gateway]\n{text}\n")
    with pytest.raises(usage.UsageError, match="gateway.tenant_turn_time"):
        parse("-c", str(path))

"""twistd kcm-gateway: options, configuration file and overrides, service assembly."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from kcm.gateway import tap
from kcm.gateway.config import GatewayConfig, load_config
from kcm.gateway.service import GatewayService
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
    assert config.core == "tcp:127.0.0.1:5697"
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
        "kcm-gateway-identity", "kcm-link", "kcm-kmip-listener", None]  # None: the refresher
    assert service.link is not None and service.cache is not None
    assert service.handler is not None
    assert not service.running and not any(child.running for child in service)
    assert service.link.gateway_name == "kcm-gateway"  # the certificate is not read yet


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

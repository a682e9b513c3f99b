"""kcm.client's endpoints and configuration (no network): HOST:PORT parsing, the [client]
table (lists, failover, gateway and core apart, relative paths), and what it builds; the
``kcm seal`` / ``kcm open`` parsers and ``kcm key``'s several servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcm.cli import build_parser
from kcm.client.config import ClientConfig, load_client_config
from kcm.client.endpoints import Endpoint, parse_endpoint
from kcm.client.routing import SplitHorizon
from kcm.client.session import Session
from kcm.pki import init_pki


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:5698", Endpoint("127.0.0.1", 5698)),
    ("kms.example:15696", Endpoint("kms.example", 15696)),
    ("[::1]:5696", Endpoint("::1", 5696)),
    ("gateway", Endpoint("gateway", 5696)),
])
def test_endpoints_parse(text, expected) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", [":5696", "host:port", "host:70000", "[::1"])
def test_bad_endpoints_are_refused(text) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_a_client_table_with_gateways_and_a_core(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('[client]\ngateway = ["127.0.0.1:5698", "127.0.0.2:5698"]\n'
                    'core = "127.0.0.1:5696"\ncert = "app.pem"\nkey = "app.key"\n'
                    'ca = "ca.pem"\nversion = "2.1"\ntimeout = 5\n')
    config = load_client_config(path)
    assert config.gateway == [Endpoint("127.0.0.1", 5698), Endpoint("127.0.0.2", 5698)]
    assert config.core == [Endpoint("127.0.0.1", 5696)]
    assert config.cert == str(tmp_path / "app.pem") and config.version == (2, 1)
    assert config.timeout == 5.0


def test_one_server_serves_both(tmp_path: Path) -> None:
    config = ClientConfig.from_table({"server": "h:1,h2:2", "cert": "c", "key": "k", "ca": "a"},
                                     tmp_path)
    assert config.gateway == config.core == [Endpoint("h", 1), Endpoint("h2", 2)]


@pytest.mark.parametrize(("table", "error"), [
    ({"server": "h:1", "cert": "c", "key": "k"}, "no client.ca"),
    ({"server": "h:1", "cert": "c", "key": "k", "ca": "a", "port": 1}, "unknown setting"),
    ({"cert": "c", "key": "k", "ca": "a"}, "no client.server"),
    ({"server": "h:1", "cert": "c", "key": "k", "ca": "a", "version": "3.0"}, "KMIP 3.0"),
    ({"server": "h:1", "cert": "c", "key": "k", "ca": "a", "timeout": 0},
     "client.timeout must be a positive number of seconds, not 0"),
    ({"server": "h:1", "cert": "c", "key": "k", "ca": "a", "timeout": "30"},
     "client.timeout must be a positive number of seconds, not '30'"),
    ({"server": "h:1", "cert": "c", "key": "k", "ca": "a", "connect_timeout": 0},
     "client.connect_timeout must be a positive number of seconds, not 0"),
    ({"server": "h:1", "cert": "c", "key": "k", "ca": "a", "connect_timeout": "10"},
     "client.connect_timeout must be a positive number of seconds, not '10'"),
    ({"server": "h:1", "cert": "c", "key": "k", "ca": "a", "timeout": 5,
      "connect_timeout": 6},
     "client.connect_timeout 6 is more than client.timeout 5: each attempt is part of a "
     "call"),
])
def test_bad_tables_say_what_is_wrong(table, error) -> None:
    with pytest.raises(ValueError, match=error):
        ClientConfig.from_table(table)


@pytest.mark.parametrize(("value", "error"), [
    ("x", "client.pool_size must be a whole number"),
    ("4", "client.pool_size must be a whole number"),
    (2.7, "client.pool_size must be a whole number"),
    (True, "client.pool_size must be a whole number"),
    (0, "client.pool_size must be a whole number of at least 1"),
])
def test_a_pool_size_that_is_not_a_whole_number_is_named(tmp_path: Path, value,
                                                         error) -> None:
    """client.pool_size is refused in the words the services' whole numbers are (not
    Python's int() message, nor 2.7 taken as 2, nor 0 refused only by the Twisted
    client)."""
    import json

    path = tmp_path / "client.toml"
    path.write_text(f'[client]\nserver = "h:1"\ncert = "c"\nkey = "k"\nca = "a"\n'
                    f"pool_size = {json.dumps(value)}\n")
    with pytest.raises(ValueError) as raised:
        load_client_config(path)
    assert str(raised.value) == f"{path}: {error}"
    assert str(raised.value).isascii()


def test_a_pool_size_is_two_by_default_and_a_whole_number_is_taken() -> None:
    table = {"server": "h:1", "cert": "c", "key": "k", "ca": "a"}
    assert ClientConfig.from_table(table).pool_size == 2
    assert ClientConfig.from_table({**table, "pool_size": 1}).pool_size == 1


def test_the_configuration_builds_sessions_and_a_split_horizon(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki")
    files = {"cert": str(pki.app.cert), "key": str(pki.app.key), "ca": str(pki.ca.cert)}
    plain = ClientConfig.from_table({"server": "127.0.0.1:1", **files}).session()
    assert isinstance(plain, Session)
    routed = ClientConfig.from_table({"gateway": "127.0.0.1:1", "core": "127.0.0.1:2",
                                      **files}).session()
    assert isinstance(routed, SplitHorizon)
    assert routed.gateway.transport.endpoint.port == 1
    assert routed.control.transport.endpoint.port == 2


def test_connect_timeout_from_the_table_reaches_both_clients(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.task import Clock

    import kcm.client.pool as pool

    pki = init_pki(tmp_path / "pki")
    files = {"cert": str(pki.app.cert), "key": str(pki.app.key), "ca": str(pki.ca.cert)}
    table = {"server": "127.0.0.1:1,127.0.0.1:2", "timeout": 8, **files}
    assert ClientConfig.from_table(table).connect_timeout is None
    assert ClientConfig.from_table(table).session().transport.connect_timeout == 4.0
    config = ClientConfig.from_table({**table, "connect_timeout": 1.5})
    assert config.connect_timeout == 1.5
    assert config.session().transport.connect_timeout == 1.5
    assert ClientConfig.from_table({**table, "connect_timeout": 8}).connect_timeout == 8.0
    seen: list[float] = []
    real = pool.tls_endpoint_factory

    def factory(*args, connect_timeout: float):
        seen.append(connect_timeout)
        return real(*args, connect_timeout=connect_timeout)

    monkeypatch.setattr(pool, "tls_endpoint_factory", factory)
    config.twisted(Clock())
    assert seen == [1.5]


def test_kcm_key_passes_connect_timeout_to_the_session(tmp_path: Path) -> None:
    from kcm.cli.key_cmd import _session

    pki = init_pki(tmp_path / "pki")
    argv = ["key", "query", "--server", "127.0.0.1:1,127.0.0.1:2", "--cert", str(pki.app.cert),
            "--key", str(pki.app.key), "--ca", str(pki.ca.cert), "--timeout", "6"]
    assert _session(build_parser().parse_args(argv)).transport.connect_timeout == 3.0
    session = _session(build_parser().parse_args([*argv, "--connect-timeout", "0.5"]))
    assert session.transport.connect_timeout == 0.5


def test_seal_and_open_take_the_connection_options_of_kcm_key() -> None:
    args = build_parser().parse_args(["seal", "--server", "a:1,b:2", "--cert", "c", "--key",
                                      "k", "--ca", "ca", "--stream", "--chunk-size", "4096",
                                      "--aad-hex", "00"])
    assert (args.server, args.stream, args.chunk_size, args.aad_hex) == ("a:1,b:2", True,
                                                                          4096, "00")
    args = build_parser().parse_args(["open", "--client-config", "x.toml"])
    assert args.client_config == "x.toml" and args.prog == "kcm open"


def test_kcm_key_connects_to_several_servers_in_order(tmp_path: Path) -> None:
    from kcm.cli.key_cmd import _session

    pki = init_pki(tmp_path / "pki")
    args = build_parser().parse_args(["key", "query", "--server", "127.0.0.1:1, 127.0.0.1:2",
                                      "--cert", str(pki.app.cert), "--key", str(pki.app.key),
                                      "--ca", str(pki.ca.cert)])
    session = _session(args)
    assert [e.port for e in session.transport.endpoints] == [1, 2]


def test_both_clients_refuse_a_timeout_that_is_no_deadline(tmp_path: Path) -> None:
    """The blocking client failed its first request on timeout=0 with `cannot connect ...
    Operation now in progress`; the Twisted one took 0 for no deadline at all. Both refuse
    it where they are made."""
    from twisted.internet.task import Clock

    from kcm.client.pool import KmipClient

    pki = init_pki(tmp_path / "pki")
    files = {"cert": str(pki.app.cert), "key": str(pki.app.key), "ca": str(pki.ca.cert)}
    for timeout in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            Session.connect("127.0.0.1", 1, timeout=timeout, **files)
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            KmipClient(Clock(), ["127.0.0.1:1"], lambda e: None, timeout=timeout)


def test_a_request_that_cannot_be_encoded_says_so() -> None:
    """An identifier given as bytes raised a bare TtlvError from deep in the encoder."""
    from kcm.client.wire import encode_items
    from kcm.kmip.enums import Operation
    from kcm.kmip.messages import RequestBatchItem
    from kcm.kmip.payloads import GetRequest

    with pytest.raises(ValueError, match="the request cannot be encoded: "):
        encode_items((1, 4), [RequestBatchItem(operation=Operation.GET, request_payload=
                                               GetRequest(unique_identifier=b"l4.x"))])


@pytest.fixture(scope="module")
def module_pki(tmp_path_factory: pytest.TempPathFactory):
    return init_pki(tmp_path_factory.mktemp("pki"))


#: Where ``kcm key`` (its own reader of the file until this release) and the SDK (which
#: ``kcm config check`` uses) differed; each now one rule, the same for the three: a
#: setting (None: left out) and the error, or, for a table taken, the endpoints it gives.
DIFFERENCES = [
    ({"timeout": '"30"'}, "client.timeout must be a positive number of seconds, not '30'"),
    ({"timeout": "true"}, "client.timeout must be a positive number of seconds, not True"),
    ({"timeout": "100000"}, "client.timeout must be at most 86400 seconds (a day), not 100000"),
    ({"connect_timeout": '"5"'},
     "client.connect_timeout must be a positive number of seconds, not '5'"),
    ({"server": '"::1:5698"'}, "client.server: '::1:5698' is not HOST:PORT (IPv6: [ADDRESS]:PORT)"),
    ({"server": '"h:5_698"'}, "client.server: 'h:5_698': the port is not a number"),
    ({"server": '"h:"'}, "client.server: 'h:': no port after the colon"),
    ({"version": '"9.9"'}, "client.version: KMIP 9.9 is not one the client speaks"),
    ({"pool_size": "0"}, "client.pool_size must be a whole number of at least 1"),
    ({"cert": "5"}, "client.cert must be a file name, not 5"),
    ({"server": '"kms.test"'}, ([Endpoint("kms.test", 5696)], [Endpoint("kms.test", 5696)])),
    ({"server": None, "gateway": '"127.0.0.1:5698"', "core": '"127.0.0.1:5696"'},
     ([Endpoint("127.0.0.1", 5698)], [Endpoint("127.0.0.1", 5696)])),
]


@pytest.mark.parametrize(("settings", "expected"), DIFFERENCES)
def test_kcm_key_the_sdk_and_config_check_take_a_client_table_alike(
        tmp_path: Path, module_pki, monkeypatch: pytest.MonkeyPatch, capsys,
        settings, expected) -> None:
    """``kcm key`` read ``[client]`` with its own rules: it took ``timeout = "30"`` and
    ``true``, refused timeouts over a day (the SDK took 1e12 s and failed its first call
    with OverflowError), refused a server without a port, ignored ``gateway``, ``core``,
    ``version`` and ``pool_size``; the SDK took ``::1:5698`` for a host and ``5_698`` for a
    port. Now the SDK's loader is the one rule of all three."""
    from kcm.cli import CommandError, main
    from kcm.cli.key_cmd import client_settings

    for name in ("SERVER", "CERT", "KEY", "CA", "CLIENT_CONFIG"):
        monkeypatch.delenv(f"KCM_{name}", raising=False)
    table = {"server": '"127.0.0.1:5698"', "cert": f'"{module_pki.app.cert}"',
             "key": f'"{module_pki.app.key}"', "ca": f'"{module_pki.ca.cert}"', **settings}
    path = tmp_path / "client.toml"
    path.write_text("[client]\n" + "".join(f"{name} = {value}\n"
                                           for name, value in table.items()
                                           if value is not None))
    args = build_parser().parse_args(["key", "query", "--client-config", str(path)])
    status = main(["config", "check", "-c", str(path)])
    lines = capsys.readouterr().out.splitlines()
    if isinstance(expected, str):
        with pytest.raises(ValueError) as sdk:
            load_client_config(path)
        with pytest.raises(CommandError) as key:
            client_settings(args)
        assert str(sdk.value) == str(key.value) == f"{path}: {expected}"
        assert status == 1 and f"error: {path}: {expected}" in lines
        return
    sdk_config, key_config = load_client_config(path), client_settings(args)
    assert (sdk_config.gateway, sdk_config.core) == expected
    assert (key_config.gateway, key_config.core) == expected
    assert status == 0, lines

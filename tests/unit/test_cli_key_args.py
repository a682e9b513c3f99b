"""``kcm key`` / ``kcm l4``: parsing of the command line, before any connection."""

from __future__ import annotations

import pytest

from kcm.cli import CommandError, build_parser, main
from kcm.cli.key_cmd import attribute_tag, parse_enum
from kcm.kmip.enums import BlockCipherMode, RevocationReasonCode
from kcm.kmip.tags import Tag


def test_enumerations_in_any_spelling() -> None:
    assert parse_enum(RevocationReasonCode, "key-compromise", "--reason") == (
        RevocationReasonCode.KEY_COMPROMISE)
    assert parse_enum(BlockCipherMode, "gcm", "--mode") == BlockCipherMode.GCM
    assert parse_enum(BlockCipherMode, "9", "--mode") == BlockCipherMode.GCM
    with pytest.raises(CommandError, match="--mode 'XYZ' is not one of CBC, ECB"):
        parse_enum(BlockCipherMode, "XYZ", "--mode")


def test_attribute_names() -> None:
    assert attribute_tag("Cryptographic Length") == Tag.CRYPTOGRAPHIC_LENGTH
    assert attribute_tag("cryptographic_length") == Tag.CRYPTOGRAPHIC_LENGTH
    assert attribute_tag("State") == Tag.STATE
    with pytest.raises(CommandError):
        attribute_tag("Colour")


def test_environment_supplies_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("SERVER", "h:1"), ("CERT", "c.pem"), ("KEY", "k.pem"),
                        ("CA", "ca.pem")):
        monkeypatch.setenv(f"KCM_{name}", value)
    args = build_parser().parse_args(["key", "get", "u"])
    assert (args.server, args.cert, args.key, args.ca) == ("h:1", "c.pem", "k.pem", "ca.pem")
    args = build_parser().parse_args(["l4", "create", "--server", "g:2", "--json"])
    assert (args.server, args.json, args.length, args.prog) == ("g:2", True, 256,
                                                                "kcm l4 create")


def test_register_needs_key_material(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["key", "register", "--server", "h:1"]) == 2
    assert capsys.readouterr().err == (
        "kcm key register: error: one of the arguments --key-hex --key-file is required (see "
        "kcm key register --help)\n")


@pytest.mark.parametrize("argv", [[], ["key"], ["key", "get"], ["key", "frobnicate"],
                                  ["core", "tenant", "show"], ["l4", "create", "--length", "x"]])
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert " error: " in captured.err and captured.err.endswith(" --help)\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["key", "query"], "kcm key query: error: no server: give --server HOST:PORT or set "
                       "KCM_SERVER\n"),
    (["key", "query", "--server", "h:1"], "kcm key query: error: no --cert, --key, --ca (or "
                                          "KCM_CERT, KCM_KEY, KCM_CA)\n"),
    (["key", "get", "u", "--server", "h:1", "--cert", "/nonexistent", "--key", "k",
      "--ca", "c"], "kcm key get: error: --cert /nonexistent: no such file\n"),
    (["key", "encrypt", "u", "--data-hex", "zz", "--server", "h:1"],
     None),
    *((["key", "query", "--server", "h:1", "--cert", "/", "--key", "/", "--ca", "/",
        "--timeout", timeout],
       f"kcm key query: error: --timeout must be a positive number of seconds, not "
       f"{float(timeout)!r}\n") for timeout in ("-1", "0", "nan", "inf")),
    *((["key", "query", "--server", "h:1", "--cert", "/", "--key", "/", "--ca", "/",
        "--connect-timeout", seconds],
       f"kcm key query: error: --connect-timeout must be a positive number of seconds, not "
       f"{float(seconds)!r}\n") for seconds in ("-1", "0", "nan", "inf")),
    (["key", "query", "--server", "h:1", "--cert", "/", "--key", "/", "--ca", "/",
      "--timeout", "1e9"],
     "kcm key query: error: --timeout must be at most 86400 seconds (a day), not "
     "1000000000.0\n"),
    (["key", "query", "--server", "h:1", "--cert", "/", "--key", "/", "--ca", "/",
      "--timeout", "5", "--connect-timeout", "6"],
     "kcm key query: error: --connect-timeout 6.0 is more than --timeout 5: each attempt is "
     "part of a call\n"),
])
def test_usage_errors_are_one_line_exit_2(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str],
                                          argv: list[str], message: str | None) -> None:
    for name in ("SERVER", "CERT", "KEY", "CA", "CLIENT_CONFIG"):
        monkeypatch.delenv(f"KCM_{name}", raising=False)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    if message is not None:
        assert captured.err == message
    assert captured.err.count("\n") == 1


def test_an_unforeseen_failure_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import kcm.cli.key_cmd as key_cmd

    def broken(args):
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(key_cmd, "_session", broken)
    assert main(["key", "query"]) == 2
    assert capsys.readouterr().err == ("kcm key query: error: RuntimeError: something "
                                       "unexpected\n")


def test_a_client_configuration_file_fills_in_what_is_not_given(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kcm.cli.key_cmd import client_settings
    from kcm.client.endpoints import Endpoint

    for name in ("SERVER", "CERT", "KEY", "CA", "CLIENT_CONFIG"):
        monkeypatch.delenv(f"KCM_{name}", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "etc" / "client.toml"
    path.parent.mkdir()
    for name in ("etc/app.pem", "app.key", "ca.pem", "env-ca.pem"):
        (tmp_path / name).write_text("")
    path.write_text(f'[client]\nserver = "kms:5698"\ncert = "app.pem"\n'
                    f'key = "{tmp_path / "app.key"}"\nca = "../ca.pem"\ntimeout = 5\n'
                    'gateway = "gw:5698"\ncore = "core:5696"\nversion = "2.1"\n')

    def settings(*argv: str):
        return client_settings(build_parser().parse_args(
            ["key", "query", "--client-config", str(path), *argv]))

    config = settings()  # the file's gateway, core and version are the SDK's
    assert (config.gateway, config.core, config.version) == (
        [Endpoint("gw", 5698)], [Endpoint("core", 5696)], (2, 1))
    assert (config.cert, config.key, config.ca) == (
        str(path.parent / "app.pem"), str(tmp_path / "app.key"),
        str(path.parent / "../ca.pem"))
    monkeypatch.setenv("KCM_CA", "env-ca.pem")  # from the working directory
    config = settings("--server", "cli:1")  # every call there
    assert config.gateway == config.core == [Endpoint("cli", 1)]
    assert (config.ca, config.timeout) == (str(tmp_path / "env-ca.pem"), 5.0)
    path.write_text(path.read_text() + "connect_timeout = 2.5\n")
    assert settings().connect_timeout == 2.5
    assert settings("--connect-timeout", "1").connect_timeout == 1.0  # the option first
    assert settings("--connect-timeout", "5").connect_timeout == 5.0  # an attempt: all of it
    with pytest.raises(CommandError, match=(
            f"^{path}: --connect-timeout 6.0 is more than client.timeout 5: each attempt")):
        settings("--connect-timeout", "6")  # (the message names each value's source)
    path.write_text('[client]\nconnect_timeout = "soon"\nserver = "h:1"\ncert = "/"\n'
                    'key = "/"\nca = "/"\n')
    with pytest.raises(CommandError, match=f"^{path}: client.connect_timeout must be a "
                                           "positive number of seconds, not 'soon'"):
        settings()
    path.write_text('[client]\nport = 1\n')
    with pytest.raises(CommandError, match="unknown setting client.port"):
        settings("--server", "h:1", "--cert", "/", "--key", "/", "--ca", "/")


class _Answers:
    """A transport that answers every request with the next of ``answers``."""

    def __init__(self, *answers: bytes) -> None:
        self.answers = list(answers)
        self.sent: list[bytes] = []

    def send(self, wire: bytes) -> bytes:
        self.sent.append(wire)
        return self.answers.pop(0)

    def close(self) -> None:
        pass


def test_session_raises_failures_and_refuses_what_is_not_an_answer() -> None:
    from kcm.client import KmipClientError, KmipOperationFailed, Session
    from kcm.kernel.responses import failure_response
    from kcm.kmip.enums import ResultReason

    denied = failure_response((1, 4), ResultReason.PERMISSION_DENIED, "no", 0)
    session = Session(_Answers(denied, b"\x42\x00\x7b\x01\x00\x00\x00\x00"))
    with pytest.raises(KmipOperationFailed) as failed:
        session.activate("u")
    assert (failed.value.reason, failed.value.message) == (ResultReason.PERMISSION_DENIED, "no")
    assert str(failed.value) == "PERMISSION_DENIED: no"
    with pytest.raises(KmipClientError, match="not a KMIP response"):
        session.query()

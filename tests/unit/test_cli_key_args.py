"""``kcm key`` / ``kcm l4``: parsing of the command line, before any connection."""

from __future__ import annotations

import pytest

from kcm.cli import CommandError, build_parser, main
from kcm.cli.key_cmd import attribute_tag, parse_enum, parse_server
from kcm.kmip.enums import BlockCipherMode, RevocationReasonCode
from kcm.kmip.tags import Tag


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:5696", ("127.0.0.1", 5696)),
    ("kms.example:1", ("kms.example", 1)),
    ("[::1]:5698", ("::1", 5698)),
])
def test_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize("text", ["", None, "host", ":5696", "host:", "host:0", "host:70000",
                                  "host:x", "::1", "::1:5696", "[::1]", "[::1:5696",
                                  "[kcm.test:5696", "kcm.test]:5696"])
def test_bad_server(text: str | None) -> None:
    with pytest.raises(CommandError):
        parse_server(text)


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
    *((["key", "query", "--server", "h:1", "--timeout", timeout],
       f"kcm key query: error: timeout {float(timeout)!r} must be more than 0 and at most "
       "86400 seconds\n") for timeout in ("-1", "0", "nan", "inf", "1e9")),
    *((["key", "query", "--server", "h:1", "--connect-timeout", seconds],
       f"kcm key query: error: connect timeout {float(seconds)!r} must be more than 0 and at "
       "most 86400 seconds\n") for seconds in ("-1", "0", "nan", "inf", "1e9")),
    (["key", "query", "--server", "h:1", "--timeout", "5", "--connect-timeout", "6"],
     "kcm key query: error: connect timeout 6 is more than the timeout 5: each attempt is "
     "part of a request\n"),
])
def test_usage_errors_are_one_line_exit_2(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str],
                                          argv: list[str], message: str | None) -> None:
    for name in ("SERVER", "CERT", "KEY", "CA"):
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
    from kcm.cli.key_cmd import _settings

    for name in ("SERVER", "CERT", "KEY", "CA", "CLIENT_CONFIG"):
        monkeypatch.delenv(f"KCM_{name}", raising=False)
    path = tmp_path / "etc" / "client.toml"
    path.parent.mkdir()
    path.write_text('[client]\nserver = "kms:5698"\ncert = "app.pem"\nkey = "/abs/app.key"\n'
                    'ca = "../ca.pem"\ntimeout = 5\n')
    monkeypatch.setenv("KCM_CA", "env-ca.pem")
    args = build_parser().parse_args(["key", "query", "--client-config", str(path),
                                      "--server", "cli:1"])
    _settings(args)
    assert (args.server, args.cert, args.key, args.ca, args.timeout) == (
        "cli:1", str(path.parent / "app.pem"), "/abs/app.key", "env-ca.pem", 5.0)
    path.write_text('[client]\ntimeout = 5\nconnect_timeout = 2.5\n')
    args = build_parser().parse_args(["key", "query", "--client-config", str(path)])
    _settings(args)
    assert (args.timeout, args.connect_timeout) == (5.0, 2.5)
    args = build_parser().parse_args(["key", "query", "--client-config", str(path),
                                      "--connect-timeout", "1"])
    _settings(args)
    assert args.connect_timeout == 1.0  # the option before the file
    args = build_parser().parse_args(["key", "query", "--client-config", str(path),
                                      "--connect-timeout", "5"])
    _settings(args)
    assert args.connect_timeout == 5.0  # as long as the timeout: one attempt may take it all
    path.write_text('[client]\nconnect_timeout = "soon"\n')
    args = build_parser().parse_args(["key", "query", "--client-config", str(path)])
    with pytest.raises(CommandError, match="connect timeout 'soon' is not a number"):
        _settings(args)
    path.write_text('[client]\nport = 1\n')
    args = build_parser().parse_args(["key", "query", "--client-config", str(path)])
    with pytest.raises(CommandError, match="unknown setting client.port"):
        _settings(args)



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

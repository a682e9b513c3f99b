"""``kcm dev run``'s judgement of a recorded pid, and its command line (the launcher itself
runs as a process in tests/integration/test_dev_run.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from kcm.cli import build_parser
from kcm.cli.dev_cmd import recorded_pid


def test_a_stale_or_reused_pid_is_no_instance(tmp_path: Path) -> None:
    pid_file = tmp_path / "kcm-core.pid"
    assert recorded_pid(pid_file, "kcm-core") is None  # none recorded
    pid_file.write_text(f"{os.getpid()}\n")  # alive, but this test's process, not kcm-core
    assert recorded_pid(pid_file, "kcm-core") is None
    program = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()
    assert recorded_pid(pid_file, program) == os.getpid()
    pid_file.write_text("garbage\n")
    assert recorded_pid(pid_file, "kcm-core") is None


def test_options() -> None:
    args = build_parser().parse_args(["dev", "run"])
    assert (args.kmip_port, args.link_port, args.gateway_port, args.log_format) == (
        5696, 5697, 5698, "text")
    args = build_parser().parse_args(["dev", "run", "--gateway-port", "15698",
                                      "--log-format", "json"])
    assert (args.gateway_port, args.log_format, args.prog) == (15698, "json", "kcm dev run")


def test_the_development_pki_names_the_application_the_banner_speaks_as(
        tmp_path: Path, monkeypatch) -> None:
    """`kcm dev run --tenant acme --service billing`: the PKI's app.pem named demo/app, and
    the banner's commands, run with it, acted as demo/app (refused: no service key). A new
    PKI names the application asked for; one made for another is refused, in one line."""
    from kcm.cli import CommandError, dev_cmd
    from kcm.pki import init_pki

    ran: list[list[str]] = []
    monkeypatch.setattr("kcm.cli.main", lambda argv: ran.append(argv) or 0)
    var = tmp_path / "var"
    var.mkdir()
    args = argparse.Namespace(tenant="acme", service="billing")
    dev_cmd._prepare(args, var, "etc/kcm-core.toml")
    assert ran[0] == ["pki", "init", str(var / "pki"), "--tenant", "acme", "--service",
                      "billing"]
    init_pki(var / "pki", tenant="demo", service="app")
    with pytest.raises(CommandError, match="was made for the application "
                                           "/tenant/demo/service/app; give its --tenant"):
        dev_cmd._prepare(args, var, "etc/kcm-core.toml")

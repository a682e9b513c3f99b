"""``kcm dev run``'s judgement of a recorded pid, and its command line (the launcher itself
runs as a process in tests/integration/test_dev_run.py)."""

from __future__ import annotations

import os
from pathlib import Path

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

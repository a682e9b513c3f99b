"""twistd kcm-core and kcm-gateway given a configuration they cannot start with: status 1,
one line saying what, which setting or file, and why; no Python traceback on the terminal
(neither twistd's standard error nor the log on standard output)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from kcm.testing.processes import BIN, GatewayProcess, process_env
from tests.e2e_support import deploy


def _twistd(plugin: str, config: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", plugin, "-c", str(config),
                           "--log-format", "text"],
                          cwd=cwd, env=process_env(), capture_output=True, text=True,
                          timeout=60)


def _assert_one_line_refusal(run: subprocess.CompletedProcess, reason: str) -> None:
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert [line for line in (run.stdout + run.stderr).splitlines() if reason in line]


def test_a_wrong_setting_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "kcm-core.toml"
    config.write_text("[core]\nlisten = 25696\n")
    run = _twistd("kcm-core", config, tmp_path)
    _assert_one_line_refusal(run, "core.listen must be an endpoint string such as tcp:5696")
    assert len(run.stdout.splitlines()) <= 3  # not every option's help first
    config.write_text("[cor]\nlisten = \"tcp:5696\"\n")
    _assert_one_line_refusal(_twistd("kcm-core", config, tmp_path), "unknown table 'cor'")
    config.write_text("[gateway]\ncore = \"ssl:127.0.0.1:5697\"\n")
    _assert_one_line_refusal(_twistd("kcm-gateway", config, tmp_path),
                             "gateway.core 'ssl:127.0.0.1:5697': give a plain endpoint")


def test_a_failed_start_is_one_line_naming_the_file(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.write_config()
    text = core.config.read_text()
    core.config.write_text(text.replace(f'key = "{core.pki.core.key}"',
                                        f'key = "{core.pki.app.key}"'))
    run = _twistd("kcm-core", core.config, core.root)
    _assert_one_line_refusal(
        run, f"kcm-core did not start: kcm-kmip-listener: core.tls.key: {core.pki.app.key} is "
             f"not the key of the certificate in {core.pki.core.cert}")

    core.config.write_text(text.replace(f'database = "{core.database}"',
                                        f'database = "sqlite:///{tmp_path}/none/kcm.db"'))
    _assert_one_line_refusal(_twistd("kcm-core", core.config, core.root),
                             "kcm-core did not start: kcm-store: ")

    core.config.write_text(text.replace("[core.tls]", f'log_file = "{tmp_path}/no/core.log"\n'
                                        "[core.tls]"))
    run = _twistd("kcm-core", core.config, core.root)
    _assert_one_line_refusal(run, f"kcm-core did not start: log_file: cannot open "
                                  f"{tmp_path}/no/core.log: No such file or directory")


def test_a_listener_that_cannot_listen_is_one_line_naming_it(tmp_path: Path) -> None:
    """A metrics port in use, at kcm-core and at kcm-gateway (it was a forty-line traceback:
    that listener bound before the start's report), and a unix: KMIP listener in a missing
    directory (it named the process id, the target of its lock file's link)."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        core.metrics_port = taken
        core.write_config()
        _assert_one_line_refusal(_twistd("kcm-core", core.config, core.root),
                                 "kcm-core did not start: kcm-metrics-listener: ")
        core.metrics_port = None
        core.write_config()
        gateway = GatewayProcess(tmp_path / "gateway", core, metrics_port=taken)
        gateway.write_config()
        _assert_one_line_refusal(_twistd("kcm-gateway", gateway.config, gateway.root),
                                 "kcm-gateway did not start: kcm-metrics-listener: ")
    text = core.config.read_text()
    missing = tmp_path / "missing" / "kcm.sock"
    core.config.write_text(text.replace(f'listen = "tcp:{core.port}:interface=127.0.0.1"',
                                        f'listen = "unix:{missing}"'))
    _assert_one_line_refusal(_twistd("kcm-core", core.config, core.root),
                             f"kcm-core did not start: kcm-kmip-listener: {missing}.lock: "
                             "No such file or directory")


def test_a_failed_start_says_why_on_standard_error_when_the_log_is_a_file(
        tmp_path: Path) -> None:
    """With ``log_file`` set, a refused start printed nothing at all where it was run
    (by hand, or in a unit's journal): status 1, the reason in the file alone."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.write_config()
    text = core.config.read_text()
    log = tmp_path / "core.log"
    core.config.write_text(text.replace(f'key = "{core.pki.core.key}"',
                                        f'key = "{core.pki.app.key}"').replace(
        "[core.tls]", f'log_file = "{log}"\n[core.tls]'))
    run = _twistd("kcm-core", core.config, core.root)
    reason = (f"kcm-core did not start: kcm-kmip-listener: core.tls.key: {core.pki.app.key} is "
              f"not the key of the certificate in {core.pki.core.cert}")
    assert run.returncode == 1
    assert reason in log.read_text()
    assert f"{reason} (log: {log})" in run.stderr, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr

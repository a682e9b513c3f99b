"""``kcm dev run`` (what ``make run`` runs) as a real process on free ports in a scratch
directory: it serves, refuses a second instance without harming the first, stops both
services on SIGINT (exit 0, its pid files gone) and when one of them dies (exit 1, saying
which and why)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kcm.cli import main
from kcm.testing.processes import REPO_ROOT, free_port, process_env, stop_process

BANNER_END = "Ctrl-C stops both."


@dataclass
class Launcher:
    root: Path
    ports: list[int]
    process: subprocess.Popen | None = None
    core_config: Path = REPO_ROOT / "etc" / "kcm-core.toml"
    env: dict[str, str] | None = None
    extra: tuple[str, ...] = ()

    @property
    def output(self) -> Path:
        return self.root / "launcher.out"

    def command(self, ports: list[int] | None = None) -> list[str]:
        kmip, link, gateway = ports or self.ports
        return [sys.executable, "-m", "kcm", "dev", "run",
                "--core-config", str(self.core_config),
                "--gateway-config", str(REPO_ROOT / "etc" / "kcm-gateway.toml"),
                "--kmip-port", str(kmip), "--link-port", str(link),
                "--gateway-port", str(gateway), *self.extra]

    def start(self) -> None:
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(self.command(), cwd=self.root,
                                            env={**process_env(), **(self.env or {})},
                                            stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + 90
        while BANNER_END not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kcm dev run did not come up:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def pid(self, name: str) -> int:
        return int((self.root / "var" / f"{name}.pid").read_text())

    def query(self, capsys: pytest.CaptureFixture[str]) -> int:
        pki = self.root / "var" / "pki"
        status = main(["key", "query", "--server", f"127.0.0.1:{self.ports[2]}",
                       "--cert", str(pki / "app.pem"), "--key", str(pki / "app.key"),
                       "--ca", str(pki / "ca.pem")])
        capsys.readouterr()
        return status


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    root = tmp_path / "checkout"
    root.mkdir()
    running = Launcher(root, [free_port(), free_port(), free_port()])
    try:
        running.start()
        yield running
    finally:
        stop_process(running.process, signal.SIGINT)
        for name in ("kcm-core", "kcm-gateway"):  # never leave a service behind
            pid_file = root / "var" / f"{name}.pid"
            if pid_file.exists():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by the launcher) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_it_serves_and_a_second_instance_is_refused_without_harm(
        launcher: Launcher, capsys: pytest.CaptureFixture[str]) -> None:
    assert launcher.query(capsys) == 0
    # The commands it prints paste as they are: one line each, run from anywhere.
    banner = launcher.text().split("kcm-gateway: KMIP over mutual TLS", 1)[1]
    commands = [line[2:] for line in banner.split(BANNER_END)[0].splitlines()
                if line.startswith("  ")]
    assert len(commands) == 4
    pasted = subprocess.run(["bash", "-e", "-c", "\n".join(commands)], cwd="/",
                            env=process_env(), capture_output=True, text=True, timeout=120,
                            check=False)
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.count("\n") == 3 and '"iv": ' in pasted.stdout
    # etc/pykmip.conf is a PyKMIP client configuration for it (here on another port).
    script = ("from kmip.pie.client import ProxyKmipClient; from kmip import enums; "
              f"c = ProxyKmipClient(port={launcher.ports[2]}, config='kcm', "
              f"config_file='{REPO_ROOT / 'etc' / 'pykmip.conf'}'); c.open(); "
              "print(c.create(enums.CryptographicAlgorithm.AES, 256))")
    pykmip = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=launcher.root,
                            env=process_env(), capture_output=True, text=True, timeout=60,
                            check=False)
    assert pykmip.returncode == 0 and pykmip.stdout.count("-") == 4, pykmip.stderr
    var = launcher.root / "var"
    before = {name: (var / name).read_bytes()
              for name in ("kcm-core.log", "kcm-core.pid", "kcm-gateway.pid")}
    pids = launcher.pid("kcm-core"), launcher.pid("kcm-gateway")
    # The gateway pre-warms the service provisioned (--tenant/--service), not the one the
    # example configuration names.
    argv = Path(f"/proc/{pids[1]}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--prewarm") + 1] == b"demo/app"
    assert "pre-warming" not in launcher.text()
    for ports in (launcher.ports, [free_port(), free_port(), free_port()]):
        second = subprocess.run(launcher.command(ports), cwd=launcher.root, env=process_env(),
                                capture_output=True, text=True, timeout=60, check=False)
        assert (second.returncode, second.stdout) == (2, "")
        assert second.stderr.count("\n") == 1
        assert second.stderr.startswith(
            f"kcm dev run: error: kcm-core already runs (pid {pids[0]}, recorded in "
            "var/kcm-core.pid)")
        assert f"kcm-gateway already runs (pid {pids[1]}" in second.stderr
        taken = f"port {launcher.ports[0]} (kcm-core KMIP) is in use by another process"
        assert (taken in second.stderr) == (ports == launcher.ports)
    assert {name: (var / name).read_bytes() for name in before} == before
    assert all(alive(pid) for pid in pids)
    assert launcher.query(capsys) == 0

    launcher.process.send_signal(signal.SIGINT)
    assert launcher.process.wait(timeout=30) == 0
    assert not any(alive(pid) for pid in pids)
    assert not (var / "kcm-core.pid").exists() and not (var / "kcm-gateway.pid").exists()
    assert "kcm dev run: SIGINT: stopping kcm-gateway and kcm-core" in launcher.text()
    assert "Traceback" not in launcher.text()


def _two_free_ports() -> int:
    """A port that is free, and the next one too."""
    from kcm.cli.dev_cmd import port_taken

    while True:
        port = free_port()
        if port < 65535 and not port_taken(port + 1):
            return port


def test_metrics_port_serves_both_services_metrics_and_health(tmp_path: Path) -> None:
    """`make run` served no metrics: seeing /metrics and /readyz took copies of both
    configuration files with `metrics_listen` set. `--metrics-port PORT` serves kcm-core's on
    PORT and kcm-gateway's on PORT+1, and the banner says how to read them."""
    import json
    import urllib.request

    root = tmp_path / "checkout"
    root.mkdir()
    port = _two_free_ports()
    others: list[int] = []
    while len(others) < 3:  # (free ports, none of them PORT or PORT+1, all distinct)
        candidate = free_port()
        if candidate not in (port, port + 1, *others):
            others.append(candidate)
    running = Launcher(root, others,
                       extra=("--metrics-port", str(port)))
    try:
        running.start()
        assert f"curl -s http://127.0.0.1:{port}/metrics" in running.text()

        def get(port: int, path: str) -> tuple[int, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.status, r.read().decode()

        status, body = get(port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        assert "kcm_core_" in get(port, "/metrics")[1]
        deadline = time.monotonic() + 30
        while (answer := get(port + 1, "/healthz"))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answer[0] == 200
        assert "kcm_gateway_" in get(port + 1, "/metrics")[1]
    finally:
        stop_process(running.process, signal.SIGINT)
        for name in ("kcm-core", "kcm-gateway"):
            pid_file = root / "var" / f"{name}.pid"
            if pid_file.exists():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    bad = Launcher(tmp_path, running.ports, extra=("--metrics-port", str(running.ports[0])))
    done = subprocess.run(bad.command(), cwd=tmp_path, env=process_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--metrics-port" in done.stderr


def test_ports_in_use_by_something_else_are_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        other = Launcher(tmp_path, [free_port(), free_port(), port])
        done = subprocess.run(other.command(), cwd=tmp_path, env=process_env(),
                              capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (
        2, f"kcm dev run: error: port {port} (kcm-gateway KMIP) is in use by another process; "
           "stop it or choose other ports (kcm dev run --help)\n")
    assert not (tmp_path / "var").exists()  # refused before touching anything


def test_when_the_core_dies_the_gateway_is_stopped_and_the_reason_said(
        launcher: Launcher) -> None:
    core, gateway = launcher.pid("kcm-core"), launcher.pid("kcm-gateway")
    os.kill(core, signal.SIGKILL)
    assert launcher.process.wait(timeout=30) == 1
    assert "kcm dev run: kcm-core exited (killed by SIGKILL); stopping kcm-gateway" in (
        launcher.text())
    assert not alive(gateway)


@pytest.mark.skipif(os.geteuid() != 0, reason="reads the environment of processes that make "
                    "themselves not dumpable, which only root may (CI runs as root)")
def test_the_gateway_is_not_given_the_cores_l1_from_the_environment(tmp_path: Path) -> None:
    """With the core's L1 in an environment variable (``l1_key_env``), the launcher gave the
    gateway (and so its workers) that variable with the rest of its environment: the data
    plane, which needs no L1, held the master key."""
    import base64

    root = tmp_path / "checkout"
    root.mkdir()
    config = root / "kcm-core.toml"
    config.write_text((REPO_ROOT / "etc" / "kcm-core.toml").read_text().replace(
        'l1_key_file = "var/l1.key"', 'l1_key_env = "KCM_TEST_L1"'))
    secret = base64.b64encode(os.urandom(32)).decode()
    running = Launcher(root, [free_port(), free_port(), free_port()], core_config=config,
                       env={"KCM_TEST_L1": secret})
    try:
        running.start()
        environ = {
            name: Path(f"/proc/{running.pid(name)}/environ").read_bytes().split(b"\0")
            for name in ("kcm-core", "kcm-gateway")}
    finally:
        stop_process(running.process, signal.SIGINT)
    assert f"KCM_TEST_L1={secret}".encode() in environ["kcm-core"]
    assert not [v for v in environ["kcm-gateway"] if v.startswith(b"KCM_TEST_L1=")]
    assert not (root / "var" / "l1.key").exists()

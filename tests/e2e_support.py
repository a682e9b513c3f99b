"""Real kcm-core processes for end-to-end tests: a development PKI, `kcm core init`, a
bootstrapped tenant, and `twistd -n kcm-core` on a free loopback port (test support)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kcm.pki import PkiPaths, init_pki
from tests.vectors import REPO_ROOT

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env() -> dict[str, str]:
    """The environment for kcm processes: the repository on PYTHONPATH, so twistd finds the
    plugin in twisted/plugins of the working tree (an editable install does not expose it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class CoreProcess:
    """One kcm-core deployment in a directory, and its running twistd process."""

    root: Path
    database: str
    port: int = field(default_factory=free_port)
    link_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def pki(self) -> PkiPaths:
        return PkiPaths.for_directory(self.root / "pki")

    @property
    def config(self) -> Path:
        return self.root / "kcm-core.toml"

    @property
    def log(self) -> Path:
        return self.root / "core.log"

    def write_config(self) -> None:
        self.config.write_text(
            "[core]\n"
            f'listen = "tcp:{self.port}:interface=127.0.0.1"\n'
            f'link_listen = "tcp:{self.link_port}:interface=127.0.0.1"\n'
            'trust_domain = "kcm.test"\n'
            f'database = "{self.database}"\n'
            f'l1_key_file = "{self.root / "l1.key"}"\n'
            f'policy_file = "{self.root / "policy.toml"}"\n'
            "[core.tls]\n"
            f'cert = "{self.pki.core.cert}"\nkey = "{self.pki.core.key}"\n'
            f'ca = "{self.pki.ca.cert}"\n'
            "[core.limits]\nidle_timeout = 60.0\nmessage_timeout = 5.0\n"
        )
        (self.root / "policy.toml").write_text(
            '[subjects]\n"CN=legacy-client,O=KCM Dev" = "tenant/demo/service/legacy"\n')

    def kcm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the `kcm` command with this deployment's configuration."""
        return subprocess.run([str(BIN / "kcm"), *args, "-c", str(self.config)],
                              env=process_env(), capture_output=True, text=True, check=check,
                              timeout=60)

    def start(self) -> None:
        """Start `twistd -n kcm-core` and wait until it accepts connections (KMIP and link)."""
        log = open(self.log, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "kcm-core", "-c", str(self.config)],
            cwd=self.root, env=process_env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kcm-core exited ({self.process.returncode}):\n"
                                   + self.log.read_text()[-3000:])
            try:
                for port in (self.port, self.link_port):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("kcm-core did not start listening:\n" + self.log.read_text()[-3000:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self, who: str = "app"):
        """A blocking KMIP client (kcm.conformance.client) with one of the PKI's identities."""
        from kcm.conformance.client import KmipClient

        pair = getattr(self.pki, who)
        return KmipClient("127.0.0.1", self.port, cert=pair.cert, key=pair.key,
                          ca=self.pki.ca.cert)

    def pykmip(self, who: str = "app"):
        """PyKMIP's ProxyKmipClient, opened, with one of the PKI's identities."""
        from kmip.pie.client import ProxyKmipClient

        pair = getattr(self.pki, who)
        client = ProxyKmipClient(hostname="127.0.0.1", port=self.port, cert=str(pair.cert),
                                 key=str(pair.key), ca=str(self.pki.ca.cert),
                                 config_file=os.devnull)
        client.open()
        return client


#: PyKMIP 0.11's own server, for the runner's test and as the durable-operations baseline:
#: ``python -c PYKMIP_SERVER PKI_DIR PORT WORK_DIR`` (TLS 1.2, the PKI's core certificate, its
#: SQLite database and log in WORK_DIR).
PYKMIP_SERVER = """
import sys, warnings
warnings.simplefilter("ignore")
from kmip.services.server.server import KmipServer
pki, port, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = KmipServer(
    hostname="127.0.0.1", port=port, certificate_path=f"{pki}/core.pem",
    key_path=f"{pki}/core.key", ca_path=f"{pki}/ca.pem", auth_suite="TLS1.2",
    config_path=None, log_path=f"{work}/pykmip.log", policy_path=None,
    enable_tls_client_auth=False, logging_level="INFO", database_path=f"{work}/pykmip.db",
)
with server:
    server.serve()
"""


def deploy(root: Path, database: str) -> CoreProcess:
    """A PKI, an initialised database and L1, tenants demo (service app) and other."""
    root.mkdir(parents=True, exist_ok=True)
    core = CoreProcess(root, database)
    init_pki(root / "pki")
    core.write_config()
    core.kcm("core", "init")
    for tenant in ("demo", "other"):
        core.kcm("core", "tenant", "add", tenant)
    core.kcm("core", "service", "add", "demo", "app")
    return core


@pytest.fixture
def core_process(tmp_path: Path) -> Iterator[CoreProcess]:
    """A running kcm-core on a real SQLite file."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    try:
        yield core
    finally:
        core.stop()


_pg_databases = iter(range(1, 10_000))


@pytest.fixture
def core_process_pg(tmp_path: Path, postgres_url: str) -> Iterator[CoreProcess]:
    """A running kcm-core on its own database in the suite's PostgreSQL cluster."""
    import sqlalchemy

    name = f"kcm_e2e_{next(_pg_databases)}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    core = deploy(tmp_path / "core", url)
    core.start()
    try:
        yield core
    finally:
        core.stop()


@dataclass
class GatewayProcess:
    """A kcm-gateway in front of a :class:`CoreProcess` (same PKI), and its twistd process."""

    root: Path
    core: CoreProcess
    port: int = field(default_factory=free_port)
    l3_ttl: float = 300.0
    max_stale: float = 3600.0
    prewarm: tuple[str, ...] = ("demo/app",)
    process: subprocess.Popen | None = None

    @property
    def pki(self) -> PkiPaths:
        return self.core.pki

    @property
    def config(self) -> Path:
        return self.root / "kcm-gateway.toml"

    @property
    def log(self) -> Path:
        return self.root / "gateway.log"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        prewarm = ", ".join(f'"{entry}"' for entry in self.prewarm)
        self.config.write_text(
            "[gateway]\n"
            f'listen = "tcp:{self.port}:interface=127.0.0.1"\n'
            f'core = "tcp:127.0.0.1:{self.core.link_port}"\n'
            'core_server_name = "localhost"\n'
            'trust_domain = "kcm.test"\n'
            f"l3_ttl = {self.l3_ttl}\nmax_stale = {self.max_stale}\n"
            f"prewarm = [{prewarm}]\n"
            "[gateway.tls]\n"
            f'cert = "{self.pki.gateway.cert}"\nkey = "{self.pki.gateway.key}"\n'
            f'ca = "{self.pki.ca.cert}"\n'
            "[gateway.limits]\nidle_timeout = 60.0\nmessage_timeout = 5.0\n"
        )

    def start(self) -> None:
        """Start `twistd -n kcm-gateway` and wait until it accepts connections."""
        if not self.config.exists():
            self.write_config()
        log = open(self.log, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "kcm-gateway", "-c", str(self.config)],
            cwd=self.root, env=process_env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kcm-gateway exited ({self.process.returncode}):\n"
                                   + self.log.read_text()[-3000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("kcm-gateway did not start listening:\n"
                           + self.log.read_text()[-3000:])

    def links(self) -> int:
        """How many times the gateway has linked to a core so far (from its log)."""
        return self.log.read_text().count("linked to core")

    def wait_linked(self, more_than: int = 0, timeout: float = 10.0) -> None:
        """Wait until the gateway has linked to the core more than ``more_than`` times."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.links() > more_than:
                return
            time.sleep(0.02)
        raise RuntimeError("the gateway did not link to the core:\n"
                           + self.log.read_text()[-3000:])

    # Stopping and connecting work the same way as for the core (same PKI, own port).
    stop = CoreProcess.stop
    client = CoreProcess.client
    pykmip = CoreProcess.pykmip


# Event stream observations (tests of the gateway's sync with the core) ------------------

_APPLIED = re.compile(r"applied event (\d+): (\S+) ")
_RESUMED = re.compile(r"linked to core .*; events after (-?\d+)")


def applied_events(gateway: GatewayProcess) -> list[tuple[int, str]]:
    """The (sequence, kind) of every event ``gateway`` applied so far, in its log's order."""
    return [(int(seq), kind) for seq, kind in _APPLIED.findall(gateway.log.read_text())]


def resumed_after(gateway: GatewayProcess) -> list[int]:
    """For each link ``gateway`` made so far, the last event it had applied (the sequence its
    HELLO asked to resume after), from its log."""
    return [int(seq) for seq in _RESUMED.findall(gateway.log.read_text())]


def dead_links(core: CoreProcess) -> int:
    """How many links the core has closed as dead (nothing received for 3 heartbeats)."""
    return core.log.read_text().count("is dead: nothing received")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0,
               interval: float = 0.02) -> float:
    """Poll ``condition`` every ``interval`` s; the seconds it took, or RuntimeError naming
    ``what`` after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


@pytest.fixture
def gateway_process(core_process: CoreProcess, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A running kcm-gateway linked to the ``core_process`` fixture's core (pre-warmed for
    demo/app)."""
    gateway = GatewayProcess(tmp_path / "gateway", core_process)
    try:
        gateway.start()
        gateway.wait_linked()
        yield gateway
    finally:
        gateway.stop()

"""Real KMIP server processes on free loopback ports, for end-to-end tests and benchmarks.

:func:`deploy` makes a kcm-core deployment in a directory (a development PKI, ``kcm core
init``, tenants ``demo`` and ``other``, each with a service ``app``); :class:`CoreProcess` and
:class:`GatewayProcess` run ``twistd -n kcm-core`` / ``twistd -n kcm-gateway`` on it;
:func:`start_pykmip` runs PyKMIP 0.11's own server with the same PKI. Each start returns once
the process accepts connections, or raises RuntimeError with the tail of its log.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kcm.pki import PkiPaths, init_pki

if TYPE_CHECKING:
    from kmip.pie.client import ProxyKmipClient

    from kcm.conformance.client import KmipClient

__all__ = [
    "PYKMIP_SERVER",
    "START_TIMEOUT",
    "connect_endpoint",
    "CoreProcess",
    "GatewayProcess",
    "deploy",
    "free_port",
    "listen_endpoint",
    "process_env",
    "start_pykmip",
    "start_python_server",
    "start_together",
    "stop_process",
    "wait_listening",
]

#: The working tree: twistd finds the kcm plugins in its twisted/plugins.
REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: Seconds a server may take to accept connections.
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and that this process has not
    handed out before (a deployment takes several ports before its servers bind them: two
    equal draws made one server fail to listen).

    Under pytest-xdist each worker draws from a range of its own, below the kernel's
    ephemeral ports (:data:`_XDIST_PORTS`), so that two workers starting servers at once
    never pick the same port (and no client socket of either takes it meanwhile); it walks
    its range in order from a random start."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if workers < 2 or not worker[2:].isdigit():
        for _ in range(1000):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
        raise RuntimeError("no free port the kernel offers that was not handed out already")
    low, high = _XDIST_PORTS
    span = (high - low) // workers
    first = low + int(worker[2:]) % workers * span
    global _next_port
    if _next_port is None:
        _next_port = random.randrange(span)
    for _ in range(span):
        port = first + _next_port % span
        _next_port += 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{first + span - 1}")


#: Ports :func:`free_port` gave out from the kernel's choice (outside pytest-xdist).
_HANDED_OUT: set[int] = set()
#: Where a pytest-xdist worker's walk through its range of ports has come to.
_next_port: int | None = None


#: The ports pytest-xdist workers share out between them: below Linux's default ephemeral
#: range (32768-60999), from which the kernel picks client ports.
_XDIST_PORTS = (20000, 32000)


def process_env() -> dict[str, str]:
    """The environment for kcm processes: the repository on PYTHONPATH, so twistd finds the
    plugin in twisted/plugins of the working tree (an editable install does not expose it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def wait_listening(process: subprocess.Popen, ports: Sequence[int], name: str, log: Path,
                   timeout: float = START_TIMEOUT, host: str = "127.0.0.1") -> None:
    """Return once every one of ``ports`` on ``host`` accepts a connection; RuntimeError with
    the tail of ``log`` when ``process`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    waiting = list(ports)  # (each port connected to once: a gateway counts its handoffs)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode}):\n"
                               + _tail(log))
        try:
            while waiting:
                socket.create_connection((host, waiting[0]), timeout=0.2).close()
                waiting.pop(0)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not start listening:\n" + _tail(log))


def listen_endpoint(port: int, host: str = "127.0.0.1") -> str:
    """The listener endpoint string of ``port`` on the loopback address ``host`` (an IPv6
    one: ``tcp6:``, its colons escaped)."""
    if ":" in host:
        return f"tcp6:{port}:interface={_escaped(host)}"
    return f"tcp:{port}:interface={host}"


def connect_endpoint(port: int, host: str = "127.0.0.1") -> str:
    """The client endpoint string of ``port`` on ``host`` (a gateway's ``core``)."""
    return f"tcp:{_escaped(host)}:{port}"


def _escaped(host: str) -> str:
    return host.replace(":", "\\:")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM,
                 timeout: float = 20.0) -> None:
    """Send ``sig`` to ``process`` if it still runs and wait; SIGKILL after ``timeout``.
    A process :func:`start_python_server` started leads a process group of its own: the
    signals go to the whole group, and whatever of it is left afterwards (PyKMIP's server
    forks a helper that outlives a killed parent) is killed too."""
    if process is None:
        return
    group = process in _OWN_GROUPS
    if process.poll() is None:
        _send(process, sig, group)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _send(process, signal.SIGKILL, group)
            process.wait()
    if group:
        _send(process, signal.SIGKILL, group)


def _send(process: subprocess.Popen, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)


#: The processes started as the leaders of process groups of their own.
_OWN_GROUPS: weakref.WeakSet[subprocess.Popen] = weakref.WeakSet()


def start_python_server(script: str, args: Sequence[str], port: int, name: str,
                        log: Path) -> subprocess.Popen:
    """Run ``python -c script *args`` (output to ``log``) and wait until ``port`` listens."""
    output = open(log, "ab")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen([sys.executable, "-c", script, *args], env=process_env(),
                               stdout=output, stderr=subprocess.STDOUT,
                               start_new_session=True)
    _OWN_GROUPS.add(process)
    output.close()
    try:
        wait_listening(process, [port], name, log)
    except RuntimeError:
        stop_process(process)
        raise
    return process


@dataclass
class CoreProcess:
    """One kcm-core deployment in a directory, and its running twistd process."""

    root: Path
    database: str
    port: int = field(default_factory=free_port)
    link_port: int = field(default_factory=free_port)
    #: ``limits.max_message_size`` (None: the default, 1 MiB).
    max_message_size: int | None = None
    process: subprocess.Popen | None = None
    #: Seconds between audit checkpoints in the log (None: kcm-core's default).
    audit_checkpoint_interval: float | None = None
    #: The ``[core.limits]`` table written to the configuration.
    limits: dict[str, int | float] = field(default_factory=lambda: {
        "idle_timeout": 60.0, "message_timeout": 5.0})
    #: L1 in a PKCS#11 token (the ``l1_pkcs11`` URI) instead of the key file.
    l1_pkcs11: str | None = None
    #: L1 in this environment variable (``l1_key_env``; the test sets it) instead of the key
    #: file.
    l1_key_env: str | None = None
    #: The process's soft limit on open files (``ulimit -n``; None: inherited).
    nofile: int | None = None
    #: The ``metrics_listen`` port on ``host`` (None: no metrics listener).
    metrics_port: int | None = None
    #: Seconds between state sweeps (None: kcm-core's default).
    state_sweep_interval: float | None = None
    #: More ``[core.tls]`` settings, written as TOML values (e.g. ``{"crl": "..."}``).
    tls_settings: dict[str, int | float | str] = field(default_factory=dict)
    #: The loopback address every listener binds (``::1``: IPv6).
    host: str = "127.0.0.1"

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
            f"listen = {json.dumps(listen_endpoint(self.port, self.host))}\n"
            f"link_listen = {json.dumps(listen_endpoint(self.link_port, self.host))}\n"
            'trust_domain = "kcm.test"\n'
            f'database = "{self.database}"\n'
            f'l1_key_file = "{self.root / "l1.key"}"\n'
            + (f"l1_pkcs11 = {json.dumps(self.l1_pkcs11)}\n" if self.l1_pkcs11 else "")
            + (f"l1_key_env = {json.dumps(self.l1_key_env)}\n" if self.l1_key_env else "")
            + f'policy_file = "{self.root / "policy.toml"}"\n'
            + (f"audit_checkpoint_interval = {self.audit_checkpoint_interval}\n"
               if self.audit_checkpoint_interval is not None else "")
            + _metrics_listen(self.metrics_port, self.host)
            + (f"state_sweep_interval = {self.state_sweep_interval}\n"
               if self.state_sweep_interval is not None else "")
            + "[core.tls]\n"
            f'cert = "{self.pki.core.cert}"\nkey = "{self.pki.core.key}"\n'
            f'ca = "{self.pki.ca.cert}"\n'
            + "".join(f"{name} = {json.dumps(value)}\n"
                      for name, value in self.tls_settings.items())
            + "[core.limits]\n"
            + "".join(f"{name} = {value!r}\n" for name, value in self.limits.items())
            + _max_message_size(self.max_message_size)
        )
        (self.root / "policy.toml").write_text(
            '[subjects]\n"CN=legacy-client,O=KCM Dev" = "tenant/demo/service/legacy"\n')

    def kcm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the `kcm` command with this deployment's configuration."""
        return subprocess.run([str(BIN / "kcm"), *args, "-c", str(self.config)],
                              env=process_env(), capture_output=True, text=True, check=check,
                              timeout=60)

    def kcm_here(self, *args: str) -> None:
        """Run ``kcm args`` with this deployment's configuration in this process (the
        executable's code, without an interpreter's start: for a test that must act within
        a time); RuntimeError with what it printed if it fails."""
        _kcm_here(self, *args)

    def start(self) -> None:
        """Start `twistd -n kcm-core` and wait until it accepts connections (KMIP and link)."""
        self.spawn()
        self.wait_started()

    def spawn(self) -> None:
        """Start `twistd -n kcm-core`, without waiting (:meth:`wait_started` waits)."""
        self.process = _twistd("kcm-core", self.config, self.root, self.log, self.nofile)

    def wait_started(self) -> None:
        """Wait until the process :meth:`spawn` started accepts connections (KMIP and link)."""
        assert self.process is not None, "spawn() first"
        wait_listening(self.process, [self.port, self.link_port, *_ports(self.metrics_port)],
                       "kcm-core", self.log, host=self.host)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, sig)
        self.process = None

    def client(self, who: str = "app") -> KmipClient:
        """A blocking KMIP client (kcm.conformance.client) with one of the PKI's identities."""
        from kcm.conformance.client import KmipClient

        pair = getattr(self.pki, who)
        return KmipClient(self.host, self.port, cert=pair.cert, key=pair.key,
                          ca=self.pki.ca.cert)

    def replica(self, root: Path) -> CoreProcess:
        """Another kcm-core on this one's database (one more core of the deployment), in
        ``root``: the same PKI, L1 key and policy, its own ports, configuration and log."""
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copytree(self.root / "pki", root / "pki", copy_function=shutil.copy2)
        if (self.root / "l1.key").exists():
            shutil.copy2(self.root / "l1.key", root / "l1.key")
        other = CoreProcess(root, self.database, max_message_size=self.max_message_size,
                            l1_pkcs11=self.l1_pkcs11)
        other.limits = dict(self.limits)
        other.write_config()
        return other

    def pykmip(self, who: str = "app") -> ProxyKmipClient:
        """PyKMIP's ProxyKmipClient, opened, with one of the PKI's identities."""
        from kmip.pie.client import ProxyKmipClient

        pair = getattr(self.pki, who)
        client = ProxyKmipClient(hostname="127.0.0.1", port=self.port, cert=str(pair.cert),
                                 key=str(pair.key), ca=str(self.pki.ca.cert),
                                 config_file=os.devnull)
        client.open()
        return client


def _max_message_size(size: int | None) -> str:
    return f"max_message_size = {size}\n" if size is not None else ""


def _metrics_listen(port: int | None, host: str = "127.0.0.1") -> str:
    if port is None:
        return ""
    return f"metrics_listen = {json.dumps(listen_endpoint(port, host))}\n"


def _ports(port: int | None) -> list[int]:
    return [] if port is None else [port]


def scrape(port: int, path: str = "/metrics", timeout: float = 5.0,
           host: str = "127.0.0.1") -> tuple[int, bytes]:
    """GET ``path`` from the metrics listener on ``host``:``port``: (status, body)."""
    import urllib.error
    import urllib.request

    try:
        where = f"[{host}]" if ":" in host else host
        with urllib.request.urlopen(f"http://{where}:{port}{path}",
                                    timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _twistd(plugin: str, config: Path, root: Path, log: Path,
            nofile: int | None = None) -> subprocess.Popen:
    output = open(log, "ab")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", plugin, "-c", str(config)],
        cwd=root, env=process_env(), stdout=output, stderr=subprocess.STDOUT,
        preexec_fn=None if nofile is None else lambda: _limit_open_files(nofile))
    output.close()
    return process


def _limit_open_files(nofile: int) -> None:
    """In the child, before exec: lower the soft limit on open files (``ulimit -n``)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))


def deploy(root: Path, database: str, *, max_message_size: int | None = None,
           l1_pkcs11: str | None = None, **limits: int | float) -> CoreProcess:
    """A PKI, an initialised database and L1, tenants demo and other with a service app
    each (the PKI's ``app`` and ``other_app``);
    ``limits`` are added to (or replace) the deployment's ``[core.limits]``,
    ``max_message_size`` (if given) is the core's ``limits.max_message_size``, and
    ``l1_pkcs11`` (if given) puts L1 in that PKCS#11 token key instead of a key file.

    A deployment with a key-file L1 is a copy of one made by the same commands once per
    process, without five `kcm` processes per test: on SQLite (:func:`_template`) the PKI,
    the L1 key and the database file are the same bytes ``kcm core init`` and ``kcm core
    tenant/service add`` would write; on PostgreSQL (:func:`_pg_template`) the empty
    database ``database`` names is made again from a template database those commands
    filled, in the same cluster."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)  # kcm core init wants it private
    core = CoreProcess(root, database, max_message_size=max_message_size, l1_pkcs11=l1_pkcs11)
    core.limits.update(limits)
    template = None if l1_pkcs11 is not None else _copied_database(database)
    if template is None:
        _initialise(core)
        return core
    shutil.copytree(template / "pki", root / "pki", copy_function=shutil.copy2)
    shutil.copy2(template / "l1.key", root / "l1.key")
    core.write_config()
    return core


def _copied_database(database: str) -> Path | None:
    """Make ``database`` a copy of the template deployment's database; the template's
    directory (its PKI and L1 key), or None where no template serves (``database`` is
    neither a SQLite file nor an empty PostgreSQL database)."""
    target = _sqlite_file(database)
    if target is not None:
        template = _template()
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copy2(template / "kcm.db", target)
        return template
    if database.startswith(("postgresql://", "postgresql+psycopg://")):
        return _pg_template(database)
    return None


def _initialise(core: CoreProcess, in_process: bool = False) -> None:
    """A PKI, the configuration, ``kcm core init`` and the tenants and services of
    :func:`deploy`; with ``in_process``, the `kcm` commands run in this process
    (:func:`kcm.cli.main`, the executable's code, without an interpreter's second of
    imports each)."""
    init_pki(core.root / "pki")
    core.write_config()
    commands = [("core", "init")]
    commands += [("core", "tenant", "add", tenant) for tenant in ("demo", "other")]
    commands += [("core", "service", "add", tenant, "app") for tenant in ("demo", "other")]
    for command in commands:
        if in_process:
            _kcm_here(core, *command)
        else:
            core.kcm(*command)


def _kcm_here(core: CoreProcess, *args: str) -> None:
    """Run ``kcm args`` with ``core``'s configuration in this process; RuntimeError with
    what it printed if it fails."""
    from kcm.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = main([*args, "-c", str(core.config)])
    if status != 0:
        raise RuntimeError(f"kcm {' '.join(args)} failed ({status}): {out.getvalue()}")


def _sqlite_file(database: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, else None."""
    prefix = "sqlite:///"
    return Path(database[len(prefix):]) if database.startswith(prefix) else None


_TEMPLATE: Path | None = None


def _template() -> Path:
    """A SQLite deployment made once per process with the real commands, deleted at exit;
    its database is checkpointed (no WAL file) so that one file is the whole of it."""
    global _TEMPLATE
    if _TEMPLATE is None:
        work = Path(tempfile.mkdtemp(prefix="kcm-deploy-template-"))
        atexit.register(shutil.rmtree, work, True)
        root = work / "core"
        root.mkdir(mode=0o700)
        template = CoreProcess(root, f"sqlite:///{root / 'kcm.db'}")
        _initialise(template, in_process=True)
        with sqlite3.connect(root / "kcm.db") as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
        for leftover in ("kcm.db-wal", "kcm.db-shm"):
            (root / leftover).unlink(missing_ok=True)
        _TEMPLATE = root
    return _TEMPLATE


#: Per PostgreSQL cluster (the URL of its maintenance database): the template deployment's
#: directory and the name of its database.
_PG_TEMPLATES: dict[str, tuple[Path, str]] = {}


def _pg_template(database: str) -> Path | None:
    """Make the empty PostgreSQL database ``database`` again from a template database filled
    once per process and cluster by the real commands (``CREATE DATABASE ... TEMPLATE``);
    the template's directory, or None when ``database`` holds tables already."""
    from sqlalchemy.engine import make_url

    url = make_url(database)
    name = url.database
    cluster = url.set(database="postgres").render_as_string(hide_password=False)
    if _has_tables(database):
        return None
    if cluster not in _PG_TEMPLATES:
        template_name = f"kcm_deploy_template_{os.getpid()}"
        _pg_admin(cluster, f"CREATE DATABASE {template_name}")
        work = Path(tempfile.mkdtemp(prefix="kcm-deploy-pg-template-"))
        atexit.register(shutil.rmtree, work, True)
        root = work / "core"
        root.mkdir(mode=0o700)
        template_url = url.set(database=template_name).render_as_string(hide_password=False)
        _initialise(CoreProcess(root, template_url), in_process=True)
        _PG_TEMPLATES[cluster] = (root, template_name)
    root, template_name = _PG_TEMPLATES[cluster]
    _pg_admin(cluster, f'DROP DATABASE "{name}"',
              f'CREATE DATABASE "{name}" TEMPLATE {template_name}')
    return root


def _has_tables(database: str) -> bool:
    import sqlalchemy

    engine = sqlalchemy.create_engine(database)
    try:
        return bool(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _pg_admin(maintenance: str, *statements: str) -> None:
    """Run ``statements`` in the cluster's maintenance database (``maintenance``, its URL),
    outside any transaction (CREATE and DROP DATABASE refuse one)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(maintenance, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()


_WORKER_STARTED = re.compile(r"kcm-gateway worker (\d+) started: pid (\d+)")


@dataclass
class GatewayProcess:
    """A kcm-gateway in front of a :class:`CoreProcess` (same PKI), and its twistd process."""

    root: Path
    core: CoreProcess
    port: int = field(default_factory=free_port)
    l3_ttl: float = 300.0
    max_stale: float = 3600.0
    prewarm: tuple[str, ...] = ("demo/app",)
    #: ``limits.max_message_size`` (None: the default, 1 MiB).
    max_message_size: int | None = None
    process: subprocess.Popen | None = None
    #: The ``[gateway.limits]`` table written to the configuration.
    limits: dict[str, int | float] = field(default_factory=lambda: {
        "idle_timeout": 60.0, "message_timeout": 5.0})
    #: The process's soft limit on open files (``ulimit -n``; None: inherited).
    nofile: int | None = None
    #: The ``workers`` setting (1: one process; otherwise a supervisor and its workers, all
    #: logging to :attr:`log`).
    workers: int = 1
    #: The ``metrics_listen`` port on ``host`` (None: no metrics listener).
    metrics_port: int | None = None
    #: Cores on the same database to fail over between, in the order tried (``core_order =
    #: "listed"``); None: :attr:`core` alone.
    cores: Sequence[CoreProcess] | None = None
    #: More ``[gateway]`` settings, written as TOML values (e.g. ``{"max_tombstones": 10}``).
    settings: dict[str, int | float | str] = field(default_factory=dict)
    #: More ``[gateway.tls]`` settings, written as TOML values (e.g. ``{"crl": "..."}``).
    tls_settings: dict[str, int | float | str] = field(default_factory=dict)
    #: The loopback address the listeners bind (``::1``: IPv6).
    host: str = "127.0.0.1"
    #: The name the cores' certificates must carry.
    core_server_name: str = "localhost"

    @property
    def pki(self) -> PkiPaths:
        return self.core.pki

    def _core_setting(self) -> str:
        if self.cores is None:
            return f"core = {json.dumps(connect_endpoint(self.core.link_port, self.core.host))}\n"
        listed = ", ".join(json.dumps(connect_endpoint(core.link_port, core.host))
                           for core in self.cores)
        return f'core = [{listed}]\ncore_order = "listed"\n'

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
            f"listen = {json.dumps(listen_endpoint(self.port, self.host))}\n"
            + self._core_setting()
            + f"core_server_name = {json.dumps(self.core_server_name)}\n"
            'trust_domain = "kcm.test"\n'
            f"l3_ttl = {self.l3_ttl}\nmax_stale = {self.max_stale}\n"
            f"prewarm = [{prewarm}]\n"
            + (f"workers = {self.workers}\n" if self.workers != 1 else "")
            + "".join(f"{name} = {json.dumps(value)}\n" for name, value in self.settings.items())
            + _metrics_listen(self.metrics_port, self.host)
            + "[gateway.tls]\n"
            f'cert = "{self.pki.gateway.cert}"\nkey = "{self.pki.gateway.key}"\n'
            f'ca = "{self.pki.ca.cert}"\n'
            + "".join(f"{name} = {json.dumps(value)}\n"
                      for name, value in self.tls_settings.items())
            + "[gateway.limits]\n"
            + "".join(f"{name} = {value!r}\n" for name, value in self.limits.items())
            + _max_message_size(self.max_message_size)
        )

    def start(self) -> None:
        """Start `twistd -n kcm-gateway` and wait until it accepts connections."""
        self.spawn()
        self.wait_started()

    def spawn(self) -> None:
        """Start `twistd -n kcm-gateway`, without waiting (:meth:`wait_started` waits)."""
        if not self.config.exists():
            self.write_config()
        self.process = _twistd("kcm-gateway", self.config, self.root, self.log, self.nofile)

    def wait_started(self) -> None:
        """Wait until the process :meth:`spawn` started accepts connections."""
        assert self.process is not None, "spawn() first"
        wait_listening(self.process, [self.port, *_ports(self.metrics_port)], "kcm-gateway",
                       self.log, host=self.host)

    def links(self) -> int:
        """How many times the gateway has linked to a core so far (from its log)."""
        return self.log.read_text().count("linked to core")

    def wait_linked(self, more_than: int | None = None, timeout: float = 10.0) -> None:
        """Wait until the gateway has linked to the core more than ``more_than`` times (by
        default: once per worker)."""
        if more_than is None:  # workers = 0: one per CPU the gateway may use (as ours)
            more_than = (self.workers or len(os.sched_getaffinity(0))) - 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.links() > more_than:
                return
            time.sleep(0.02)
        raise RuntimeError("the gateway did not link to the core:\n" + _tail(self.log))

    def worker_pids(self) -> dict[int, int]:
        """With workers: the process id of each worker index as last started (from the
        supervisor's log)."""
        return {int(index): int(pid) for index, pid
                in _WORKER_STARTED.findall(self.log.read_text())}

    # Stopping and connecting work the same way as for the core (same PKI, own port).
    stop = CoreProcess.stop
    client = CoreProcess.client
    pykmip = CoreProcess.pykmip


#: PyKMIP 0.11's own server, for the conformance runner's test and as the durable-operations
#: baseline: ``python -c PYKMIP_SERVER PKI_DIR PORT WORK_DIR`` (TLS 1.2, the PKI's core
#: certificate, its SQLite database and log in WORK_DIR).
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


def start_pykmip(pki: PkiPaths, work: Path) -> tuple[subprocess.Popen, int]:
    """PyKMIP's server with ``pki``, its files in ``work``, listening: (process, port)."""
    port = free_port()
    process = start_python_server(PYKMIP_SERVER, [str(pki.directory), str(port), str(work)],
                                  port, "PyKMIP server", work / "pykmip.stderr")
    return process, port


def start_together(processes: Sequence[CoreProcess | GatewayProcess]) -> None:
    """Start every one of ``processes`` at once and wait until each accepts connections (on
    a machine of several CPUs, their imports overlap); if one fails to start, the others
    are stopped and its RuntimeError raised."""
    for process in processes:
        process.spawn()
    try:
        for process in processes:
            process.wait_started()
    except RuntimeError:
        for process in processes:
            process.stop()
        raise


@contextmanager
def running(core: CoreProcess, gateway: GatewayProcess
            ) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """``core`` started and ``gateway`` started and linked to it; both stopped afterwards."""
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        yield core, gateway
    finally:
        gateway.stop()
        core.stop()
